"""``OfflineToken`` and ``request_offline_token``: the handle a notebook keeps on a vault entry.

The kernel only ever holds the opaque ``persistent_token_id`` and short-lived access tokens; the
refresh/offline token stays encrypted in the server's vault.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .auth import OfflineTokenAuth
from .client import MAX_MIN_TTL, AccessToken, OfflineTokenClient, get_default_client
from .errors import ConsentExpired, ConsentPending, TokenFailed, TokenRevoked
from .remote import RemoteRecord

if TYPE_CHECKING:
    from .widgets import ConsentWidget, StaticView, TokenStatusWidget

# A 401 from the target forces a new token: ask for more life than the cached one has left, so
# the server (which serves its cache while >= min_ttl remains) must refresh. The margin covers the
# round trip between the server's clock reading and ours.
RENEW_MARGIN = 10


@dataclass(frozen=True)
class ConsentRequest:
    """What a consent was requested with, so the same request can be repeated after a failure."""

    label: str | None = None
    task_id: str | None = None
    scopes: list[str] | None = None
    keep_warm: bool | None = None
    return_to: str | None = field(default=None)


def in_notebook() -> bool:
    """True inside an IPython kernel that has a frontend to display widgets.

    Example::

        if in_notebook():
            display(tok.widget())
    """
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class OfflineToken(RemoteRecord):
    """A persistent offline token known by its id; hands out fresh access tokens.

    ``access_token()`` is cached in-process: a call while the cached access token still has
    ``min_ttl`` seconds left makes no HTTP request. ``status`` asks the server each time.

    Example::

        tok = request_offline_token(label="training")
        tok.wait()
        httpx.get(api_url, auth=tok.auth)
    """

    def __init__(
        self,
        persistent_token_id: str,
        *,
        client: OfflineTokenClient | None = None,
        info: dict[str, Any] | None = None,
        consent_url: str | None = None,
        consent_request: ConsentRequest | None = None,
    ) -> None:
        if not isinstance(persistent_token_id, str) or not persistent_token_id.strip():
            raise ValueError("persistent_token_id must be a non-empty string")
        self._id = persistent_token_id
        self._client = client
        self._info: dict[str, Any] = dict(info or {})
        self._info.setdefault("persistent_token_id", persistent_token_id)
        self.consent_url = consent_url
        self._consent_request = consent_request
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._auth: OfflineTokenAuth | None = None

    # --- identity and metadata -----------------------------------------------------------------

    @property
    def label(self) -> str:
        """The label given at consent time (last known)."""
        return str(self._info.get("label") or "")

    def refresh(self) -> dict[str, Any]:
        """Fetch the entry's metadata from the server and remember it.

        Example::

            tok.refresh()["health"]["detail"]
        """
        info = self.client.get_token(self._id)
        self._info = dict(info)
        return dict(info)

    @classmethod
    def from_id(
        cls, persistent_token_id: str, *, client: OfflineTokenClient | None = None
    ) -> OfflineToken:
        """Look up an existing entry (raises ``NotFound`` for an unknown id).

        Example::

            tok = OfflineToken.from_id("0b6f...")
        """
        token = cls(persistent_token_id, client=client)
        token.refresh()
        return token

    def __repr__(self) -> str:
        return f"<OfflineToken id={self._id!r} label={self.label!r} status={self.known_status!r}>"

    # --- waiting for consent -------------------------------------------------------------------
    def wait(self, timeout: float | None = None, *, poll_interval: float = 1.0) -> OfflineToken:
        """Poll until the consent is granted; raise if it failed, expired or was revoked.

        Raises ``ConsentPending`` when ``timeout`` seconds pass first.

        Example::

            tok.wait(timeout=600)
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status
            if status == "active":
                return self
            if status != "pending":
                raise self._dead_error(status)
            if deadline is not None and time.monotonic() >= deadline:
                where = f" at {self.consent_url}" if self.consent_url else ""
                raise ConsentPending(
                    f"offline access for {self._id} still not granted after {timeout:g} s: "
                    f"grant it{where}, then call wait() again"
                )
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)

    def _dead_error(self, status: str) -> Exception:
        detail = self._info.get("last_error") or ""
        suffix = f": {detail}" if detail else ""
        advice = "request offline access again with request_offline_token()"
        if status == "expired":
            return ConsentExpired(
                f"the consent for {self._id} expired before it was granted; {advice}"
            )
        if status == "revoked":
            return TokenRevoked(f"offline token {self._id} was revoked; {advice}")
        return TokenFailed(f"offline token {self._id} is {status}{suffix}; {advice}")

    def request_again(self) -> OfflineToken:
        """Start a new consent with the same label/task/scopes; this object follows the new entry.

        Used by the consent widget's Retry button. The old entry stays listed until revoked.

        Example::

            tok.request_again()
            tok.wait()
        """
        req = self._consent_request or ConsentRequest(
            label=self.label or None, task_id=self._info.get("task_id")
        )
        body = self.client.create_consent(
            label=req.label,
            task_id=req.task_id,
            scopes=req.scopes,
            keep_warm=req.keep_warm,
            return_to=req.return_to,
        )
        with self._lock:
            self._id = str(body["persistent_token_id"])
            self._cached = None
            self.consent_url = body.get("consent_url")
            self._info = {
                "persistent_token_id": self._id,
                "label": req.label or "",
                "task_id": req.task_id,
                "status": body.get("status", "pending"),
                "consent_expires_at": body.get("expires_at"),
            }
        self._consent_request = req
        return self

    # --- access tokens -------------------------------------------------------------------------
    def access_token(self, min_ttl: float = 30) -> str:
        """A fresh access token string with at least ``min_ttl`` seconds left.

        Cached in-process: no HTTP request while the cached one is fresh enough. Never print it.

        Example::

            headers = {"Authorization": f"Bearer {tok.access_token()}"}
        """
        return self.access_token_info(min_ttl).value

    def _fresh_cached(self, min_ttl: float) -> AccessToken | None:
        cached = self._cached
        if cached is not None and cached.remaining() >= min_ttl:
            return cached
        return None

    def access_token_info(self, min_ttl: float = 30) -> AccessToken:
        """Like :meth:`access_token` but returns the :class:`AccessToken` (expiry, scope).

        Example::

            print(f"expires in {tok.access_token_info().remaining():.0f} s")
        """
        cached = self._fresh_cached(min_ttl)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._fresh_cached(min_ttl)
            if cached is not None:
                return cached
            fresh = self.client.access_token(self._id, min_ttl=min_ttl)
            self._store(fresh)
            return fresh

    def _store(self, fresh: AccessToken) -> None:
        self._cached = fresh
        self._info["status"] = "active"  # the server only hands out tokens of active entries

    def _renew_min_ttl(self, stale: AccessToken) -> int:
        return min(MAX_MIN_TTL, math.ceil(max(stale.remaining(), 0.0)) + RENEW_MARGIN)

    def renew_access_token(self, stale: AccessToken) -> AccessToken:
        """A different access token than ``stale`` (after the target rejected it with a 401).

        Example::

            fresh = tok.renew_access_token(tok.access_token_info())
        """
        with self._lock:
            current = self._cached
            if current is not None and current.value != stale.value and current.remaining() > 0:
                return current  # another caller already renewed it
            fresh = self.client.access_token(self._id, min_ttl=self._renew_min_ttl(stale))
            self._store(fresh)
            return fresh

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._lock:
            lock = self._async_locks.get(loop)
            if lock is None:
                lock = self._async_locks[loop] = asyncio.Lock()
            return lock

    async def aaccess_token_info(self, min_ttl: float = 30) -> AccessToken:
        """Async twin of :meth:`access_token_info` (no HTTP on a cached call).

        Example::

            token = (await tok.aaccess_token_info()).value
        """
        cached = self._fresh_cached(min_ttl)
        if cached is not None:
            return cached
        async with self._async_lock():
            cached = self._fresh_cached(min_ttl)
            if cached is not None:
                return cached
            fresh = await self.client.aaccess_token(self._id, min_ttl=min_ttl)
            self._store(fresh)
            return fresh

    async def aaccess_token(self, min_ttl: float = 30) -> str:
        """Async twin of :meth:`access_token`.

        Example::

            token = await tok.aaccess_token()
        """
        return (await self.aaccess_token_info(min_ttl)).value

    async def arenew_access_token(self, stale: AccessToken) -> AccessToken:
        """Async twin of :meth:`renew_access_token`.

        Example::

            fresh = await tok.arenew_access_token(stale)
        """
        async with self._async_lock():
            current = self._cached
            if current is not None and current.value != stale.value and current.remaining() > 0:
                return current
            fresh = await self.client.aaccess_token(self._id, min_ttl=self._renew_min_ttl(stale))
            self._store(fresh)
            return fresh

    @property
    def auth(self) -> OfflineTokenAuth:
        """Auth for ``httpx`` (sync and async) and ``requests``, retrying once on a 401.

        Example::

            httpx.get(url, auth=tok.auth)
            requests.get(url, auth=tok.auth)
        """
        if self._auth is None:
            self._auth = OfflineTokenAuth(self)
        return self._auth

    def force_refresh(self) -> dict[str, Any]:
        """Ask the server to refresh this token now (one grant at the provider) and return the
        entry's metadata after it; the next ``access_token()`` gets the new access token.

        Raises ``RefreshTooSoon`` (``retry_after``) when the token was refreshed less than the
        server's ``min_refresh_interval`` ago. (``refresh()`` only re-reads the metadata.)

        Example::

            tok.force_refresh()["last_refresh_at"]
        """
        info = self.client.refresh_token(self._id)
        with self._lock:
            self._cached = None
            self._info = dict(info)
        return dict(info)

    def clear_cache(self) -> None:
        """Forget the cached access token here and in the server process (nothing is revoked):
        the next ``access_token()`` asks the server, which reads its vault and may refresh.

        Example::

            tok.clear_cache()
        """
        with self._lock:
            self._cached = None
        self.client.clear_access_token(self._id)

    # --- lifecycle -----------------------------------------------------------------------------
    def revoke(self, *, at_provider: bool = True, force: bool = False) -> dict[str, Any]:
        """Revoke at the provider (unless ``at_provider=False``) and delete the entry.

        ``force=True`` also cancels running tasks that use it. Returns the server's answer
        (``warning``/``shared_with`` when other entries share the grant).

        Example::

            print(tok.revoke().get("warning", "revoked"))
        """
        result = self.client.delete_token(self._id, revoke=at_provider, force=force)
        with self._lock:
            self._cached = None
            self._info["status"] = "revoked"
        return result

    # --- display -------------------------------------------------------------------------------
    def widget(self) -> TokenStatusWidget | StaticView:
        """A live status widget for this token.

        Without ipywidgets: a snapshot of the status that says what to install for live widgets.

        Example::

            display(tok.widget())
        """
        from .widgets import token_view

        return token_view(self)

    def consent_widget(self) -> ConsentWidget | StaticView:
        """The consent widget: "Grant offline access" link, live status badge, Retry on failure.

        Without ipywidgets: the consent link alone, and what to install for live widgets.

        Example::

            display(tok.consent_widget())
        """
        from .widgets import consent_view

        return consent_view(self)


