"""A real JupyterHub for the tests: one per session, on free loopback ports, in its own temp dir.

JupyterHub 6.1 (pinned in pyproject's ``test`` extra) with DummyAuthenticator (one shared
password), SimpleLocalProcessSpawner (a ``jupyterhub-singleuser`` per user, home under the hub's
temp dir, ``--allow-root`` when root) and configurable-http-proxy from ``dev/hub/node_modules``
(``npm ci`` in dev/hub, see the Makefile's ``node`` target). Every user server has this package's
extension pointed at the session's dev provider (``idp``).

The hub's ``public_url`` is set (as a deployment behind a proxy should), so user servers get
``JUPYTERHUB_PUBLIC_URL``; the named server ``NO_PUBLIC_URL`` is told no public URL, as with a
hub that leaves ``public_url`` unset. User servers read the client secret from a file (0600), so
no secret is in any user server's environment.

The hub also runs the broker as its managed service ``offline-token`` (``jupyter-offline-token
serve``), configured as the README's "JupyterHub service" section says, for the session's
short-lived provider (``idp_short_ttl``): its client secret and vault key are in the service's
environment only. Named servers ``SERVICE_SERVER`` are what service-mode user servers look like:
no provider settings at all, and ``JUPYTER_OFFLINE_TOKEN_URL`` pointing at the service. Users:
``ADMIN_USER`` is a hub admin (no offline-token scope), ``OPERATOR_USER`` holds the service's
admin and health scopes.

Registered as a pytest plugin by ``conftest.py``; the ``hub`` fixture starts nothing until a test
asks for it. At the end the hub is stopped with SIGTERM (it stops the user servers and the
proxy), and whatever carries the session's marker in its environment is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.hub_scopes import ADMIN_SCOPE, CUSTOM_SCOPES, HEALTH_SCOPE, SERVICE_NAME

REPO = Path(__file__).resolve().parent.parent
CHP = REPO / "dev" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
PASSWORD = "hub-test-password"  # DummyAuthenticator's shared password; loopback-only hub
NO_PUBLIC_URL = "nopublic"  # a named server that the hub tells no public URL
SERVICE_SERVER = "svc"  # named servers that use the hub's offline-token service
ADMIN_USER = "carol"  # a hub admin without the service's custom scopes
OPERATOR_USER = "oscar"  # holds custom:offline-token:admin and :health
MARKER = "JUPYTER_OFFLINE_TOKEN_TEST_HUB"
START_TIMEOUT = 60.0
# Short intervals so activity shows within a test: the extension's activity beat and the
# single-user server's activity reports to the hub (JupyterHub's default is 300 s).
ACTIVITY_INTERVAL = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class UserServer:
    """A running single-user server as a kernel in it sees it: its internal URL and its own
    API token (``JUPYTERHUB_SERVICE_URL`` and ``JUPYTERHUB_API_TOKEN`` in its environment)."""

    user: str
    name: str
    public_url: str  # through the proxy, ends with /
    internal_url: str  # the bind URL, ends with /
    pid: int
    api_token: str  # the server's own API token: kept out of repr

    def __repr__(self) -> str:
        return f"UserServer({self.user!r}, {self.name!r}, {self.public_url!r}, pid={self.pid})"

    def kernel_client(self) -> httpx.Client:
        """An HTTP client that calls the server the way the kernel helper does."""
        return httpx.Client(
            base_url=self.internal_url,
            headers={"Authorization": f"token {self.api_token}"},
            timeout=30,
            trust_env=False,
        )


class Hub:
    """The running hub: its public URL, an admin API client, and user servers on demand."""

    def __init__(self, directory: Path, idp: Any, service_idp: Any) -> None:
        self.dir = directory
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.hub_port = _free_port()
        self.proxy_api_port = _free_port()
        self.admin_token = secrets.token_hex(32)
        self.idp = idp
        self.service_idp = service_idp  # the offline-token service's provider
        self.service_port = _free_port()
        self.service_internal_url = f"http://127.0.0.1:{self.service_port}/services/{SERVICE_NAME}/"
        self.service_url = f"{self.url}services/{SERVICE_NAME}/"  # through the proxy
        self.service_key = KeyRing.generate()  # the service's vault key: kept out of repr
        self.service_vault = directory / "service" / "vault.db"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "jupyterhub.log"
        self._servers: dict[tuple[str, str], UserServer] = {}

    def __repr__(self) -> str:
        return f"Hub({self.url!r})"

    def wait_for_service(self) -> None:
        """Until the hub's offline-token service answers through the proxy (the hub starts it
        with itself; 403 from an unauthenticated API request means it runs)."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                response = httpx.get(f"{self.service_url}api/offline-token/health", trust_env=False)
                if response.status_code == 403:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the offline-token service did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def user_token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new hub API token of ``user`` (created when missing): all the user's permissions,
        or only ``scopes``."""
        if self.api("GET", f"users/{quote(user)}").status_code == 404:
            self.api("POST", f"users/{quote(user)}").raise_for_status()
        body: dict[str, Any] = {"note": "offline-token tests"}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.api("POST", f"users/{quote(user)}/tokens", json=body)
        response.raise_for_status()
        return str(response.json()["token"])

    def service_client(self, token: str) -> httpx.Client:
        """An API client of the service (through the proxy) with a hub API token."""
        return httpx.Client(
            base_url=self.service_url,
            headers={"Authorization": f"token {token}"},
            timeout=30,
            trust_env=False,
        )

    def stop_server(self, user: str, name: str = "") -> None:
        """Stop a user's server (as a culler does) and wait until the hub says it is gone."""
        path = f"users/{quote(user)}/server"
        if name:
            path = f"users/{quote(user)}/servers/{quote(name)}"
        response = self.api("DELETE", path)
        assert response.status_code in (202, 204), (response.status_code, response.text)
        deadline = time.monotonic() + START_TIMEOUT
        while self.server_model(user, name) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {user}/{name} did not stop:\n{self.log_tail()}")
            time.sleep(0.2)

    # --- lifecycle ------------------------------------------------------------------------------
    def service_entry(self) -> dict[str, Any]:
        """The ``c.JupyterHub.services`` entry of the offline-token service (README)."""
        command = [
            str(Path(sys.executable).with_name("jupyter-offline-token")),
            "serve",
            f"--OfflineTokenApp.vault_path={self.service_vault}",
            "--OfflineTokenApp.min_refresh_interval=1",  # the provider's tokens live 3 s
        ]
        environment = {
            MARKER: str(self.dir),
            "JUPYTER_OFFLINE_TOKEN_ISSUER": self.service_idp.issuer,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": self.service_idp.client_id,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": self.service_idp.client_secret,
            "JUPYTER_OFFLINE_TOKEN_KEYS": self.service_key,
        }
        if os.environ.get("PYTHONPATH"):
            environment["PYTHONPATH"] = os.environ["PYTHONPATH"]  # this checkout
        return {
            "name": SERVICE_NAME,
            "url": f"http://127.0.0.1:{self.service_port}",
            "command": command,
            "environment": environment,
            "oauth_no_confirm": True,
            "oauth_client_allowed_scopes": [ADMIN_SCOPE, HEALTH_SCOPE],
        }

    def config(self) -> str:
        """jupyterhub_config.py for this session (secrets only of the session's dev providers)."""
        singleuser = Path(sys.executable).with_name("jupyterhub-singleuser")
        args = [f"--OfflineTokenApp.activity_interval={ACTIVITY_INTERVAL}"]
        if os.geteuid() == 0:
            args.insert(0, "--allow-root")
        secret_file = self.dir / "client_secret"
        secret_file.write_text(self.idp.client_secret)
        secret_file.chmod(0o600)
        environment = {
            MARKER: str(self.dir),
            "JUPYTERHUB_ACTIVITY_INTERVAL": str(ACTIVITY_INTERVAL),
            "JUPYTER_OFFLINE_TOKEN_ISSUER": self.idp.issuer,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": self.idp.client_id,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE": str(secret_file),
        }
        service = self.service_entry()
        access = f"access:services!service={SERVICE_NAME}"
        roles = [
            {"name": "admin", "services": ["tests"], "users": [ADMIN_USER]},
            {"name": "user", "scopes": ["self", access]},
            {
                "name": "offline-token-operators",
                "scopes": [ADMIN_SCOPE, HEALTH_SCOPE],
                "users": [OPERATOR_USER],
            },
        ]
        return f"""
c = get_config()  # noqa: F821
c.JupyterHub.bind_url = {self.url!r}
c.JupyterHub.public_url = {self.url!r}
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{self.hub_port}"
c.JupyterHub.db_url = "sqlite:///" + {str(self.dir / "jupyterhub.sqlite")!r}
c.JupyterHub.cookie_secret_file = {str(self.dir / "jupyterhub_cookie_secret")!r}
c.JupyterHub.pid_file = {str(self.dir / "jupyterhub.pid")!r}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.last_activity_interval = 3600  # activity comes from the servers, not the proxy
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "tests", "api_token": {self.admin_token!r}}}, {service!r}]
c.JupyterHub.custom_scopes = {CUSTOM_SCOPES!r}
c.JupyterHub.load_roles = {roles!r}
c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", {access!r}]
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {str(self.dir / "proxy.pid")!r}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {str(self.dir / "home" / "{username}")!r}
c.Spawner.cmd = [{str(singleuser)!r}]
c.Spawner.args = {args!r}
c.Spawner.env_keep = ["PATH", "PYTHONPATH", "LANG", "LC_ALL"]  # PYTHONPATH: this checkout
c.Spawner.start_timeout = {int(START_TIMEOUT)}
c.Spawner.http_timeout = {int(START_TIMEOUT)}
_environment = {environment!r}


def _public(key):
    # The named server {NO_PUBLIC_URL!r} is told no public URL, like a hub without public_url.
    return lambda spawner: "" if spawner.name == {NO_PUBLIC_URL!r} else getattr(spawner, key)


_environment["JUPYTERHUB_PUBLIC_URL"] = _public("public_url")
_environment["JUPYTERHUB_PUBLIC_HUB_URL"] = _public("public_hub_url")
c.Spawner.environment = _environment


def _use_the_service(spawner):
    # Servers {SERVICE_SERVER!r} hold no provider settings: their kernels use the hub's service.
    if spawner.name == {SERVICE_SERVER!r}:
        env = dict(spawner.environment)
        for key in [k for k in env if k.startswith("JUPYTER_OFFLINE_TOKEN_")]:
            del env[key]
        env["JUPYTER_OFFLINE_TOKEN_URL"] = {self.service_internal_url!r}
        spawner.environment = env


c.Spawner.pre_spawn_hook = _use_the_service
"""

    def start(self) -> None:
        if not CHP.exists():
            if os.environ.get("CI"):
                raise RuntimeError(f"{CHP} is missing: run `make node` (npm ci in dev/hub)")
            pytest.skip(f"{CHP} is missing: run `cd dev/hub && npm ci`")
        config = self.dir / "jupyterhub_config.py"
        config.write_text(self.config())
        env = {**os.environ, MARKER: str(self.dir)}
        jupyterhub = Path(sys.executable).with_name("jupyterhub")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [str(jupyterhub), "-f", str(config)],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}hub/api/", trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterHub did not start:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM the hub (it stops user servers and the proxy), then kill what is left."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        for pid in marked_processes(str(self.dir)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- the hub's REST API ---------------------------------------------------------------------
    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method,
            f"{self.url}hub/api/{path}",
            headers={"Authorization": f"token {self.admin_token}"},
            timeout=30,
            trust_env=False,
            **kwargs,
        )

    def server_model(self, user: str, name: str = "") -> dict[str, Any] | None:
        response = self.api("GET", f"users/{quote(user)}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        model = response.json().get("servers", {}).get(name)
        return model if isinstance(model, dict) else None

    def user_server(self, user: str, name: str = "") -> UserServer:
        """The user's server ``name`` ("" = the default one), started when it does not run
        (the first time, or after a culler stopped it)."""
        model = self.server_model(user, name)
        if not (model and model.get("ready")):
            if self.api("GET", f"users/{quote(user)}").status_code == 404:
                self.api("POST", f"users/{quote(user)}").raise_for_status()
            path = f"users/{quote(user)}/server"
            if name:
                path = f"users/{quote(user)}/servers/{quote(name)}"
            response = self.api("POST", path)
            assert response.status_code in (201, 202), (response.status_code, response.text)
            deadline = time.monotonic() + START_TIMEOUT
            while not (model and model.get("ready")):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server {user}/{name} did not start:\n{self.log_tail()}")
                time.sleep(0.2)
                model = self.server_model(user, name)
        pid = int(model["state"]["pid"])
        known = self._servers.get((user, name))
        if known is not None and known.pid == pid:
            return known
        environ = _environ(pid)
        server = UserServer(
            user=user,
            name=name,
            public_url=self.url.rstrip("/") + model["url"],
            internal_url=environ["JUPYTERHUB_SERVICE_URL"].rstrip("/") + "/",
            pid=pid,
            api_token=environ["JUPYTERHUB_API_TOKEN"],
        )
        self._servers[(user, name)] = server
        return server

    @contextlib.contextmanager
    def idle_culler(self, *, timeout: int, cull_every: int = 1) -> Iterator[None]:
        """jupyterhub-idle-culler against this hub while the block runs (it culls every idle
        server, of any user)."""
        culler = Path(sys.executable).with_name("jupyterhub-idle-culler")
        env = {**os.environ, MARKER: str(self.dir), "JUPYTERHUB_API_TOKEN": self.admin_token}
        log = (self.dir / "idle-culler.log").open("ab")
        process = subprocess.Popen(
            [
                str(culler),
                f"--url={self.url}hub/api",
                f"--timeout={timeout}",
                f"--cull-every={cull_every}",
            ],
            cwd=self.dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def login(self, user: str) -> httpx.Client:
        """A cookie session logged in at the hub as ``user`` (what a browser holds)."""
        client = httpx.Client(base_url=self.url, follow_redirects=True, timeout=30, trust_env=False)
        page = client.get("hub/login")
        page.raise_for_status()
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        xsrf = found.group(1) if found else ""
        response = client.post(
            "hub/login", data={"username": user, "password": PASSWORD, "_xsrf": xsrf}
        )
        response.raise_for_status()
        return client


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}


def marked_processes(marker_value: str) -> list[int]:
    """Live processes whose environment carries this session's hub marker."""
    wanted = f"{MARKER}={marker_value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if wanted in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def hub(idp, idp_short_ttl, tmp_path_factory) -> Iterator[Hub]:
    """One real JupyterHub for the whole session (started on first use), with the
    offline-token service for ``idp_short_ttl``."""
    if shutil.which("node") is None:
        pytest.skip("node is not on PATH (configurable-http-proxy needs Node.js)")
    instance = Hub(tmp_path_factory.mktemp("hub"), idp, idp_short_ttl)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()


def hub_json(response: httpx.Response) -> Any:
    """The JSON body of a response, or its text when it is not JSON (for assertion messages)."""
    try:
        return response.json()
    except json.JSONDecodeError:
        return response.text


def until(predicate: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll until truthy; a hang guard, not a timing assertion (generous: the
    machine may be loaded)."""
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)


async def allow_in_browser(page: Any, consent_url: str, user: str = "alice") -> None:
    """In the Playwright ``page``: open ``consent_url``, log in to the dev provider as ``user``
    and allow; returns once the page the provider redirects to has loaded."""
    await page.goto(consent_url)
    await page.fill("input[name=login]", user)
    await page.fill("input[name=password]", user)
    await page.click("form#login [type=submit]")
    await page.click("form#consent button[value=allow]")
    await page.wait_for_load_state()
