"""The TaskStore contract: what the task service relies on, for every backend.

Parametrised over ``store_helpers.BACKENDS``; each backend's task store is built beside its
token store (SQLite: the same vault file), because a task reads its linked entry's status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from store_helpers import BACKENDS, make_active, make_pending

from jupyter_offline_token.paging import Cursor
from jupyter_offline_token.stores import TaskStore, TokenStore
from jupyter_offline_token.tasks.models import (
    CANCELLED,
    COMMAND,
    COMPLETED,
    INTERRUPTED,
    KERNEL,
    RUNNING,
    TASK_FAILED,
    TASK_PENDING,
    TaskRecord,
)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
def tokens(backend: Any, jp_asyncio_loop: Any) -> Iterator[TokenStore]:
    store = backend.token_store()
    jp_asyncio_loop.run_until_complete(store.open())
    yield store
    jp_asyncio_loop.run_until_complete(store.close())


@pytest.fixture
def store(backend: Any, tokens: TokenStore, jp_asyncio_loop: Any) -> Iterator[TaskStore]:
    tasks = backend.task_store(tokens)
    jp_asyncio_loop.run_until_complete(tasks.open())
    yield tasks
    jp_asyncio_loop.run_until_complete(tasks.close())


def task(owner: str = "alice", *, at: float = 1000.0, **fields: Any) -> TaskRecord:
    return TaskRecord(
        id=str(uuid.uuid4()),
        owner=owner,
        name=fields.pop("name", "train"),
        kind=fields.pop("kind", KERNEL),
        status=fields.pop("status", TASK_PENDING),
        created_at=at,
        updated_at=at,
        **fields,
    )


async def test_create_get_and_the_linked_entry_status(store: TaskStore, tokens: TokenStore) -> None:
    entry = await make_pending(tokens)
    created = await store.create(
        task(
            kind=COMMAND,
            description="d",
            command=["python", "x.py"],
            parameters={"n": 3},
            persistent_token_id=entry.id,
        )
    )
    assert (created.kind, created.command, created.parameters) == (
        COMMAND,
        ["python", "x.py"],
        {"n": 3},
    )
    assert created.token_status == "pending"
    assert await store.get(created.id) == created
    assert await store.get("no-such-task") is None
    await tokens.delete(entry.id)  # a task outlives its entry
    gone = await store.get(created.id)
    assert gone is not None and gone.token_status is None


async def test_list_and_pages_newest_first_by_owner_and_status(store: TaskStore) -> None:
    mine = [await store.create(task(at=float(n))) for n in range(5)]
    theirs = await store.create(task("bob", at=2.5))
    assert [t.id for t in await store.list(owner="alice")] == [t.id for t in reversed(mine)]
    assert [t.id for t in await store.list()][2] == theirs.id
    await store.update(mine[0].id, status=RUNNING)
    assert [t.id for t in await store.list(status=RUNNING)] == [mine[0].id]

    first = await store.list_page(owner="alice", limit=3)
    assert [t.id for t in first.items] == [mine[4].id, mine[3].id, mine[2].id]
    assert first.next_cursor is not None
    await store.create(task(at=100.0))  # newer: must not shift the next page
    rest = await store.list_page(owner="alice", limit=3, cursor=Cursor.decode(first.next_cursor))
    assert [t.id for t in rest.items] == [mine[1].id, mine[0].id] and rest.next_cursor is None
    only = await store.list_page(owner="alice", status=RUNNING, limit=3)
    assert [t.id for t in only.items] == [mine[0].id]
    with pytest.raises(ValueError):
        await store.list_page(limit=0)


async def test_update_with_expect_never_overwrites_a_racing_transition(store: TaskStore) -> None:
    created = await store.create(task())
    running = await store.update(
        created.id, expect=(TASK_PENDING,), status=RUNNING, started_at=1001.0, updated_at=1001.0
    )
    assert running is not None and (running.status, running.started_at) == (RUNNING, 1001.0)
    assert running.updated_at == 1001.0
    # Someone else already moved it on: the stale transition is refused, nothing changes.
    assert await store.update(created.id, expect=(TASK_PENDING,), status=CANCELLED) is None
    assert (await store.get(created.id)).status == RUNNING  # type: ignore[union-attr]
    assert await store.update("no-such-task", status=RUNNING) is None
    with pytest.raises(ValueError, match="cannot update"):
        await store.update(created.id, owner="mallory")
    with pytest.raises(ValueError, match="cannot update"):
        await store.update(created.id, name="renamed")


async def test_credentials_find_only_running_tasks(store: TaskStore) -> None:
    created = await store.create(task())
    await store.update(created.id, status=RUNNING, credential_hash="h1")
    found = await store.find_running_by_credential("h1")
    assert found is not None and found.id == created.id
    assert await store.find_running_by_credential("h2") is None
    await store.update(created.id, status=COMPLETED)
    assert await store.find_running_by_credential("h1") is None


async def test_for_tokens_is_owner_scoped_and_oldest_first(
    store: TaskStore, tokens: TokenStore
) -> None:
    entry = await make_active(tokens)
    other = await make_active(tokens, owner="bob")
    first = await store.create(task(at=1.0, persistent_token_id=entry.id))
    second = await store.create(task(at=2.0, persistent_token_id=entry.id))
    bobs = await store.create(task("bob", at=3.0, persistent_token_id=other.id))
    await store.create(task(at=4.0))
    linked = await store.for_tokens([entry.id, other.id])
    assert [t.id for t in linked] == [first.id, second.id, bobs.id]
    assert all(t.token_status == "active" for t in linked)
    assert [t.id for t in await store.for_tokens([entry.id, other.id], owner="bob")] == [bobs.id]
    assert await store.for_tokens([]) == []


async def test_delete_and_bounded_purge_of_finished_tasks(store: TaskStore) -> None:
    old = [await store.create(task(at=1.0)) for _ in range(4)]
    for n, record in enumerate(old):
        status = (COMPLETED, TASK_FAILED, CANCELLED, INTERRUPTED)[n]
        await store.update(record.id, status=status, updated_at=10.0)
    live = await store.create(task(at=1.0))
    await store.update(live.id, status=RUNNING, updated_at=10.0)
    recent = await store.create(task(at=1.0))
    await store.update(recent.id, status=COMPLETED, updated_at=5000.0)
    first = await store.purge(100.0, limit=3)
    assert len(first) == 3
    rest = await store.purge(100.0, limit=3)
    assert sorted(first + rest) == sorted(t.id for t in old)
    assert await store.purge(100.0, limit=3) == []
    assert await store.get(live.id) is not None and await store.get(recent.id) is not None
    assert await store.delete(recent.id) is True
    assert await store.delete(recent.id) is False
    with pytest.raises(ValueError):
        await store.purge(100.0, limit=0)


async def test_interrupt_leftovers_spares_live_runners(store: TaskStore) -> None:
    ours = await store.create(task())
    await store.update(ours.id, status=RUNNING, runner="dead", credential_hash="c1")
    queued = await store.create(task())
    await store.update(queued.id, queued_at=5.0, runner="dead")
    waiting = await store.create(task())  # pending but never queued: left alone
    theirs = await store.create(task())
    await store.update(theirs.id, status=RUNNING, runner="alive")

    ids = await store.interrupt_leftovers(
        2000.0, "the server stopped", still_supervised=lambda runner: runner == "alive"
    )
    assert sorted(ids) == sorted([ours.id, queued.id])
    for task_id in ids:
        got = await store.get(task_id)
        assert got is not None and got.status == INTERRUPTED
        assert (got.message, got.completed_at, got.runner, got.queued_at) == (
            "the server stopped",
            2000.0,
            None,
            None,
        )
    assert await store.find_running_by_credential("c1") is None  # its credential is dead
    assert (await store.get(waiting.id)).status == TASK_PENDING  # type: ignore[union-attr]
    assert (await store.get(theirs.id)).status == RUNNING  # type: ignore[union-attr]
