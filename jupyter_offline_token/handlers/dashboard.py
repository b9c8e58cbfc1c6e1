"""The dashboard page: ``GET <base_url>offline-token/``.

It renders one HTML shell; everything live on the page comes from ``dashboard.js`` calling the
REST API, so this handler holds no domain logic. The page's CSS and JS are served by the
ExtensionApp's own static handler (``static_paths = [STATIC_DIR]``), at
``<base_url>static/<extension name>/``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jinja2
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from .base import note_browser_request

PACKAGE_DIR = Path(__file__).resolve().parent.parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE_PATH = PACKAGE_DIR / "templates" / "dashboard.html"

PAGE_TITLE = "Offline tokens"
THEMES = frozenset({"light", "dark"})

# Stricter than jupyter_server's default (which only sets frame-ancestors): the page loads its
# own script and stylesheet and talks to its own server, nothing else.
_PAGE_CSP = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "object-src 'none'",
)


@functools.cache
def _dashboard_template() -> jinja2.Template:
    """Load the page template once; autoescaping covers text and attribute values."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE_PATH.read_text(encoding="utf-8"))


class DashboardHandler(ExtensionHandlerMixin, JupyterHandler):
    """Serve the dashboard shell to the authenticated Jupyter user."""

    auth_resource = "offline_token"

    @property
    def content_security_policy(self) -> str:
        if "Content-Security-Policy" in self.settings.get("headers", {}):
            # The admin set their own policy for the whole server: respect it.
            return super().content_security_policy
        return "; ".join((super().content_security_policy, *_PAGE_CSP))

    @web.authenticated
    @authorized
    async def get(self) -> None:
        note_browser_request(self)
        theme = self.get_query_argument("theme", "")
        html = _dashboard_template().render(
            page_title=PAGE_TITLE,
            base_url=self.base_url,
            css_url=self.static_url("dashboard.css"),
            js_url=self.static_url("dashboard.js"),
            xsrf_token=self.xsrf_token.decode("ascii"),
            theme=theme if theme in THEMES else "",
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        await self.finish(html)


def dashboard_handlers() -> list[tuple[str, type[web.RequestHandler]]]:
    """Routes for ``OfflineTokenApp.handlers`` (the ExtensionApp prefixes base_url)."""
    return [(r"/offline-token/?", DashboardHandler)]
