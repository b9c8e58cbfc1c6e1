"""The broker as a JupyterHub-managed service (``jupyter-offline-token serve``), behind the
session's real hub (tests/hub_fixture.py): hub users own entries, one callback for everybody,
operator scopes, kernels in user servers, secrets only in the service, and refreshes that go on
while a user's server is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from hub_fixture import (
    ADMIN_USER,
    MARKER,
    OPERATOR_USER,
    SERVICE_SERVER,
    Hub,
    UserServer,
    _environ,
    allow_in_browser,
    until,
)

from jupyter_offline_token.cli import main as cli_main
from jupyter_offline_token.hub_scopes import ADMIN_SCOPE
from jupyter_offline_token.hub_service import HubEnvironmentMissing, service_argv

pytestmark = [pytest.mark.timeout(180)]

API = "api/offline-token/"


def consent(hub: Hub, client: httpx.Client, user: str, **body: Any) -> tuple[str, str]:
    """``(persistent_token_id, provider redirect location)``: the user asked the service and
    allowed at the provider; the location is not requested yet."""
    created = client.post(f"{API}consents", json={"label": f"{user}'s", **body})
    assert created.status_code == 201, created.text
    payload = created.json()
    redirect_uri = parse_qs(urlsplit(payload["consent_url"]).query)["redirect_uri"][0]
    assert redirect_uri == f"{hub.url}services/offline-token/callback"  # one for everybody
    location = hub.service_idp.complete_consent(
        payload["consent_url"], username=user, password=user
    )
    return payload["persistent_token_id"], location


def callback(hub: Hub, token: str, location: str) -> httpx.Response:
    """The browser's request to the provider's redirect, authenticated as a hub user."""
    return httpx.get(
        location, headers={"Authorization": f"token {token}"}, timeout=30, trust_env=False
    )


@pytest.fixture(scope="module")
def users(hub: Hub) -> dict[str, str]:
    """A full hub API token per user (alice, bob, the hub admin, the operator)."""
    hub.wait_for_service()
    return {name: hub.user_token(name) for name in ("alice", "bob", ADMIN_USER, OPERATOR_USER)}


@pytest.fixture(scope="module")
def granted(hub: Hub, users: dict[str, str]) -> dict[str, str]:
    """One active entry each for alice and bob, granted through the service's one callback;
    bob's browser could not finish alice's consent (the state is bound to alice)."""
    ids = {}
    with hub.service_client(users["alice"]) as alice, hub.service_client(users["bob"]) as bob:
        alice_id, alice_location = consent(hub, alice, "alice", keep_warm=True)
        bob_id, bob_location = consent(hub, bob, "bob")
        foreign = callback(hub, users["bob"], alice_location)
        assert foreign.status_code == 403, foreign.text
        assert callback(hub, users["alice"], alice_location).status_code == 200
        assert callback(hub, users["bob"], bob_location).status_code == 200
        for client, token_id in ((alice, alice_id), (bob, bob_id)):
            assert client.get(f"{API}tokens/{token_id}").json()["status"] == "active"
        ids = {"alice": alice_id, "bob": bob_id}
    return ids


# --- the command --------------------------------------------------------------------------------
HUB_ENV = {
    "JUPYTERHUB_API_TOKEN": "x" * 32,
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
    "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:10101",
    "JUPYTERHUB_SERVICE_PREFIX": "/services/offline-token/",
}


def test_serve_takes_its_address_from_the_hub_and_passes_settings_on():
    argv = service_argv(["--OfflineTokenApp.vault_path=/v.db"], HUB_ENV, euid=1000)
    assert "--ServerApp.ip=127.0.0.1" in argv and "--ServerApp.port=10101" in argv
    assert "--ServerApp.base_url=/services/offline-token/" in argv
    assert any("JupyterHubIdentityProvider" in a for a in argv)
    assert "--allow-root" not in argv
    assert argv[-1] == "--OfflineTokenApp.vault_path=/v.db"  # last: it wins
    assert "--allow-root" in service_argv([], HUB_ENV, euid=0)
    with pytest.raises(HubEnvironmentMissing, match="JUPYTERHUB_SERVICE_URL"):
        service_argv([], {k: v for k, v in HUB_ENV.items() if k != "JUPYTERHUB_SERVICE_URL"})
    bad = {**HUB_ENV, "JUPYTERHUB_SERVICE_URL": "unix:/x"}
    with pytest.raises(HubEnvironmentMissing, match="http://"):
        service_argv([], bad)


def test_serve_outside_a_hub_says_what_to_configure(monkeypatch, capsys):
    for name in [n for n in os.environ if n.startswith("JUPYTERHUB_")]:
        monkeypatch.delenv(name)
    assert cli_main(["serve", "--OfflineTokenApp.vault_path=/nowhere/vault.db"]) == 2
    stderr = capsys.readouterr().err
    assert "$JUPYTERHUB_SERVICE_URL" in stderr and "c.JupyterHub.services" in stderr
    assert not Path("/nowhere").exists()


# --- owners are hub users -----------------------------------------------------------------------
def test_each_hub_user_sees_only_their_own_entries(hub, users, granted):
    with hub.service_client(users["alice"]) as alice, hub.service_client(users["bob"]) as bob:
        alice_ids = {t["persistent_token_id"] for t in alice.get(f"{API}tokens").json()["tokens"]}
        bob_ids = {t["persistent_token_id"] for t in bob.get(f"{API}tokens").json()["tokens"]}
        assert granted["alice"] in alice_ids and granted["alice"] not in bob_ids
        assert granted["bob"] in bob_ids and granted["bob"] not in alice_ids
        other = granted["alice"]
        assert bob.get(f"{API}tokens/{other}").status_code == 404
        assert bob.get(f"{API}tokens/{other}/audit").status_code == 404
        assert bob.post(f"{API}tokens/{other}/access-token", json={}).status_code == 404
        assert bob.delete(f"{API}tokens/{other}").status_code == 404
        # ?owner= is for operators only: bob naming alice is refused.
        assert bob.get(f"{API}tokens", params={"owner": "alice"}).status_code == 403
        assert alice.get(f"{API}tokens/{other}").json()["status"] == "active"


def test_a_token_without_the_service_scope_is_refused(hub, users, granted):
    narrow = hub.user_token("alice", scopes=["users:activity!user=alice"])
    with hub.service_client(narrow) as client:
        assert client.get(f"{API}tokens").status_code == 403
        assert client.post(f"{API}tokens/{granted['alice']}/access-token").status_code == 403


def test_a_hub_service_token_owns_nothing(hub, users, granted):
    """Service names are not user names: the admin service "tests" (which may access every
    service) is refused rather than treated as a user of that name."""
    with hub.service_client(hub.admin_token) as service:
        for response in (
            service.get(f"{API}tokens"),
            service.post(f"{API}consents", json={}),
            service.get(f"{API}tokens/{granted['alice']}", params={"owner": "alice"}),
        ):
            assert response.status_code == 403, response.text
            assert "service's token" in response.json()["message"]


def test_the_service_runs_no_task_process(hub, users, granted):
    """A command task would be a user's code next to the service's secrets: it fails to start
    and nothing runs."""
    marker = hub.dir / "a-task-ran"
    command = [sys.executable, "-c", f"import pathlib; pathlib.Path({str(marker)!r}).touch()"]
    with hub.service_client(users["alice"]) as alice:
        body = {
            "name": "escape",
            "kind": "command",
            "command": command,
            "persistent_token_id": granted["alice"],
        }
        task = alice.post(f"{API}tasks", json=body).json()
        executed = alice.post(f"{API}tasks/{task['id']}/execute")
        assert executed.status_code == 202, executed.text

        def ended() -> dict[str, Any] | None:
            current = alice.get(f"{API}tasks/{task['id']}").json()
            return current if current["status"] not in ("pending", "running") else None

        final = until(ended, "the command task to end")
    assert final["status"] == "failed" and "runs no command tasks" in final["error"], final
    assert not marker.exists()


def test_jupyter_routes_other_than_the_extension_are_refused(hub, users):
    with hub.service_client(users["alice"]) as alice:
        assert alice.get("api/status").status_code == 403  # the authorizer: only our routes
        assert alice.get("api/kernels").status_code == 404  # no kernels at all
        assert alice.get("api/contents").status_code == 404


def test_a_hub_admin_without_the_custom_scope_gets_nothing_of_others(hub, users, granted):
    assert hub.api("GET", f"users/{ADMIN_USER}").json()["admin"] is True
    with hub.service_client(users[ADMIN_USER]) as admin:
        other = granted["alice"]
        listing = admin.get(f"{API}tokens").json()["tokens"]
        assert other not in {t["persistent_token_id"] for t in listing}
        assert admin.get(f"{API}tokens/{other}").status_code == 404
        for response in (
            admin.get(f"{API}tokens", params={"owner": "alice"}),
            admin.get(f"{API}tokens/{other}", params={"owner": "alice"}),
            admin.get(f"{API}tokens/{other}/audit", params={"owner": "alice"}),
            admin.delete(f"{API}tokens/{other}", params={"owner": "alice"}),
            admin.get(f"{API}operator/health"),
        ):
            assert response.status_code == 403, response.text
            assert ADMIN_SCOPE in response.json()["message"] or "health" in response.text
    with hub.service_client(users["alice"]) as alice:
        assert alice.get(f"{API}tokens/{other}").json()["status"] == "active"


def test_an_operator_reads_and_revokes_as_themselves_never_an_access_token(hub, users, granted):
    with hub.service_client(users["bob"]) as bob:
        extra_id, location = consent(hub, bob, "bob", label="to revoke")
        assert callback(hub, users["bob"], location).status_code == 200
    with hub.service_client(users[OPERATOR_USER]) as operator:
        bob_only = {"owner": "bob"}
        listing = operator.get(f"{API}tokens", params=bob_only).json()["tokens"]
        assert {granted["bob"], extra_id} <= {t["persistent_token_id"] for t in listing}
        read = operator.get(f"{API}tokens/{granted['bob']}", params=bob_only)
        assert read.status_code == 200 and "access_token" not in read.json()
        refused = operator.post(f"{API}tokens/{granted['bob']}/access-token", params=bob_only)
        assert refused.status_code == 403
        events = operator.get(f"{API}tokens/{granted['bob']}/audit", params=bob_only).json()
        operator_events = [e for e in events["events"] if e["action"] == "operator"]
        assert operator_events and f"by hub user {OPERATOR_USER}" in operator_events[0]["detail"]
        assert operator.delete(f"{API}tokens/{extra_id}", params=bob_only).status_code in (200, 204)

        health = operator.get(f"{API}operator/health")
        assert health.status_code == 200, health.text
        assert health.json()["counts"]["active"] >= 2  # alice's and bob's
    with hub.service_client(users["bob"]) as bob:
        assert bob.get(f"{API}tokens/{extra_id}").status_code == 404
        assert bob.get(f"{API}tokens/{granted['bob']}").json()["status"] == "active"
    # A failing entry of bob's shows in the operators' health, with its owner and no secret.
    hub.service_idp.revoke_account_grants("bob")
    with hub.service_client(users["bob"]) as bob:
        failed = bob.post(f"{API}tokens/{granted['bob']}/access-token", json={"min_ttl": 3600})
        assert failed.status_code == 409 and failed.json()["error"] == "token_failed"
    with hub.service_client(users[OPERATOR_USER]) as operator:
        health = operator.get(f"{API}operator/health").json()
    assert health["level"] == "unhealthy" and health["counts"]["failed"] >= 1
    listed = {t["persistent_token_id"]: t for t in health["tokens"]}
    assert listed[granted["bob"]]["owner"] == "bob"
    assert listed[granted["bob"]]["health"]["action"] == "request_consent"
    assert set(listed[granted["bob"]]) == {
        "persistent_token_id",
        "owner",
        "label",
        "status",
        "health",
    }
    # The scope filtered to one user reaches that user only.
    bob_only_token = hub.user_token(
        OPERATOR_USER,
        scopes=["access:services!service=offline-token", f"{ADMIN_SCOPE}!user=bob"],
    )
    with hub.service_client(bob_only_token) as operator:
        assert operator.get(f"{API}tokens", params={"owner": "bob"}).status_code == 200
        assert operator.get(f"{API}tokens", params={"owner": "alice"}).status_code == 403
    # The revocation's audit names the operator (read from the service's vault: the entry is
    # gone from the API).
    with sqlite3.connect(f"file:{hub.service_vault}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT action, result, detail FROM audit WHERE token_id = ? ORDER BY id", (extra_id,)
        ).fetchall()
    assert ("operator", "revoke") in {(a, r) for a, r, _ in rows}
    assert any(OPERATOR_USER in detail for a, _, detail in rows if a == "operator"), rows


def test_a_browser_session_logs_in_through_the_hub_and_needs_the_xsrf_token(hub, users):
    """HubOAuth: the hub's login cookie gets a service session (oauth_callback); a cookie POST
    without the page's XSRF token is refused; the consent completes at the one callback."""
    with contextlib.closing(hub.login("bob")) as browser:
        page = browser.get("services/offline-token/offline-token/")
        assert page.status_code == 200, page.text[:500]
        assert urlsplit(str(page.url)).path == "/services/offline-token/offline-token/"
        found = re.search(r'data-xsrf-token="([^"]+)"', page.text)
        assert found, page.text[:500]
        consents = f"services/offline-token/{API}consents"
        refused = browser.post(consents, json={"label": "no xsrf"})
        assert refused.status_code == 403, refused.text
        created = browser.post(
            consents,
            json={"label": "from the dashboard"},
            headers={"X-XSRFToken": html.unescape(found.group(1))},
        )
        assert created.status_code == 201, created.text
        location = hub.service_idp.complete_consent(
            created.json()["consent_url"], username="bob", password="bob"
        )
        done = browser.get(location)
        assert done.status_code == 200 and "Offline access granted" in done.text
    with hub.service_client(users["bob"]) as bob:
        token_id = created.json()["persistent_token_id"]
        assert bob.get(f"{API}tokens/{token_id}").json()["status"] == "active"


