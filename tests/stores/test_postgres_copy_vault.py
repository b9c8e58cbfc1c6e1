"""Moving a SQLite vault into PostgreSQL (issue 11): ciphertexts are copied byte for byte and
decrypt unchanged with the same key (the AAD is the same in both backends); nothing is decrypted
on the way; a second run adds no entry twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from store_helpers import PG_KEY, REFRESH, SECRETS, db_path, make_active, make_pending

from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.models import AuditEvent
from jupyter_offline_token.stores import SQLiteTaskStore, SQLiteTokenStore
from jupyter_offline_token.stores.postgres import PostgresTaskStore, PostgresTokenStore
from jupyter_offline_token.stores.postgres.copy_vault import copy_sqlite_vault
from jupyter_offline_token.tasks.models import TaskRecord


async def test_a_sqlite_vault_copied_into_postgres_decrypts_unchanged(
    tmp_path: Path, pg_url: str, pg_cluster: Any
) -> None:
    path = db_path(tmp_path)
    source = SQLiteTokenStore(path, encryption_keys=[PG_KEY])
    await source.open()
    active = await make_active(source)
    pending = await make_pending(source, owner="bob")
    await source.set_keep_warm(active.id, True, now=1100.0)
    await source.add_audit(AuditEvent(ts=1.0, action="refresh", result="ok", token_id=active.id))
    task = TaskRecord(
        id="task-1", owner="alice", name="train", kind="kernel", status="pending",
        created_at=1000.0, updated_at=1000.0, persistent_token_id=active.id,
    )  # fmt: skip
    await SQLiteTaskStore(source).create(task)
    listed = await source.list()
    await source.close()

    target = PostgresTokenStore(url=pg_url, encryption_keys=[PG_KEY])
    await target.open()
    try:
        report = await copy_sqlite_vault(path, target)
        assert (report.tokens, report.tasks, report.audit) == (2, 1, 1)
        assert await target.list() == listed  # every field, same order
        assert await target.read_refresh_token(active.id) == REFRESH
        assert await target.consume_consent(pending.id) == SECRETS
        assert await target.warm_ids() == [active.id]
        assert [e.action for e in await target.list_audit(active.id)][-1] == "refresh"
        (copied_task,) = await PostgresTaskStore(target).list()
        assert copied_task.id == "task-1" and copied_task.token_status == "active"
        assert (await target.count_by_status())["active"] == 1  # counts kept by the triggers
        events = await target.list_audit(active.id)
        again = await copy_sqlite_vault(path, target)
        assert (again.tokens, again.tasks, again.audit) == (0, 0, 0)
        assert await target.list_audit(active.id) == events
        assert len(await target.list()) == 2
    finally:
        await target.close()


async def test_a_missing_or_foreign_file_is_refused(tmp_path: Path, pg_url: str) -> None:
    target = PostgresTokenStore(url=pg_url, encryption_keys=[PG_KEY])
    await target.open()
    try:
        with pytest.raises(VaultError, match="no SQLite vault"):
            await copy_sqlite_vault(tmp_path / "nope.db", target)
        junk = tmp_path / "junk.db"
        junk.write_bytes(b"not a database" * 100)
        with pytest.raises(VaultError):
            await copy_sqlite_vault(junk, target)
    finally:
        await target.close()
