"""A PostgreSQL vault that is not there when the server starts, or goes away while it runs
(issue 11): the extension answers 503 ``vault_unavailable`` naming ``OfflineTokenApp.database_url``
meanwhile (never a 500), retries in the background, and serves again once the database is back,
without a restart and with nothing lost.

The database is a throwaway cluster of its own (the session's cluster is shared, so it cannot be
stopped): initdb'd first, its port chosen, the server started against that port while nothing
listens there; then ``postgres`` is started, stopped (fast shutdown: every connection is cut) and
started again on the same data directory and port.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_fixture import find_binaries
from server_fixtures import TEST_KEY
from vault_servers import Server, consent, start_server

pytestmark = pytest.mark.timeout(300)

DEADLINE = 120.0  # generous: retries back off to 30 s between attempts; a loaded machine


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RestartableCluster:
    """A cluster initdb'd in a temporary directory (password auth over TCP) that can be started
    and stopped again and again on one port, run as ``nobody`` when the suite runs as root."""

    def __init__(self) -> None:
        self.bin = find_binaries()
        where = "/tmp" if os.getuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="jot-pg-restart-", dir=where))
        self.password = "pg-" + secrets.token_hex(10)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.getuid() == 0:
            self._as = {"user": "nobody", "group": "nogroup"}
            shutil.chown(self.root, "nobody", "nogroup")
        os.chmod(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            shutil.chown(pwfile, "nobody", "nogroup")
        done = subprocess.run(
            [
                *(str(self.bin / "initdb"), "-D", str(self.root / "data"), "-U", "postgres"),
                *("--pwfile", str(pwfile), "--auth-local=trust", "--auth-host=scram-sha-256"),
                *("-E", "UTF8", "--no-sync"),
            ],
            capture_output=True,
            check=False,
            **self._as,
        )
        pwfile.unlink()
        assert done.returncode == 0, done.stderr.decode(errors="replace")

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        import psycopg

        with (self.root / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    *(str(self.bin / "postgres"), "-D", str(self.root / "data")),
                    *("-p", str(self.port), "-c", "listen_addresses=127.0.0.1"),
                    *("-c", f"unix_socket_directories={self.root}", "-c", "fsync=off"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._as,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, (self.root / "postgres.log").read_text()
            try:
                with psycopg.connect(self.url, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "postgres did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(2)  # SIGINT: fast shutdown, clients disconnected
            process.wait(timeout=60)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[RestartableCluster]:
    made = RestartableCluster()
    yield made
    made.remove()


def poll(fn: Callable[[], httpx.Response], until: Callable[[httpx.Response], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        response = fn()
        if until(response):
            return
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)


def unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "vault_unavailable", body
    assert "OfflineTokenApp.database_url" in body["message"], body


async def test_a_database_down_at_start_then_lost_and_back(
    tmp_path: Path, cluster: RestartableCluster, idp: Any
) -> None:
    config = (
        f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
        f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
        f"c.OfflineTokenApp.client_secret = {idp.client_secret!r}\n"
    )
    env = {
        "JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY,
        "JUPYTER_OFFLINE_TOKEN_DATABASE_URL": cluster.url,
    }
    server = start_server(tmp_path, config=config, env=env)
    try:
        await _down_at_start(server, cluster)
        await _lost_and_back(server, cluster, idp)
        assert server.sigterm() == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)
    log = server.log()
    assert cluster.password not in log
    assert TEST_KEY not in log
    assert "Traceback" not in log, log[-3000:]


async def _down_at_start(server: Server, cluster: RestartableCluster) -> None:
    """Nothing listens on the port: 503 (several times: the retries keep failing), logged
    once; postgres starts: 200 without a restart, and the recovery is logged."""
    for _ in range(3):
        unavailable(server.api("GET", "tokens"))
    cluster.start()
    poll(lambda: server.api("GET", "tokens"), lambda r: r.status_code == 200)
    log = server.log()
    assert log.count("offline-token vault unavailable") == 1, log[-3000:]
    assert "offline-token vault is available again" in log
    assert "jupyter-offline-token" in log and "vault postgresql://" in log  # background started


async def _lost_and_back(server: Server, cluster: RestartableCluster, idp: Any) -> None:
    """An active entry; the database stops: listing and a refresh answer 503 (no grant made,
    never 500); it starts again: the entry is there and refreshes with the rotated token."""
    token_id = await consent(server, idp)
    first = server.api("POST", f"tokens/{token_id}/access-token", json={"min_ttl": 86400})
    assert first.status_code == 200, first.text
    cluster.stop()
    before = idp.stats()
    started = time.monotonic()
    forced = {"min_ttl": 86400}
    # Both at once: each waits for the pool's checkout timeout before its 503.
    listing, refresh = await asyncio.gather(
        asyncio.to_thread(server.api, "GET", "tokens", timeout=DEADLINE),
        asyncio.to_thread(
            server.api, "POST", f"tokens/{token_id}/access-token", json=forced, timeout=DEADLINE
        ),
    )
    print(f"\n503s with the database down answered after {time.monotonic() - started:.1f} s")
    unavailable(listing)
    unavailable(refresh)
    assert idp.stats()["refresh_token_grants"] == before["refresh_token_grants"]
    cluster.start()
    poll(lambda: server.api("GET", f"tokens/{token_id}"), lambda r: r.status_code == 200)
    shown = server.api("GET", f"tokens/{token_id}").json()
    assert shown["status"] == "active", shown
    again = server.api("POST", f"tokens/{token_id}/access-token", json={"min_ttl": 86400})
    assert again.status_code == 200, again.text
    assert again.json()["access_token"] != first.json()["access_token"]
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 1
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
