"""Tasks: long-running work linked to an offline token (kernel, command, notebook, demo).

Importing this package is cheap (``run_notebook`` runs in task processes); the service is
imported by :func:`install`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import OfflineTokenApp
    from ..broker import TokenBroker
    from ..stores import TaskStore, TokenStore
    from .runners import TaskRunner
    from .service import TaskService


def install(app: OfflineTokenApp, vault: TokenStore, broker: TokenBroker) -> TaskService:
    """Build the task service from ``app``'s settings and register it with the broker.

    The task store is ``app.task_store_class`` and the runner ``app.task_runner_class``, both
    built with the app as parent (so they read their own config); the task store also gets
    ``token_store=vault``. The server's ``root_dir``, ``connection_url`` and token come from
    ``app.serverapp``. The broker tells the service about entry changes (``TokenEvents``) and
    asks it which tasks hold a token before a DELETE (``TokenUsage``); both are its
    :class:`~.token_links.TokenLinks`. The app starts (``await service.start()``) and stops it
    (``await service.stop()``, before the vault closes).
    """
    from .service import TaskService

    serverapp = app.serverapp
    assert serverapp is not None

    def server_secrets() -> list[str]:
        provider = getattr(serverapp, "identity_provider", None)
        return [str(getattr(provider, "token", "") or "")]

    store_class: type[TaskStore] = app.task_store_class
    runner_class: type[TaskRunner] = app.task_runner_class
    service = TaskService(
        vault,
        broker,
        store=store_class(parent=app, token_store=vault),
        root_dir=serverapp.root_dir,
        server_url=lambda: str(serverapp.connection_url),
        state_dir=Path(app.vault_path).expanduser().parent / "tasks",
        settings=app,
        server_secrets=server_secrets,
        runner=runner_class(parent=app),
    )
    broker.add_listener(service.links)
    broker.use_token_usage(service.links)
    return service
