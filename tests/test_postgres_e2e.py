"""The end-to-end flows on PostgreSQL (issue 11): two real ``jupyter server`` processes, A and B,
on ONE PostgreSQL vault and the real dev provider, shared by the whole module.

Consent in A is served by B; refreshes with rotation made alternately by both (no
``invalid_grant``); a delete in A and a failure in A refused by B at once (LISTEN/NOTIFY: the
delay from A's answer to B's first refusal is measured and printed with ``-s``, next to SQLite's
poll interval); a ``command`` task created on A fetches an access token with its own task
credential, and its record is the same seen from B. One grant per expiry across both is
tests/test_grant_shared.py (parametrised over both backends); a SIGKILL mid-refresh on
PostgreSQL is tests/test_grant_killed.py. A is given the database URL on its command line, B
in a file and runs at ``--debug``: neither log holds the database password or any secret.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pg_fixture import PostgresCluster
from server_fixtures import TEST_KEY
from test_eviction_cross_process import (
    access,
    cached_in_both,
    failure_refused,
    grant,
    refused_after,
)
from vault_servers import Server, start_server

pytestmark = pytest.mark.timeout(240)

DEADLINE = 60.0  # polling a task to its end on a loaded machine
SQLITE_POLL_INTERVAL = 0.25  # OfflineTokenApp.eviction_poll_interval's default, for the print


class Vault:
    def __init__(self, url: str, a: Server, b: Server) -> None:
        self.url, self.a, self.b = url, a, b


@pytest.fixture(scope="module")
def vault(
    idp: Any, pg_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Vault]:
    root = tmp_path_factory.mktemp("pg-e2e")
    url = pg_cluster.create_database()
    config = (
        f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
        f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
        f"c.OfflineTokenApp.client_secret = {idp.client_secret!r}\n"
    )
    env = {"JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY}
    # A gets the URL on the command line (inline: warned about), B from a file, at --debug.
    url_file = root / "db-url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o600)
    started: list[Server] = []
    try:
        inline = (f"--OfflineTokenApp.database_url={url}",)
        started.append(start_server(root / "a", config=config, env=env, args=inline))
        env_b = {**env, "JUPYTER_OFFLINE_TOKEN_DATABASE_URL_FILE": str(url_file)}
        started.append(start_server(root / "b", config=config, env=env_b, args=("--debug",)))
        yield Vault(url, started[0], started[1])
        for server in started:
            assert server.sigterm() == 0
            log = server.log()
            assert pg_cluster.password not in log and TEST_KEY not in log
            assert idp.client_secret not in log
            assert "Traceback" not in log, log[-3000:]
        a_log, b_log = started[0].log(), started[1].log()
        assert "OfflineTokenApp.database_url is set inline" in a_log
        assert "database_url is set inline" not in b_log
        assert "[D " in b_log  # --debug really logged at debug level
        assert not list(root.rglob("vault.db")) and not list(root.rglob("vault.key"))
    finally:
        for server in started:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(timeout=10)


def test_consent_in_a_and_rotation_by_both(
    vault: Vault, idp: Any, pg_cluster: PostgresCluster
) -> None:
    a, b = vault.a, vault.b
    token_id = grant(a, idp)
    seen = b.api("GET", f"tokens/{token_id}")
    assert seen.status_code == 200 and seen.json()["status"] == "active", seen.text
    before = idp.stats()
    served = []
    # min_ttl beyond the lifetime: every call is a grant, each with the refresh token the
    # other server rotated last (a stale one would be invalid_grant and fail the entry).
    for server in (b, a, b, a):
        response = access(server, token_id, min_ttl=86400)
        assert response.status_code == 200, response.text
        served.append(response.json()["access_token"])
    after = idp.stats()
    assert len(set(served)) == 4
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 4
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
    for token in served[-1:]:
        assert idp.userinfo(token).status_code == 200
    rows = pg_cluster.execute(
        vault.url, "SELECT refresh_count FROM tokens WHERE id = %s", (token_id,)
    )
    assert rows[0][0] >= 4
    # No plaintext secret in any column of the entry.
    row = pg_cluster.execute(
        vault.url, "SELECT row_to_json(t)::text FROM tokens t WHERE id = %s", (token_id,)
    )
    for token in served:
        assert token not in row[0][0]


def test_a_delete_in_a_is_refused_by_b_at_once(vault: Vault, idp: Any) -> None:
    a, b = vault.a, vault.b
    token_id = grant(a, idp)
    cached_in_both(a, b, token_id)
    before = idp.stats()
    deleted = a.api("DELETE", f"tokens/{token_id}")
    assert deleted.status_code in (200, 204), deleted.text  # 200: a warning about shared grants
    response, delay = refused_after(b, token_id)
    print(
        f"\nPostgreSQL: B refused a token deleted in A after {delay * 1000:.0f} ms "
        f"(SQLite polls every {SQLITE_POLL_INTERVAL * 1000:.0f} ms)"
    )
    assert response.status_code == 404 and response.json()["error"] == "not_found", response.text
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"]
    assert b.api("GET", f"tokens/{token_id}").status_code == 404


def test_a_failure_in_a_is_refused_by_b(vault: Vault, idp: Any) -> None:
    failure_refused(vault.a, vault.b, idp, "PostgreSQL")


# Inside the task: an access token through the task's own credential (no server token, no
# refresh token in its environment); its digest, never the token, is the task's result.
FETCHES_A_TOKEN = """
import hashlib
from jupyter_offline_token.kernel import current_task
task = current_task()
with task.running():
    token = task.access_token()
    task.complete(result="sha256:" + hashlib.sha256(token.encode()).hexdigest())
"""


def _wait_terminal(server: Server, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while True:
        shown = server.api("GET", f"tasks/{task_id}")
        assert shown.status_code == 200, shown.text
        task: dict[str, Any] = shown.json()
        if task["status"] in ("completed", "failed", "cancelled", "interrupted"):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.2)


def test_a_task_created_on_a_is_seen_from_b(vault: Vault, idp: Any) -> None:
    a, b = vault.a, vault.b
    token_id = grant(a, idp)
    created = a.api(
        "POST",
        "tasks",
        json={
            "name": "pg-e2e",
            "kind": "command",
            "persistent_token_id": token_id,
            "command": [sys.executable, "-c", FETCHES_A_TOKEN],
        },
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    assert b.api("GET", f"tasks/{task_id}").json()["status"] == created.json()["status"]
    started = a.api("POST", f"tasks/{task_id}/execute")
    assert started.status_code == 202, started.text
    done = _wait_terminal(a, task_id)
    assert done["status"] == "completed", done
    served = access(a, token_id)  # the token the task got, still cached in A
    assert served.status_code == 200, served.text
    digest = hashlib.sha256(served.json()["access_token"].encode()).hexdigest()
    assert done["result"] == f"sha256:{digest}"
    seen = b.api("GET", f"tasks/{task_id}")
    assert seen.status_code == 200, seen.text
    for field in ("id", "name", "status", "result", "persistent_token_id", "progress"):
        assert seen.json()[field] == done[field], field
    listed = b.api("GET", "tasks")
    assert listed.status_code == 200, listed.text
    assert task_id in listed.text
