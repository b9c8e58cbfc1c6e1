"""The vault as the running server uses it: key file, tampering, wrong key."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from server_fixtures import grant

from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.models import ConsentSecrets
from jupyter_offline_token.stores import SQLiteTokenStore

pytestmark = pytest.mark.timeout(120)


class TestGeneratedKeyFile:
    @pytest.fixture
    def offline_token_config(self, offline_token_config):
        config = dict(offline_token_config)
        del config["encryption_keys"]
        return config

    async def test_key_file_mode_0600_and_vault_dir_0700(self, api, idp, offline_app):
        await grant(api, idp)
        vault_path = Path(offline_app.vault_path)
        key_file = vault_path.parent / "vault.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(vault_path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(vault_path.stat().st_mode) == 0o600


async def test_tampered_ciphertext_marks_entry_failed(api, idp, offline_app):
    token_id = await grant(api, idp)
    other_id = await grant(api, idp, label="untouched")
    offline_app.services.broker._cache.clear()

    def tamper() -> None:
        with sqlite3.connect(offline_app.vault_path) as db:
            row = db.execute("SELECT secret_ct FROM tokens WHERE id = ?", (token_id,)).fetchone()
            blob = row[0]
            flipped = bytes([blob[0] ^ 0x01]) + blob[1:]
            db.execute("UPDATE tokens SET secret_ct = ? WHERE id = ?", (flipped, token_id))

    await asyncio.to_thread(tamper)
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "token_failed"
    assert "wrong key or tampered" in err["message"]
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"
    assert token["last_error"] == "cannot decrypt: wrong key or tampered"
    # The server and the other entry are fine.
    status, _ = await api.post("tokens", other_id, "access-token")
    assert status == 200


def _vault_with_secret(path: Path, key: str) -> None:
    async def build() -> None:
        vault = SQLiteTokenStore(path, encryption_keys=[key])
        await vault.open()
        record = await vault.create_pending(
            owner="someone",
            issuer="http://127.0.0.1:1",
            client_id="c",
            scopes=["openid", "offline_access"],
            state_hash="h" * 64,
            secrets=ConsentSecrets(code_verifier="v" * 43, nonce="n", redirect_uri="http://x/cb"),
            consent_expires_at=time.time() + 600,
            now=time.time(),
        )
        await vault.activate(
            record.id,
            refresh_token="r" * 40,
            subject="s",
            scopes=["openid"],
            idle_expires_at=None,
            now=time.time(),
        )
        await vault.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(build())
    finally:
        loop.close()


class TestWrongKey:
    @pytest.fixture
    def offline_token_config(self, offline_token_config, tmp_path):
        config = dict(offline_token_config)
        path = tmp_path / "prefilled" / "vault.db"
        _vault_with_secret(path, KeyRing.generate())
        config["vault_path"] = str(path)  # the server's configured key is another one
        return config

    async def test_api_answers_503_naming_the_setting(self, api, offline_app):
        for call in (api.get("tokens"), api.post("consents", body={}), api.get("health")):
            status, err = await call
            assert status == 503 and err["error"] == "vault_unavailable", err
            assert "encryption_keys" in err["message"]
            assert "JUPYTER_OFFLINE_TOKEN_KEYS" in err["message"]
        # Nothing was touched: the entry is still there, readable with the right key.
        with sqlite3.connect(offline_app.vault_path) as db:
            assert db.execute("SELECT count(*) FROM tokens").fetchone() == (1,)
