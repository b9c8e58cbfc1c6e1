"""Live token views: the consent widget (link, status, Retry) and the token status widget."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from traitlets import Unicode, observe

from ..errors import OfflineTokenClientError
from .badges import badge_html, consent_link_html
from .live import LiveView, client_message, set_hidden

if TYPE_CHECKING:
    from ..tokens import OfflineToken

TOKEN_DONE = frozenset({"active", "failed", "revoked", "expired"})
TOKEN_DEAD = frozenset({"failed", "revoked", "expired"})


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


class ConsentWidget(LiveView):
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
        self.error = f"cannot read the status: {client_message(exc)}"

    @observe("status")
    def _on_status(self, change: Any) -> None:
        self._render_status()

    @observe("error")
    def _on_error(self, change: Any) -> None:
        self._render_error()

    def _render_status(self) -> None:
        status = self.status
        self.badge.value = badge_html(status)
        set_hidden(self.link, status != "pending")
        set_hidden(self.retry_button, status not in TOKEN_DEAD)
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


class TokenStatusWidget(LiveView):
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
        # One grant now at the server (rate-limited there); the answer has no token.
        self.refresh_button = w.Button(
            description="Refresh now",
            icon="refresh",
            tooltip="Refresh this token at the provider now (at most once per "
            "min_refresh_interval)",
        )
        self.refresh_button.on_click(self._on_refresh)
        buttons = [self.title, self.badge, self.reload_button, self.refresh_button]
        self.box = w.VBox([w.HBox(buttons), self.facts])
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

    def _on_refresh(self, _button: Any = None) -> None:
        """ "Refresh now": the server's answer (metadata) is shown; a refusal (too soon, the
        provider down, a dead token) is shown in place of the facts, with its advice."""
        self.refresh_button.disabled = True
        try:
            self._apply(self.token.force_refresh())
        except OfflineTokenClientError as exc:
            self.detail = f"could not refresh: {client_message(exc)}"
            self.facts.value = f'<span style="color:#b71c1c">{html.escape(self.detail)}</span>'
        finally:
            self.refresh_button.disabled = False

    def _poll_error(self, exc: Exception) -> None:
        self.detail = f"cannot read the status: {client_message(exc)}"
        self.facts.value = f'<span style="color:#b71c1c">{html.escape(self.detail)}</span>'
