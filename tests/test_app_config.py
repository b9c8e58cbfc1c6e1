"""Configuration: environment fallbacks, validation that names the setting, safe reprs."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_offline_token import cli
from jupyter_offline_token.app import OfflineTokenApp
from jupyter_offline_token.broker import AccessToken, ProviderSettings
from jupyter_offline_token.models import ConsentSecrets
from jupyter_offline_token.oidc import ProviderClient, TokenResponse
from jupyter_offline_token.settings import ENVIRONMENT

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "https://idp.example.org/realms/lab/")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_CLIENT_ID", "jupyter")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_REDIRECT_URI", "https://hub.example.org/cb")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", f"{KEY}; {KEY[::-1]}")
    app = OfflineTokenApp()
    assert app.issuer == "https://idp.example.org/realms/lab"  # trailing slash dropped
    assert app.client_id == "jupyter" and app.client_secret == "s3cret"
    assert app.redirect_uri == "https://hub.example.org/cb"
    assert app.encryption_keys == [KEY, KEY[::-1]]


def test_config_beats_environment(monkeypatch):
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "https://env.example.org")
    app = OfflineTokenApp(issuer="https://config.example.org")
    assert app.issuer == "https://config.example.org"


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("issuer", "ftp://idp", "OfflineTokenApp.issuer"),
        ("issuer", "https://idp/realms/x?a=1", "OfflineTokenApp.issuer"),
        ("encryption_keys", ["not-a-key"], "OfflineTokenApp.encryption_keys"),
        ("encryption_keys", [KEY, "short"], "key #2"),
        ("redirect_uri", "javascript:alert(1)", "OfflineTokenApp.redirect_uri"),
        ("consent_timeout", 0, "OfflineTokenApp.consent_timeout"),
        ("http_timeout", -1, "OfflineTokenApp.http_timeout"),
        ("refresh_margin", 1.5, "OfflineTokenApp.refresh_margin"),
        ("backoff_jitter", 1.0, "OfflineTokenApp.backoff_jitter"),
        ("max_running_tasks", 0, "OfflineTokenApp.max_running_tasks"),
        ("task_cancel_grace", -1, "OfflineTokenApp.task_cancel_grace"),
        ("token_endpoint_auth_method", "private_key_jwt", "token_endpoint_auth_method"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(setting, value, named):
    with pytest.raises(TraitError, match=named.replace(".", r"\.")):
        OfflineTokenApp(**{setting: value})


def test_key_error_never_echoes_the_key():
    secretish = "x" * 40
    with pytest.raises(TraitError) as info:
        OfflineTokenApp(encryption_keys=[secretish])
    assert secretish not in str(info.value)


def test_every_setting_has_help_for_admins():
    settings = OfflineTokenApp.setting_traits()
    assert {"issuer", "min_refresh_interval", "max_running_tasks", "task_runner_class"} <= set(
        settings
    )
    for name, trait in settings.items():
        assert len(trait.help) > 30, f"OfflineTokenApp.{name} needs help text"


def test_reprs_hold_no_secret():
    settings = ProviderSettings("https://idp", "c", client_secret="client-secret-value")
    token = AccessToken("access-token-value", "Bearer", 1.0, None, 0.0, owner="alice")
    response = TokenResponse("access-token-value", "Bearer", 60, "refresh-token-value", 0, "", None)
    secrets = ConsentSecrets("verifier-value", "nonce-value", "https://x/cb")
    client = ProviderClient("https://idp.example.org", "c", "client-secret-value")
    for obj in (settings, token, response, secrets, client):
        text = repr(obj)
        for secret in (
            "client-secret-value",
            "access-token-value",
            "refresh-token-value",
            "verifier-value",
        ):
            assert secret not in text, (type(obj).__name__, secret)


def test_bad_environment_values_are_refused_too(monkeypatch):
    # Recorded as a bad setting (the server then answers 503 naming it), not raised mid-start.
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", "not-a-key")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "ftp://idp")
    app = OfflineTokenApp()
    problems = app.check_settings()
    assert len(problems) == 2
    assert app.start_error is not None
    assert "JUPYTER_OFFLINE_TOKEN_KEYS" in app.start_error
    assert "OfflineTokenApp.issuer" in app.start_error
    assert "JUPYTER_OFFLINE_TOKEN_ISSUER" in app.start_error
    assert "not-a-key" not in app.start_error
    assert app.encryption_keys == [] and app.issuer == ""


def test_one_bad_setting_in_config_keeps_the_others():
    config = Config(
        {
            "OfflineTokenApp": {
                "issuer": "https://idp.example.org",
                "client_id": "jupyter",
                "encryption_keys": ["not-a-key"],
                "http_timeout": "soon",
                "client_secret": 12345,
            }
        }
    )
    app = OfflineTokenApp(config=config)
    problems = app.check_settings()
    assert app.issuer == "https://idp.example.org" and app.client_id == "jupyter"
    assert app.encryption_keys == [] and app.http_timeout == 15.0
    names = ["OfflineTokenApp.encryption_keys", "OfflineTokenApp.http_timeout", "client_secret"]
    for name in names:
        assert any(name in problem for problem in problems), (name, problems)
    assert "12345" not in " ".join(problems)  # a secret's bad value is never echoed


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _app_with_log(**kwargs) -> tuple[OfflineTokenApp, _Records]:
    app = OfflineTokenApp(**kwargs)
    records = _Records()
    logger = logging.getLogger(f"test-config-{id(app)}")
    logger.addHandler(records)
    logger.propagate = False
    app.log = logger
    return app, records


def test_secrets_from_files(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("  file-secret-value\n")
    secret_file.chmod(0o600)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# new key first\n{KEY}\n\n{KEY[::-1]}\n")
    keys_file.chmod(0o600)
    app, records = _app_with_log(
        client_secret_file=str(secret_file), encryption_keys_file=str(keys_file)
    )
    assert app.check_settings() == []
    assert app._client_secret_value == "file-secret-value"
    assert app._encryption_keys_value == [KEY, KEY[::-1]]
    assert records.lines == []


def test_secret_files_from_environment(tmp_path, monkeypatch):
    secret_file = tmp_path / "secret"
    secret_file.write_text("env-file-secret")
    secret_file.chmod(0o600)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE", str(secret_file))
    app = OfflineTokenApp()
    assert app.check_settings() == []
    assert app.client_secret_file == str(secret_file)
    assert app._client_secret_value == "env-file-secret"


def test_readable_secret_file_warns_without_the_value(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("world-readable-secret")
    secret_file.chmod(0o644)
    app, records = _app_with_log(client_secret_file=str(secret_file))
    assert app.check_settings() == []
    assert len(records.lines) == 1
    assert "OfflineTokenApp.client_secret_file" in records.lines[0]
    assert "chmod 600" in records.lines[0]
    assert "world-readable-secret" not in records.lines[0]


@pytest.mark.parametrize(
    ("contents", "named"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("  \n\n", "is empty"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_secret_file_names_the_setting(tmp_path, contents, named):
    path = tmp_path / "secret"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    elif contents is not None:
        path.write_text(contents)
    app = OfflineTokenApp(client_secret_file=str(path))
    problems = app.check_settings()
    assert len(problems) == 1
    assert "OfflineTokenApp.client_secret_file" in problems[0] and named in problems[0]
    assert "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE" in problems[0]


def test_bad_key_in_keys_file_names_the_line_not_the_key(tmp_path):
    bad = "z" * 40
    path = tmp_path / "keys"
    path.write_text(f"{KEY}\n# comment\n{bad}\n")
    path.chmod(0o600)
    app = OfflineTokenApp(encryption_keys_file=str(path))
    problems = app.check_settings()
    assert len(problems) == 1
    assert "OfflineTokenApp.encryption_keys_file" in problems[0] and "line 3" in problems[0]
    assert bad not in problems[0] and KEY not in problems[0]


def test_inline_and_file_secret_together_is_a_bad_setting(tmp_path):
    path = tmp_path / "secret"
    path.write_text("from-file")
    path.chmod(0o600)
    app = OfflineTokenApp(client_secret="inline-value", client_secret_file=str(path))
    problems = app.check_settings()
    assert len(problems) == 1
    assert "OfflineTokenApp.client_secret_file" in problems[0]
    assert "OfflineTokenApp.client_secret " in problems[0] and "both set" in problems[0]
    assert "inline-value" not in problems[0] and "from-file" not in problems[0]


def test_inline_secret_in_config_warns_without_the_value():
    config = Config({"OfflineTokenApp": {"client_secret": "inline-config-secret"}})
    app, records = _app_with_log(config=config)
    assert app.check_settings() == []
    assert len(records.lines) == 1
    assert "OfflineTokenApp.client_secret is set inline" in records.lines[0]
    assert "client_secret_file" in records.lines[0]
    assert "inline-config-secret" not in records.lines[0]


def test_settings_reference_lists_every_setting(capsys):
    assert cli.main(["config"]) == 0
    out = capsys.readouterr().out
    for name, trait in OfflineTokenApp.setting_traits().items():
        assert f"--OfflineTokenApp.{name}=" in out, name
        assert " ".join(trait.help.split()[:4]) in " ".join(out.split()), name
    for env in ENVIRONMENT.values():
        assert f"Environment: ${env}" in out
    assert cli.main(["--help-all"]) == 0
    assert capsys.readouterr().out == out


def test_jupyter_offline_token_help_all_through_the_jupyter_command():
    """The command the README documents, through jupyter's subcommand dispatch."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "jupyter-offline-token").exists():
        pytest.skip("the package's console script is not installed in this environment")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [str(bin_dir / "jupyter"), "offline-token", "--help-all"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--OfflineTokenApp.client_secret_file=<Unicode>" in done.stdout
    assert "$JUPYTER_OFFLINE_TOKEN_KEYS_FILE" in done.stdout


def test_server_owner_is_looked_up_once(monkeypatch):
    """getpass.getuser() reads the passwd database when $USER is unset: not per request."""
    from jupyter_offline_token import app as app_module

    calls: list[int] = []

    def getuser() -> str:
        calls.append(1)
        return "researcher"

    monkeypatch.setattr(app_module.getpass, "getuser", getuser)
    app = OfflineTokenApp(owner_scope="server")
    assert [app.owner_of(f"anonymous-{n}") for n in range(3)] == ["researcher"] * 3
    assert len(calls) == 1
