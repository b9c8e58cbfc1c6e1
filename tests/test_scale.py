"""Issue 9 section 4: costs that must not grow with the vault, and bounds.

Lists page by cursor (no gap, no duplicate while entries are added between page reads), health
counts come from SQL and it lists only entries that need attention, pending consents are capped
per owner, old history is purged in bounded batches by the sweep, and task files are private.
Vaults are filled fast through ``SQLiteTokenStore.run`` with bulk inserts (the approach of
``bench/vault_scale.py``), so every trigger and index the vault has is exercised.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import Api, grant

from jupyter_offline_token.kernel import InvalidRequest as ClientInvalidRequest
from jupyter_offline_token.kernel import TooManyPendingConsents as ClientTooManyPending
from jupyter_offline_token.kernel.errors import error_from_response
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI
from jupyter_offline_token.models import AuditEvent
from jupyter_offline_token.paging import Cursor
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.sqlite.sql import transaction

pytestmark = pytest.mark.timeout(120)

DAY = 86400.0


# --- fast fills --------------------------------------------------------------------------------
def _insert_tokens(conn: Any, rows: list[tuple[Any, ...]]) -> None:
    with transaction(conn):
        conn.executemany(
            "INSERT INTO tokens (id, owner, issuer, client_id, status, refresh_state, scopes, "
            "created_at, updated_at, label, consent_expires_at) "
            "VALUES (?, ?, 'http://idp.test', 'jupyter', ?, ?, 'openid', ?, ?, ?, ?)",
            rows,
        )


async def fill(
    vault: SQLiteTokenStore,
    owner: str,
    count: int,
    *,
    status: str = "active",
    refresh_state: str = "idle",
    created_at: float | None = None,
    updated_at: float | None = None,
    same_time: int = 1,
) -> list[str]:
    """Insert ``count`` entries, oldest first; ``same_time`` consecutive entries share one
    created_at (ties must be ordered too). Returns their ids, oldest first."""
    base = time.time() if created_at is None else created_at
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = []
    for index, token_id in enumerate(ids):
        created = base + (index // same_time) * 0.001
        rows.append(
            (
                token_id,
                owner,
                status,
                refresh_state,
                created,
                created if updated_at is None else updated_at,
                f"bulk {index}",
                created + 600 if status == "pending" else None,
            )
        )
    await vault.run(_insert_tokens, rows)
    return ids


async def fill_tasks(
    vault: SQLiteTokenStore,
    owner: str,
    count: int,
    *,
    status: str = "completed",
    updated_at: float | None,
    created_at: float | None = None,
) -> list[str]:
    base = time.time() if created_at is None else created_at
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = [
        (
            task_id,
            owner,
            f"task {i}",
            status,
            base + i * 0.001,
            base if updated_at is None else updated_at,
        )
        for i, task_id in enumerate(ids)
    ]

    def insert(conn: Any) -> None:
        with transaction(conn):
            conn.executemany(
                "INSERT INTO tasks (id, owner, name, kind, status, created_at, updated_at) "
                "VALUES (?, ?, ?, 'kernel', ?, ?, ?)",
                rows,
            )

    await vault.run(insert)
    return ids


async def follow(api: Api, route: str, key: str, idkey: str, between: Any = None, **params: str):
    """Every page of ``route``: (ids in order, number of pages). ``between`` runs after each
    page read (to insert entries while paging)."""
    ids: list[str] = []
    query = dict(params)
    pages = 0
    while True:
        status, body = await api.get(route, params=query)
        assert status == 200, body
        pages += 1
        ids += [item[idkey] for item in body[key]]
        if between is not None:
            await between()
        if body["next_cursor"] is None:
            return ids, pages
        query["cursor"] = body["next_cursor"]


@pytest.fixture
def owner(offline_app) -> str:
    return offline_app.owner_of(None)


@pytest.fixture
def vault(offline_app, jp_asyncio_loop) -> SQLiteTokenStore:
    jp_asyncio_loop.run_until_complete(offline_app.services.ready())
    return offline_app.services.vault


# --- paging ------------------------------------------------------------------------------------
async def test_token_pages_have_no_gap_or_duplicate_while_entries_are_added(api, owner, vault):
    # Groups of 7 entries share a creation time: the order inside a tie must hold across pages.
    ids = await fill(vault, owner, 250, created_at=time.time() - 3600, same_time=7)
    added: list[str] = []

    async def add_some() -> None:  # newer than everything so far (spaced: no overlap)
        added.extend(await fill(vault, owner, 5, created_at=time.time() + len(added)))

    seen, pages = await follow(api, "tokens", "tokens", "persistent_token_id", add_some, limit="40")
    assert pages == 7
    assert seen == ids[::-1]  # newest first, each exactly once, nothing added meanwhile
    # A new first page starts with what was added, newest first.
    _, first = await api.get("tokens", params={"limit": "10"})
    assert [t["persistent_token_id"] for t in first["tokens"]] == added[::-1][:10]


async def test_lists_page_by_default_and_refuse_offset_and_bad_cursors(api, owner, vault, tasks):
    await fill(vault, owner, 130)
    _, body = await api.get("tokens")
    assert len(body["tokens"]) == 100 and body["next_cursor"]
    _, rest = await api.get("tokens", params={"cursor": body["next_cursor"]})
    assert len(rest["tokens"]) == 30 and rest["next_cursor"] is None
    status, err = await api.get("tokens", params={"offset": "100"})
    assert status == 400 and err["error"] == "invalid_query" and "cursor" in err["message"]
    assert (await api.get("tokens", params={"offset": "0"}))[0] == 200
    hostile = ["x", "", "%%%", "W10", "WyJhIiwxXQ", "WzEsMS41XQ", "WzFlOTk5LDFd", "a" * 500]
    for route in ("tokens", "tasks", "health"):
        for cursor in hostile:
            status, err = await api.get(route, params={"cursor": cursor})
            assert status == 400 and err["error"] == "invalid_cursor", (route, cursor, err)
        for limit in ("0", "1001", "x"):
            status, err = await api.get(route, params={"limit": limit})
            assert status == 400 and err["error"] == "invalid_query", (route, limit)


async def test_status_filtered_pages(api, owner, vault):
    failed = await fill(vault, owner, 25, status="failed", created_at=time.time() - 50)
    await fill(vault, owner, 30)
    seen, pages = await follow(
        api, "tokens", "tokens", "persistent_token_id", status="failed", limit="10"
    )
    assert seen == failed[::-1] and pages == 3


async def test_task_pages_have_no_gap_or_duplicate_while_tasks_are_added(api, owner, vault, tasks):
    ids = await fill_tasks(vault, owner, 120, updated_at=None, created_at=time.time() - 3600)
    await fill_tasks(vault, "someone-else", 10, updated_at=None)

    async def add_some() -> None:
        await fill_tasks(vault, owner, 3, updated_at=None)

    seen, pages = await follow(api, "tasks", "tasks", "id", add_some, limit="50")
    assert seen == ids[::-1] and pages == 3
    _, body = await api.get("tasks")
    assert len(body["tasks"]) == 100 and body["next_cursor"]


# --- health ------------------------------------------------------------------------------------
async def test_health_counts_from_sql_and_lists_only_what_needs_attention(api, owner, vault):
    old = time.time() - 100
    await fill(vault, owner, 30, created_at=old)
    retrying = await fill(vault, owner, 5, refresh_state="retrying", created_at=old + 1)
    failed = await fill(
        vault, owner, 3, status="failed", refresh_state="failed", created_at=old + 2
    )
    refresh_failed = await fill(vault, owner, 2, refresh_state="failed", created_at=old + 3)
    await fill(vault, owner, 4, status="pending", created_at=old + 4)
    await fill(vault, owner, 6, status="expired", created_at=old + 5)
    await fill(vault, owner, 2, status="revoked", created_at=old + 6)
    await fill(vault, "someone-else", 50, status="failed")

    _, health = await api.get("health", params={"limit": "4"})
    assert health["counts"] == {"healthy": 30, "degraded": 5, "unhealthy": 5, "pending": 4}
    assert health["level"] == "unhealthy"
    attention, pages = await follow(api, "health", "tokens", "persistent_token_id", limit="4")
    assert attention == (retrying + failed + refresh_failed)[::-1] and pages == 3
    _, one = await api.get("health", params={"limit": "1"})
    assert one["tokens"][0]["health"]["level"] == "unhealthy"


# --- pending-consent cap -----------------------------------------------------------------------
@pytest.fixture
def offline_token_config(offline_token_config):
    return {**offline_token_config, "max_pending_consents": 3}


async def test_pending_consents_are_capped_per_owner(api, idp, owner, vault):
    for _ in range(3):
        status, created = await api.post("consents", body={})
        assert status == 201, created
    status, err = await api.post("consents", body={})
    assert status == 429 and err["error"] == "too_many_pending_consents", err
    assert "max_pending_consents" in err["message"]
    assert 500 < int(api.last_headers["Retry-After"]) <= 600
    _, listing = await api.get("tokens", params={"status": "pending"})
    assert len(listing["tokens"]) == 3  # the refused request stored nothing
    # Deleting one that waits frees a place.
    pending_id = listing["tokens"][0]["persistent_token_id"]
    status, _ = await api.delete("tokens", pending_id, params={"revoke": "false"})
    assert status in (200, 204)
    status, created = await api.post("consents", body={})
    assert status == 201, created


def test_the_kernel_knows_the_cap_error():
    response = httpx.Response(
        429,
        json={"error": "too_many_pending_consents", "message": "50 consents wait"},
        headers={"Retry-After": "120"},
    )
    error = error_from_response(response)
    assert isinstance(error, ClientTooManyPending) and error.retry_after == 120
    assert "list_tokens(status='pending')" in str(error)


def test_the_fake_caps_and_pages_like_the_server():
    api = FakeOfflineTokenAPI(max_pending_consents=120, page_size=7)
    client = api.client()
    ids = [client.create_consent(label=f"t{i}")["persistent_token_id"] for i in range(120)]
    with pytest.raises(ClientTooManyPending):
        client.create_consent(label="one too many")
    assert [t["persistent_token_id"] for t in client.list_tokens()] == ids[::-1]
    assert api.count("GET", "tokens") == 18  # 120 entries, 7 per page
    tasks = [client.create_task(f"t{i}")["id"] for i in range(10)]
    assert [t["id"] for t in client.list_tasks(page_size=3)] == tasks[::-1]
    with pytest.raises(ClientInvalidRequest) as bad:
        client.request("GET", "api/offline-token/tokens", params={"offset": "3"})
    assert bad.value.status == 400 and bad.value.code == "invalid_query"


# --- retention purge ---------------------------------------------------------------------------
class _Later:
    """The engine's clock, ``seconds`` ahead."""

    def __init__(self, clock: Any, seconds: float) -> None:
        self.clock, self.seconds = clock, seconds

    def time(self) -> float:
        return float(self.clock.time()) + self.seconds

    def monotonic(self) -> float:
        return float(self.clock.monotonic()) + self.seconds

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep(seconds)


