"""Faults at the provider never lose a stored token: each transient fault leaves the entry active
and retrying, shows in health and metrics, and the stored refresh token works once it clears."""

from __future__ import annotations

import asyncio

import pytest
from conftest import grant, metric
from fault_injection import FaultInjector

from jupyter_offline_token.oidc import ProviderClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def offline_token_config(offline_token_config):
    return {**offline_token_config, "http_timeout": 1.0, "min_refresh_interval": 10.0}


@pytest.fixture
def injector(offline_app, idp, jp_asyncio_loop):
    """Put the fault injector between the broker and the real provider."""
    fault = FaultInjector()
    broker = offline_app.services.broker
    original = broker.provider
    broker.provider = ProviderClient(
        idp.issuer, idp.client_id, idp.client_secret, http_timeout=1.0, transport=fault
    )
    yield fault
    jp_asyncio_loop.run_until_complete(broker.provider.aclose())
    broker.provider = original


@pytest.mark.parametrize("mode", ["refuse", "timeout", "500", "503", "429", "malformed"])
async def test_transient_fault_keeps_token_and_recovers(api, idp, offline_app, injector, mode):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker._cache.clear()  # the next request must reach the provider
    transient_before = await metric(api, "offline_token_refresh_total", result="transient_error")

    injector.arm(mode)
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 503 and err["error"] == "provider_unavailable", err
    retry_after = int(api.last_headers["Retry-After"])
    assert retry_after >= (7 if mode == "429" else 10)
    assert injector.faults_served == 1

    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active"
    assert token["refresh_state"] == "retrying"
    assert token["health"]["level"] == "degraded"
    assert token["health"]["action"] == "wait"
    _, health = await api.get("health")
    assert health["level"] == "degraded" and health["counts"]["degraded"] == 1
    assert await metric(api, "offline_token_refresh_total", result="transient_error") == (
        transient_before + 1
    )

    # Within min_refresh_interval no second attempt reaches the provider.
    status, _ = await api.post("tokens", token_id, "access-token")
    assert status == 503 and injector.faults_served == 1

    injector.disarm()
    broker._backoff_until.clear()  # as if min_refresh_interval had passed
    status, access = await api.post("tokens", token_id, "access-token")
    assert status == 200, access
    info = await asyncio.to_thread(idp.userinfo, access["access_token"])
    assert info.status_code == 200
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active" and token["health"]["level"] == "healthy"


async def test_invalid_grant_after_revocation_at_provider(api, idp, offline_app, injector):
    token_id = await grant(api, idp)
    offline_app.services.broker._cache.clear()
    permanent_before = await metric(api, "offline_token_refresh_total", result="permanent_error")
    idp.revoke_account_grants("alice")
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "token_failed"
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed" and token["refresh_state"] == "failed"
    assert token["health"] == {
        **token["health"],
        "level": "unhealthy",
        "action": "request_consent",
    }
    assert await metric(api, "offline_token_refresh_total", result="permanent_error") == (
        permanent_before + 1
    )


async def test_restart_during_rotating_refresh_loses_nothing(api, idp, offline_app, injector):
    token_id = await grant(api, idp)
    services = offline_app.services
    services.broker._cache.clear()
    old_refresh = await services.vault.read_refresh_token(token_id)
    injector.delay = 1.0
    injector.arm("delay")
    request = asyncio.ensure_future(api.post("tokens", token_id, "access-token"))
    await asyncio.wait_for(injector.in_flight.wait(), 10)
    await services.close()  # the server stops while the grant is at the provider
    status, access = await request
    assert status == 200, access

    # "Restart": new services on the same vault file.
    injector.disarm()
    fresh = offline_app.build_services()
    offline_app.services = fresh
    offline_app.settings["offline_token_services"] = fresh
    jp_settings = offline_app.serverapp.web_app.settings
    jp_settings["offline_token_services"] = fresh
    broker = await fresh.ready()
    assert await fresh.vault.read_refresh_token(token_id) != old_refresh, "rotation was stored"
    token = await broker.get_access_token(None, token_id, min_ttl=10**6)
    info = await asyncio.to_thread(idp.userinfo, token.access_token)
    assert info.status_code == 200


