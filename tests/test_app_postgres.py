"""OfflineTokenApp.database_url (issue 11): settings, errors that name it without its password,
and the extension serving consents and access tokens from a PostgreSQL vault."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from typing import Any

import pytest
from pg_fixture import PostgresCluster
from server_fixtures import TEST_KEY, grant
from traitlets.config import Config

from jupyter_offline_token.app import OfflineTokenApp
from jupyter_offline_token.stores.postgres import PostgresTaskStore, PostgresTokenStore

pytestmark = pytest.mark.timeout(90)

PASSWORD = "pw-PLAINTEXT-db-password-5e6f"
URL = f"postgresql://jupyter:{PASSWORD}@db.example.org:5432/offline_token"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def app_with_log(**kwargs: Any) -> tuple[OfflineTokenApp, Lines]:
    app = OfflineTokenApp(**kwargs)
    records = Lines()
    app.log.addHandler(records)
    app.log.setLevel(logging.DEBUG)
    return app, records


def test_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_DATABASE_URL", URL)
    app = OfflineTokenApp(encryption_keys=[TEST_KEY])
    assert app.check_settings() == []
    assert app.database_url == URL and app._database_url_value == URL


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (f"mysql://jupyter:{PASSWORD}@db/x", "postgresql://"),
        (f"postgresql://jupyter:{PASSWORD}@db:99999999/x", "not a URL"),
        (f"postgresql://jupyter:{PASSWORD}@db:5432/", "name the database"),
    ],
)
def test_a_bad_url_names_the_setting_never_the_password(value: str, named: str) -> None:
    app = OfflineTokenApp(config=Config({"OfflineTokenApp": {"database_url": value}}))
    problems = app.check_settings()
    assert len(problems) == 1, problems
    assert "OfflineTokenApp.database_url" in problems[0] and named in problems[0]
    assert PASSWORD not in problems[0] and PASSWORD not in (app.start_error or "")


def test_a_bad_url_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_DATABASE_URL", f"http://u:{PASSWORD}@db/x")
    problems = OfflineTokenApp(encryption_keys=[TEST_KEY]).check_settings()
    assert len(problems) == 1 and "JUPYTER_OFFLINE_TOKEN_DATABASE_URL" in problems[0]
    assert PASSWORD not in problems[0]


def test_url_from_a_file_and_its_errors(tmp_path: Any) -> None:
    path = tmp_path / "db-url"
    path.write_text(URL + "\n")
    path.chmod(0o600)
    app = OfflineTokenApp(database_url_file=str(path), encryption_keys=[TEST_KEY])
    assert app.check_settings() == []
    assert app._database_url_value == URL
    both = OfflineTokenApp(
        database_url_file=str(path), database_url=URL, encryption_keys=[TEST_KEY]
    ).check_settings()
    assert len(both) == 1 and "both set" in both[0] and PASSWORD not in both[0]
    path.write_text(f"mysql://u:{PASSWORD}@db/x")
    bad = OfflineTokenApp(database_url_file=str(path), encryption_keys=[TEST_KEY])
    (problem,) = bad.check_settings()
    assert "OfflineTokenApp.database_url_file" in problem and PASSWORD not in problem
    missing = OfflineTokenApp(database_url_file=str(tmp_path / "nope"))
    (problem,) = missing.check_settings()
    assert "does not exist" in problem


def test_a_database_without_a_configured_key_is_a_bad_setting() -> None:
    (problem,) = OfflineTokenApp(database_url=URL).check_settings()
    assert "OfflineTokenApp.encryption_keys" in problem and "database_url" in problem


def test_an_inline_url_with_a_password_warns_without_it() -> None:
    config = Config({"OfflineTokenApp": {"database_url": URL, "encryption_keys": [TEST_KEY]}})
    app, records = app_with_log(config=config)
    app.check_settings()
    warnings = [line for line in records.lines if "database_url is set inline" in line]
    assert len(warnings) == 1 and "database_url_file" in warnings[0]
    assert all(PASSWORD not in line for line in records.lines)
    quiet = Config(
        {
            "OfflineTokenApp": {
                "database_url": "postgresql://jupyter@db/offline_token",
                "encryption_keys": [TEST_KEY],
            }
        }
    )
    app, records = app_with_log(config=quiet)
    app.check_settings()
    assert not [line for line in records.lines if "database_url is set inline" in line]


# --- a server on the PostgreSQL vault ----------------------------------------------------------


class TestUnreachableDatabase:
    @pytest.fixture
    def offline_token_config(self, idp: Any) -> dict[str, Any]:
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return {
            "issuer": idp.issuer,
            "client_id": idp.client_id,
            "database_url": f"postgresql://jupyter:{PASSWORD}@127.0.0.1:{port}/vault",
            "encryption_keys": [TEST_KEY],
        }

    async def test_every_route_answers_503_naming_the_setting(
        self, api: Any, offline_app: OfflineTokenApp
    ) -> None:
        for parts in (("tokens",), ("health",), ("tasks",)):
            status, err = await api.get(*parts)
            assert status == 503 and err["error"] == "vault_unavailable", (parts, err)
            assert "OfflineTokenApp.database_url" in err["message"]
            assert PASSWORD not in err["message"]
        await offline_app.stop_extension()  # stops cleanly


class TestServerOnPostgres:
    @pytest.fixture
    def offline_token_config(self, pg_app_config: dict[str, Any]) -> dict[str, Any]:
        return pg_app_config

    async def test_consent_access_token_and_revoke(
        self,
        api: Any,
        idp: Any,
        offline_app: OfflineTokenApp,
        pg_url: str,
        pg_cluster: PostgresCluster,
        tmp_path: Any,
    ) -> None:
        services = offline_app.services
        assert services is not None
        assert isinstance(services.vault, PostgresTokenStore)
        assert isinstance(services.task_store, PostgresTaskStore)
        token_id = await grant(api, idp, label="on postgres")
        status, body = await api.post("tokens", token_id, "access-token", body={})
        assert status == 200 and body["access_token"], body
        rows = pg_cluster.execute(
            pg_url, "SELECT status, secret_ct IS NOT NULL FROM tokens WHERE id = %s", (token_id,)
        )
        assert rows == [("active", True)]
        status, _ = await api.delete("tokens", token_id)
        assert status in (200, 204)
        status, body = await api.post("tokens", token_id, "access-token", body={})
        assert status in (404, 409, 410), body
        assert not list(tmp_path.rglob("vault.db"))  # no SQLite vault was made
        assert pg_cluster.password not in offline_app.vault_description()


def test_without_the_postgres_extra_the_package_imports_and_the_error_names_it() -> None:
    """psycopg is an extra: nothing imports it unless database_url is set, and then the
    failure says what to install."""
    script = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "import jupyter_offline_token.stores, jupyter_offline_token.app as a\n"
        f"app = a.OfflineTokenApp(database_url={URL!r}, encryption_keys=[{TEST_KEY!r}])\n"
        "assert app.check_settings() == []\n"
        "try:\n"
        "    app.build_token_store()\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'jupyter-offline-token[postgres]'" in done.stdout
    assert "OfflineTokenApp.database_url" in done.stdout and PASSWORD not in done.stdout
