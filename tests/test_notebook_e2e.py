"""Real kernels against a real server and the real provider: the demo notebook end to end, and
the %offline_token magic. The test grants consent over HTTP while the notebook waits in
``tok.wait()``, exactly as a person clicking the button would."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from server_fixtures import grant

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "offline_token_demo.ipynb"
CONSENT_URL = re.compile(r"https?://127\.0\.0\.1:\d+/auth\?[^\s'\"<>]+")


@pytest.fixture
def kernel_env(monkeypatch, jp_serverapp, jp_http_port, jp_base_url, idp):
    """What a kernel launched next to this server sees (nbclient's kernels inherit os.environ)."""
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_URL", f"http://127.0.0.1:{jp_http_port}{jp_base_url}")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN", jp_serverapp.identity_provider.token)
    monkeypatch.setenv("OFFLINE_TOKEN_DEMO_USERINFO_URL", idp.metadata["userinfo_endpoint"])
    monkeypatch.setenv("OFFLINE_TOKEN_DEMO_STEP_SECONDS", "0.2")


def _text(outputs: list) -> str:
    parts = []
    for out in outputs:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("display_data", "execute_result"):
            parts.append(out.get("data", {}).get("text/plain", ""))
            parts.append(out.get("data", {}).get("text/html", ""))
        elif out.get("output_type") == "error":
            parts.append("\n".join(out.get("traceback", [])))
    return "\n".join(parts)


async def run_with_consent(path: Path, api, idp, tmp_path: Path, timeout: int) -> str:
    """Run the notebook at ``path`` in a real kernel, granting consent over HTTP (as a person
    would) the first time a cell shows the provider's consent URL; the code cells' output text."""
    nb = nbformat.read(path, as_version=4)
    consents: list[asyncio.Task] = []

    async def grant_when_asked(url: str) -> None:
        location = await asyncio.to_thread(idp.complete_consent, url)
        status, page = await api.callback(location)
        assert status == 200, page

    def on_cell_executed(cell, cell_index, execute_reply) -> None:
        match = CONSENT_URL.search(_text(cell.get("outputs", [])))
        if match and not consents:
            consents.append(asyncio.ensure_future(grant_when_asked(match.group(0))))

    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        on_cell_executed=on_cell_executed,
    )
    await client.async_execute()
    assert consents, "the notebook never showed a consent URL"
    await consents[0]
    return "\n".join(_text(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")


async def test_demo_notebook_runs_end_to_end(kernel_env, api, idp, tmp_path):
    outputs = await run_with_consent(NOTEBOOK, api, idp, tmp_path, timeout=120)
    assert "completed" in outputs
    assert "Traceback" not in outputs
    # The work really ran against the provider through the server.
    _, tasks = await api.get("tasks")
    (task,) = tasks["tasks"]
    assert task["status"] == "completed" and task["progress"] == 100
    _, tokens = await api.get("tokens")
    (token,) = tokens["tokens"]
    assert token["status"] == "active" and token["label"] == "demo"
    # The notebook shows a real refresh, counted by the server, not "refreshes: 0".
    shown = re.search(r"refreshes: (\d+) -> (\d+)", outputs)
    assert shown, "the notebook never showed the refresh count"
    assert int(shown.group(2)) > int(shown.group(1))
    assert token["refresh_count"] > 0
    assert f"refreshes: {token['refresh_count']}" in outputs  # the token widget's count


async def test_magic_commands_in_a_real_kernel(kernel_env, api, idp, tmp_path):
    token_id = await grant(api, idp, label="magic")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%load_ext jupyter_offline_token"),
        nbformat.v4.new_code_cell("%offline_token list"),
        nbformat.v4.new_code_cell(f"%offline_token status {token_id}"),
        nbformat.v4.new_code_cell(f"%offline_token token {token_id} --var ACCESS"),
        nbformat.v4.new_code_cell("print('length', len(ACCESS))"),
        nbformat.v4.new_code_cell("%offline_token bogus"),
        nbformat.v4.new_code_cell("%offline_token status not-a-token"),
        nbformat.v4.new_code_cell("%offline_token token"),
    ]
    client = NotebookClient(
        nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    await client.async_execute()
    out = [_text(c.outputs) for c in nb.cells]
    assert token_id in out[1] and "magic" in out[1]
    assert "active" in out[2]
    assert "ACCESS" in out[3]
    assert re.search(r"length [1-9]\d+", out[4])
    for bad in out[5:]:
        assert "Traceback" not in bad
        assert "usage" in bad.lower() or "not found" in bad.lower() or "no offline" in bad.lower()
    # The access token never reached an output.
    _, access = await api.post("tokens", token_id, "access-token")
    assert all(access["access_token"] not in text for text in out)
