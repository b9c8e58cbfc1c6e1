"""Benchmark 4: every read route on a vault of 100,000 entries of ONE owner against the same
routes on a vault of 1,000 entries (target: 100k p50 <= 1.5x the 1k p50, per route).

Both vaults are filled by a direct SQLite bulk insert in the vault's own schema (created by
its ``open()``, so its indexes and the triggers that keep ``token_counts`` run on every row),
with real ciphertexts from ``KeyRing.encrypt`` under the vault's associated data; a sample is
decrypted back through the store to prove it. Every entry belongs to the server's own OS user (the
owner a single-user server serves), as many tasks as entries too. Layout: 93 % active (1 % of
them retrying), 3 % failed, 2 % expired, 1 % pending, 1 % revoked; refresh tokens half opaque
(43 chars) and half JWT-sized (~800 chars); tasks mostly completed, a tenth linked to an entry.
All timestamps lie within the last 6 days, so the retention purge (7 days) and the keep-alive
scan leave the data alone while the bench runs.

Two real ``jupyter server`` processes, one per vault, answer at the same time; requests are
paired (one to each vault, the order alternating), so a shared machine's load hits both alike.
Routes: ``GET tokens`` (first page, default 100), ``GET tokens?cursor=`` (a page 50-99 % deep,
cursor built from the row there), ``GET tokens/{id}`` (random id), ``GET health?limit=1`` (what
the dashboard polls: the counts), ``GET health?limit=20`` (a full page of entries that need
attention in both vaults: the 1k vault has ~40, so its default page of 100 would be a smaller
answer than the 100k one's), ``GET tasks`` (first page) and ``GET tasks?cursor=`` (deep). Then
server start time and RSS on the 100k vault against an empty one.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
import random
import secrets
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.paging import Cursor
from jupyter_offline_token.stores import SQLiteTokenStore
from jupyter_offline_token.stores.sqlite.rows import consent_aad as _consent_aad
from jupyter_offline_token.stores.sqlite.rows import refresh_aad as _refresh_aad

from .harness import JupyterServer, Settings, check, rss_mib, show_latency

ENTRIES = 100_000
SMALL = 1_000
TARGET_RATIO = 1.5
ISSUER = "http://127.0.0.1:9/realms/bench"  # never contacted: the servers run unconfigured
API = "api/offline-token/"


def _server_owner() -> str:
    """The owner the extension uses on a single-user server (owner_scope 'server')."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


def _refresh_token(index: int) -> bytes:
    if index % 2:
        return secrets.token_urlsafe(32).encode()
    # header.payload.signature of a Keycloak-sized offline token
    return ".".join(secrets.token_urlsafe(n) for n in (27, 560, 64)).encode()


def _status(roll: float) -> str:
    for status, upto in (
        ("active", 0.93),
        ("failed", 0.96),
        ("expired", 0.98),
        ("pending", 0.99),
    ):
        if roll < upto:
            return status
    return "revoked"


TOKEN_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, subject, "
    "consent_expires_at, last_refresh_at, refresh_count, last_error, refresh_state, state_hash, "
    "consent_ct, consent_nonce, consent_key_id, secret_ct, secret_nonce, secret_key_id"
)
TASK_COLUMNS = (
    "id, owner, name, kind, status, persistent_token_id, progress, message, spec, created_at, "
    "updated_at, started_at, completed_at"
)


@dataclass
class Generated:
    """The rows of one vault (in TOKEN_COLUMNS and TASK_COLUMNS order), the entry ids and a
    few ``{id: refresh token}`` samples to decrypt back through the store."""

    tokens: list[tuple[Any, ...]]
    tasks: list[tuple[Any, ...]]
    ids: list[str]
    samples: dict[str, bytes]


