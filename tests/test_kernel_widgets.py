"""Widget logic without a browser: trait changes, polling, ``Button.click()``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("ipywidgets")

from jupyter_offline_token.kernel import OfflineToken, create_task, request_offline_token
from jupyter_offline_token.kernel.testing import RESOURCE_URL, FakeOfflineTokenAPI
from jupyter_offline_token.kernel.widgets import (
    ConsentWidget,
    TaskProgressWidget,
    TokenStatusWidget,
    consent_link_html,
)


@pytest.fixture
def api() -> FakeOfflineTokenAPI:
    return FakeOfflineTokenAPI()


@pytest.fixture
def tok(api: FakeOfflineTokenAPI) -> OfflineToken:
    return request_offline_token(label="widget <test>", client=api.client(), display=False)


def hidden(widget: object) -> bool:
    return widget.layout.display == "none"  # type: ignore[attr-defined]


def test_consent_widget_starts_pending_with_a_new_tab_link(tok: OfflineToken) -> None:
    w = ConsentWidget(tok, autostart=False)
    assert w.status == "pending"
    assert w.persistent_token_id == tok.id
    assert 'target="_blank"' in w.link.value
    assert 'rel="noopener noreferrer"' in w.link.value
    assert tok.consent_url and tok.consent_url.replace("&", "&amp;") in w.link.value
    assert "Grant offline access" in w.link.value
    assert ">pending<" in w.badge.value
    assert not hidden(w.link)
    assert hidden(w.retry_button)
    assert "widget &lt;test&gt;" in w.title.value  # the label is escaped
    bundle = w._repr_mimebundle_()
    assert bundle is not None
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert f"Grant offline access: {tok.consent_url}" in bundle["text/plain"]


def test_consent_widget_turns_active(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    w = ConsentWidget(tok, autostart=False)
    assert w.poll_once() is False
    api.grant(tok.id)
    assert w.poll_once() is True
    assert w.status == "active"
    assert ">active<" in w.badge.value
    assert "#c8e6c9" in w.badge.value  # green
    assert hidden(w.link)
    assert hidden(w.retry_button)
    assert w.error == ""


def test_consent_widget_failure_then_retry(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    w = ConsentWidget(tok, autostart=False)
    api.fail(tok.id, "access_denied: the user refused <consent>")
    assert w.poll_once() is True
    assert w.status == "failed"
    assert "access_denied: the user refused &lt;consent&gt;" in w.error_text.value
    assert not hidden(w.retry_button)
    assert hidden(w.link)

    old_id = tok.id
    w.retry_button.click()
    assert api.count("POST", "/consents") == 2
    assert tok.id != old_id
    assert w.persistent_token_id == tok.id
    assert w.status == "pending"
    assert w.error == ""
    assert tok.consent_url and tok.consent_url.replace("&", "&amp;") in w.link.value
    assert not hidden(w.link)
    assert hidden(w.retry_button)
    api.grant(tok.id)
    assert w.wait_until_settled(timeout=60)  # the Retry restarted live polling
    assert w.status == "active"


def test_consent_widget_updates_by_itself(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    seen: list[str] = []
    w = ConsentWidget(tok, poll_interval=0.01)
    w.observe(lambda change: seen.append(change["new"]), names="status")
    assert w.polling
    api.set_status(tok.id, "expired")
    assert w.wait_until_settled(timeout=60)
    assert w.status == "expired"
    assert seen[-1] == "expired"
    assert not w.polling
    assert not hidden(w.retry_button)


def test_consent_widget_shows_server_errors_while_polling(tok: OfflineToken) -> None:
    w = ConsentWidget(tok, autostart=False)
    w._poll_error(RuntimeError("connection reset"))
    assert "cannot read the status" in w.error_text.value
    assert w.status == "pending"


def test_consent_link_refuses_non_http_urls() -> None:
    assert "href" not in consent_link_html("javascript:alert(1)")


def test_token_status_widget(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    w = TokenStatusWidget(tok, autostart=False)
    assert w.status == "pending"
    # The button only re-reads the status, and says so (it does not refresh the token).
    assert w.reload_button.description == "Reload status"
    api.grant(tok.id)
    w.reload_button.click()
    assert w.status == "active"
    assert ">active<" in w.badge.value
    assert "refreshes: 0" in w.facts.value
    assert "refreshes: 0" in w._repr_mimebundle_()["text/plain"]  # frontends without widgets
    assert tok.id in w.title.value


def test_task_widget_progress_and_cancel(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    api.grant(tok.id)
    task = create_task("crunch", token=tok)
    task.execute()
    w = TaskProgressWidget(task, autostart=False)
    assert w.status == "running"
    assert not w.cancel_button.disabled
    task.progress(0.25, "quarter")
    assert w.poll_once() is False
    assert w.progress == 25
    assert w.bar.value == 25
    assert w.percent.value == "25 %"
    assert w.message_text.value == "quarter"

    w.cancel_button.click()
    assert api.count("POST", f"/tasks/{task.id}/cancel") == 1
    assert api.tasks[task.id]["status"] == "cancelled"
    assert w.status == "cancelled"
    assert w.cancelled_here
    assert w.cancel_button.disabled
    assert hidden(w.cancel_button)  # nothing left to cancel
    assert w.poll_once() is True


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled", "interrupted"])
def test_task_widget_of_a_finished_task_has_no_cancel(
    api: FakeOfflineTokenAPI, tok: OfflineToken, final: str
) -> None:
    api.grant(tok.id)
    task = create_task("finished", token=tok)
    w = TaskProgressWidget(task, autostart=False)
    assert not hidden(w.cancel_button)
    api.tasks[task.id]["status"] = final
    assert w.poll_once() is True
    assert hidden(w.cancel_button) and w.cancel_button.disabled
    task.refresh()
    again = TaskProgressWidget(task, autostart=False)  # built on a task that already ended
    assert hidden(again.cancel_button) and again.cancel_button.disabled


def test_task_widget_cancel_failure_is_shown(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    api.grant(tok.id)
    task = create_task("done already", token=tok)
    w = TaskProgressWidget(task, autostart=False)
    api.tasks[task.id]["status"] = "completed"
    w.cancel_button.click()
    assert "cancel failed" in w.outcome.value
    assert not w.cancelled_here


def test_task_widget_follows_completion(api: FakeOfflineTokenAPI, tok: OfflineToken) -> None:
    api.grant(tok.id)
    task = create_task("bg", token=tok)
    w = TaskProgressWidget(task, poll_interval=0.01)
    with task.running():
        task.progress(0.5)
        task.complete(result="42 rows")
    assert w.wait_until_settled(timeout=60)
    assert w.status == "completed"
    assert w.progress == 100
    assert w.bar.bar_style == "success"
    assert "42 rows" in w.outcome.value
    assert w.cancel_button.disabled
    assert hidden(w.cancel_button)
    assert "completed 100 %" in w.text_summary()


# --- without ipywidgets (pip install jupyter-offline-token, no [kernel] extra) ------------------

# Runs in a fresh interpreter where importing ipywidgets fails, as if it were not installed; an
# IPython shell with a (pretend) kernel stands for a notebook, so everything goes through display().
_WITHOUT_IPYWIDGETS = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoIpywidgets(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ipywidgets" or name.startswith("ipywidgets."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoIpywidgets())

    from IPython.core.interactiveshell import InteractiveShell
    from IPython.display import display
    from IPython.utils.capture import capture_output

    from jupyter_offline_token.kernel import create_task, request_offline_token, set_default_client
    from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI

    shell = InteractiveShell.instance()
    shell.kernel = object()  # what in_notebook() looks for: a frontend that displays rich output
    api = FakeOfflineTokenAPI()
    set_default_client(api.client())
    shown = {}

    def capture(name, action):
        with capture_output() as captured:
            result = action()
        shown[name] = {
            "outputs": [output.data for output in captured.outputs],
            "stdout": captured.stdout,
            "stderr": captured.stderr,
        }
        return result

    tok = capture("request", lambda: request_offline_token(label="plain install"))
    shown["consent_url"] = tok.consent_url
    api.grant(tok.id)
    tok.access_token()
    capture("token", lambda: display(tok.widget()))
    task = create_task("no widgets", token=tok)
    with task.running():
        task.progress(0.5, "halfway")
        capture("task", lambda: display(task.widget()))
    shell.run_line_magic("load_ext", "jupyter_offline_token")
    capture("magic_request", lambda: shell.run_line_magic("offline_token", "request --label m"))
    capture("magic_watch", lambda: shell.run_line_magic("offline_token", f"watch {task.id}"))
    shown["ipywidgets_imported"] = "ipywidgets" in sys.modules
    print("RESULT " + json.dumps(shown))
    """
)


