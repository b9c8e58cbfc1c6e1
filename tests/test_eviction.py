"""The eviction watcher in one process: two brokers with their own store instances on one SQLite
vault (as two servers have); what one deletes or fails leaves the other's cache. The real
cross-process case is tests/test_eviction_cross_process.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from server_fixtures import TEST_KEY
from traitlets import TraitError

from jupyter_offline_token.access_token import AccessToken
from jupyter_offline_token.broker import TokenBroker
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.eviction import EvictionWatcher
from jupyter_offline_token.models import ConsentSecrets
from jupyter_offline_token.refresh.engine import RefreshEngine
from jupyter_offline_token.settings import OfflineTokenSettings
from jupyter_offline_token.stores import SQLiteTokenStore

pytestmark = pytest.mark.timeout(60)
POLL = 0.02
SECRET_AT = "at-PLAINTEXT-cached-access-token-0b1c"


class FlakyStore(SQLiteTokenStore):
    """The real store, whose eviction log read fails while ``failing`` (a fault SQLite does not
    produce on demand: a locked or unreachable database)."""

    failing = 0

    async def evictions_after(self, cursor: int | None, *, limit: int = 1000) -> Any:
        if self.failing:
            self.failing -= 1
            raise VaultError(f"vault database error: disk I/O error ({SECRET_AT})")
        return await super().evictions_after(cursor, limit=limit)


async def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def open_store(tmp_path: Any, klass: type[SQLiteTokenStore] = SQLiteTokenStore) -> Any:
    store = klass(tmp_path / "vault.db", encryption_keys=[TEST_KEY])
    await store.open()
    return store


async def active_entry(store: SQLiteTokenStore, n: int) -> str:
    record = await store.create_pending(
        owner="alice",
        issuer="https://idp.example/realms/r",
        client_id="jupyter",
        scopes=["openid", "offline_access"],
        state_hash=f"state-{n}",
        secrets=ConsentSecrets(code_verifier="v", nonce="n", redirect_uri="http://localhost/cb"),
        consent_expires_at=time.time() + 600,
        now=time.time(),
    )
    await store.activate(
        record.id, refresh_token="rt", subject="sub", scopes=[], idle_expires_at=None, now=1.0
    )
    return record.id


def cache(broker: TokenBroker, token_id: str) -> None:
    broker.remember(
        token_id,
        AccessToken(
            access_token=SECRET_AT,
            token_type="Bearer",
            expires_at=time.time() + 3600,
            scope=None,
            obtained_at=time.monotonic(),
            owner="alice",
        ),
    )


async def test_what_another_store_deletes_or_fails_leaves_this_cache(tmp_path):
    here, there = await open_store(tmp_path), await open_store(tmp_path)
    broker = TokenBroker(here, None, None)
    watcher = EvictionWatcher(broker, poll_interval=POLL)
    deleted, failed, kept = [await active_entry(there, n) for n in range(3)]
    for token_id in (deleted, failed, kept):
        cache(broker, token_id)
    await watcher.start()
    try:
        await there.delete(deleted)
        await wait_until(lambda: broker.cached(deleted) is None)
        await there.mark_failed(failed, error="invalid_grant", now=2.0)
        await wait_until(lambda: broker.cached(failed) is None)
        # A refresh elsewhere evicts nothing; the untouched entry is still served from memory.
        await there.record_refresh(kept, new_refresh_token="rt2", idle_expires_at=None, now=3.0)
        await watcher.catch_up()
        assert broker.cached(kept) is not None
        assert watcher.evicted == 2
        token = await broker.get_access_token("alice", kept)
        assert token.access_token == SECRET_AT
    finally:
        await watcher.stop()
        await here.close()
        await there.close()
    assert not watcher.running


async def test_the_watcher_survives_store_errors_and_says_so_once(tmp_path, caplog):
    here, there = await open_store(tmp_path, FlakyStore), await open_store(tmp_path)
    broker = TokenBroker(here, None, None)
    watcher = EvictionWatcher(broker, poll_interval=POLL)
    token_id = await active_entry(there, 0)
    cache(broker, token_id)
    await watcher.start()
    caplog.set_level(logging.INFO, logger="jupyter_offline_token.eviction")
    try:
        here.failing = 3
        await wait_until(lambda: here.failing == 0)
        await there.delete(token_id)
        await wait_until(lambda: broker.cached(token_id) is None)
    finally:
        await watcher.stop()
        await here.close()
        await there.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "VaultError" in warnings[0].getMessage()
    assert any("readable again" in r.getMessage() for r in caplog.records)
    assert SECRET_AT not in caplog.text


async def test_a_log_unreadable_at_start_drops_the_whole_cache_once_readable(tmp_path):
    """Started without a cursor, the watcher cannot know what was logged meanwhile."""
    here = await open_store(tmp_path, FlakyStore)
    broker = TokenBroker(here, None, None)
    watcher = EvictionWatcher(broker, poll_interval=POLL)
    token_id = await active_entry(here, 0)
    cache(broker, token_id)
    here.failing = 2
    await watcher.start()
    try:
        await wait_until(lambda: watcher.cursor is not None)
        assert broker.cached(token_id) is None
    finally:
        await watcher.stop()
        await here.close()


async def test_the_engine_starts_and_stops_the_watcher(tmp_path):
    here = await open_store(tmp_path)
    engine = RefreshEngine(
        TokenBroker(here, None, None), OfflineTokenSettings(eviction_poll_interval=POLL)
    )
    await engine.start()
    assert engine.evictions.running and engine.evictions.poll_interval == POLL
    await engine.stop(timeout=5.0)
    assert not engine.evictions.running
    await here.close()


@pytest.mark.parametrize("value", [0, -1.0])
def test_the_poll_interval_must_be_positive(value):
    with pytest.raises(TraitError, match="eviction_poll_interval"):
        OfflineTokenSettings(eviction_poll_interval=value)


async def test_a_store_that_notifies_is_read_rarely_while_it_listens(tmp_path, pg_url):
    """PostgreSQL announces every eviction (LISTEN/NOTIFY): while its listening connection is
    up, the watcher reads the log every NOTIFIED_POLL as a safety net, not every poll interval
    (an idle server's load on the database); SQLite, or PostgreSQL not listening, is polled."""
    from store_helpers import PG_KEY

    from jupyter_offline_token.eviction import NOTIFIED_POLL
    from jupyter_offline_token.stores.postgres import PostgresTokenStore

    sqlite = await open_store(tmp_path)
    pg = PostgresTokenStore(url=pg_url, encryption_keys=[PG_KEY])
    await pg.open()
    try:
        assert (
            EvictionWatcher(TokenBroker(sqlite, None, None), poll_interval=POLL).wait_timeout()
            == POLL
        )
        watcher = EvictionWatcher(TokenBroker(pg, None, None), poll_interval=POLL)
        assert not pg.evictions_notified and watcher.wait_timeout() == POLL
        await pg.wait_for_evictions(0.01)  # starts listening
        assert pg.evictions_notified and watcher.wait_timeout() == NOTIFIED_POLL > POLL
    finally:
        await pg.close()
        await sqlite.close()
