"""The core promise, end to end against the real dev provider: consent once, then fresh access
tokens by persistent_token_id; rotation, revocation, single flight, and no secret in the logs."""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from server_fixtures import consent_location, grant, remember_refreshes

pytestmark = pytest.mark.timeout(120)


async def redeem_at_provider(idp, refresh_token: str) -> httpx.Response:
    """A refresh grant sent by the test itself, straight to the provider."""
    return await asyncio.to_thread(
        idp.http.post,
        idp.endpoint("token"),
        data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        auth=(idp.client_id, idp.client_secret),
    )


async def test_happy_path_consent_callback_and_access_token(api, idp):
    status, created = await api.post("consents", body={"label": "nightly run"})
    assert status == 201
    assert created["status"] == "pending"
    token_id = created["persistent_token_id"]
    url = httpx.URL(created["consent_url"])
    assert str(url).startswith(idp.metadata["authorization_endpoint"])
    params = dict(url.params)
    assert params["response_type"] == "code"
    assert params["code_challenge_method"] == "S256"
    assert params["prompt"] == "consent"
    assert {"openid", "offline_access"} <= set(params["scope"].split())
    assert params["state"] and params["nonce"] and params["code_challenge"]

    status, token = await api.get("tokens", token_id)
    assert status == 200 and token["status"] == "pending"
    assert token["health"]["level"] == "pending"
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "waiting_consent"

    location = await asyncio.to_thread(idp.complete_consent, created["consent_url"])
    status, page = await api.callback(location)
    assert status == 200
    assert "Offline access granted" in page and token_id in page and "nightly run" in page

    status, token = await api.get("tokens", token_id)
    assert token["status"] == "active"
    assert token["subject"] == "alice"
    assert token["label"] == "nightly run"
    assert token["health"]["level"] == "healthy"

    status, access = await api.post("tokens", token_id, "access-token")
    assert status == 200
    assert set(access) == {"access_token", "token_type", "expires_in", "expires_at", "scope"}
    assert access["token_type"].lower() == "bearer"
    assert 0 < access["expires_in"] <= 300
    # The provider accepts it.
    info = await asyncio.to_thread(idp.userinfo, access["access_token"])
    assert info.status_code == 200 and info.json()["sub"] == "alice"

    status, listing = await api.get("tokens")
    assert [t["persistent_token_id"] for t in listing["tokens"]] == [token_id]
    # No secret in any metadata view.
    assert access["access_token"] not in str(listing)


async def test_cached_access_token_until_min_ttl(api, idp):
    token_id = await grant(api, idp)
    idp.reset_stats()
    _, first = await api.post("tokens", token_id, "access-token")
    _, second = await api.post("tokens", token_id, "access-token", body={"min_ttl": 10})
    assert first["access_token"] == second["access_token"]
    assert idp.stats()["refresh_token_grants"] == 0
    # Asking for more life than the cached token has forces exactly one refresh.
    _, third = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    assert third["access_token"] != first["access_token"]
    assert idp.stats()["refresh_token_grants"] == 1


async def test_rotation_old_refresh_token_dead_ours_still_works(api, idp, offline_app):
    token_id = await grant(api, idp)
    vault = offline_app.services.vault
    before = await vault.read_refresh_token(token_id)
    _, _ = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    after = await vault.read_refresh_token(token_id)
    assert after != before, "the provider rotates; the vault must hold the new refresh token"
    # Ours keeps working through several more rotations.
    for _ in range(3):
        status, access = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
        assert status == 200
    info = await asyncio.to_thread(idp.userinfo, access["access_token"])
    assert info.status_code == 200
    # The rotated-out token is dead at the provider (a replay there; done last because
    # oidc-provider then revokes the whole grant).
    replay = await redeem_at_provider(idp, before)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


async def test_revocation_then_provider_refuses(api, idp, offline_app):
    token_id = await grant(api, idp)
    refresh_token = await offline_app.services.vault.read_refresh_token(token_id)
    idp.reset_stats()
    status, body = await api.delete("tokens", token_id)
    assert status == 204, body
    assert idp.stats()["revocations"] == 1
    status, _ = await api.get("tokens", token_id)
    assert status == 404
    refused = await redeem_at_provider(idp, refresh_token)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"