def test_without_ipywidgets_widgets_degrade_to_links_and_say_what_to_install() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_IPYWIDGETS],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    shown = json.loads(run.stdout.split("RESULT ", 1)[1])
    assert shown["ipywidgets_imported"] is False
    hint = "pip install 'jupyter-offline-token[kernel]'"

    # request_offline_token(): a clickable consent link, the URL as text, and the install hint.
    (consent,) = shown["request"]["outputs"]
    url = shown["consent_url"]
    assert f'href="{url.replace("&", "&amp;")}"' in consent["text/html"]
    assert 'target="_blank"' in consent["text/html"]
    assert "jupyter-offline-token[kernel]" in consent["text/html"]
    assert f"Grant offline access: {url}" in consent["text/plain"]
    assert hint in consent["text/plain"]
    assert "Traceback" not in json.dumps(shown)

    # tok.widget() and task.widget(): what the live widget would show, once, plus the hint.
    (token_view,) = shown["token"]["outputs"]
    assert "active" in token_view["text/plain"] and "plain install" in token_view["text/plain"]
    assert "refreshes: 1" in token_view["text/html"]
    assert hint in token_view["text/plain"] and "[kernel]" in token_view["text/html"]
    (task_view,) = shown["task"]["outputs"]
    assert "running 50 % - halfway" in task_view["text/plain"]
    assert hint in task_view["text/plain"] and "[kernel]" in task_view["text/html"]

    # The magic keeps working: the consent link for `request`, the task's state for `watch`.
    magic_request = shown["magic_request"]
    assert magic_request["stderr"] == ""
    assert any("Grant offline access" in o.get("text/plain", "") for o in magic_request["outputs"])
    assert "persistent_token_id" in magic_request["stdout"]
    magic_watch = shown["magic_watch"]
    assert magic_watch["stderr"] == ""
    assert any("halfway" in o.get("text/plain", "") for o in magic_watch["outputs"])


