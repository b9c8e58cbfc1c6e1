"""ipywidgets views: consent, token status and task progress, each updating itself by polling.

ipywidgets is imported only when a widget is built, so the rest of the kernel package works
without it: ``consent_view``, ``token_view`` and ``task_view`` then return a ``StaticView`` (a
one-time HTML/text snapshot with a clickable consent link) that says what to install.

Each live view is a ``traitlets.HasTraits`` controller (``status``, ``error``, ...) that owns a
``box`` of ipywidgets; displaying the controller displays the box. A daemon thread polls
the REST API (about once a second) and stops by itself once the state is final, so logic is
testable without a browser: call ``poll_once()`` or ``button.click()`` and read the traits.

Note: a foreground cell keeps the kernel busy, so a *click* (Retry, Cancel) in this same kernel is
only handled once the running cell ends; updates pushed by the polling thread still show live.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, HasTraits, Unicode, observe

from .errors import OfflineTokenClientError

if TYPE_CHECKING:
    from .tasks import Task
    from .tokens import OfflineToken

# (text colour, background) per status; grey for states that will not change by themselves.
_GREY = ("#424242", "#e0e0e0")
BADGE_COLORS: dict[str, tuple[str, str]] = {
    "pending": ("#6d4c00", "#ffecb3"),
    "active": ("#1b5e20", "#c8e6c9"),
    "failed": ("#b71c1c", "#ffcdd2"),
    "revoked": _GREY,
    "expired": _GREY,
    "running": ("#0d47a1", "#bbdefb"),
    "completed": ("#1b5e20", "#c8e6c9"),
    "cancelled": _GREY,
    "interrupted": ("#e65100", "#ffe0b2"),
}
TOKEN_DONE = frozenset({"active", "failed", "revoked", "expired"})
TOKEN_DEAD = frozenset({"failed", "revoked", "expired"})
TASK_DONE = frozenset({"completed", "failed", "cancelled", "interrupted"})
MAX_BACKOFF = 30.0
#: Shown wherever a live widget cannot be built because ipywidgets is not installed.
INSTALL_HINT = "For live widgets, install ipywidgets: pip install 'jupyter-offline-token[kernel]'"


def badge_html(status: str) -> str:
    """A coloured pill showing ``status`` (HTML).

    Example::

        ipywidgets.HTML(badge_html("active"))
    """
    fg, bg = BADGE_COLORS.get(status, _GREY)
    return (
        f'<span class="jot-badge jot-badge-{html.escape(status)}" style="display:inline-block;'
        f"padding:2px 10px;border-radius:10px;font-weight:600;color:{fg};background:{bg};"
        f'margin-left:8px">{html.escape(status)}</span>'
    )


def consent_link_html(url: str, text: str = "Grant offline access") -> str:
    """An anchor styled as a button that opens ``url`` in a new tab (only http(s) URLs).

    Example::

        IPython.display.HTML(consent_link_html(tok.consent_url))
    """
    if not url.startswith(("https://", "http://")):
        return '<span style="color:#b71c1c">the server sent no usable consent URL</span>'
    return (
        f'<a href="{html.escape(url, quote=True)}" target="_blank" rel="noopener noreferrer" '
        'class="jot-consent-link" style="display:inline-block;padding:6px 16px;border-radius:4px;'
        'background:#1976d2;color:#fff;text-decoration:none;font-weight:600">'
        f"{html.escape(text)}</a>"
    )


def have_ipywidgets() -> bool:
    """True when ipywidgets can be imported, so live widgets can be built.

    Example::

        view = tok.widget() if have_ipywidgets() else print(tok.info)
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class StaticView:
    """A one-time snapshot shown instead of a live widget when ipywidgets is not installed.

    Renders as HTML in a notebook and as text elsewhere; both end with :data:`INSTALL_HINT`.

    Example::

        display(StaticView("<b>active</b>", "active"))
    """

    def __init__(self, html_body: str, text: str) -> None:
        self.html_body = html_body
        self.text = text

    def _repr_html_(self) -> str:
        return (
            f"<div>{self.html_body}</div>"
            f'<div class="jot-install-hint" style="opacity:.75;font-size:90%;margin-top:4px">'
            f"{html.escape(INSTALL_HINT, quote=False)}</div>"
        )

    def __repr__(self) -> str:
        return f"{self.text}\n{INSTALL_HINT}"


