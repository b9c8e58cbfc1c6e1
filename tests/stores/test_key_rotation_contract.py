"""Key rotation (issue 14), for every backend: ``TokenStore.rotate_keys`` re-encrypts every
ciphertext under the ring's first key in batches, keeps what a concurrent refresh committed, and
completes when run again after an interruption. Parametrised over ``store_helpers.BACKENDS``."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from typing import Any

import pytest
from store_helpers import BACKENDS, PG_KEY, REFRESH, ROTATED, SECRETS, make_active, make_pending

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.models import SharedAccessToken
from jupyter_offline_token.stores import TokenStore
from jupyter_offline_token.stores.shared import rotation, sql
from jupyter_offline_token.stores.shared.rotation import RotationBatch

OLD = PG_KEY
NEW = base64.urlsafe_b64encode(bytes(range(32, 64))).rstrip(b"=").decode()
OLD_ID = KeyRing.from_config([OLD]).primary_key_id
NEW_ID = KeyRing.from_config([NEW]).primary_key_id
ACCESS = SharedAccessToken("at-PLAINTEXT-shared-1f2e", "Bearer", 4_000_000_000.0, "openid")


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return BACKENDS[request.param](tmp_path)


async def opened(backend: Any, keys: list[str]) -> TokenStore:
    store: TokenStore = backend.token_store(encryption_keys=keys)
    await store.open()
    return store


def stored_key_ids(backend: Any) -> dict[str, set[str | None]]:
    """Per entry id, the key ids its three ciphertext columns name, read behind the store."""
    query = "SELECT id, consent_key_id, secret_key_id, access_key_id FROM tokens"
    if hasattr(backend, "url"):
        import psycopg

        with psycopg.connect(backend.url) as conn:
            rows = conn.execute(query).fetchall()
    else:
        con = sqlite3.connect(backend.path)
        try:
            rows = con.execute(query).fetchall()
        finally:
            con.close()
    return {row[0]: {k for k in row[1:] if k is not None} for row in rows}


async def _old_vault(
    backend: Any, actives: int = 3, *, pending: bool = True
) -> tuple[list[str], str | None]:
    """``actives`` active entries (refresh token and shared access token) and one pending
    entry (consent secrets, unless ``pending`` is False), all under the old key."""
    store = await opened(backend, [OLD])
    try:
        ids = []
        for _ in range(actives):
            record = await make_active(store)
            await store.record_refresh(
                record.id, new_refresh_token=None, idle_expires_at=None, now=2000.0, access=ACCESS
            )
            ids.append(record.id)
        pending_id = (await make_pending(store)).id if pending else None
    finally:
        await store.close()
    return ids, pending_id


async def test_rotation_moves_every_ciphertext_to_the_new_key(backend: Any) -> None:
    ids, pending = await _old_vault(backend)
    assert set().union(*stored_key_ids(backend).values()) == {OLD_ID}
    store = await opened(backend, [NEW, OLD])
    try:
        batches: list[RotationBatch] = []

        async def progress(batch: RotationBatch) -> None:
            batches.append(batch)

        report = await store.rotate_keys(batch_size=2, progress=progress)
    finally:
        await store.close()
    assert report.complete and report.unreadable == 0 and report.skipped == 0
    assert report.reencrypted == 3 * 2 + 1  # refresh + access per active entry, one consent
    assert [b.rows for b in batches] == [2, 2, 0]  # 4 rows in batches of 2, then the end
    assert report.in_use == {NEW_ID: 7}
    assert report.droppable == [OLD_ID] and report.old_in_use == {}
    assert set().union(*stored_key_ids(backend).values()) == {NEW_ID}
    # The old key is gone from the ring and everything still decrypts.
    store = await opened(backend, [NEW])
    try:
        for token_id in ids:
            assert await store.read_refresh_token(token_id) == REFRESH
            assert await store.read_access_token(token_id, valid_until=0.0) == ACCESS
        assert await store.consume_consent(pending) == SECRETS
        again = await store.rotate_keys()  # nothing left: nothing re-encrypted twice
        assert again.reencrypted == 0 and again.in_use == {NEW_ID: 6}
    finally:
        await store.close()


async def test_a_refresh_committed_between_batches_is_kept(backend: Any) -> None:
    ids, _pending = await _old_vault(backend, actives=4, pending=False)
    order: list[str] = []  # the rotated entry, then the three the batch has not reached
    store = await opened(backend, [NEW, OLD])
    # A server still running with the old ring alone, and one already on the new ring.
    old_server = await opened(backend, [OLD])
    new_server = await opened(backend, [NEW, OLD])
    try:

        async def progress(batch: RotationBatch) -> None:
            if batch.number != 1:
                return
            key_ids = stored_key_ids(backend)
            order.extend(sorted(ids, key=lambda token_id: NEW_ID not in key_ids[token_id]))
            rotated = [NEW_ID in key_ids[token_id] for token_id in order]
            assert rotated == [True, False, False, False]
            # Already rotated, refreshed again under the old key by the old server.
            await old_server.record_refresh(
                order[0], new_refresh_token=ROTATED, idle_expires_at=None, now=3000.0
            )
            # Not rotated yet: one refresh under each ring.
            await old_server.record_refresh(
                order[2], new_refresh_token=ROTATED, idle_expires_at=None, now=3000.0
            )
            await new_server.record_refresh(
                order[3], new_refresh_token=ROTATED, idle_expires_at=None, now=3000.0
            )

        report = await store.rotate_keys(batch_size=1, progress=progress)
        assert report.complete
        # The old server wrote one refresh token under the old key behind the cursor: the
        # report says the old key is still in use instead of calling it droppable.
        assert report.old_in_use == {OLD_ID: 1} and report.droppable == []
        for token_id in ids:
            expected = REFRESH if token_id == order[1] else ROTATED
            assert await store.read_refresh_token(token_id) == expected
        rerun = await store.rotate_keys(batch_size=1)
        assert rerun.complete and rerun.reencrypted == 1 and rerun.droppable == [OLD_ID]
        assert await store.read_refresh_token(order[0]) == ROTATED
    finally:
        for s in (store, old_server, new_server):
            await s.close()


async def test_an_interrupted_rotation_completes_when_run_again(backend: Any) -> None:
    ids, pending = await _old_vault(backend, actives=5)
    store = await opened(backend, [NEW, OLD])
    try:
        first = await store.rotate_keys(batch_size=2, max_batches=1)
        assert not first.complete and first.batches == 1
        # Two rows: two active entries (2 values each), or one and the pending one (2 + 1).
        assert first.reencrypted in (3, 4) and first.droppable == []
        assert first.in_use == {NEW_ID: first.reencrypted, OLD_ID: 11 - first.reencrypted}
        second = await store.rotate_keys(batch_size=2)
        assert second.complete and second.reencrypted == 11 - first.reencrypted
        assert second.in_use == {NEW_ID: 11} and second.droppable == [OLD_ID]
    finally:
        await store.close()
    store = await opened(backend, [NEW])
    try:  # decrypting under the new key alone proves nothing was encrypted twice or lost
        for token_id in ids:
            assert await store.read_refresh_token(token_id) == REFRESH
            assert await store.read_access_token(token_id, valid_until=0.0) == ACCESS
        assert await store.consume_consent(pending) == SECRETS
    finally:
        await store.close()


async def test_an_access_token_no_key_opens_is_dropped_and_the_rest_kept(backend: Any) -> None:
    ids, _pending = await _old_vault(backend, actives=2)
    # Another entry's shared access token moved onto this one: its AAD no longer matches.
    backend.copy_columns(ids[0], ids[1], ["access_ct", "access_nonce"])
    store = await opened(backend, [NEW, OLD])
    try:
        report = await store.rotate_keys()
        assert report.cleared == 1 and report.reencrypted == 4 and report.unreadable == 0
        assert report.droppable == [OLD_ID]
        assert await store.read_access_token(ids[1], valid_until=0.0) is None
        assert await store.read_refresh_token(ids[1]) == REFRESH
    finally:
        await store.close()


async def test_a_refresh_token_no_key_opens_is_left_and_reported(backend: Any) -> None:
    ids, _pending = await _old_vault(backend, actives=2)
    backend.copy_columns(ids[0], ids[1], ["secret_ct", "secret_nonce"])
    store = await opened(backend, [NEW, OLD])
    try:
        report = await store.rotate_keys()
        assert report.unreadable == 1 and report.complete
        assert report.old_in_use == {OLD_ID: 1} and report.droppable == []
        assert stored_key_ids(backend)[ids[1]] == {NEW_ID, OLD_ID}
    finally:
        await store.close()


async def test_bad_arguments_and_a_closed_store_are_refused(backend: Any) -> None:
    store = backend.token_store(encryption_keys=[NEW, OLD])
    with pytest.raises(VaultError):
        await store.rotate_keys()
    await store.open()
    try:
        for bad in (0, -1, 10_001, True):
            with pytest.raises(ValueError, match="batch_size"):
                await store.rotate_keys(batch_size=bad)
        with pytest.raises(ValueError, match="max_batches"):
            await store.rotate_keys(max_batches=0)
    finally:
        await store.close()


async def _raw_batch(backend: Any, keyring: KeyRing, meanwhile: Any) -> list[int]:
    """Read the stale rows on a raw connection (no transaction left open), plan them, await
    ``meanwhile()`` (another process commits), then apply the plan's compare and swaps: their
    row counts. The rotation never lets a write in between (it holds the rows' locks); this is
    the compare and swap that would still catch one."""
    primary = keyring.primary_key_id
    params = ("", primary, primary, primary, 100)
    opener = _Opener(keyring)
    if hasattr(backend, "url"):
        import psycopg
        from psycopg.rows import dict_row

        async with await psycopg.AsyncConnection.connect(
            backend.url, autocommit=True, row_factory=dict_row
        ) as conn:
            cur = await conn.execute(sql.pyformat(rotation.SELECT_STALE), params)
            plan = rotation.plan_batch(opener, keyring, await cur.fetchall())
            await meanwhile()
            counts = []
            for change in plan.changes:
                cur = await conn.execute(sql.pyformat(change.sql), change.params)
                counts.append(cur.rowcount)
            return counts
    con = sqlite3.connect(backend.path, isolation_level=None)
    con.row_factory = sqlite3.Row
    try:
        plan = rotation.plan_batch(
            opener, keyring, con.execute(rotation.SELECT_STALE, params).fetchall()
        )
        await meanwhile()
        return [con.execute(c.sql, c.params).rowcount for c in plan.changes]
    finally:
        con.close()


class _Opener:
    """``Decrypting`` over a bare key ring (the stores' databases add only the error text)."""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def decrypt(self, key_id: str, nonce: bytes, ct: bytes, aad: bytes, *, what: str) -> bytes:
        return self.keyring.decrypt(key_id, bytes(nonce), bytes(ct), aad)


async def test_the_compare_and_swap_skips_a_row_changed_after_it_was_read(backend: Any) -> None:
    ids, _pending = await _old_vault(backend, actives=2, pending=False)
    server = await opened(backend, [OLD])  # a server still on the old ring
    try:

        async def refresh_meanwhile() -> None:
            await server.record_refresh(
                ids[0], new_refresh_token=ROTATED, idle_expires_at=None, now=3000.0
            )

        counts = await _raw_batch(backend, KeyRing.from_config([NEW, OLD]), refresh_meanwhile)
        # ids[0]: its refresh token and shared access token (cleared by the refresh) changed,
        # so both swaps miss; ids[1]'s two swaps land.
        assert sorted(counts) == [0, 0, 1, 1]
        assert stored_key_ids(backend)[ids[0]] == {OLD_ID}
        assert stored_key_ids(backend)[ids[1]] == {NEW_ID}
    finally:
        await server.close()
    reader = await opened(backend, [NEW, OLD])
    try:
        assert await reader.read_refresh_token(ids[0]) == ROTATED  # the refresh is kept
        assert await reader.read_refresh_token(ids[1]) == REFRESH
    finally:
        await reader.close()


async def test_refreshes_racing_a_rotation_are_never_overwritten(backend: Any) -> None:
    """Whatever the interleaving, each entry ends with the last refresh token written."""
    ids, _pending = await _old_vault(backend, actives=6, pending=False)
    store = await opened(backend, [NEW, OLD])
    server = await opened(backend, [OLD])  # the old ring: its writes need another pass
    last: dict[str, str] = {}
    try:

        async def refresh_all(rounds: int) -> None:
            for n in range(rounds):
                for token_id in ids:
                    last[token_id] = f"rt-PLAINTEXT-{n}-{token_id}"
                    await server.record_refresh(
                        token_id,
                        new_refresh_token=last[token_id],
                        idle_expires_at=None,
                        now=3000.0 + n,
                    )

        report, _ = await asyncio.gather(store.rotate_keys(batch_size=1), refresh_all(15))
        assert report.complete
        for token_id in ids:
            assert await store.read_refresh_token(token_id) == last[token_id]
        final = await store.rotate_keys()
        assert final.complete and final.droppable == [OLD_ID]
        for token_id in ids:
            assert await store.read_refresh_token(token_id) == last[token_id]
    finally:
        await server.close()
        await store.close()
