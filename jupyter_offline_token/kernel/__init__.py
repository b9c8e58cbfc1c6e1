"""Kernel-side helper: ask for offline access and use fresh access tokens from notebook code.

Talks to the Jupyter server only over the REST API (never imports server modules), so it works
in a kernel, in a task process and on another machine. ipywidgets and requests are optional and
imported only when used.

Example::

    from jupyter_offline_token.kernel import request_offline_token, create_task

    tok = request_offline_token(label="nightly")   # shows a "Grant offline access" button
    tok.wait()
    task = create_task("sync", token=tok)
    with task.running():
        httpx.get(api_url, auth=tok.auth)
        task.progress(1.0, "done")
"""

from __future__ import annotations

from .auth import OfflineTokenAuth
from .client import AccessToken, OfflineTokenClient, get_default_client, set_default_client
from .discovery import ServerInfo, find_server
from .errors import (
    AuthenticationFailed,
    ConsentExpired,
    ConsentPending,
    ConsentRequired,
    InvalidRequest,
    NotConfigured,
    NotFound,
    OfflineTokenClientError,
    ProviderUnavailable,
    RedirectURIUnknown,
    RefreshTooSoon,
    ServerNotFound,
    ServerUnreachable,
    TaskAlreadyRunning,
    TaskCancelled,
    TaskEnded,
    TaskError,
    TokenFailed,
    TokenInUse,
    TokenRevoked,
    TooManyPendingConsents,
)
from .tasks import Task, create_task, current_task
from .tokens import OfflineToken, list_tokens, request_offline_token
from .workers import WorkerCredential

__all__ = [
    "AccessToken",
    "AuthenticationFailed",
    "ConsentExpired",
    "ConsentPending",
    "ConsentRequired",
    "InvalidRequest",
    "NotConfigured",
    "NotFound",
    "OfflineToken",
    "OfflineTokenAuth",
    "OfflineTokenClient",
    "OfflineTokenClientError",
    "ProviderUnavailable",
    "RedirectURIUnknown",
    "RefreshTooSoon",
    "ServerInfo",
    "ServerNotFound",
    "ServerUnreachable",
    "Task",
    "TaskAlreadyRunning",
    "TaskCancelled",
    "TaskEnded",
    "TaskError",
    "TokenFailed",
    "TokenInUse",
    "TokenRevoked",
    "TooManyPendingConsents",
    "WorkerCredential",
    "create_task",
    "current_task",
    "find_server",
    "get_default_client",
    "list_tokens",
    "request_offline_token",
    "set_default_client",
]
