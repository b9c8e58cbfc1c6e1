"""Views without ipywidgets: a one-time HTML/text snapshot that says what to install, and the
``*_view`` factories that pick the live widget when ipywidgets is importable."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from ..errors import OfflineTokenClientError
from .badges import badge_html, consent_link_html
from .tasks import TaskProgressWidget
from .tokens import ConsentWidget, TokenStatusWidget, token_facts

if TYPE_CHECKING:
    from ..tasks import Task
    from ..tokens import OfflineToken

#: Shown wherever a live widget cannot be built because ipywidgets is not installed.
INSTALL_HINT = "For live widgets, install ipywidgets: pip install 'jupyter-offline-token[kernel]'"


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
