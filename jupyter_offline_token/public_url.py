"""The public callback URL of this server: the ``redirect_uri`` a consent sends to the provider.

The provider sends the user's browser back there, so it must be the address the browser uses,
which is not always the address of the request that starts the consent: under JupyterHub a kernel
calls its server on the internal address (``http://127.0.0.1:<port>/user/alice/``), which the
browser cannot reach and the provider does not accept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlsplit

from . import rest_codes
from .errors import Conflict

CALLBACK_PATH = "offline-token/callback"
# As a JupyterHub service there is one callback for every user: <hub>/services/<name>/callback.
SERVICE_CALLBACK_PATH = "callback"
# What JupyterHub (4.1+) tells a single-user server: its base_url, and its public URL (empty
# unless the hub's public_url or subdomain_host is set).
ENV_HUB_PREFIX = "JUPYTERHUB_SERVICE_PREFIX"
ENV_HUB_PUBLIC_URL = "JUPYTERHUB_PUBLIC_URL"


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def browser_origin(headers: Mapping[str, str], host: str) -> str | None:
    """The origin a browser says it is on (``Origin``, else ``Referer``), when that origin is the
    host the request was sent to (same-origin); None for scripts and cross-site requests."""
    for name in ("Origin", "Referer"):
        origin = origin_of(headers.get(name) or "")
        if origin is not None and urlsplit(origin).netloc.lower() == host.lower():
            return origin
    return None


class CallbackURL:
    """Decides a consent's ``redirect_uri``, first match wins:

    a. ``OfflineTokenApp.redirect_uri`` when set;
    b. under JupyterHub, the public URL the hub gives this server (``$JUPYTERHUB_PUBLIC_URL``)
       with the server's base_url;
    c. the origin of the browser request that starts the consent or, for requests from kernels
       and scripts, of the last browser request this server saw (the dashboard, its API calls);
    d. under JupyterHub with none of the above: 409 ``redirect_uri_unknown``, rather than a URL
       the provider would refuse. Outside JupyterHub, the request's own scheme and host.
    """

    def __init__(
        self,
        base_url: str,
        *,
        configured: str = "",
        environ: Mapping[str, str] | None = None,
        callback_path: str = CALLBACK_PATH,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.configured = configured
        self.callback_path = callback_path
        prefix = environ.get(ENV_HUB_PREFIX, "")
        # The hub's variables describe this server only when their prefix is its base_url (a
        # `jupyter lab` started from a hub terminal inherits them but serves elsewhere).
        self.under_hub = bool(prefix) and (prefix if prefix.endswith("/") else prefix + "/") == (
            self.base_url
        )
        public = environ.get(ENV_HUB_PUBLIC_URL, "") if self.under_hub else ""
        self.hub_origin = origin_of(public) if public else None
        self.last_browser_origin: str | None = None

    def __repr__(self) -> str:
        return (
            f"CallbackURL(base_url={self.base_url!r}, under_hub={self.under_hub}, "
            f"hub_origin={self.hub_origin!r}, last_browser_origin={self.last_browser_origin!r})"
        )

    def note_browser_origin(self, origin: str | None) -> None:
        """Remember where the user's browser reaches this server (see :func:`browser_origin`)."""
        if origin is not None:
            self.last_browser_origin = origin

    def redirect_uri(self, *, request_origin: str, browser_origin: str | None = None) -> str:
        """The callback URL for a consent requested by a request from ``request_origin``
        (``scheme://host``); ``browser_origin`` when a browser sent it."""
        if self.configured:
            return self.configured
        if not self.under_hub:
            return f"{request_origin}{self.base_url}{self.callback_path}"
        origin = self.hub_origin or browser_origin or self.last_browser_origin
        if origin is None:
            raise Conflict(
                "this Jupyter server runs under JupyterHub and does not know its public URL, so "
                "the identity provider could not send the browser back to it. Set "
                "c.OfflineTokenApp.redirect_uri (or $JUPYTER_OFFLINE_TOKEN_REDIRECT_URI) to "
                f"<public hub URL>{self.base_url.lstrip('/')}{self.callback_path}, or "
                "c.JupyterHub.public_url in the hub's config; or open the offline-token "
                "dashboard of this server in your browser once, then try again",
                code=rest_codes.REDIRECT_URI_UNKNOWN,
            )
        return f"{origin}{self.base_url}{self.callback_path}"
