"""The provider's redirect target: finishes a consent and answers with a small HTML page."""

from __future__ import annotations

import html
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..consent import ConsentFailed, ConsentFailure
from ..errors import OfflineTokenError
from ..models import TokenRecord
from .base import AUTH_RESOURCE
from .errors import http_status

_AGAIN = "Request offline access again from your notebook or the dashboard."
_USED = "Each link works once. Request offline access again if you need a new token."
_RETRY = "Request offline access again; if it keeps failing, tell your administrator."

# The page for each way a consent can fail: HTTP status and the hint that says what to do.
CONSENT_PAGES: dict[ConsentFailure, tuple[int, str]] = {
    ConsentFailure.MISSING_STATE: (400, "Start again from your notebook or the dashboard."),
    ConsentFailure.UNKNOWN_STATE: (400, _AGAIN),
    ConsentFailure.FOREIGN_STATE: (
        403,
        "Sign in to Jupyter as the user who asked for offline access.",
    ),
    ConsentFailure.STATE_USED: (409, _USED),
    ConsentFailure.EXPIRED: (
        410,
        "Request offline access again and complete it within the time limit.",
    ),
    ConsentFailure.MISSING_CODE: (
        400,
        "Try the consent link again; if it keeps happening, tell your administrator.",
    ),
    ConsentFailure.DECRYPT_FAILED: (
        503,
        "The vault's encryption key changed; request offline access again.",
    ),
    ConsentFailure.DENIED: (403, "Request offline access again and choose Allow at the provider."),
    ConsentFailure.PROVIDER_ERROR: (502, _RETRY),
    ConsentFailure.CODE_REJECTED: (400, _AGAIN),
    ConsentFailure.CLIENT_REJECTED: (
        502,
        "Tell your administrator: the provider rejected this server's client configuration.",
    ),
    ConsentFailure.EXCHANGE_FAILED: (502, _RETRY),
    ConsentFailure.INVALID_ID_TOKEN: (
        502,
        "Tell your administrator: the issuer or client configuration may be wrong.",
    ),
    ConsentFailure.PROVIDER_UNAVAILABLE: (
        503,
        "Wait a moment, then request offline access again.",
    ),
    ConsentFailure.NO_REFRESH_TOKEN: (
        502,
        "Your administrator must allow the offline_access scope for this client.",
    ),
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>
  :root {{ color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; }}
  body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 4rem auto;
         padding: 0 1rem; }}
  h1 {{ font-size: 1.4rem; color: var(--{tone}); }}
  code {{ font-size: .95em; padding: .1em .3em; border-radius: 4px;
          background: color-mix(in srgb, currentColor 10%, transparent); }}
  .hint {{ opacity: .85; }}
</style>
</head>
<body>
<main>
<h1 data-testid="callback-title">{title}</h1>
<p data-testid="callback-message">{message}</p>
{details}
<p class="hint">{hint}</p>
<p><a href="{dashboard}">Open the offline-token dashboard</a></p>
</main>
</body>
</html>
"""


class CallbackHandler(ExtensionHandlerMixin, JupyterHandler):
    """``GET offline-token/callback?code=&state=`` (or ``?error=...&state=``)."""

    auth_resource = AUTH_RESOURCE

    @web.authenticated
    @authorized
    async def get(self) -> None:
        start_error = self.settings["offline_token_start_error"]()
        if start_error:
            self._page(
                503,
                "Offline access is not available",
                start_error,
                "Ask your administrator to fix the server configuration.",
                "bad",
                None,
            )
            return
        services = self.settings["offline_token_services"]
        owner = self.settings["offline_token_owner"](self.current_user)
        args = {k: self.get_query_argument(k, None) for k in ("state", "code", "error")}
        description = self.get_query_argument("error_description", None)
        try:
            broker = await services.ready()
            record = await broker.complete_consent(
                owner,
                state=args["state"],
                code=args["code"],
                error=args["error"],
                error_description=description,
            )
        except ConsentFailed as exc:
            status, hint = CONSENT_PAGES[exc.failure]
            self._page(
                status, "Offline access was not granted", exc.message, hint, "bad", exc.record
            )
            return
        except OfflineTokenError as exc:
            self._page(
                http_status(exc),
                "Offline access could not be completed",
                exc.message,
                "Try again in a moment, or ask your administrator.",
                "bad",
                None,
            )
            return
        if record.return_to:
            self.redirect(_with_id(record.return_to, record.id), status=303)
            return
        self._page(
            200,
            "Offline access granted",
            "You can close this tab: your notebook now has offline access.",
            "The refresh token is stored encrypted on the Jupyter server; "
            "your code asks for fresh access tokens by the id above.",
            "ok",
            record,
        )

    def _page(
        self,
        status: int,
        title: str,
        message: str,
        hint: str,
        tone: str,
        record: TokenRecord | None,
    ) -> None:
        details = ""
        if record is not None:
            rows = [("persistent_token_id", record.id)]
            if record.label:
                rows.append(("label", record.label))
            details = (
                "<dl>"
                + "".join(
                    f'<dt>{html.escape(k)}</dt><dd><code data-testid="callback-{k}">'
                    f"{html.escape(v)}</code></dd>"
                    for k, v in rows
                )
                + "</dl>"
            )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(
            PAGE.format(
                title=html.escape(title),
                message=html.escape(message),
                hint=html.escape(hint),
                details=details,
                tone=tone,
                dashboard=html.escape(f"{self.base_url}offline-token/"),
            )
        )


def _with_id(return_to: str, token_id: str) -> str:
    parts = urlsplit(return_to)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.append(("persistent_token_id", token_id))
    return urlunsplit(("", "", parts.path, urlencode(query), parts.fragment))