async def test_health_audit_and_metrics_views(api, idp, offline_app, injector):
    token_id = await grant(api, idp, label="views")
    await api.post("tokens", token_id, "access-token")
    await api.post("tokens", token_id, "access-token", body={"min_ttl": 86400})
    await offline_app.services.engine.sweep()  # flushes the cached-access audit and gauges
    status, audit = await api.get("tokens", token_id, "audit")
    assert status == 200
    actions = [(e["action"], e["result"]) for e in audit["events"]]
    for expected in [("consent", "requested"), ("activate", "ok"), ("refresh", "ok")]:
        assert expected in actions
    assert ("access", "cache") in actions
    assert "served 1 time(s) from cache" in str(audit)
    _, access = await api.post("tokens", token_id, "access-token")
    assert access["access_token"] not in str(audit)

    _, health = await api.get("health")
    assert health["level"] == "healthy" and health["configured"] is True
    assert health["counts"]["healthy"] == 1
    assert await metric(api, "offline_token_tokens", status="active") == 1
    assert await metric(api, "offline_token_access_token_requests_total", source="cache") >= 1
    assert await metric(api, "offline_token_refresh_retrying") == 0
    status, text = await api.request("GET", "metrics")
    assert "offline_token_refresh_duration_seconds_bucket" in text


async def test_revoking_warns_about_other_tokens_of_the_same_account(api, idp):
    first = await grant(api, idp, label="one")
    second = await grant(api, idp, label="two")
    status, body = await api.delete("tokens", first)
    assert status == 200
    assert body["revoked"] is True and body["shared_with"] == [second]
    assert "Keycloak" in body["warning"]


async def test_rejected_client_is_a_configuration_error(api, idp, offline_app):
    """The real provider answers invalid_client to a wrong secret: fix the configuration."""
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker._cache.clear()
    good = broker.provider
    broker.provider = ProviderClient(idp.issuer, idp.client_id, "not-the-secret")
    try:
        status, err = await api.post("tokens", token_id, "access-token")
    finally:
        await broker.provider.aclose()
        broker.provider = good
    assert status == 409 and err["error"] == "token_failed"
    assert "fix the client configuration" in err["message"]
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"
    assert token["health"]["action"] == "fix_configuration"
    assert "invalid_client" in token["health"]["detail"]


def _restart(offline_app):
    """A new process on the same vault: fresh services, nothing in memory."""
    fresh = offline_app.build_services()
    offline_app.services = fresh
    offline_app.serverapp.web_app.settings["offline_token_services"] = fresh
    return fresh


async def test_shutdown_during_a_background_refresh_loses_nothing(api, idp, offline_app, injector):
    token_id = await grant(api, idp)
    services = offline_app.services
    old_refresh = await services.vault.read_refresh_token(token_id)
    injector.delay = 7.0  # longer than the scheduler's own stop timeout (5 s)
    injector.arm("hold_answer")
    await services.start_background()  # the refresh engine, as the server starts it
    services.engine.scheduler.schedule(token_id, 0.0, reason="test")
    await asyncio.wait_for(injector.in_flight.wait(), 10)  # the provider has rotated
    await services.close()

    injector.disarm()
    fresh = _restart(offline_app)
    broker = await fresh.ready()
    assert await fresh.vault.read_refresh_token(token_id) != old_refresh, "rotation was lost"
    token = await broker.get_access_token(None, token_id, min_ttl=10**6)
    info = await asyncio.to_thread(idp.userinfo, token.access_token)
    assert info.status_code == 200


async def test_delete_during_a_refresh_revokes_the_newest_token(api, idp, offline_app, injector):
    token_id = await grant(api, idp)
    vault = offline_app.services.vault
    stored: list[str] = []
    record_refresh = vault.record_refresh

    async def spy(token_id, **kwargs):  # passes through; remembers the rotated token
        if kwargs.get("new_refresh_token"):
            stored.append(kwargs["new_refresh_token"])
        return await record_refresh(token_id, **kwargs)

    vault.record_refresh = spy
    injector.delay = 1.0
    injector.arm("hold_answer")
    refresh = asyncio.ensure_future(
        api.post("tokens", token_id, "access-token", body={"min_ttl": 86400})
    )
    await asyncio.wait_for(injector.in_flight.wait(), 10)
    injector.disarm()
    status, body = await api.delete("tokens", token_id)
    assert status == 204, body
    status, access = await refresh
    assert status == 200, access  # the refresh finished first, not a 500
    assert len(stored) == 1
    replay = await asyncio.to_thread(
        idp.http.post,
        idp.endpoint("token"),
        data={"grant_type": "refresh_token", "refresh_token": stored[0]},
        auth=(idp.client_id, idp.client_secret),
    )
    assert replay.status_code == 400, "the rotated refresh token is still live at the provider"


async def test_concurrent_callers_on_a_failing_provider_make_one_attempt(
    api, idp, offline_app, injector
):
    token_id = await grant(api, idp)
    offline_app.services.broker._cache.clear()
    injector.arm("500")
    results = await asyncio.gather(
        *(api.post("tokens", token_id, "access-token") for _ in range(20))
    )
    assert {status for status, _ in results} == {503}
    assert injector.faults_served == 1
    _, token = await api.get("tokens", token_id)
    assert token["health"]["retry_count"] == 1
