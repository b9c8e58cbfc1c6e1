"""Configuration as an admin meets it: a real ``jupyter server`` subprocess per case.

A bad setting (in a config file or the environment) leaves a server that answers the API with
503 naming the setting, creates nothing on disk and stops on the first SIGTERM; secrets given
through files or the environment never reach the log, even at ``--debug``; a secret set inline
in a config file draws a warning that does not hold it.
"""

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from server_fixtures import TEST_KEY

pytestmark = pytest.mark.timeout(180)

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
def servers():
    """Servers started by a test; killed at the end if the test left them running."""
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=10)


def _vault_files(workdir: Path) -> list[Path]:
    return [
        p for p in workdir.rglob("*") if p.name.startswith("vault") or p.name == "offline_token"
    ]


BAD_KEY = "not-a-key-" + "q" * 24


@pytest.mark.parametrize("where", ["config file", "environment"])
def test_malformed_key_503_names_the_setting_and_first_sigterm_stops(where, tmp_path, servers):
    config = 'c.OfflineTokenApp.issuer = "https://idp.example.org/realms/lab"\n'
    config += 'c.OfflineTokenApp.client_id = "jupyter"\n'
    env = {}
    if where == "config file":
        config += f"c.OfflineTokenApp.encryption_keys = [{BAD_KEY!r}]\n"
        named = "OfflineTokenApp.encryption_keys"
    else:
        env["JUPYTER_OFFLINE_TOKEN_KEYS"] = BAD_KEY
        named = "JUPYTER_OFFLINE_TOKEN_KEYS"
    server = start_server(tmp_path, config=config, env=env)
    servers.append(server)
    for method, path, body in (
        ("GET", "tokens", None),
        ("POST", "consents", {}),
        ("GET", "health", None),
        ("GET", "tasks", None),
        ("POST", "tokens/x/access-token", {}),
    ):
        response = server.api(method, path, json=body)
        assert response.status_code == 503, (path, response.text)
        error = response.json()
        assert error["error"] == "not_configured", error
        assert named in error["message"], error
        assert "issuer" not in error["message"]  # the other settings were kept
        assert BAD_KEY not in error["message"]
    assert server.sigterm() == 0
    log = server.log()
    assert "Traceback" not in log, log[-3000:]
    assert BAD_KEY not in log
    assert _vault_files(tmp_path) == []


def _secret_files(tmp_path: Path, secret: str) -> tuple[Path, Path]:
    secret_file = tmp_path / "client_secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# the vault keys, first encrypts\n{TEST_KEY}\n")
    keys_file.chmod(0o600)
    return secret_file, keys_file


async def _grant_and_use(server: Server, idp) -> str:
    """The whole flow through the subprocess server; returns the access token it handed out."""
    consent = await asyncio.to_thread(server.api, "POST", "consents", json={})
    assert consent.status_code == 201, consent.text
    location = await asyncio.to_thread(idp.complete_consent, consent.json()["consent_url"])
    callback = urlsplit(location)
    page = await asyncio.to_thread(
        httpx.get,
        f"{server.base.rstrip('/')}{callback.path}?{callback.query}",
        headers=server.headers,
    )
    assert page.status_code == 200, page.text
    token_id = consent.json()["persistent_token_id"]
    access = await asyncio.to_thread(
        server.api, "POST", f"tokens/{token_id}/access-token", json={"min_ttl": 86400}
    )
    assert access.status_code == 200, access.text  # min_ttl > lifetime: a refresh grant too
    return str(access.json()["access_token"])


