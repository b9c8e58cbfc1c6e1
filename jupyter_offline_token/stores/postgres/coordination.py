"""Cluster coordination in SQL (issue 11): the eviction log and the periodic-job claims."""

from __future__ import annotations

import builtins

from ...models import SharedAccessToken, TokenRecord
from ...paging import check_limit
from ..shared.checks import check_sweep_args
from ..shared.sql import EVICTIONS_AFTER, pyformat
from . import leases
from .database import Conn, Database
from .listener import EvictionListener

_EVICTIONS_AFTER = pyformat(EVICTIONS_AFTER)


async def evictions_after(conn: Conn, cursor: int | None, limit: int) -> tuple[int, list[str]]:
    if cursor is None:
        cur = await conn.execute("SELECT COALESCE(MAX(seq), 0) AS end FROM evictions")
        row = await cur.fetchone()
        assert row is not None
        return int(row["end"]), []
    cur = await conn.execute(_EVICTIONS_AFTER, (cursor, limit))
    found = await cur.fetchall()
    if not found:
        return cursor, []
    return int(found[-1]["seq"]), [row["token_id"] for row in found]


async def prune_evictions(conn: Conn, before: float, limit: int) -> int:
    """At most ``limit`` rows logged before ``before``; rows another process is pruning are
    skipped, not waited for."""
    cur = await conn.execute(
        "DELETE FROM evictions WHERE seq IN (SELECT seq FROM evictions WHERE ts < %s "
        "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED)",
        (before, limit),
    )
    return cur.rowcount


async def claim_sweep(conn: Conn, name: str, holder: str, interval: float, now: float) -> bool:
    """One statement: insert the claim, or take it over when the last one's interval is over.
    A concurrent claimer waits on the row and then re-checks the condition against the winner's
    values, so exactly one caller per interval gets True."""
    cur = await conn.execute(
        "INSERT INTO sweeps (name, holder, next_at) VALUES (%s, %s, %s) "
        "ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, next_at = EXCLUDED.next_at "
        "WHERE sweeps.next_at <= %s RETURNING name",
        (name, holder, now + interval, now),
    )
    return await cur.fetchone() is not None


class ClusterCoordination:
    """The TokenStore methods of issue 11 (shared access token, eviction log, sweep claims)
    for PostgresTokenStore, which provides ``database`` and ``_listener``."""

    database: Database
    _listener: EvictionListener

    # --- shared access tokens and cluster coordination (issue 11) ------------------------------
    async def get_for_access(
        self, token_id: str, *, valid_until: float | None
    ) -> tuple[TokenRecord | None, SharedAccessToken | None]:
        return await leases.read_for_access(self.database, token_id, valid_until)

    async def read_access_token(
        self, token_id: str, *, valid_until: float
    ) -> SharedAccessToken | None:
        return await leases.read_access(self.database, token_id, valid_until)

    async def evictions_after(
        self, cursor: int | None, *, limit: int = 1000
    ) -> tuple[int, builtins.list[str]]:
        check_limit(limit)
        return await self.database.read(lambda conn: evictions_after(conn, cursor, limit))

    @property
    def evictions_notified(self) -> bool:
        return self._listener.listening

    async def wait_for_evictions(self, timeout: float) -> None:
        """Returns at the next eviction any process commits (LISTEN/NOTIFY), or after
        ``timeout``; polls (sleeps) while the LISTEN connection is down."""
        self.database.check_usable()
        await self._listener.wait(timeout)

    async def prune_evictions(self, before: float, *, limit: int) -> int:
        check_limit(limit)
        return await self.database.run(lambda conn: prune_evictions(conn, before, limit))

    async def claim_sweep(self, name: str, holder: str, *, interval: float, now: float) -> bool:
        check_sweep_args(name, holder, interval)
        return await self.database.run(lambda conn: claim_sweep(conn, name, holder, interval, now))
