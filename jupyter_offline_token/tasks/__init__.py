"""Tasks: long-running work linked to an offline token (kernel, command, notebook, demo).

Importing this package is cheap (``run_notebook`` runs in task processes); the service is
imported by :func:`install`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..services import Services
    from .service import TaskService


def install(app: Any, services: Services) -> TaskService:
    """Build the task service for ``app`` (an OfflineTokenApp) and connect it to the broker and
    the handlers. Idempotent: a second call returns the service already installed.

    Reads ``app.max_running_tasks``, ``app.task_cancel_grace`` and ``app.task_report_grace`` when
    the app has them, and the server's ``root_dir``, ``connection_url`` and token from
    ``app.serverapp``. The runner is ``app.task_runner_class`` when the app has that trait (else
    :class:`~.runners.LocalTaskRunner`), built with the app as parent so it reads its own config.
    The app still starts it (``await service.start()``) and stops it (``await service.stop()``,
    before the vault closes).
    """
    from .runners import LocalTaskRunner, TaskRunner
    from .service import TaskService

    existing = services.extras.get("tasks")
    if existing is not None:
        return existing
    serverapp = app.serverapp

    def server_secrets() -> list[str]:
        provider = getattr(serverapp, "identity_provider", None)
        return [str(getattr(provider, "token", "") or "")]

    runner_class: type[TaskRunner] = getattr(app, "task_runner_class", LocalTaskRunner)
    service = TaskService(
        services.vault,
        services.broker,
        root_dir=serverapp.root_dir,
        server_url=lambda: str(serverapp.connection_url),
        max_running_tasks=int(getattr(app, "max_running_tasks", 4)),
        cancel_grace=float(getattr(app, "task_cancel_grace", 10.0)),
        report_grace=float(getattr(app, "task_report_grace", 60.0)),
        server_secrets=server_secrets,
        runner=runner_class(parent=app),
    )
    broker = services.broker
    broker.tokens_in_use = service.tokens_in_use
    broker.on_activated.append(service.on_token_activated)
    broker.on_status_change.append(service.on_token_status_change)
    # Cancel a token's tasks before a forced DELETE revokes it (when the broker offers the hook).
    before_delete = getattr(broker, "before_force_delete", None)
    if isinstance(before_delete, list):
        before_delete.append(service.cancel_for_token)
    services.extras.update(
        {
            "tasks": service,
            "check_task_for_consent": service.check_task_for_consent,
            "linked_tasks": service.linked_tasks,
            "authenticate_task": service.authenticate,
        }
    )
    return service
