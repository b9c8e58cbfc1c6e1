"""REST handlers for tasks: CRUD, link, execute, cancel, progress reports, events and log."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..tasks.models import TERMINAL
from .base import OfflineTokenHandler, authenticated_or_task, forbidden
from .task_requests import CreateTask, LinkTask, PatchTask, status_filter
from .tokens import page_query

if TYPE_CHECKING:
    from ..tasks.service import TaskService


class TaskBaseHandler(OfflineTokenHandler):
    async def tasks(self) -> TaskService:
        await self.services.ready()
        return self.task_service


class TasksHandler(TaskBaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        status = status_filter(self.get_query_argument("status", None))
        limit, cursor = page_query(self)
        service = await self.tasks()
        page = await service.list_page(self.owner, status=status, limit=limit, cursor=cursor)
        self.write_json(
            {"tasks": [t.to_json() for t in page.items], "next_cursor": page.next_cursor}
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = CreateTask.parse(self.request.body or b"")
        service = await self.tasks()
        task = await service.create(
            self.owner,
            name=request.name,
            description=request.description,
            kind=request.kind,
            command=request.command,
            notebook=request.notebook,
            persistent_token_id=request.persistent_token_id,
            parameters=request.parameters,
        )
        self.write_json(task.to_json(), status=201)


class TaskHandler(TaskBaseHandler):
    @authenticated_or_task
    async def get(self, task_id: str) -> None:
        service = await self.tasks()
        self.write_json((await service.get(self.owner, task_id)).to_json())

    @authenticated_or_task
    async def patch(self, task_id: str) -> None:
        request = PatchTask.parse(self.request.body or b"")
        principal = self.task_principal
        if principal is not None and principal.worker and request.ends_task:
            raise forbidden("a worker credential reports progress and message only")
        service = await self.tasks()
        task = await service.patch(
            self.owner,
            task_id,
            progress=request.progress,
            message=request.message,
            status=request.status,
            result=request.result,
            error=request.error,
            by_task=self.task_principal is not None,
        )
        self.write_json(task.to_json())

    @web.authenticated
    @authorized
    async def delete(self, task_id: str) -> None:
        service = await self.tasks()
        await service.delete(self.owner, task_id)
        self.no_content()


class TaskWorkerCredentialsHandler(TaskBaseHandler):
    """A worker credential for the processes a running task spreads to (Dask workers): asked by
    the task itself or by its owner; never by a worker (see ``tasks/worker_credentials.py``)."""

    @authenticated_or_task
    async def post(self, task_id: str) -> None:
        self.body({}, allow_empty=True)
        service = await self.tasks()
        answer = await service.worker_credential(self.owner, task_id, self.task_principal)
        self.write_json(answer, status=201)


class TaskLinkHandler(TaskBaseHandler):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        request = LinkTask.parse(self.request.body or b"")
        service = await self.tasks()
        task = await service.link(self.owner, task_id, request.persistent_token_id)
        self.write_json(task.to_json())


class TaskExecuteHandler(TaskBaseHandler):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        self.body({}, allow_empty=True)
        service = await self.tasks()
        task = await service.execute(self.owner, task_id)
        self.write_json({"status": "executing", "task": task.to_json()}, status=202)


class TaskCancelHandler(TaskBaseHandler):
    @web.authenticated
    @authorized
    async def post(self, task_id: str) -> None:
        self.body({}, allow_empty=True)
        service = await self.tasks()
        task = await service.cancel(self.owner, task_id)
        self.write_json(task.to_json())


class TaskLogHandler(TaskBaseHandler):
    @web.authenticated
    @authorized
    async def get(self, task_id: str) -> None:
        service = await self.tasks()
        self.write_json({"lines": await service.log_lines(self.owner, task_id)})


class TaskEventsHandler(TaskBaseHandler):
    """Server-sent events: the current state first, then every change; ends after a terminal
    state. A ``: keepalive`` comment every ``keepalive_interval`` seconds keeps proxies open."""

    _closed: asyncio.Event | None = None

    def on_connection_close(self) -> None:
        if self._closed is not None:
            self._closed.set()
        super().on_connection_close()

    @authenticated_or_task
    async def get(self, task_id: str) -> None:
        service = await self.tasks()
        await service.get(self.owner, task_id)  # 404 before any stream starts
        self._closed = asyncio.Event()
        queue = service.events.subscribe(task_id)
        try:
            record = await service.get(self.owner, task_id)
            current = record.to_json()
            self.set_status(200)
            self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            self.set_header("X-Accel-Buffering", "no")
            await self._send(current)
            await self._follow(service, queue, current, since=record.updated_at)
        except StreamClosedError:
            return
        finally:
            service.events.unsubscribe(task_id, queue)
        if not self._closed.is_set():
            with contextlib.suppress(StreamClosedError):
                await self.finish(set_content_type="text/event-stream; charset=UTF-8")

    async def _follow(
        self,
        service: TaskService,
        queue: asyncio.Queue[dict[str, Any]],
        last: dict[str, Any],
        *,
        since: float,
    ) -> None:
        """Send queued changes until a terminal state; skip those older than ``since`` (the
        state already sent was read after they were queued)."""
        assert self._closed is not None
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while last["status"] not in TERMINAL:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {getter, closed},
                    timeout=service.keepalive_interval,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter not in done:
                    getter.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await getter
                if closed in done:
                    return
                if getter.cancelled():
                    self.write(": keepalive\n\n")
                    await self.flush()
                    continue
                event = getter.result()
                if event.get("_closed"):
                    return  # the service is stopping
                if event["_updated_at"] < since:
                    continue
                event = {k: v for k, v in event.items() if not k.startswith("_")}
                if event == last:
                    continue
                await self._send(event)
                last = event
        finally:
            closed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await closed

    async def _send(self, task: dict[str, Any]) -> None:
        self.write(f"event: task\ndata: {json.dumps(task)}\n\n")
        await self.flush()
