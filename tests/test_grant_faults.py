"""Faults at the provider never lose a stored token: each transient fault leaves the entry active
and retrying, shows in health and metrics, and the stored refresh token works once it clears."""

from __future__ import annotations

import asyncio
import math
import re
import time

import pytest
from fault_injection import provider_through_injector
from server_fixtures import grant, metric

from jupyter_offline_token.oidc import ProviderClient

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def offline_token_config(offline_token_config, request):
    overrides = getattr(request, "param", {})  # indirect parametrization, per test
    return {
        **offline_token_config,
        "http_timeout": 1.0,
        "min_refresh_interval": 10.0,
        **overrides,
    }


# Backoff below the old fixed 10 s hint: 2 s, then 4 s, no jitter.
SHORT_BACKOFF = pytest.mark.parametrize(
    "offline_token_config",
    [
        {
            "backoff_base": 2.0,
            "backoff_max": 4.0,
            "backoff_jitter": 0.0,
            "min_refresh_interval": 1.0,
        }
    ],
    indirect=True,
)


async def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def injector(offline_app, idp, jp_asyncio_loop):
    """Put the fault injector between the broker and the real provider."""
    yield from provider_through_injector(offline_app, idp, jp_asyncio_loop, http_timeout=1.0)


@pytest.mark.parametrize("mode", ["refuse", "timeout", "500", "503", "429", "malformed"])
async def test_transient_fault_keeps_token_and_recovers(api, idp, offline_app, injector, mode):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker._cache.clear()  # the next request must reach the provider
    transient_before = await metric(api, "offline_token_refresh_total", result="transient_error")

    injector.arm(mode)
    sent = time.time()
    status, err = await api.post("tokens", token_id, "access-token")
    asked = time.time()
    assert status == 503 and err["error"] == "provider_unavailable", err
    assert injector.faults_served == 1
    # Retry-After is the scheduler's next attempt: backoff (10 s +-10 %) or the provider's
    # Retry-After (7 s for 429), never below min_refresh_interval (10 s).
    state = offline_app.services.engine.scheduler.state(token_id)
    assert state is not None and state.retry_count == 1
    wait = state.next_attempt_at - asked
    assert 10 - 1 <= wait <= 11
    told = int(api.last_headers["Retry-After"])
    assert math.ceil(wait) <= told <= math.ceil(state.next_attempt_at - sent)
    assert err["message"].endswith(f"next attempt in {told} s"), err

    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active"
    assert token["refresh_state"] == "retrying"
    assert token["health"]["level"] == "degraded"
    assert token["health"]["action"] == "wait"
    detail = token["health"]["detail"]
    assert detail.startswith("provider unreachable since "), detail
    fault = detail[detail.index("(") + 1 : detail.rindex("), next try")]
    assert "provider unavailable" not in detail and detail.count(fault) == 1, detail
    assert token["last_error"] == fault  # the fault itself; health writes the sentence
    assert re.search(r", next try in (9|10|11) s \(after 1 failed attempt\)$", detail), detail
    _, health = await api.get("health")
    assert health["level"] == "degraded" and health["counts"]["degraded"] == 1
    assert await metric(api, "offline_token_refresh_total", result="transient_error") == (
        transient_before + 1
    )

    # Within min_refresh_interval no second attempt reaches the provider.
    status, _ = await api.post("tokens", token_id, "access-token")
    assert status == 503 and injector.faults_served == 1

    injector.disarm()
    offline_app.services.engine.scheduler.cancel(token_id)  # as if the retry were due
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
    assert err["message"] == (
        f"offline token {token_id} no longer works: "
        "refresh token rejected by the provider (invalid_grant): request consent again"
    )
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed" and token["refresh_state"] == "failed"
    assert token["health"] == {
        **token["health"],
        "level": "unhealthy",
        "action": "request_consent",
        "detail": "refresh token rejected by the provider (invalid_grant): request consent again",
    }
    assert token["last_error"] == "invalid_grant"
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
    assert err["message"] == (
        f"offline token {token_id} no longer works: "
        "the provider rejected the client (invalid_client): fix the client configuration"
    )
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"
    assert token["health"]["action"] == "fix_configuration"
    assert token["health"]["detail"] == (
        "the provider rejected the client (invalid_client): fix the client configuration"
    )


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