async def test_sweep_purges_old_history_in_bounded_batches(offline_app, owner, vault, tasks):
    engine = offline_app.services.engine
    assert engine.retention == 7 * DAY
    now = time.time()
    old, recent = now - 8 * DAY, now - 6 * DAY
    purgeable = []
    for status in ("expired", "failed", "revoked"):
        purgeable += await fill(vault, owner, 800, status=status, updated_at=old)
    kept = await fill(vault, owner, 20, updated_at=old)  # active: never purged
    kept += await fill(vault, owner, 20, status="failed", updated_at=recent)
    kept += await fill(vault, owner, 5, status="pending", updated_at=old)
    for token_id in (purgeable[0], kept[0]):
        await vault.add_audit(AuditEvent(ts=old, action="fail", result="x", token_id=token_id))
    old_tasks = await fill_tasks(vault, owner, 30, updated_at=old)
    for task_id in old_tasks[:2]:
        tasks.task_dir(task_id).mkdir(parents=True)
        (tasks.task_dir(task_id) / "output.log").write_text("done\n")
    kept_tasks = await fill_tasks(vault, owner, 3, status="running", updated_at=old)
    kept_tasks += await fill_tasks(vault, owner, 3, updated_at=recent)

    async def remaining() -> set[str]:
        def ids(conn: Any) -> set[str]:
            return {row[0] for row in conn.execute("SELECT id FROM tokens")}

        return await vault.run(ids)

    await engine.sweep()  # at most 10 batches of 200 entries per sweep
    assert len(await remaining()) == 2400 + len(kept) - 2000
    # The purge runs once per sweep_interval cluster-wide (claim_sweep): the next pass is due
    # one interval later.
    engine.clock = _Later(engine.clock, engine.sweep_interval)
    await engine.sweep()
    assert await remaining() == set(kept)
    assert await vault.list_audit(purgeable[0]) == []
    assert len(await vault.list_audit(kept[0])) == 1
    page = await tasks.list_page(owner, limit=100)
    assert {t.id for t in page.items} == set(kept_tasks)
    assert not tasks.task_dir(old_tasks[0]).exists()
    assert (await vault.count_by_status(owner))["failed"] == 20