@pytest.mark.parametrize("how", ["config file names the files", "environment"])
async def test_secrets_from_files_or_environment_never_reach_the_debug_log(
    how, tmp_path, servers, idp
):
    secret_file, keys_file = _secret_files(tmp_path, idp.client_secret)
    config = f"c.OfflineTokenApp.issuer = {idp.issuer!r}\n"
    config += f"c.OfflineTokenApp.client_id = {idp.client_id!r}\n"
    env: dict[str, str] = {}
    if how == "environment":
        env["JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE"] = str(secret_file)
        env["JUPYTER_OFFLINE_TOKEN_KEYS_FILE"] = str(keys_file)
    else:
        config += f"c.OfflineTokenApp.client_secret_file = {str(secret_file)!r}\n"
        config += f"c.OfflineTokenApp.encryption_keys_file = {str(keys_file)!r}\n"
    server = start_server(tmp_path, config=config, env=env, args=("--debug",))
    servers.append(server)
    access_token = await _grant_and_use(server, idp)
    assert server.sigterm() == 0
    log = server.log()
    assert "[D " in log  # --debug really logged at debug level
    for secret in (idp.client_secret, TEST_KEY, access_token):
        assert secret not in log
    assert "set inline" not in log
    assert "readable by other users" not in log
    assert not (
        tmp_path / "data" / "offline_token" / "vault.key"
    ).exists()  # keys came from the file


def test_secret_from_environment_variable_never_reaches_the_debug_log(tmp_path, servers):
    secret = "env-secret-" + secrets.token_hex(12)
    env = {
        "JUPYTER_OFFLINE_TOKEN_ISSUER": "https://idp.example.org/realms/lab",
        "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": "jupyter",
        "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": secret,
        "JUPYTER_OFFLINE_TOKEN_KEYS": TEST_KEY,
    }
    server = start_server(tmp_path, env=env, args=("--debug",))
    servers.append(server)
    assert server.api("GET", "health").status_code == 200
    assert server.sigterm() == 0
    log = server.log()
    assert "[D " in log
    assert secret not in log and TEST_KEY not in log
    assert "set inline" not in log


def test_inline_secrets_draw_a_warning_without_the_value(tmp_path, servers):
    secret = "inline-secret-" + secrets.token_hex(12)
    config = 'c.OfflineTokenApp.issuer = "https://idp.example.org/realms/lab"\n'
    config += 'c.OfflineTokenApp.client_id = "jupyter"\n'
    config += f"c.OfflineTokenApp.client_secret = {secret!r}\n"
    config += f"c.OfflineTokenApp.encryption_keys = [{TEST_KEY!r}]\n"
    server = start_server(tmp_path, config=config)
    servers.append(server)
    assert server.api("GET", "health").status_code == 200
    assert server.sigterm() == 0
    warnings = [line for line in server.log().splitlines() if "set inline" in line]
    assert len(warnings) == 2, warnings
    assert "OfflineTokenApp.client_secret is set inline" in warnings[0] + warnings[1]
    assert "OfflineTokenApp.encryption_keys is set inline" in warnings[0] + warnings[1]
    for line in warnings:
        assert secret not in line and TEST_KEY not in line
        assert "_file" in line  # says what to use instead


def test_unreadable_secret_file_503_names_the_setting(tmp_path, servers):
    missing = tmp_path / "nope" / "client_secret"
    empty_keys = tmp_path / "keys"
    empty_keys.write_text("\n# nothing yet\n")
    config = 'c.OfflineTokenApp.issuer = "https://idp.example.org/realms/lab"\n'
    config += 'c.OfflineTokenApp.client_id = "jupyter"\n'
    config += f"c.OfflineTokenApp.client_secret_file = {str(missing)!r}\n"
    env = {"JUPYTER_OFFLINE_TOKEN_KEYS_FILE": str(empty_keys)}
    server = start_server(tmp_path, config=config, env=env)
    servers.append(server)
    response = server.api("GET", "tokens")
    assert response.status_code == 503
    message = response.json()["message"]
    assert "OfflineTokenApp.client_secret_file" in message and str(missing) in message
    assert "OfflineTokenApp.encryption_keys_file" in message
    assert "JUPYTER_OFFLINE_TOKEN_KEYS_FILE" in message
    assert server.sigterm() == 0
    assert _vault_files(tmp_path) == []
