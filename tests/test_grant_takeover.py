"""Kill-safe refresh (issue 11): a lease taken over from a holder that died or hung mid-refresh.

The stored refresh token is introspected at the real dev provider (which rotates refresh tokens
and revokes the whole grant on a replay) before it is sent again: active, the refresh goes on;
inactive (the dead holder's grant had been answered), the entry fails with the reason and the
provider sees no replay; introspection failing transiently changes nothing and keeps the check
pending. The dead holder is played by taking the lease under another holder id with an expired
TTL, exactly what a SIGKILLed process leaves behind (tests/test_grant_killed.py does it with
real processes).
"""

from __future__ import annotations

import logging

import httpx
import pytest
from fault_injection import provider_through_injector
from server_fixtures import grant

from jupyter_offline_token import health, models
from jupyter_offline_token.oidc import ProviderClient

pytestmark = pytest.mark.timeout(120)

DEAD = "dead-holder:0"


@pytest.fixture
def injector(offline_app, idp, jp_asyncio_loop):
    """The fault injector between the broker and the real provider."""
    yield from provider_through_injector(offline_app, idp, jp_asyncio_loop, http_timeout=2.0)


async def _die_holding_the_lease(offline_app, token_id: str) -> str:
    """Take the lease as another holder whose TTL has run out; return the refresh token it
    read (as the killed process had it in memory)."""
    broker = offline_app.services.broker
    start = await broker.vault.begin_refresh(token_id, DEAD, 1.0, broker.clock() - 60)
    assert start is not None and start.refresh_token
    return start.refresh_token


async def test_introspection_tells_a_live_refresh_token_from_a_rotated_one(idp):
    client = ProviderClient(idp.issuer, idp.client_id, idp.client_secret)
    try:
        first = await client.exchange_code(**_code_for(idp))
        assert first.refresh_token
        assert await client.introspect(first.refresh_token) is True
        second = await client.refresh(first.refresh_token)
        assert second.refresh_token and second.refresh_token != first.refresh_token
        assert await client.introspect(first.refresh_token) is False  # rotated out
        assert await client.introspect(second.refresh_token) is True
    finally:
        await client.aclose()


def _code_for(idp) -> dict[str, str]:
    from urllib.parse import parse_qs, urlsplit

    from jupyter_offline_token.oidc import new_pkce, new_state

    verifier, challenge = new_pkce()
    redirect = "http://127.0.0.1/takeover/callback"
    url = idp.authorization_url(redirect_uri=redirect, state=new_state(), code_challenge=challenge)
    code = parse_qs(urlsplit(idp.complete_consent(url)).query)["code"][0]
    return {"code": code, "redirect_uri": redirect, "code_verifier": verifier}


async def test_taken_over_with_an_active_token_refreshes_without_a_replay(api, idp, offline_app):
    token_id = await grant(api, idp)
    offline_app.services.broker.forget(token_id)
    await _die_holding_the_lease(offline_app, token_id)  # killed before reaching the provider
    before = idp.stats()
    status, access = await api.post("tokens", token_id, "access-token")
    assert status == 200, access
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 1
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
    status, token = await api.get("tokens", token_id)
    assert token["status"] == "active" and token["refresh_count"] == 1


async def test_taken_over_after_the_provider_answered_fails_without_sending_the_token(
    api, idp, offline_app
):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker.forget(token_id)
    stale = await _die_holding_the_lease(offline_app, token_id)
    answered = await broker.provider.refresh(stale)  # the dead holder's grant: rotated
    assert answered.refresh_token and answered.refresh_token != stale
    before = idp.stats()
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "token_failed", err
    assert "interrupted" in err["message"] and "request consent again" in err["message"]
    after = idp.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"]  # never sent
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]
    record = await broker.vault.get(token_id)
    assert record is not None and record.status == models.FAILED
    assert record.last_error == health.REFRESH_INTERRUPTED
    assert record.last_error_kind == models.KIND_GRANT_REJECTED
    status, shown = await api.get("tokens", token_id)
    assert shown["health"]["action"] == health.ACTION_REQUEST_CONSENT, shown
    assert "interrupted" in shown["health"]["detail"]
    # The grant itself was never replayed: the rotated token the dead holder got still works.
    assert await broker.provider.introspect(answered.refresh_token) is True


async def test_introspection_fault_changes_nothing_and_the_check_stays_pending(
    api, idp, offline_app, injector, caplog
):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker.forget(token_id)
    await _die_holding_the_lease(offline_app, token_id)
    stored = await broker.vault.read_refresh_token(token_id)
    injector.arm("503", path_suffix="/introspection")
    before = idp.stats()
    with caplog.at_level(logging.DEBUG):
        status, err = await api.post("tokens", token_id, "access-token")
    assert stored not in str(err)
    assert caplog.records  # the fault was logged ...
    assert not [r for r in caplog.records if stored in r.getMessage()]  # ... without the token
    assert status == 503 and err["error"] == "provider_unavailable", err
    assert injector.faults_served == 1
    assert idp.stats()["refresh_token_grants"] == before["refresh_token_grants"]
    record = await broker.vault.get(token_id)
    assert record is not None and record.status == models.ACTIVE
    # The lease stays ours until it expires (no other process sends the unchecked token), and
    # this process checks again before its next grant.
    assert await broker.vault.begin_refresh(token_id, "another:1", 30.0, broker.clock()) is None
    assert token_id in broker.grants.unchecked
    injector.disarm()
    broker.use_gate(None)  # type: ignore[arg-type]  # no backoff wait: retry at once
    status, access = await api.post("tokens", token_id, "access-token")
    assert status == 200, access
    assert injector.passed_through >= 2  # the introspection, then the grant
    assert token_id not in broker.grants.unchecked
    assert idp.stats()["refresh_token_grant_errors"] == before["refresh_token_grant_errors"]


class _NoIntrospection(httpx.AsyncBaseTransport):
    """The real provider, with introspection_endpoint removed from its discovery document."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.introspections = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/introspection"):
            self.introspections += 1
        response = await self._real.handle_async_request(request)
        if not request.url.path.endswith("/openid-configuration"):
            return response
        await response.aread()
        document = response.json()
        document.pop("introspection_endpoint", None)
        return httpx.Response(200, json=document, request=request)

    async def aclose(self) -> None:
        await self._real.aclose()


async def test_without_introspection_endpoint_it_refreshes_and_warns(api, idp, offline_app, caplog):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    original = broker.provider
    transport = _NoIntrospection()
    broker.provider = ProviderClient(
        idp.issuer, idp.client_id, idp.client_secret, transport=transport
    )
    try:
        broker.forget(token_id)
        await _die_holding_the_lease(offline_app, token_id)
        with caplog.at_level(logging.WARNING, logger="jupyter_offline_token"):
            status, access = await api.post("tokens", token_id, "access-token")
        assert status == 200, access
        assert transport.introspections == 0
        assert any("no introspection endpoint" in r.getMessage() for r in caplog.records)
        for record in caplog.records:
            assert access["access_token"] not in record.getMessage()
    finally:
        await broker.provider.aclose()
        broker.provider = original
