"""Tornado handlers. Routes are relative to the server's base_url."""

from __future__ import annotations

from typing import Any

ID = r"(?P<token_id>[^/]+)"
TASK_ID = r"(?P<task_id>[^/]+)"


def routes() -> list[tuple[str, Any]]:
    from .callback import CallbackHandler
    from .openapi import OpenAPIHandler, load_spec
    from .tasks import (
        TaskCancelHandler,
        TaskEventsHandler,
        TaskExecuteHandler,
        TaskHandler,
        TaskLinkHandler,
        TaskLogHandler,
        TasksHandler,
        TaskWorkerCredentialsHandler,
    )
    from .tokens import (
        AccessTokenHandler,
        AuditHandler,
        ConsentsHandler,
        HealthHandler,
        TokenHandler,
        TokenRefreshHandler,
        TokensHandler,
    )

    load_spec()  # read the package's openapi.json now, not on the event loop
    api = r"/api/offline-token"
    return [
        (rf"{api}/openapi.json", OpenAPIHandler),
        (rf"{api}/consents", ConsentsHandler),
        (rf"{api}/tokens", TokensHandler),
        (rf"{api}/tokens/{ID}", TokenHandler),
        (rf"{api}/tokens/{ID}/access-token", AccessTokenHandler),
        (rf"{api}/tokens/{ID}/refresh", TokenRefreshHandler),
        (rf"{api}/tokens/{ID}/audit", AuditHandler),
        (rf"{api}/health", HealthHandler),
        (rf"{api}/tasks", TasksHandler),
        (rf"{api}/tasks/{TASK_ID}", TaskHandler),
        (rf"{api}/tasks/{TASK_ID}/link", TaskLinkHandler),
        (rf"{api}/tasks/{TASK_ID}/execute", TaskExecuteHandler),
        (rf"{api}/tasks/{TASK_ID}/cancel", TaskCancelHandler),
        (rf"{api}/tasks/{TASK_ID}/events", TaskEventsHandler),
        (rf"{api}/tasks/{TASK_ID}/log", TaskLogHandler),
        (rf"{api}/tasks/{TASK_ID}/worker-credentials", TaskWorkerCredentialsHandler),
        (r"/offline-token/callback", CallbackHandler),
    ]


def service_routes() -> list[tuple[str, Any]]:
    """The extra routes of the JupyterHub service (``jupyter-offline-token serve``): the one
    callback of every user, and the operators' health across users."""
    from .callback import CallbackHandler
    from .operator import OperatorHealthHandler

    return [
        (r"/callback", CallbackHandler),
        (r"/api/offline-token/operator/health", OperatorHealthHandler),
    ]
