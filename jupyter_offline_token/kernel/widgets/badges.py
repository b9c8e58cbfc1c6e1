"""HTML shared by the live and the static views: status badges and the consent link."""

from __future__ import annotations

import html

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
