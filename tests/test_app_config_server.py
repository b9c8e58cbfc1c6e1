"""Configuration as an admin meets it: a real ``jupyter server`` subprocess per case.

A bad setting (in a config file or the environment) leaves a server that answers the API with
503 naming the setting, creates nothing on disk and stops on the first SIGTERM; secrets given
through files or the environment never reach the log, even at ``--debug``; a secret set inline
in a config file draws a warning that does not hold it.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest
import vault_servers
from server_fixtures import TEST_KEY
from vault_servers import Server, consent, start_server

pytestmark = pytest.mark.timeout(180)

servers = vault_servers.servers  # the fixture


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
    token_id = await consent(server, idp)
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