def consent_view(token: OfflineToken) -> ConsentWidget | StaticView:
    """The live consent widget, or without ipywidgets a consent link that says what to install.

    Example::

        display(consent_view(tok))
    """
    if have_ipywidgets():
        return ConsentWidget(token)
    url = token.consent_url or ""
    label = f" ({token.label})" if token.label else ""
    body = (
        f"<b>Offline access</b>{html.escape(label)} {badge_html('pending')}"
        f"<div style='margin:6px 0'>{consent_link_html(url)}</div>"
        "Click the button, sign in at the provider and allow offline access; then call "
        "<code>tok.wait()</code>."
    )
    text = (
        f"Offline access {token.id}{label}: pending\nGrant offline access: {url}\n"
        "Then call .wait() on the returned token."
    )
    return StaticView(body, text)


def _fresh_info(record: OfflineToken | Task) -> tuple[dict[str, Any], str]:
    """The record as the server sees it now, or the last known state and why it is not fresh."""
    try:
        return record.refresh(), ""
    except OfflineTokenClientError as exc:
        return record.info, f"cannot read the status: {exc.message}"


def token_facts(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """The facts a token view lists (label: value), empty ones left out."""
    raw_health = info.get("health")
    health: dict[str, Any] = raw_health if isinstance(raw_health, dict) else {}
    rows = [
        ("last refresh", info.get("last_refresh_at") or "never"),
        ("refreshes", info.get("refresh_count", 0)),
        ("health", health.get("level", "")),
        ("detail", health.get("detail") or info.get("last_error") or ""),
        ("action", health.get("action", "")),
    ]
    return [(k, v) for k, v in rows if v not in ("", None)]


def token_view(token: OfflineToken) -> TokenStatusWidget | StaticView:
    """The live token widget, or without ipywidgets a snapshot of its status and facts.

    Example::

        display(token_view(tok))
    """
    if have_ipywidgets():
        return TokenStatusWidget(token)
    info, problem = _fresh_info(token)
    status = str(info.get("status") or "unknown")
    label = str(info.get("label") or "") or "offline token"
    facts = token_facts(info) + ([("error", problem)] if problem else [])
    body = (
        f"<b>{html.escape(label)}</b> <code>{html.escape(token.id)}</code> {badge_html(status)}"
        "<br>" + "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in facts)
    )
    lines = [f"Offline token {token.id} ({label}): {status}"]
    lines += [f"{k}: {v}" for k, v in facts]
    return StaticView(body, "\n".join(lines))


def task_view(task: Task, *, poll_interval: float = 1.0) -> TaskProgressWidget | StaticView:
    """The live task widget, or without ipywidgets a snapshot of its status and progress.

    Example::

        display(task_view(task))
    """
    if have_ipywidgets():
        return TaskProgressWidget(task, poll_interval=poll_interval)
    info, problem = _fresh_info(task)
    status = str(info.get("status") or "unknown")
    try:
        progress = min(100.0, max(0.0, float(info.get("progress") or 0.0)))
    except (TypeError, ValueError):
        progress = 0.0
    message = str(info.get("message") or "")
    result = info.get("result")
    outcome = str(info.get("error") or problem or "")
    if not outcome and result not in (None, ""):
        outcome = f"result: {result}"
    text = f"Task {task.id} ({task.name}): {status} {progress:.0f} %"
    text += f" - {message}" if message else ""
    body = (
        f"<b>{html.escape(task.name or 'task')}</b> <code>{html.escape(task.id)}</code> "
        f'{badge_html(status)}<br><progress max="100" value="{progress:.0f}"></progress> '
        f"{progress:.0f} % {html.escape(message)}"
        + (f"<br>{html.escape(outcome)}" if outcome else "")
    )
    return StaticView(body, text + (f"\n{outcome}" if outcome else ""))


class Poller:
    """Run ``step()`` every ``interval`` seconds in a daemon thread until it returns True.

    An exception from ``step`` goes to ``on_error`` and the interval backs off (up to 30 s).

    Example::

        poller = Poller(widget.poll_once, 1.0, on_error=print)
        poller.start()
    """

    def __init__(
        self,
        step: Callable[[], bool],
        interval: float,
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._step = step
        self.interval = interval
        self._on_error = on_error
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling (a no-op while already polling)."""
        if self.running:
            return
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(target=self._run, name="offline-token-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current step."""
        self._stop.set()

    def _run(self) -> None:
        pause = self.interval
        try:
            while not self._stop.is_set():
                try:
                    if self._step():
                        return
                    pause = self.interval
                except Exception as exc:
                    if self._on_error is not None:
                        self._on_error(exc)
                    pause = min(MAX_BACKOFF, max(pause, 0.1) * 2)
                self._stop.wait(pause)
        finally:
            self.finished.set()


def _client_message(exc: Exception) -> str:
    if isinstance(exc, OfflineTokenClientError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def _hidden(widget: Any, hidden: bool) -> None:
    widget.layout.display = "none" if hidden else None


class _View(HasTraits):
    """Shared plumbing: the ipywidgets box, the poller and display delegation."""

    box: Any
    _poller: Poller

    def poll_once(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _poll_error(self, exc: Exception) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _make_poller(self, interval: float) -> None:
        self._poller = Poller(self.poll_once, interval, on_error=self._poll_error)

    @property
    def polling(self) -> bool:
        """True while the background thread is polling the server."""
        return self._poller.running

    def start(self) -> None:
        """Start (or restart) live updates."""
        self._poller.start()

    def stop(self) -> None:
        """Stop live updates."""
        self._poller.stop()

    def wait_until_settled(self, timeout: float | None = None) -> bool:
        """Block until polling has stopped by itself (final state reached); False on timeout."""
        return self._poller.finished.wait(timeout)

    def close(self) -> None:
        """Stop polling and close the widgets."""
        self.stop()
        self.box.close()

    def text_summary(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        render = getattr(self.box, "_repr_mimebundle_", None)
        bundle = dict(render(**kwargs) or {}) if callable(render) else {}
        # Frontends without widget support (and nbclient readers) still get the facts.
        bundle["text/plain"] = self.text_summary()
        return bundle


class ConsentWidget(_View):
    """The consent view: "Grant offline access" link, live status badge, error and Retry.

    Example::

        w = ConsentWidget(tok)
        display(w)
    """

    status = Unicode(
        "pending", help="The entry's status: pending, active, failed, revoked, expired."
    )
    error = Unicode(
        "", help="Why the consent failed (or why the status cannot be read); '' if fine."
    )
    persistent_token_id = Unicode("", help="The entry being watched (changes after a Retry).")
    consent_url = Unicode("", help="Where the user grants offline access at the provider.")

    def __init__(self, token: OfflineToken, *, poll_interval: float = 1.0, autostart: bool = True):
        import ipywidgets as w

        super().__init__()
        self.token = token
        self.title = w.HTML(f"<b>Offline access</b> {html.escape(token.label)}".rstrip())
        self.link = w.HTML()
        self.badge = w.HTML()
        self.detail = w.HTML()
        self.error_text = w.HTML()
        self.retry_button = w.Button(
            description="Request again",
            icon="refresh",
            button_style="warning",
            tooltip="Start a new consent with the same label and scopes",
        )
        self.retry_button.on_click(self._on_retry)
        self.box = w.VBox(
            [
                w.HBox([self.title, self.badge]),
                self.link,
                self.detail,
                self.error_text,
                self.retry_button,
            ]
        )
        self._make_poller(poll_interval)
        self._show_entry()
        self._render_status()
        self._render_error()
        if autostart and self.status == "pending":
            self.start()

    def _show_entry(self) -> None:
        self.persistent_token_id = self.token.id
        self.consent_url = self.token.consent_url or ""
        self.link.value = consent_link_html(self.consent_url) if self.consent_url else ""
        self.error = str(self.token.info.get("last_error") or "")
        self.status = self.token.known_status if self.token.known_status != "unknown" else "pending"

    def text_summary(self) -> str:
        """Plain-text version: status and the consent URL while pending."""
        text = f"Offline access {self.persistent_token_id}: {self.status}"
        if self.status == "pending" and self.consent_url:
            text += f"\nGrant offline access: {self.consent_url}"
        if self.error:
            text += f"\nError: {self.error}"
        return text

    def poll_once(self) -> bool:
        """Read the entry's status once; True when it no longer changes by itself."""
        info = self.token.refresh()
        self.error = str(info.get("last_error") or "") if info.get("status") in TOKEN_DEAD else ""
        self.status = str(info.get("status") or "unknown")
        return self.status in TOKEN_DONE

    def _poll_error(self, exc: Exception) -> None:
        self.error = f"cannot read the status: {_client_message(exc)}"

    @observe("status")
    def _on_status(self, change: Any) -> None:
        self._render_status()

    @observe("error")
    def _on_error(self, change: Any) -> None:
        self._render_error()

    def _render_status(self) -> None:
        status = self.status
        self.badge.value = badge_html(status)
        _hidden(self.link, status != "pending")
        _hidden(self.retry_button, status not in TOKEN_DEAD)
        self.detail.value = {
            "pending": "Click the button, sign in at the provider and allow offline access; "
            "this badge turns green by itself.",
            "active": "Offline access granted. Use <code>tok.access_token()</code> or "
            "<code>tok.auth</code>.",
            "failed": "Consent failed. Read the error below, then request again.",
            "expired": "Nobody granted access before the consent expired. Request again.",
            "revoked": "This offline token was revoked. Request again to get a new one.",
        }.get(status, "")

    def _render_error(self) -> None:
        self.error_text.value = (
            f'<span style="color:#b71c1c">{html.escape(self.error)}</span>' if self.error else ""
        )

    def _on_retry(self, _button: Any = None) -> None:
        self.retry_button.disabled = True
        try:
            self.token.request_again()
        except OfflineTokenClientError as exc:
            self.error = f"could not request again: {exc.message}"
            return
        finally:
            self.retry_button.disabled = False
        self._show_entry()
        self.error = ""
        self.start()


class TokenStatusWidget(_View):
    """A token's status: label, id, badge, health, last refresh; live while pending.

    Example::

        display(tok.widget())
    """

    status = Unicode("unknown", help="The entry's status as last read from the server.")
    detail = Unicode("", help="Health detail or last error from the server.")
    _facts: list[tuple[str, Any]]

    def __init__(self, token: OfflineToken, *, poll_interval: float = 1.0, autostart: bool = True):
        import ipywidgets as w

        super().__init__()
        self.token = token
        self.title = w.HTML()
        self.badge = w.HTML()
        self.facts = w.HTML()
        # It only re-reads the status; refreshing the token itself is the server's job.
        self.reload_button = w.Button(
            description="Reload status",
            icon="redo",
            tooltip="Read this token's status from the server again (does not refresh the token)",
        )
        self.reload_button.on_click(lambda _b: self._safe_poll())
        self.box = w.VBox([w.HBox([self.title, self.badge, self.reload_button]), self.facts])
        self._make_poller(poll_interval)
        self._apply(token.info)
        if autostart:
            self.start()

    def text_summary(self) -> str:
        """Plain-text version of the widget: status, then the facts (refreshes, health, ...)."""
        lines = [f"Offline token {self.token.id} ({self.token.label}): {self.status}"]
        return "\n".join(lines + [f"{k}: {v}" for k, v in self._facts])

    def _apply(self, info: dict[str, Any]) -> None:
        facts = self._facts = token_facts(info)
        self.detail = str(dict(facts).get("detail") or "")
        self.status = str(info.get("status") or "unknown")
        label = html.escape(str(info.get("label") or ""))
        self.title.value = (
            f"<b>{label or 'offline token'}</b> <code>{html.escape(self.token.id)}</code>"
        )
        self.facts.value = "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in facts)

    @observe("status")
    def _on_status(self, change: Any) -> None:
        self.badge.value = badge_html(self.status)

    def poll_once(self) -> bool:
        """Read the entry once; True when its status no longer changes by itself."""
        self._apply(self.token.refresh())
        return self.status != "pending"

    def _safe_poll(self) -> None:
        try:
            self.poll_once()
        except OfflineTokenClientError as exc:
            self._poll_error(exc)

    def _poll_error(self, exc: Exception) -> None:
        self.detail = f"cannot read the status: {_client_message(exc)}"
        self.facts.value = f'<span style="color:#b71c1c">{html.escape(self.detail)}</span>'


class TaskProgressWidget(_View):
    """A task's live view: progress bar, status badge, message and a Cancel button.

    Example::

        display(task.widget())
    """

    status = Unicode("unknown", help="The task's status as last read from the server.")
    progress = Float(0.0, min=0.0, max=100.0, help="Percent done, 0-100.")
    message = Unicode("", help="The task's latest progress message.")
    error = Unicode("", help="The task's error, or why the widget could not update.")
    cancelled_here = Bool(False, help="True once this widget's Cancel button cancelled the task.")

    def __init__(self, task: Task, *, poll_interval: float = 1.0, autostart: bool = True):
        import ipywidgets as w

        super().__init__()
        self.task = task
        self.title = w.HTML(
            f"<b>{html.escape(task.name or 'task')}</b> <code>{html.escape(task.id)}</code>"
        )
        self.badge = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=100.0, description="", bar_style="info")
        self.percent = w.HTML()
        self.message_text = w.HTML()
        self.outcome = w.HTML()
        self.cancel_button = w.Button(
            description="Cancel", icon="stop", button_style="danger", tooltip="Cancel this task"
        )
        self.cancel_button.on_click(self._on_cancel)
        self.box = w.VBox(
            [
                w.HBox([self.title, self.badge]),
                w.HBox([self.bar, self.percent, self.cancel_button]),
                self.message_text,
                self.outcome,
            ]
        )
        self._make_poller(poll_interval)
        self._apply(task.info)
        if autostart and self.status not in TASK_DONE:
            self.start()

    def text_summary(self) -> str:
        """Plain-text version of the widget."""
        text = f"Task {self.task.id} ({self.task.name}): {self.status} {self.progress:.0f} %"
        return text + (f" - {self.message}" if self.message else "")

    def _apply(self, info: dict[str, Any]) -> None:
        try:
            progress = float(info.get("progress") or 0.0)
        except (TypeError, ValueError):
            progress = 0.0
        self.progress = min(100.0, max(0.0, progress))
        self.message = str(info.get("message") or "")
        self.error = str(info.get("error") or "")
        result = info.get("result")
        self.status = str(info.get("status") or "unknown")
        self.outcome.value = (
            f'<span style="color:#b71c1c">{html.escape(self.error)}</span>'
            if self.error
            else (f"result: {html.escape(str(result))}" if result not in (None, "") else "")
        )

    @observe("status")
    def _on_status(self, change: Any) -> None:
        status = self.status
        self.badge.value = badge_html(status)
        self.cancel_button.disabled = status in TASK_DONE
        _hidden(self.cancel_button, status in TASK_DONE)  # a finished task has nothing to cancel
        self.bar.bar_style = {
            "completed": "success",
            "failed": "danger",
            "interrupted": "warning",
        }.get(status, "info")

    @observe("progress")
    def _on_progress(self, change: Any) -> None:
        self.bar.value = self.progress
        self.percent.value = f"{self.progress:.0f} %"

    @observe("message")
    def _on_message(self, change: Any) -> None:
        self.message_text.value = html.escape(self.message)

    def poll_once(self) -> bool:
        """Read the task once; True when it reached a final status."""
        self._apply(self.task.refresh())
        return self.status in TASK_DONE

    def _poll_error(self, exc: Exception) -> None:
        self.outcome.value = (
            f'<span style="color:#b71c1c">cannot read the task: '
            f"{html.escape(_client_message(exc))}</span>"
        )

    def _on_cancel(self, _button: Any = None) -> None:
        self.cancel_button.disabled = True
        try:
            info = self.task.cancel().info
        except OfflineTokenClientError as exc:
            self.cancel_button.disabled = False
            self.outcome.value = (
                f'<span style="color:#b71c1c">cancel failed: {html.escape(exc.message)}</span>'
            )
            return
        self.cancelled_here = True
        self._apply(info)