# --- the demo notebook in a real kernel --------------------------------------------------------


class _Bridge(BaseHTTPRequestHandler):
    """Serves the in-memory API, consent page and userinfo endpoint over loopback HTTP."""

    api: FakeOfflineTokenAPI

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        origin = f"http://{self.headers['Host']}"
        url = RESOURCE_URL if self.path == "/userinfo" else origin + self.path
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        answer = self.api.handle(httpx.Request(self.command, url, headers=headers, content=body))
        self.send_response(answer.status_code)
        for name in ("Content-Type", "Retry-After"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_demo_notebook_runs_in_a_real_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Execute notebooks/offline_token_demo.ipynb with nbclient; grant the consent over HTTP
    from the link the consent widget printed, while the notebook waits in ``tok.wait()``."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Bridge)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    api = FakeOfflineTokenAPI(base_url=f"{base}/user/alice/", consent_url_base=f"{base}/idp/auth")
    server.RequestHandlerClass = type("Bridge", (_Bridge,), {"api": api})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in list(os.environ):
        if name.startswith(("JUPYTER_OFFLINE_TOKEN_", "JUPYTERHUB_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_URL", api.base_url)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN", api.server_token)
    monkeypatch.setenv("OFFLINE_TOKEN_DEMO_USERINFO_URL", f"{base}/userinfo")
    monkeypatch.setenv("OFFLINE_TOKEN_DEMO_STEP_SECONDS", "0")

    granted: list[int] = []

    def grant_from_output(cell: Any, **_: Any) -> None:
        for output in cell.get("outputs", []):
            text = output.get("data", {}).get("text/plain", "")
            found = re.search(r"Grant offline access: (\S+)", text)
            if found:
                # Like the user's browser tab: open the link and allow access, in parallel.
                def visit(url: str = found.group(1)) -> None:
                    granted.append(httpx.get(url, timeout=30).status_code)

                threading.Thread(target=visit, daemon=True).start()

    notebook = nbformat.read(Path(__file__).parent.parent / "notebooks/offline_token_demo.ipynb", 4)
    try:
        executed = nbclient.NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=120,
            on_cell_executed=grant_from_output,
        ).execute()
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert granted == [200]
    (task,) = api.tasks.values()
    assert task["status"] == "completed"
    assert task["progress"] == 100
    assert task["result"] == "userinfo answered 5 times for alice"
    resource_calls = [r for r in api.requests if r.url.host == "resource.test"]
    assert len(resource_calls) == 5
    # One token served every call from the cache; then the notebook asks for more lifetime than
    # it has left, which makes the server refresh.
    assert api.count("POST", "/access-token") == 2
    (entry,) = api.tokens.values()
    assert entry["refresh_count"] == 2
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert api.server_token not in outputs
    assert all(token not in outputs for token in api.valid_access_tokens)
    assert "Traceback" not in outputs


def test_token_status_widget_refresh_now() -> None:
    now = [1000.0]
    api = FakeOfflineTokenAPI(clock=lambda: now[0])
    tok = request_offline_token(label="refresh", client=api.client(), display=False)
    api.grant(tok.id)
    w = TokenStatusWidget(tok, autostart=False)
    w.reload_button.click()
    assert "refreshes: 0" in w.facts.value
    assert w.refresh_button.description == "Refresh now"
    w.refresh_button.click()
    # One grant at the (fake) server, and the widget shows the answer (no token in it).
    assert api.count("POST", f"tokens/{tok.id}/refresh") == 1
    assert api.minted == 1
    assert "refreshes: 1" in w.facts.value
    assert not w.refresh_button.disabled
    # Clicked again at once: the server's rate limit is shown, nothing was refreshed.
    w.refresh_button.click()
    assert api.minted == 1
    assert "could not refresh" in w.detail
    assert "refresh_too_soon" in w.facts.value and "again in 10 s" in w.facts.value
    now[0] += api.min_refresh_interval
    w.refresh_button.click()
    assert api.minted == 2
    assert "refreshes: 2" in w.facts.value