def _show_consent(token: OfflineToken, display_in_notebook: bool) -> None:
    if display_in_notebook:
        from IPython.display import display

        display(token.consent_widget())
        return
    label = f" ({token.label})" if token.label else ""
    print(
        f"Open this URL to grant offline access{label}:\n  {token.consent_url}\n"
        f"persistent_token_id: {token.id}\n"
        "Then call .wait() on the returned token."
    )


def request_offline_token(
    label: str | None = None,
    task: Any = None,
    scopes: list[str] | None = None,
    *,
    keep_warm: bool | None = None,
    return_to: str | None = None,
    display: bool | None = None,
    client: OfflineTokenClient | None = None,
) -> OfflineToken:
    """Ask for offline access: creates a pending consent and shows how to grant it.

    In a notebook this displays the consent widget (a "Grant offline access" button that opens
    the provider in a new tab and a status badge that updates by itself); elsewhere it prints the
    consent URL. ``task`` (a :class:`~.tasks.Task` or task id) is linked once access is granted.
    ``display`` forces (``True``) or suppresses (``False``) the widget.

    Example::

        tok = request_offline_token(label="nightly run")
        tok.wait()
    """
    client = client or get_default_client()
    task_id = getattr(task, "id", task)
    if task_id is not None and not isinstance(task_id, str):
        raise TypeError("task must be a Task or a task id string")
    if scopes is not None and (
        isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes)
    ):
        raise TypeError("scopes must be a list of strings")
    request = ConsentRequest(
        label=label,
        task_id=task_id,
        scopes=list(scopes) if scopes is not None else None,
        keep_warm=keep_warm,
        return_to=return_to,
    )
    body = client.create_consent(
        label=label,
        task_id=task_id,
        scopes=request.scopes,
        keep_warm=keep_warm,
        return_to=return_to,
    )
    token = OfflineToken(
        str(body["persistent_token_id"]),
        client=client,
        info={
            "label": label or "",
            "task_id": task_id,
            "status": body.get("status", "pending"),
            "consent_expires_at": body.get("expires_at"),
        },
        consent_url=body.get("consent_url"),
        consent_request=request,
    )
    _show_consent(token, in_notebook() if display is None else display)
    return token


def list_tokens(
    status: str | None = None, *, client: OfflineTokenClient | None = None
) -> list[OfflineToken]:
    """The current user's offline tokens, newest first (optionally only one ``status``).

    Example::

        for tok in list_tokens(status="active"):
            print(tok.id, tok.label)
    """
    client = client or get_default_client()
    return [
        OfflineToken(str(entry["persistent_token_id"]), client=client, info=entry)
        for entry in client.list_tokens(status=status)
    ]