# --- kernels in user servers, secrets, culling --------------------------------------------------
KERNEL_CODE = """
import json, sys
from jupyter_offline_token.kernel import OfflineToken
from jupyter_offline_token.kernel.discovery import find_server
info = find_server()
token = OfflineToken.from_id(sys.argv[1])
print(json.dumps({"url": info.url, "source": info.source,
                  "access_token": token.access_token(min_ttl=1)}))
"""


def kernel_run(server_pid: int, token_id: str) -> dict[str, Any]:
    """The kernel helper in a process with the user server's environment (what a kernel
    started by that server inherits): its discovery, its credential, its OfflineToken."""
    env = _environ(server_pid)
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_CODE, token_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout))


def test_a_kernel_gets_tokens_from_the_service_and_refreshes_go_on_while_stopped(
    hub, users, granted
):
    token_id = granted["alice"]
    server = hub.user_server("alice", SERVICE_SERVER)
    got = kernel_run(server.pid, token_id)
    assert got["url"] == hub.service_internal_url and "JUPYTER_OFFLINE_TOKEN_URL" in got["source"]
    assert hub.service_idp.introspect(got["access_token"])["active"] is True

    hub.stop_server("alice", SERVICE_SERVER)
    with hub.service_client(users["alice"]) as alice:

        def refreshes() -> int:
            return int(alice.get(f"{API}tokens/{token_id}").json()["refresh_count"])

        stopped_at = refreshes()
        grants_before = hub.service_idp.stats()["refresh_token_grants"]
        until(lambda: refreshes() >= stopped_at + 2, "two refreshes while the server is stopped")
        assert hub.service_idp.stats()["refresh_token_grants"] > grants_before
        assert hub.server_model("alice", SERVICE_SERVER) is None

    # Back again: a new kernel gets a token without a new consent.
    server = hub.user_server("alice", SERVICE_SERVER)
    again = kernel_run(server.pid, token_id)
    assert again["access_token"] != got["access_token"]
    assert hub.service_idp.introspect(again["access_token"])["active"] is True