def fill(path: Path, key: str, entries: int, seed: int = 7) -> tuple[list[str], dict[str, bytes]]:
    """Bulk-insert ``entries`` entries and as many tasks of one owner into the (already
    created) SQLite vault at ``path``; return the entry ids and a few samples."""
    made = generate(key, entries, seed)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ({', '.join('?' * 22)})",  # noqa: S608
            made.tokens,
        )
        conn.executemany(
            f"INSERT INTO tasks ({TASK_COLUMNS}) VALUES ({', '.join('?' * 13)})",  # noqa: S608
            made.tasks,
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return made.ids, made.samples


def generate(key: str, entries: int, seed: int = 7) -> Generated:
    """``entries`` entries and as many tasks of the server's owner, with real ciphertexts."""
    rng = random.Random(seed)
    ring = KeyRing.from_config([key])
    owner = _server_owner()
    now = time.time()
    samples: dict[str, bytes] = {}
    rows, ids = [], []
    for index in range(entries):
        token_id = str(uuid.uuid4())
        ids.append(token_id)
        created = now - rng.uniform(3600, 6 * 86400)
        status = _status(rng.random())
        retrying = status == "active" and rng.random() < 0.01
        secret_ct = secret_nonce = secret_key_id = None
        consent_ct = consent_nonce = consent_key_id = state_hash = None
        if status in ("active", "failed"):
            plain = _refresh_token(index)
            secret_key_id, secret_nonce, secret_ct = ring.encrypt(
                plain, _refresh_aad(token_id, owner)
            )
            if len(samples) < 5 and status == "active":
                samples[token_id] = plain
        elif status == "pending":
            consent = json.dumps(
                {
                    "code_verifier": secrets.token_urlsafe(48),
                    "nonce": secrets.token_urlsafe(24),
                    "redirect_uri": "http://127.0.0.1:8888/offline-token/callback",
                }
            ).encode()
            consent_key_id, consent_nonce, consent_ct = ring.encrypt(
                consent, _consent_aad(token_id, owner)
            )
            state_hash = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        # Refreshed within the last hour: the keep-alive scan finds nothing to do.
        refreshed = now - rng.uniform(0, 3600) if status == "active" else None
        consent_expires = {"pending": now + 600, "expired": created + 600}.get(status)
        rows.append(
            (
                token_id,
                owner,
                ISSUER,
                "jupyter",
                status,
                "openid offline_access profile",
                created,
                refreshed or created,
                f"run {index}",
                "alice" if status != "pending" else None,
                consent_expires,
                refreshed,
                rng.randint(0, 500) if refreshed else 0,
                "refresh token rejected by the provider (invalid_grant): request consent again"
                if status == "failed"
                else "provider unreachable (timeout)"
                if retrying
                else None,
                "failed" if status == "failed" else "retrying" if retrying else "idle",
                state_hash,
                consent_ct,
                consent_nonce,
                consent_key_id,
                secret_ct,
                secret_nonce,
                secret_key_id,
            )
        )
    tasks = []
    for index in range(entries):
        created = now - rng.uniform(3600, 6 * 86400)
        roll = rng.random()
        status = "completed" if roll < 0.9 else "failed" if roll < 0.97 else "cancelled"
        tasks.append(
            (
                str(uuid.uuid4()),
                owner,
                f"job {index}",
                "command",
                status,
                rng.choice(ids) if rng.random() < 0.1 else None,
                100 if status == "completed" else 40,
                "exited with code 0" if status == "completed" else "exited with code 1",
                json.dumps({"command": ["python", "train.py"], "parameters": {}}),
                created,
                created + 600,
                created,
                created + 600,
            )
        )
    return Generated(rows, tasks, ids, samples)


def deep_cursors(path: Path, table: str, count: int, seed: int = 3) -> list[str]:
    """Cursors of pages 50-99 % deep into the owner's list (as next_cursor would give them)."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path)
    try:
        total = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608
        cursors = []
        for _ in range(count):
            offset = rng.randint(total // 2, total - 101)
            created, rowid = conn.execute(
                f"SELECT created_at, rowid FROM {table} "  # noqa: S608
                "ORDER BY created_at DESC, rowid DESC LIMIT 1 OFFSET ?",
                (offset,),
            ).fetchone()
            cursors.append(Cursor(created, rowid).encode())
        return cursors
    finally:
        conn.close()


async def make_vault(path: Path, key: str, entries: int) -> list[str]:
    """Create the schema through the store, fill it, prove the ciphertexts decrypt; return ids."""
    vault = SQLiteTokenStore(path, encryption_keys=[key])
    await vault.open()
    await vault.close()
    started = time.perf_counter()
    ids, samples = await asyncio.to_thread(fill, path, key, entries)
    took = time.perf_counter() - started
    vault = SQLiteTokenStore(path, encryption_keys=[key])
    await vault.open()
    try:
        for token_id, plain in samples.items():
            if (await vault.read_refresh_token(token_id)).encode() != plain:
                raise RuntimeError("a bulk-inserted ciphertext does not decrypt to its token")
        counts = await vault.count_by_status(_server_owner())
    finally:
        await vault.close()
    size = path.stat().st_size / 2**20
    print(
        f"  vault of {entries:>6} entries + {entries} tasks of one owner: filled in {took:.1f} s, "
        f"{size:.1f} MiB; {len(samples)} sample ciphertexts decrypted through the store; {counts}"
    )
    return ids


@dataclass
class Target:
    """One running server and what its routes are asked for."""

    server: JupyterServer
    ids: list[str]
    token_cursors: list[str]
    task_cursors: list[str]

    def request(self, route: str, rng: random.Random) -> tuple[str, dict[str, str]]:
        if route == "tokens first page":
            return "tokens", {}
        if route == "tokens deep page":
            return "tokens", {"cursor": rng.choice(self.token_cursors)}
        if route == "one token":
            return f"tokens/{rng.choice(self.ids)}", {}
        if route == "health (dashboard poll)":
            return "health", {"limit": "1"}
        if route == "health, page of 20":
            return "health", {"limit": "20"}
        if route == "tasks first page":
            return "tasks", {}
        if route == "tasks deep page":
            return "tasks", {"cursor": rng.choice(self.task_cursors)}
        raise ValueError(route)


ROUTES = (
    "tokens first page",
    "tokens deep page",
    "one token",
    "health (dashboard poll)",
    "health, page of 20",
    "tasks first page",
    "tasks deep page",
)


async def time_routes(targets: dict[str, Target], rounds: int, per_round: int) -> dict:
    """``{route: {name: [seconds]}}``: sequential requests, paired: each request to one vault is
    followed by the same kind of request to the other, the order alternating, so the load of a
    shared machine falls on both alike."""
    times: dict[str, dict[str, list[float]]] = {r: {n: [] for n in targets} for r in ROUTES}
    sizes: dict[str, dict[str, int]] = {r: {} for r in ROUTES}
    rng = random.Random(5)
    clients = {
        name: httpx.AsyncClient(headers=t.server.headers, timeout=60) for name, t in targets.items()
    }
    try:
        for round_index in range(rounds + 1):  # round 0 warms up and is not counted
            for route in ROUTES:
                for index in range(per_round):
                    names = list(targets) if index % 2 else list(reversed(targets))
                    for name in names:
                        target, client = targets[name], clients[name]
                        path, params = target.request(route, rng)
                        started = time.perf_counter()
                        response = await client.get(
                            f"{target.server.url}{API}{path}", params=params
                        )
                        took = time.perf_counter() - started
                        if response.status_code != 200:
                            raise RuntimeError(
                                f"{route} on {name}: HTTP {response.status_code} {response.text}"
                            )
                        if round_index:
                            times[route][name].append(took)
                        sizes[route][name] = len(response.content)
    finally:
        for client in clients.values():
            await client.aclose()
    return {"times": times, "sizes": sizes}


@dataclass
class Start:
    healthy: float  # seconds from spawn until health answers 200
    rss: float  # VmRSS MiB after 20 health calls


async def server_start(
    work: Path, vault_path: Path | None, key: str, args: tuple[str, ...] = ()
) -> Start:
    """``vault_path`` None: ``args`` say where the vault is (a PostgreSQL database)."""
    server = JupyterServer(
        work, vault_path=vault_path, encryption_key=key, provider=None, args=args
    )
    server.start()
    try:
        healthy = await server.wait_healthy(timeout=120)
        async with httpx.AsyncClient(headers=server.headers, timeout=60) as client:
            for _ in range(20):
                (await client.get(f"{server.url}{API}health")).raise_for_status()
        return Start(healthy, rss_mib(server.pid))
    finally:
        server.stop()


async def run(settings: Settings) -> None:
    rounds = settings.pick(2, 6)
    per_round = settings.pick(15, 40)
    starts = settings.pick(1, 3)
    key = KeyRing.generate()
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        work = Path(tmp)
        paths = {"1k": work / "small" / "vault.db", "100k": work / "big" / "vault.db"}
        ids = {
            "1k": await make_vault(paths["1k"], key, SMALL),
            "100k": await make_vault(paths["100k"], key, ENTRIES),
        }
        targets: dict[str, Target] = {}
        try:
            for name, path in paths.items():
                server = JupyterServer(
                    work / f"server-{name}", vault_path=path, encryption_key=key, provider=None
                )
                server.start()
                targets[name] = Target(
                    server,
                    ids[name],
                    deep_cursors(path, "tokens", 50),
                    deep_cursors(path, "tasks", 50),
                )
            for target in targets.values():
                await target.server.wait_healthy(timeout=120)
            figures = await time_routes(targets, rounds, per_round)
        finally:
            for target in targets.values():
                target.server.stop()
        report_routes(figures, rounds, per_round)
        empty_path = work / "empty" / "vault.db"
        results: dict[str, list[Start]] = {"empty": [], "100k": []}
        for index in range(starts):
            for name, path in (("empty", empty_path), ("100k", paths["100k"])):
                results[name].append(await server_start(work / f"start-{name}-{index}", path, key))
        for name in results:
            runs = results[name]
            print(
                f"  server on the {name} vault: health 200 after "
                f"{' '.join(f'{r.healthy:.2f}' for r in runs)} s; VmRSS after 20 health calls "
                f"{' '.join(f'{r.rss:.0f}' for r in runs)} MiB"
            )
        best = {name: min(r.healthy for r in runs) for name, runs in results.items()}
        rss = {name: max(r.rss for r in runs) for name, runs in results.items()}
        print(
            f"  ratio 100k/empty: time to health 200 (best of {starts}) "
            f"{best['100k'] / best['empty']:.2f}x; RSS {rss['100k'] / rss['empty']:.2f}x"
        )


def report_routes(
    figures: dict[str, Any], rounds: int, per_round: int, *, per: str = "vault", backend: str = ""
) -> None:
    """Each route's latency on the 1k and the 100k store, checked against TARGET_RATIO."""
    print(f"  {rounds} rounds x {per_round} paired sequential requests per route and {per}")
    for route in ROUTES:
        small = show_latency(f"{route} [1k]", figures["times"][route]["1k"])
        big = show_latency(f"{route} [100k]", figures["times"][route]["100k"])
        print(
            f"  {'':<50} body {figures['sizes'][route]['1k']} / "
            f"{figures['sizes'][route]['100k']} bytes; p99 ratio "
            f"{big['p99_ms'] / small['p99_ms']:.2f}x"
        )
        check(
            f"{backend}{route}: p50 100k / 1k",
            big["p50_ms"] / small["p50_ms"],
            TARGET_RATIO,
            at_most=True,
        )
