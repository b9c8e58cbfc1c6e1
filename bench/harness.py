"""What the benchmarks share: run settings, percentiles, PASS/MISS lines, a Jupyter server
subprocess with the extension, and consents completed at the dev provider over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import httpx

from jupyter_offline_token.oidc import new_pkce, new_state

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))

from dev_postgres import PostgresCluster  # noqa: E402
from dev_provider import DevProvider  # noqa: E402

__all__ = [
    "ROOT",
    "DevProvider",
    "JupyterServer",
    "PostgresCluster",
    "RawRefresher",
    "Settings",
    "check",
    "database_args",
    "durable_cluster",
    "forget_shared_access_tokens",
    "grant_via_server",
    "own_refresh_token",
    "percentile",
    "show_latency",
]

T = TypeVar("T")
# Any loopback URL is accepted by the dev provider; nothing ever listens on this one.
RAW_REDIRECT_URI = "http://127.0.0.1/bench/callback"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Settings:
    """How long to run: ``quick`` is a smoke run of a few seconds per benchmark."""

    quick: bool = False

    def pick(self, quick: T, full: T) -> T:
        return quick if self.quick else full


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def show_latency(label: str, seconds: list[float]) -> dict[str, float]:
    """Print n, p50, p99, max in milliseconds; return them."""
    figures = {
        "n": float(len(seconds)),
        "p50_ms": percentile(seconds, 50) * 1000,
        "p99_ms": percentile(seconds, 99) * 1000,
        "max_ms": max(seconds) * 1000,
    }
    print(
        f"  {label:<50} n={len(seconds):<6} p50={figures['p50_ms']:8.2f} ms  "
        f"p99={figures['p99_ms']:8.2f} ms  max={figures['max_ms']:8.2f} ms"
    )
    return figures


def check(what: str, value: float, target: float, *, at_most: bool) -> bool:
    """Print one target line with PASS or MISS; these are reports, never assertions."""
    ok = value <= target if at_most else value >= target
    relation = "<=" if at_most else ">="
    print(f"  [{'PASS' if ok else 'MISS'}] {what}: {value:.3f} (target {relation} {target:g})")
    return ok


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (all its threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class JupyterServer:
    """``jupyter server`` in a subprocess on 127.0.0.1 with the extension (and the baseline
    extension ``bench.baseline_ext``), its own config/data/runtime dirs under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        vault_path: Path | None,
        encryption_key: str,
        provider: DevProvider | None,
        args: tuple[str, ...] = (),
    ) -> None:
        """``vault_path`` None: ``args`` say where the vault is (a shared vault's backend)."""
        self.workdir = workdir
        self.args = args
        self.vault_path = vault_path
        self.encryption_key = encryption_key
        self.provider = provider
        self.token = secrets.token_hex(16)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not running")
        return self.process.pid

    def start(self) -> None:
        """Spawn the server; ``started_at`` is the monotonic time just before the spawn."""
        if self.process is not None:
            raise RuntimeError("the server is already running")
        for sub in ("config", "data", "runtime", "root"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("JUPYTER_OFFLINE_TOKEN_", "JUPYTER_CONFIG", "JUPYTERHUB_"))
        }
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "JUPYTER_CONFIG_DIR": str(self.workdir / "config"),
                "JUPYTER_DATA_DIR": str(self.workdir / "data"),
                "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime"),
                "JUPYTER_PLATFORM_DIRS": "1",
                "JUPYTER_OFFLINE_TOKEN_KEYS": self.encryption_key,
            }
        )
        if self.provider is not None:
            env.update(
                {
                    "JUPYTER_OFFLINE_TOKEN_ISSUER": self.provider.issuer,
                    "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": self.provider.client_id,
                    "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": self.provider.client_secret,
                }
            )
        jupyter_server = shutil.which("jupyter-server", path=str(Path(sys.executable).parent))
        argv = [
            jupyter_server or "jupyter-server",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.workdir / 'root'}",
            f"--IdentityProvider.token={self.token}",
            *([f"--OfflineTokenApp.vault_path={self.vault_path}"] if self.vault_path else []),
            "--ServerApp.jpserver_extensions="
            + json.dumps({"jupyter_offline_token": True, "bench.baseline_ext": True}).replace(
                "true", "True"
            ),
            *self.args,
        ]
        if os.geteuid() == 0:
            argv.append("--allow-root")  # only because this process runs as root
        self._log = open(self.workdir / f"server-{self.port}.log", "wb")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log_tail(self, lines: int = 30) -> str:
        path = Path(self._log.name) if self._log is not None else None
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    async def wait_healthy(self, timeout: float = 60.0) -> float:
        """Poll ``GET api/offline-token/health`` until 200; seconds since the spawn."""
        deadline = self.started_at + timeout
        async with httpx.AsyncClient(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    break
                try:
                    response = await client.get(
                        f"{self.url}api/offline-token/health", headers=self.headers
                    )
                    if response.status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.02)
        raise RuntimeError(f"the Jupyter server did not become healthy:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (SIGINT-like clean shutdown), SIGKILL after 15 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()


def forget_shared_access_tokens(vault_path: Path) -> None:
    """As if every access token had expired: clear the access tokens a SQLite vault shares
    between processes (issue 11), so the next request makes a grant. A server restart alone no
    longer forces one (it empties the memory cache, not the vault)."""
    conn = sqlite3.connect(vault_path, timeout=30.0)
    try:
        with conn:
            conn.execute(
                "UPDATE tokens SET access_ct = NULL, access_nonce = NULL, access_key_id = NULL, "
                "access_expires_at = NULL"
            )
    finally:
        conn.close()


def database_args(url: str) -> tuple[str, ...]:
    """A server's settings for a PostgreSQL vault at ``url`` (its key comes from the
    environment, ``JUPYTER_OFFLINE_TOKEN_KEYS``, as for SQLite)."""
    return (f"--OfflineTokenApp.database_url={url}",)


async def durable_cluster() -> PostgresCluster:
    """A started throwaway PostgreSQL server with fsync, full_page_writes and synchronous_commit
    on (SQLite vaults run with synchronous=FULL): the caller stops it."""
    cluster = PostgresCluster(durable=True)
    try:
        await asyncio.to_thread(cluster.start)
    except BaseException:
        cluster.stop()
        raise
    return cluster


async def grant_via_server(server: JupyterServer, provider: DevProvider, label: str) -> str:
    """Consent through the REST API, login + allow at the provider, deliver the callback."""
    async with httpx.AsyncClient(timeout=30.0, headers=server.headers) as client:
        response = await client.post(
            f"{server.url}api/offline-token/consents", json={"label": label}
        )
        if response.status_code != 201:
            raise RuntimeError(f"consent failed: HTTP {response.status_code} {response.text}")
        created = response.json()
        location = await asyncio.to_thread(provider.complete_consent, created["consent_url"])
        callback = await client.get(location)
        if callback.status_code not in (200, 303):
            raise RuntimeError(f"callback failed: HTTP {callback.status_code}")
        token_id: str = created["persistent_token_id"]
        return token_id


async def own_refresh_token(provider: DevProvider) -> str:
    """A refresh token obtained by this process itself (PKCE code flow, confidential client),
    for the raw-grant baselines."""
    verifier, challenge = new_pkce()
    url = provider.authorization_url(
        redirect_uri=RAW_REDIRECT_URI, state=new_state(), code_challenge=challenge
    )
    location = await asyncio.to_thread(provider.complete_consent, url)
    code = parse_qs(urlsplit(location).query)["code"][0]
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(
            provider.endpoint("token"),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": RAW_REDIRECT_URI,
                "code_verifier": verifier,
            },
            auth=(provider.client_id, provider.client_secret),
        )
    if response.status_code != 200 or "refresh_token" not in response.json():
        raise RuntimeError(f"code exchange failed: HTTP {response.status_code}")
    refresh_token: str = response.json()["refresh_token"]
    return refresh_token


class RawRefresher:
    """The baseline: one bare refresh grant with httpx, following rotation."""

    def __init__(self, provider: DevProvider, refresh_token: str) -> None:
        self.token_endpoint = provider.endpoint("token")
        self.auth = (provider.client_id, provider.client_secret)
        self._refresh_token = refresh_token

    def __repr__(self) -> str:
        return f"RawRefresher({self.token_endpoint!r})"

    async def grant(self, client: httpx.AsyncClient) -> float:
        """One grant; returns its latency in seconds."""
        started = time.perf_counter()
        response = await client.post(
            self.token_endpoint,
            data={"grant_type": "refresh_token", "refresh_token": self._refresh_token},
            auth=self.auth,
            headers={"Accept": "application/json"},
        )
        body = response.json()
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"raw refresh grant failed: HTTP {response.status_code}")
        self._refresh_token = body.get("refresh_token") or self._refresh_token
        return elapsed
