"""Without issuer/client_id the server starts and the API says which setting is missing."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def offline_token_config(tmp_path):
    return {"vault_path": str(tmp_path / "v" / "vault.db")}


async def test_not_configured_answers_503_naming_the_setting(api):
    status, err = await api.post("consents", body={})
    assert status == 503 and err["error"] == "not_configured"
    assert "OfflineTokenApp.issuer" in err["message"]
    status, health = await api.get("health")
    assert status == 200 and health["configured"] is False
    status, listing = await api.get("tokens")
    assert status == 200 and listing == {"tokens": [], "next_cursor": None}


ISSUER = "https://idp.example.org/realms/lab"  # never contacted: the start fails before


def _routes() -> list[tuple[str, tuple[str, ...], dict]]:
    """One valid request per API route (method, path parts, keyword arguments)."""
    some = "00000000-0000-4000-8000-000000000000"
    return [
        ("POST", ("consents",), {"body": {}}),
        ("GET", ("tokens",), {}),
        ("GET", ("tokens", some), {}),
        ("DELETE", ("tokens", some), {}),
        ("POST", ("tokens", some, "access-token"), {"body": {}}),
        ("GET", ("tokens", some, "audit"), {}),
        ("GET", ("health",), {}),
        ("GET", ("tasks",), {}),
        ("POST", ("tasks",), {"body": {"name": "t"}}),
        ("GET", ("tasks", "t1"), {}),
        ("DELETE", ("tasks", "t1"), {}),
        ("PATCH", ("tasks", "t1"), {"body": {"progress": 1}}),
        ("POST", ("tasks", "t1", "link"), {"body": {"persistent_token_id": some}}),
        ("POST", ("tasks", "t1", "execute"), {}),
        ("POST", ("tasks", "t1", "cancel"), {}),
        ("GET", ("tasks", "t1", "log"), {}),
        ("GET", ("tasks", "t1", "events"), {}),
    ]


async def assert_every_route_503(api, named: str, secret: str) -> None:
    for method, parts, kwargs in _routes():
        status, err = await api.request(method, "api", "offline-token", *parts, **kwargs)
        assert status == 503, (method, parts, status, err)
        assert err["error"] == "not_configured", (method, parts, err)
        assert named in err["message"], (method, parts, err)
        assert secret not in err["message"]
    status, page = await api.request(
        "GET", "offline-token", "callback", params={"state": "s", "code": "c"}
    )
    assert status == 503 and named in page
    # A task process's credential (resolved in prepare) gets the same answer.
    status, err = await api.patch(
        "tasks",
        "t1",
        headers={"Authorization": "OfflineTokenTask some-credential"},
        body={"progress": 1},
    )
    assert status == 503 and named in err["message"], err


class TestMalformedKeyInConfig:
    """One bad setting: the API names it, the other settings survive, nothing is created."""

    BAD = "not-a-key-" + "x" * 20

    @pytest.fixture
    def offline_token_config(self, tmp_path):
        return {
            "issuer": ISSUER,
            "client_id": "jupyter",
            "vault_path": str(tmp_path / "vault" / "vault.db"),
            "encryption_keys": [self.BAD],
            "http_timeout": 7.0,
        }

    async def test_api_503_names_the_setting_and_nothing_is_created(
        self, api, offline_app, tmp_path
    ):
        await assert_every_route_503(api, "OfflineTokenApp.encryption_keys", self.BAD)
        assert offline_app.issuer == ISSUER and offline_app.client_id == "jupyter"
        assert offline_app.http_timeout == 7.0
        assert offline_app.vault_path == str(tmp_path / "vault" / "vault.db")
        assert not (tmp_path / "vault").exists()
        await offline_app.stop_extension()  # no AttributeError: the server can stop


class TestMalformedKeyInEnvironment:
    BAD = "short-key"

    @pytest.fixture
    def offline_token_config(self, monkeypatch):
        monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", self.BAD)
        return {"issuer": ISSUER, "client_id": "jupyter"}  # the vault in the data dir

    async def test_api_503_names_the_variable_and_nothing_is_created(
        self, api, offline_app, jp_data_dir
    ):
        await assert_every_route_503(api, "JUPYTER_OFFLINE_TOKEN_KEYS", self.BAD)
        assert offline_app.issuer == ISSUER
        assert not (jp_data_dir / "offline_token").exists()
        assert not list(jp_data_dir.rglob("vault.key"))
        await offline_app.stop_extension()


class TestOtherBadSetting:
    @pytest.fixture
    def offline_token_config(self, tmp_path):
        return {
            "issuer": ISSUER,
            "client_id": "jupyter",
            "vault_path": str(tmp_path / "vault" / "vault.db"),
            "backoff_base": 60.0,
            "backoff_max": 30.0,
        }

    async def test_cross_setting_check_names_both(self, api, offline_app, tmp_path):
        await assert_every_route_503(api, "OfflineTokenApp.backoff_max", "\0")
        assert not (tmp_path / "vault").exists()
        await offline_app.stop_extension()


class TestVaultThatCannotOpen:
    @pytest.fixture
    def offline_token_config(self, tmp_path):
        (tmp_path / "a-file").write_text("not a directory")
        return {
            "issuer": ISSUER,
            "client_id": "jupyter",
            "vault_path": str(tmp_path / "a-file" / "vault" / "vault.db"),
        }

    async def test_api_503_names_vault_path(self, api, offline_app, tmp_path):
        for method, parts, kwargs in _routes()[:7]:
            status, err = await api.request(method, "api", "offline-token", *parts, **kwargs)
            assert status == 503 and err["error"] == "vault_unavailable", (parts, err)
            assert "OfflineTokenApp.vault_path" in err["message"]
        assert (tmp_path / "a-file").is_file()
        assert not list(tmp_path.rglob("vault*"))
        await offline_app.stop_extension()


class TestVaultFileNotADatabase:
    @pytest.fixture
    def offline_token_config(self, tmp_path):
        (tmp_path / "vault").mkdir()
        (tmp_path / "vault" / "vault.db").write_bytes(b"this is not a SQLite database" * 100)
        return {
            "issuer": ISSUER,
            "client_id": "jupyter",
            "vault_path": str(tmp_path / "vault" / "vault.db"),
        }

    async def test_api_503_names_vault_path(self, api, offline_app, tmp_path):
        status, err = await api.get("tokens")
        assert status == 503 and err["error"] == "vault_unavailable", err
        assert "OfflineTokenApp.vault_path" in err["message"]
        assert sorted(p.name for p in (tmp_path / "vault").iterdir()) == ["vault.db"]
        await offline_app.stop_extension()