def _service_pid(hub: Hub) -> int:
    wanted = {f"{MARKER}={hub.dir}", "JUPYTERHUB_SERVICE_NAME=offline-token"}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            continue
        if wanted <= environ:
            return int(entry.name)
    raise AssertionError("no offline-token service process")


def test_secrets_are_in_the_service_and_in_no_user_server(hub, users, granted):
    # An embedded-mode server (its client secret in a file) and a service-mode one.
    servers = [hub.user_server("alice"), hub.user_server("alice", SERVICE_SERVER)]
    secrets_ = {
        "the service's client secret": hub.service_idp.client_secret,
        "the service's vault key": hub.service_key,
        "the user servers' client secret": hub.idp.client_secret,
    }
    service_environ = _environ(_service_pid(hub))
    service_env = "\0".join(f"{k}={v}" for k, v in service_environ.items())
    assert hub.service_key in service_env and hub.service_idp.client_secret in service_env
    secrets_["the service's hub API token"] = service_environ["JUPYTERHUB_API_TOKEN"]
    for server in servers:
        environ = "\0".join(f"{k}={v}" for k, v in _environ(server.pid).items())
        for what, value in secrets_.items():
            assert value not in environ, f"{what} is in {server!r}'s environment"
    # No runtime file of the service (it would hold the service's hub API token).
    runtime = subprocess.run(
        [sys.executable, "-c", "from jupyter_core.paths import *; print(jupyter_runtime_dir())"],
        env=service_environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert not (Path(runtime) / f"jpserver-{_service_pid(hub)}.json").exists(), runtime
    log = hub.log_path.read_text(errors="replace")  # the service's own output is in it
    for what, value in secrets_.items():
        assert value not in log, f"{what} is in the hub's log"


@pytest.mark.browser
async def test_the_dashboard_and_a_consent_work_in_chromium_through_the_hub(hub, users):
    """The service's dashboard behind HubOAuth in a real browser (its API calls carry the
    XSRF token), and a consent that a kernel started completes in that browser at the one
    callback."""
    from test_hub import hub_browser  # the hub login + dashboard helper of the hub tests

    service = UserServer(
        user="alice",
        name="offline-token-service",
        public_url=hub.service_url,
        internal_url=hub.service_internal_url,
        pid=0,
        api_token=users["alice"],
    )
    async with hub_browser(hub, service) as page:
        banner = page.get_by_test_id("health-banner")
        assert await banner.get_attribute("data-level") != "offline", await banner.inner_text()
        assert page.api_calls and all(status == 200 for status, _ in page.api_calls)
        with hub.service_client(users["alice"]) as alice:
            created = (await asyncio.to_thread(alice.post, f"{API}consents", json={})).json()
        await allow_in_browser(page, created["consent_url"])
        assert urlsplit(page.url).path == "/services/offline-token/callback"
        title = page.get_by_test_id("callback-title")
        assert await title.inner_text() == "Offline access granted"