async def test_delete_without_revoke_keeps_grant_at_provider(api, idp, offline_app):
    token_id = await grant(api, idp)
    refresh_token = await offline_app.services.vault.read_refresh_token(token_id)
    idp.reset_stats()
    status, _ = await api.delete("tokens", token_id, params={"revoke": "false"})
    assert status == 204
    assert idp.stats()["revocations"] == 0
    still = await redeem_at_provider(idp, refresh_token)
    assert still.status_code == 200


async def test_invalid_grant_marks_token_failed(api, idp):
    token_id = await grant(api, idp)
    idp.revoke_account_grants("alice")
    status, err = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    assert status == 409 and err["error"] == "token_failed"
    assert "request consent again" in err["message"]
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"
    assert token["health"]["level"] == "unhealthy"
    assert token["health"]["action"] == "request_consent"


async def test_fifty_concurrent_requests_on_expired_token_make_one_grant(api, idp, offline_app):
    token_id = await grant(api, idp)
    offline_app.services.broker._cache.clear()  # as after a restart: no access token in memory
    idp.reset_stats()
    results = await asyncio.gather(
        *(api.post("tokens", token_id, "access-token") for _ in range(50))
    )
    assert all(status == 200 for status, _ in results), results[:3]
    assert len({body["access_token"] for _, body in results}) == 1
    assert idp.stats()["refresh_token_grants"] == 1


async def test_return_to_redirects_with_id(api, idp, jp_base_url):
    token_id, location = await consent_location(api, idp, return_to=f"{jp_base_url}lab?reset=1")
    status, _ = await api.callback(location)
    assert status == 303
    target = urlsplit(api.last_headers["Location"])
    assert not target.scheme and not target.netloc
    assert target.path == f"{jp_base_url}lab"
    assert dict(parse_qsl(target.query)) == {"reset": "1", "persistent_token_id": token_id}


async def test_whole_flow_logs_no_secret(api, idp, offline_app, caplog):
    caplog.set_level(logging.DEBUG)
    provider = offline_app.services.broker.provider
    verifiers: list[str] = []
    exchange = provider.exchange_code

    async def spy_exchange(**kwargs):  # passes through; only remembers the verifier sent
        verifiers.append(kwargs["code_verifier"])
        return await exchange(**kwargs)

    provider.exchange_code = spy_exchange
    issued = remember_refreshes(provider)  # every token the provider hands us in the flow
    token_id, location = await consent_location(api, idp, label="log check")
    code = dict(httpx.URL(location).params)["code"]
    state = dict(httpx.URL(location).params)["state"]
    await api.callback(location)
    _, access = await api.post("tokens", token_id, "access-token")
    _, access2 = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    refresh_token = await offline_app.services.vault.read_refresh_token(token_id)
    idp.revoke_account_grants("alice")
    await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    await api.delete("tokens", token_id)
    # The test's own provider driver runs in asyncio.to_thread workers ("asyncio_N") and logs
    # the provider's redirects at DEBUG; everything else is the server's.
    server_records = [r for r in caplog.records if not r.threadName.startswith("asyncio_")]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in server_records)
    assert len(server_records) > 10, "expected the server's log records of the whole flow"
    assert any("offline-token/callback" in r.getMessage() for r in server_records)
    secrets = {
        "code": code,
        "state": state,
        "access token": access["access_token"],
        "second access token": access2["access_token"],
        "refresh token": refresh_token,
        "client secret": idp.client_secret,
        "PKCE verifier": verifiers[0],
        **{f"issued token #{i}": token for i, token in enumerate(issued)},
    }
    assert len(issued) >= 4, "expected at least two refreshes with rotation in the flow"
    for name, value in secrets.items():
        assert value not in text, f"{name} leaked into the log"
    assert not re.search(r"code_verifier=|refresh_token=", text)
