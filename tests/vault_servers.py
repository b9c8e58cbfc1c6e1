"""Real ``jupyter server`` processes for the server-process tests: ``start_server`` (own
config/data/runtime dirs, this checkout first on the path) and the ``servers`` fixture that kills
what a test left running; for the issue-11 tests (test_grant_shared.py, test_grant_killed.py), one
configured for a dev provider on a shared vault (a SQLite file, or a PostgreSQL database when
given its URL), consent through it, access tokens from it."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from server_fixtures import TEST_KEY

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0  # the machine is shared: a loaded start can take a while
STOP_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    base: str
    token: str
    log_path: Path
    workdir: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return httpx.request(
            method, f"{self.base}api/offline-token/{path}", headers=self.headers, **kwargs
        )

    def sigterm(self) -> int:
        """One SIGTERM; the exit status, or a failure if it has not exited in time."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            pytest.fail("the server did not stop on the first SIGTERM:\n" + self.log()[-3000:])


def start_server(
    workdir: Path,
    *,
    config: str = "",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Server:
    """``jupyter server`` with its own config/data/runtime dirs under ``workdir``, this
    checkout first on the path, and no JUPYTER_OFFLINE_TOKEN_* variable but those given."""
    for sub in ("config", "data", "runtime", "root"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "jupyter_server_config.py").write_text(
        'c.ServerApp.jpserver_extensions = {"jupyter_offline_token": True}\n' + config
    )
    port, token = _free_port(), secrets.token_hex(16)
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JUPYTER_OFFLINE_TOKEN_", "JUPYTER_CONFIG", "JUPYTERHUB_"))
    }
    environ.update(
        {
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
            "JUPYTER_CONFIG_DIR": str(workdir / "config"),
            "JUPYTER_DATA_DIR": str(workdir / "data"),
            "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
            **(env or {}),
        }
    )
    jupyter_server = shutil.which("jupyter-server", path=str(Path(sys.executable).parent))
    argv = [
        jupyter_server or "jupyter-server",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={workdir / 'root'}",
        f"--IdentityProvider.token={token}",
        *args,
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv, env=environ, cwd=workdir / "root", stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(proc, f"http://127.0.0.1:{port}/", token, log_path, workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if httpx.get(f"{server.base}api/status", headers=server.headers).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            pytest.fail("jupyter server did not start:\n" + server.log()[-3000:])
        time.sleep(0.3)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers started by a test; killed at the end if the test left them running."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def start_vault_server(
    workdir: Path,
    idp,
    vault_path: Path,
    *,
    proxy: str | None = None,
    http_timeout: float = 5.0,
    database_url: str | None = None,
) -> Server:
    """A server for ``idp`` on the vault at ``vault_path``, or in the PostgreSQL database at
    ``database_url`` when given; ``proxy``: an HTTP proxy URL its provider requests go
    through."""
    config = (
        f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
        f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
        f"c.OfflineTokenApp.vault_path = {str(vault_path)!r}\n"
        f"c.OfflineTokenApp.http_timeout = {http_timeout!r}\n"
    )
    env = {
        "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": idp.client_secret,
        "JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY,
    }
    if database_url is not None:
        env["JUPYTER_OFFLINE_TOKEN_DATABASE_URL"] = database_url
    env.update({"NO_PROXY": "", "no_proxy": ""})
    if proxy is not None:
        env.update({"HTTP_PROXY": proxy, "http_proxy": proxy})
    return start_server(workdir, config=config, env=env)


async def consent(server: Server, idp) -> str:
    """Consent through ``server`` (login and allow at the provider); the active token's id."""
    created = await asyncio.to_thread(server.api, "POST", "consents", json={})
    assert created.status_code == 201, created.text
    location = await asyncio.to_thread(idp.complete_consent, created.json()["consent_url"])
    callback = urlsplit(location)
    page = await asyncio.to_thread(
        httpx.get,
        f"{server.base.rstrip('/')}{callback.path}?{callback.query}",
        headers=server.headers,
    )
    assert page.status_code == 200, page.text
    return str(created.json()["persistent_token_id"])


async def access_token(
    client: httpx.AsyncClient, server: Server, token_id: str, min_ttl: int
) -> httpx.Response:
    return await client.post(
        f"{server.base}api/offline-token/tokens/{token_id}/access-token",
        headers=server.headers,
        json={"min_ttl": min_ttl},
    )
