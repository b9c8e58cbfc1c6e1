"""Issue 11: ``vault_scale`` on PostgreSQL. Every read route on a real server over a PostgreSQL
vault of 100,000 entries (+ 100,000 tasks) of ONE owner against the same routes on a second
server over 1,000 (+ 1,000), requests paired one by one (target: per route, p50 at 100k <= 1.5x
p50 at 1k, as on SQLite); then server start and RSS on the 100k database against an empty one.

Both databases live in one throwaway durable cluster (fsync and synchronous_commit on). Their
schema is created by the store's ``open()`` (so the ``token_counts`` triggers run for every row),
then filled with one ``COPY ... FROM STDIN`` per table (not through the API) with the same rows
``vault_scale`` bulk-inserts into SQLite: real ciphertexts under the shared AAD, a sample of which
is decrypted back through the store. ``ANALYZE`` follows the load, as autovacuum would shortly
after a bulk load in a deployment (without it the first plans are made on empty-table
statistics).
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.paging import Cursor
from jupyter_offline_token.stores.postgres import PostgresTokenStore

from .harness import (
    JupyterServer,
    PostgresCluster,
    Settings,
    check,
    database_args,
    durable_cluster,
)
from .vault_scale import (
    ENTRIES,
    SMALL,
    TARGET_RATIO,
    TASK_COLUMNS,
    TOKEN_COLUMNS,
    Start,
    Target,
    _server_owner,
    generate,
    report_routes,
    server_start,
    time_routes,
)

BATCH = 2_000


def copy_in(url: str, key: str, entries: int) -> tuple[list[str], dict[str, bytes]]:
    """COPY ``entries`` entries and as many tasks into the (already created) database, one
    transaction per BATCH rows: every row's ``token_counts`` trigger updates the same few count
    rows, and in one long transaction each update walks all the versions the transaction made
    before it (none can be pruned until it commits), which made one 100k-row COPY take 131 s."""
    made = generate(key, entries)
    with psycopg.connect(url) as conn:
        for table, columns, rows in (
            ("tokens", TOKEN_COLUMNS, made.tokens),
            ("tasks", TASK_COLUMNS, made.tasks),
        ):
            for start in range(0, len(rows), BATCH):
                with conn.cursor() as cur:
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        for row in rows[start : start + BATCH]:
                            copy.write_row(row)
                conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE tokens")
        conn.execute("VACUUM ANALYZE tasks")
        conn.execute("VACUUM ANALYZE token_counts")
    return made.ids, made.samples


async def make_database(cluster: PostgresCluster, key: str, entries: int) -> tuple[str, list[str]]:
    """A new database with the vault's schema, filled and checked; its URL and entry ids."""
    url = cluster.create_database()
    vault = PostgresTokenStore(url=url, encryption_keys=[key])
    await vault.open()
    await vault.close()
    started = time.perf_counter()
    ids, samples = await asyncio.to_thread(copy_in, url, key, entries)
    took = time.perf_counter() - started
    vault = PostgresTokenStore(url=url, encryption_keys=[key])
    await vault.open()
    try:
        for token_id, plain in samples.items():
            if (await vault.read_refresh_token(token_id)).encode() != plain:
                raise RuntimeError("a copied ciphertext does not decrypt to its token")
        counts = await vault.count_by_status(_server_owner())
    finally:
        await vault.close()
    size = cluster.execute(url, "SELECT pg_database_size(current_database())")[0][0] / 2**20
    print(
        f"  database of {entries:>6} entries + {entries} tasks of one owner: generated and "
        f"copied in {took:.1f} s, {size:.1f} MiB; {len(samples)} sample ciphertexts decrypted "
        f"through the store; {counts}"
    )
    return url, ids


def deep_cursors(url: str, table: str, count: int, seed: int = 3) -> list[str]:
    """Cursors of pages 50-99 % deep into the owner's list (as next_cursor would give them)."""
    rng = random.Random(seed)
    with psycopg.connect(url) as conn:
        counted = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()  # noqa: S608
        assert counted is not None
        total = counted[0]
        cursors = []
        for _ in range(count):
            offset = rng.randint(total // 2, total - 101)
            row = conn.execute(
                f"SELECT created_at, seq FROM {table} "  # noqa: S608
                "ORDER BY created_at DESC, seq DESC LIMIT 1 OFFSET %s",
                (offset,),
            ).fetchone()
            assert row is not None
            cursors.append(Cursor(row[0], row[1]).encode())
        return cursors


async def run(settings: Settings) -> None:
    rounds = settings.pick(2, 6)
    per_round = settings.pick(15, 40)
    starts = settings.pick(1, 3)
    key = KeyRing.generate()
    cluster = await durable_cluster()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-vault-pg-") as tmp:
            root = Path(tmp)
            urls: dict[str, str] = {}
            ids: dict[str, list[str]] = {}
            for name, entries in (("1k", SMALL), ("100k", ENTRIES)):
                urls[name], ids[name] = await make_database(cluster, key, entries)
            figures = await _routes(root, urls, ids, key, rounds, per_round)
            report_routes(figures, rounds, per_round, per="database", backend="PostgreSQL ")
            empty_url, _ = await make_database(cluster, key, 0)
            results: dict[str, list[Start]] = {"empty": [], "100k": []}
            for index in range(starts):
                for name, url in (("empty", empty_url), ("100k", urls["100k"])):
                    found = await server_start(
                        root / f"start-{name}-{index}", None, key, database_args(url)
                    )
                    results[name].append(found)
            _report_starts(results, starts)
    finally:
        await asyncio.to_thread(cluster.stop)


async def _routes(
    root: Path,
    urls: dict[str, str],
    ids: dict[str, list[str]],
    key: str,
    rounds: int,
    per_round: int,
) -> dict[str, Any]:
    targets: dict[str, Target] = {}
    try:
        for name, url in urls.items():
            server = JupyterServer(
                root / f"server-{name}",
                vault_path=None,
                encryption_key=key,
                provider=None,
                args=database_args(url),
            )
            server.start()
            targets[name] = Target(
                server,
                ids[name],
                deep_cursors(url, "tokens", 50),
                deep_cursors(url, "tasks", 50),
            )
        for target in targets.values():
            await target.server.wait_healthy(timeout=120)
        return await time_routes(targets, rounds, per_round)
    finally:
        for target in targets.values():
            target.server.stop()


def _report_starts(results: dict[str, list[Start]], starts: int) -> None:
    for name, runs in results.items():
        print(
            f"  server on the {name} database: health 200 after "
            f"{' '.join(f'{r.healthy:.2f}' for r in runs)} s; VmRSS after 20 health calls "
            f"{' '.join(f'{r.rss:.0f}' for r in runs)} MiB"
        )
    best = {name: min(r.healthy for r in runs) for name, runs in results.items()}
    rss = {name: max(r.rss for r in runs) for name, runs in results.items()}
    ratio = best["100k"] / best["empty"]
    print(
        f"  ratio 100k/empty: time to health 200 (best of {starts}) {ratio:.2f}x; "
        f"RSS {rss['100k'] / rss['empty']:.2f}x"
    )
    check("PostgreSQL start: time to health 200, 100k / empty", ratio, TARGET_RATIO, at_most=True)
