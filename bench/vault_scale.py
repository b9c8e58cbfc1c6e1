"""Benchmark 4: a vault with 100,000 entries against a small one (100 entries).

Filled by a direct SQLite bulk insert in the vault's own schema (created by ``Vault.open``),
with real ciphertexts from ``KeyRing.encrypt`` under the vault's associated data, so the data
is what the vault itself would write; a sample is decrypted back through ``Vault`` to prove it.
Layout: 1,000 owners x 100 entries (the server's own OS user is one of them, so the server's
health view holds 100); 94 % active, 3 % failed, 2 % expired, 1 % pending; refresh tokens half
opaque (43 chars, like oidc-provider) and half JWT-sized (~800 chars, like Keycloak).

Figures: ``vault.get`` by random id, ``vault.list(owner=..., limit=50, offset=k)`` and the same
over the whole vault at random (deep) offsets, both vaults; then a real ``jupyter server`` on
each vault: time from process start until ``GET api/offline-token/health`` answers 200, and
VmRSS after 20 health calls. No targets are set in the issue: ratios are printed as figures.
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

import httpx

from jupyter_offline_token.vault import KeyRing, Vault
from jupyter_offline_token.vault.store import _consent_aad, _refresh_aad

from .harness import JupyterServer, Settings, percentile, rss_mib, show_latency

ENTRIES = 100_000
PER_OWNER = 100
ISSUER = "http://127.0.0.1:9/realms/bench"  # never contacted: the servers run unconfigured


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


def fill(path: Path, key: str, entries: int, seed: int = 7) -> dict[str, bytes]:
    """Bulk-insert ``entries`` rows into the (already created) vault at ``path``; return a few
    ``{id: refresh token}`` samples to decrypt back."""
    rng = random.Random(seed)
    ring = KeyRing.from_config([key])
    owners = [_server_owner()] + [f"user-{n:04d}" for n in range(1, entries // PER_OWNER)]
    now = time.time()
    samples: dict[str, bytes] = {}
    rows = []
    for index in range(entries):
        token_id = str(uuid.uuid4())
        owner = owners[index % len(owners)]
        created = now - rng.uniform(0, 90 * 86400)
        roll = rng.random()
        status = (
            "active"
            if roll < 0.94
            else "failed"
            if roll < 0.97
            else "expired"
            if roll < 0.99
            else "pending"
        )
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
            verifier = secrets.token_urlsafe(48)
            consent = json.dumps(
                {
                    "code_verifier": verifier,
                    "nonce": secrets.token_urlsafe(24),
                    "redirect_uri": "http://127.0.0.1:8888/offline-token/callback",
                }
            ).encode()
            consent_key_id, consent_nonce, consent_ct = ring.encrypt(
                consent, _consent_aad(token_id, owner)
            )
            state_hash = hashlib.sha256(secrets.token_bytes(32)).hexdigest()
        refreshed = created + rng.uniform(0, 86400) if status == "active" else None
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
                created + 600 if status in ("pending", "expired") else None,
                refreshed,
                rng.randint(0, 500) if refreshed else 0,
                "refresh token rejected by the provider (invalid_grant): request consent again"
                if status == "failed"
                else None,
                "failed" if status == "failed" else "idle",
                state_hash,
                consent_ct,
                consent_nonce,
                consent_key_id,
                secret_ct,
                secret_nonce,
                secret_key_id,
            )
        )
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO tokens (id, owner, issuer, client_id, status, scopes, created_at, "
            "updated_at, label, subject, consent_expires_at, last_refresh_at, refresh_count, "
            "last_error, refresh_state, state_hash, consent_ct, consent_nonce, consent_key_id, "
            "secret_ct, secret_nonce, secret_key_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return samples


async def make_vault(path: Path, key: str, entries: int) -> tuple[list[str], dict[str, bytes]]:
    """Create the schema through Vault, fill it, prove the ciphertexts decrypt; return ids."""
    vault = Vault(path, encryption_keys=[key])
    await vault.open()
    await vault.close()
    started = time.perf_counter()
    samples = await asyncio.to_thread(fill, path, key, entries)
    took = time.perf_counter() - started
    vault = Vault(path, encryption_keys=[key])
    await vault.open()
    try:
        for token_id, plain in samples.items():
            if (await vault.read_refresh_token(token_id)).encode() != plain:
                raise RuntimeError("a bulk-inserted ciphertext does not decrypt to its token")
    finally:
        await vault.close()

    def ids() -> list[str]:
        conn = sqlite3.connect(path)
        try:
            return [row[0] for row in conn.execute("SELECT id FROM tokens")]
        finally:
            conn.close()

    all_ids = await asyncio.to_thread(ids)
    size = path.stat().st_size / 2**20
    print(
        f"  vault of {entries:>6} entries: filled in {took:.1f} s, {size:.1f} MiB; "
        f"{len(samples)} sample ciphertexts decrypted through Vault"
    )
    return all_ids, samples


async def time_calls(
    vault: Vault, ids: list[str], owner: str, samples: int, deep: int
) -> dict[str, list]:
    rng = random.Random(11)
    get_times, owner_times, global_times = [], [], []
    total = len(ids)
    for _ in range(samples):
        token_id = rng.choice(ids)
        started = time.perf_counter()
        record = await vault.get(token_id)
        get_times.append(time.perf_counter() - started)
        if record is None:
            raise RuntimeError("get by id found nothing")
    for _ in range(samples // 5):
        offset = rng.randint(0, PER_OWNER - 50)
        started = time.perf_counter()
        page = await vault.list(owner=owner, limit=50, offset=offset)
        owner_times.append(time.perf_counter() - started)
        if len(page) != 50:
            raise RuntimeError(f"owner page has {len(page)} entries")
    for _ in range(deep):
        offset = rng.randint(0, total - 50)
        started = time.perf_counter()
        page = await vault.list(limit=50, offset=offset)
        global_times.append(time.perf_counter() - started)
    return {"get": get_times, "owner": owner_times, "global": global_times}


@dataclass
class Start:
    """One server start on a vault."""

    healthy: float  # seconds from spawn until health answers 200
    started: float | None  # ... until the extension logged that its start finished (None: not yet)
    rss_healthy: float  # VmRSS MiB right after the first 200
    rss_end: float  # VmRSS MiB when the start finished or the wait ran out
    health_ms: list[float]  # latency of health calls made while waiting


async def server_start(work: Path, vault_path: Path, key: str, wait: float) -> Start:
    """Spawn a server on the vault; poll health until 200, then keep polling until the
    extension's start (vault open + background services such as the refresh engine's startup
    scan) has logged completion, at most ``wait`` seconds."""
    server = JupyterServer(work, vault_path=vault_path, encryption_key=key, provider=None)
    server.start()
    marker = f": vault {vault_path}"
    try:
        healthy = await server.wait_healthy(timeout=120)
        rss_healthy = rss_mib(server.pid)
        health_ms: list[float] = []
        started: float | None = None
        async with httpx.AsyncClient(headers=server.headers, timeout=120) as client:
            while True:
                sent = time.perf_counter()
                response = await client.get(f"{server.url}api/offline-token/health")
                response.raise_for_status()
                health_ms.append((time.perf_counter() - sent) * 1000)
                elapsed = time.monotonic() - server.started_at
                if marker in server.log_tail(400):
                    started = elapsed
                    break
                if elapsed > wait:
                    break
                await asyncio.sleep(0.25)
        return Start(healthy, started, rss_healthy, rss_mib(server.pid), health_ms)
    finally:
        server.stop()


async def run(settings: Settings) -> None:
    samples = settings.pick(1000, 10000)
    starts = settings.pick(1, 3)
    deep = settings.pick(20, 60)  # a whole-vault page at a deep offset costs ~0.4 s
    wait = settings.pick(15.0, 75.0)
    key = KeyRing.generate()
    owner = _server_owner()
    with tempfile.TemporaryDirectory(prefix="bench-vault-") as tmp:
        work = Path(tmp)
        small_path, big_path = work / "small" / "vault.db", work / "big" / "vault.db"
        small_ids, _ = await make_vault(small_path, key, PER_OWNER)
        big_ids, _ = await make_vault(big_path, key, ENTRIES)
        figures: dict[str, dict[str, list]] = {}
        for name, path, ids in (("small", small_path, small_ids), ("big", big_path, big_ids)):
            vault = Vault(path, encryption_keys=[key])
            await vault.open()
            try:
                figures[name] = await time_calls(vault, ids, owner, samples, deep)
            finally:
                await vault.close()
        rows = (
            ("get", "vault.get(id)"),
            ("owner", "vault.list(owner, limit=50, offset<=50)"),
            ("global", "vault.list(limit=50, random offset)"),
        )
        for what, label in rows:
            small = show_latency(f"{label} [{PER_OWNER}]", figures["small"][what])
            big = show_latency(f"{label} [{ENTRIES}]", figures["big"][what])
            print(
                f"  {'':<50} ratio 100k/100: p50 {big['p50_ms'] / small['p50_ms']:.2f}x, "
                f"p99 {big['p99_ms'] / small['p99_ms']:.2f}x"
            )
        empty_path = work / "empty" / "vault.db"
        results: dict[str, list[Start]] = {"empty": [], "big": []}
        for index in range(starts):
            for name, path in (("empty", empty_path), ("big", big_path)):
                results[name].append(
                    await server_start(work / f"server-{name}-{index}", path, key, wait)
                )
        for name, label in (("empty", "empty vault"), ("big", f"{ENTRIES} entries")):
            runs = results[name]
            done = [f"{r.started:.2f}" if r.started is not None else f">{wait:.0f}" for r in runs]
            health = [ms for r in runs for ms in r.health_ms]
            print(
                f"  server, {label}: health 200 after "
                f"{' '.join(f'{r.healthy:.2f}' for r in runs)} s; extension start finished after "
                f"{' '.join(done)} s; VmRSS at first 200 "
                f"{' '.join(f'{r.rss_healthy:.0f}' for r in runs)} MiB, at the end "
                f"{' '.join(f'{r.rss_end:.0f}' for r in runs)} MiB; health calls meanwhile "
                f"p50 {percentile(health, 50):.0f} ms, max {max(health):.0f} ms (n={len(health)})"
            )
        empty, big = results["empty"], results["big"]
        best_empty = min(r.healthy for r in empty)
        best_big = min(r.healthy for r in big)
        rss_first = max(r.rss_healthy for r in big) / max(r.rss_healthy for r in empty)
        rss_end = max(r.rss_end for r in big) / max(r.rss_end for r in empty)
        print(
            f"  ratio 100k/empty: time to health 200 (best of {starts}) "
            f"{best_big / best_empty:.2f}x (+{(best_big - best_empty) * 1000:.0f} ms); "
            f"RSS at first 200 {rss_first:.2f}x; RSS at the end {rss_end:.2f}x"
        )
        finished = [r.started for r in big if r.started is not None]
        finished_empty = [r.started for r in empty if r.started is not None]
        if finished and finished_empty:
            print(
                f"  ratio 100k/empty, extension start finished (best): "
                f"{min(finished) / min(finished_empty):.2f}x"
            )
        else:
            print(
                f"  NOTE: with {ENTRIES} entries the extension's start had not finished after "
                f"{wait:.0f} s in {len(big) - len(finished)} of {len(big)} run(s)"
            )