async def test_purge_with_a_fake_now_and_with_retention_off(offline_app, owner, vault):
    engine = offline_app.services.engine
    await fill(vault, owner, 3, status="expired", updated_at=time.time())
    assert await engine.purge(time.time()) == 0
    assert await engine.purge(time.time() + 7 * DAY + 60) == 3  # a fake "now" a week later
    await fill(vault, owner, 3, status="expired", updated_at=0)
    engine.retention = None  # history_retention = 0
    try:
        assert await engine.purge(time.time()) == 0
    finally:
        engine.retention = 7 * DAY
    assert (await vault.count_by_status(owner))["expired"] == 3


# --- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trait", "value"),
    [("max_pending_consents", 0), ("history_retention", -1), ("history_retention", float("nan"))],
)
def test_new_settings_are_validated_by_name(trait, value):
    from traitlets import TraitError

    from jupyter_offline_token.app import OfflineTokenApp

    with pytest.raises(TraitError, match=f"OfflineTokenApp.{trait}"):
        OfflineTokenApp(**{trait: value})


# --- private task files ------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_task_files_are_private(api, tasks, idp):
    token_id = await grant(api, idp)
    tasks.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(tasks.state_dir, 0o755)  # noqa: S103 - left loose by an older version
    status, task = await api.post(
        "tasks",
        body={
            "name": "prints",
            "kind": "command",
            "command": [sys.executable, "-c", "print('hello')"],
            "persistent_token_id": token_id,
        },
    )
    assert status == 201
    previous = os.umask(0o022)
    try:
        await api.post("tasks", task["id"], "execute")
        deadline = time.monotonic() + 60
        while (await api.get("tasks", task["id"]))[1]["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, "the task did not end"
            await asyncio.sleep(0.05)
    finally:
        os.umask(previous)
    directory = tasks.task_dir(task["id"])
    assert _mode(tasks.state_dir) == 0o700
    assert _mode(directory) == 0o700
    assert _mode(directory / "output.log") == 0o600


def test_executed_notebook_is_private(tmp_path):
    notebook = tmp_path / "nb.ipynb"
    notebook.write_text(
        json.dumps(
            {
                "cells": [
                    {
                        "cell_type": "code",
                        "metadata": {},
                        "source": "print(1 + 1)",
                        "outputs": [],
                        "execution_count": None,
                    }
                ],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    output = tmp_path / "state" / "task" / "executed.ipynb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jupyter_offline_token.tasks.run_notebook",
            str(notebook),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        preexec_fn=lambda: os.umask(0o022),
    )
    assert result.returncode == 0, result.stderr
    assert _mode(output) == 0o600 and _mode(output.parent) == 0o700
    assert "2" in output.read_text()


def test_cursor_round_trip():
    cursor = Cursor(1_700_000_000.123456, 42)
    assert Cursor.decode(cursor.encode()) == cursor


async def test_linked_tasks_of_a_page_use_the_token_index(owner, vault, tasks):
    """Each token page looks up its linked tasks: through the token index, never by walking
    every task of the owner (that cost ~250 ms per page with 100k tasks)."""
    captured: list[str] = []
    await vault.run(lambda conn: conn.set_trace_callback(captured.append))
    try:
        await tasks.store.for_tokens([str(uuid.uuid4())], owner=owner)
    finally:
        await vault.run(lambda conn: conn.set_trace_callback(None))
    (sql,) = [q for q in captured if "persistent_token_id IN" in q]
    plan = await vault.run(lambda conn: conn.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
    used = " ".join(str(row[3]) for row in plan)
    assert "tasks_token" in used and "tasks_owner" not in used, used