@SHORT_BACKOFF
async def test_backoff_below_ten_seconds_is_used_and_the_503_says_when(
    api, idp, offline_app, injector
):
    """backoff_base 2 s: on-demand and background failures retry after 2 s then 4 s (no fixed
    10 s hint), and every refused caller is told the time of the scheduler's next attempt."""
    token_id = await grant(api, idp)
    services = offline_app.services
    scheduler = services.engine.scheduler
    services.broker._cache.clear()
    injector.arm("500")
    status, err = await api.post("tokens", token_id, "access-token")
    asked = time.time()
    assert status == 503 and injector.faults_served == 1, err
    state = scheduler.state(token_id)
    assert state.retry_count == 1 and asked - 0.5 <= state.next_attempt_at - 2 <= asked
    assert api.last_headers["Retry-After"] == "2"
    assert err["message"].endswith("next attempt in 2 s"), err
    _, token = await api.get("tokens", token_id)
    assert token["refresh_state"] == "retrying" and token["health"]["retry_count"] == 1

    # The background retry (the engine's loop) is the next attempt; it fails too: 4 s more.
    await services.start_background()
    await wait_for(lambda: injector.faults_served == 2)
    failed_at = time.time()
    await wait_for(lambda: scheduler.state(token_id).retry_count == 2)
    state = scheduler.state(token_id)
    assert failed_at - 0.5 <= state.next_attempt_at - 4 <= failed_at + 0.5
    # A caller now is held back by that failure: no attempt, the true wait.
    sent = time.time()
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 503 and injector.faults_served == 2, err
    told = int(api.last_headers["Retry-After"])
    assert math.ceil(state.next_attempt_at - time.time()) <= told
    assert told <= math.ceil(state.next_attempt_at - sent)
    _, token = await api.get("tokens", token_id)
    assert token["health"]["retry_count"] == 2

    # The provider recovers: the scheduler's retry refreshes, callers are served from cache.
    injector.disarm()
    await wait_for(lambda: services.broker.cached(token_id) is not None)
    grants = idp.stats()["refresh_token_grants"]
    status, access = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    assert status == 200, access
    assert idp.stats()["refresh_token_grants"] == grants
    await wait_for(lambda: scheduler.state(token_id) is None)
    _, token = await api.get("tokens", token_id)
    assert token["refresh_state"] == "idle" and token["health"]["level"] == "healthy"


async def test_burst_on_an_expired_token_reads_the_vault_once(api, idp, offline_app):
    """Callers queue on the token's lock before any vault read: one read, one grant."""
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker._cache.clear()  # as after a restart: the refresh token only in the vault
    vault = broker.vault
    reads: list[str] = []
    get = vault.get

    async def counting_get(token_id):  # passes through; counts
        reads.append(token_id)
        return await get(token_id)

    vault.get = counting_get
    grants = idp.stats()["refresh_token_grants"]
    try:
        results = await asyncio.gather(
            *(api.post("tokens", token_id, "access-token") for _ in range(30))
        )
    finally:
        vault.get = get
    assert {status for status, _ in results} == {200}
    assert len({body["access_token"] for _, body in results}) == 1
    assert idp.stats()["refresh_token_grants"] == grants + 1
    assert reads == [token_id]


@pytest.mark.parametrize("multi_user", [True])
async def test_a_burst_never_hands_the_token_to_another_user(api, idp, offline_app):
    """Followers take the leader's result only if the cache entry's owner is theirs."""
    alice, bob = api.as_user("alice"), api.as_user("bob")
    token_id = await grant(alice, idp)
    offline_app.services.broker._cache.clear()
    calls = [alice.post("tokens", token_id, "access-token") for _ in range(5)]
    calls += [bob.post("tokens", token_id, "access-token") for _ in range(5)]
    results = await asyncio.gather(*calls)
    assert [status for status, _ in results] == [200] * 5 + [404] * 5
    assert all("access_token" not in str(body) for _, body in results[5:])
