"""The refresh engine wired into the server, against the real provider with 3 s access tokens.

Schedule arithmetic (backoff sequence, rate limit, wake jumps) is unit-tested with a fake clock
in test_refresh_scheduler.py; here the point is the wiring: warm tokens are refreshed ahead of
expiry so callers are served from the cache, and warm entries resume after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fake_clock import FakeClock, run_async
from server_fixtures import TEST_KEY, grant, metric

from jupyter_offline_token.broker import DEFAULT_MIN_TTL, AccessToken, TokenBroker
from jupyter_offline_token.refresh.engine import RefreshEngine
from jupyter_offline_token.refresh.policy import BackoffPolicy
from jupyter_offline_token.settings import OfflineTokenSettings
from jupyter_offline_token.stores import SQLiteTokenStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def provider_for_test(idp_short_ttl):
    return idp_short_ttl


@pytest.fixture
def offline_token_config(offline_token_config):
    return {**offline_token_config, "min_refresh_interval": 0.5, "refresh_margin": 0.5}


async def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


class ManualClock:
    """Wall and monotonic time that move only when the test says so (sleeping stays real)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._wall, self._mono = time.time(), time.monotonic()

    def time(self) -> float:
        return self._wall + self.offset

    def monotonic(self) -> float:
        return self._mono + self.offset

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


async def test_warm_token_is_refreshed_ahead_and_served_from_cache(api, idp_short_ttl, offline_app):
    """With one manual clock for the broker's cache and the schedule: no wall-clock luck."""
    idp = idp_short_ttl
    services = offline_app.services
    clock = ManualClock()
    services.broker.clock = clock.time
    services.engine.clock = services.engine.scheduler.clock = clock
    token_id = await grant(api, idp)  # its access token lives 3 s of the manual clock
    status, _ = await api.post("tokens", token_id, "access-token", body={"keep_warm": True})
    assert status == 200

    grants_before = idp.stats()["refresh_token_grants"]
    on_demand_before = await metric(
        api, "offline_token_access_token_requests_total", source="refresh"
    )
    # Three access-token lifetimes in 0.25 s steps; due refreshes run at each step, as the
    # scheduler's loop would run them.
    for _ in range(36):
        clock.offset += 0.25
        await services.engine.scheduler.run_due()
        status, access = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
        assert status == 200 and access["expires_in"] >= 0
    assert idp.stats()["refresh_token_grants"] - grants_before >= 4, "no proactive refresh"
    assert (
        await metric(api, "offline_token_access_token_requests_total", source="refresh")
        == on_demand_before
    ), "a caller had to wait for a refresh: the warm token was not kept ahead of expiry"
    _, token = await api.get("tokens", token_id)
    assert token["refresh_state"] == "scheduled"


async def test_warm_entries_resume_after_restart(api, idp_short_ttl, offline_app, jp_serverapp):
    idp = idp_short_ttl
    token_id = await grant(api, idp)
    await api.post("tokens", token_id, "access-token", body={"keep_warm": True})
    await offline_app.services.close()
    # A new process: no access token in memory, the schedule only in the vault's keep_warm flag.
    fresh = offline_app.build_services()
    offline_app.services = fresh
    offline_app.serverapp.web_app.settings["offline_token_services"] = fresh
    grants_before = idp.stats()["refresh_token_grants"]
    await offline_app._start_jupyter_server_extension(jp_serverapp)
    await wait_for(lambda: idp.stats()["refresh_token_grants"] > grants_before)
    await wait_for(lambda: fresh.broker.cached(token_id) is not None)
    status, access = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    assert status == 200
    info = await asyncio.to_thread(idp.userinfo, access["access_token"])
    assert info.status_code == 200


class ShiftedClock:
    """Wall time shifted into the future; monotonic time and sleeping stay real."""

    def __init__(self, shift: float) -> None:
        self.shift = shift

    def time(self) -> float:
        return time.time() + self.shift

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_keepalive_refreshes_an_idle_entry_once(api, idp_short_ttl, offline_app):
    idp = idp_short_ttl
    idle = await grant(api, idp, label="idle")
    engine = offline_app.services.engine
    clock = ShiftedClock(2 * 86400)  # two days without a refresh
    engine.clock = engine.scheduler.clock = clock
    grants_before = idp.stats()["refresh_token_grants"]
    await engine.sweep()
    assert engine.scheduler.state(idle) is not None, "the idle entry was not scheduled"
    await engine.scheduler.run_due()
    await wait_for(lambda: idp.stats()["refresh_token_grants"] == grants_before + 1)
    await wait_for(lambda: engine.scheduler.state(idle) is None)  # once, not kept warm
    _, token = await api.get("tokens", idle)
    assert token["refresh_count"] == 1 and token["status"] == "active"
    _, audit = await api.get("tokens", idle, "audit")
    assert any(e["detail"].startswith("keepalive") for e in audit["events"])
    # A second scan right away schedules nothing: it was just refreshed. (A second sweep would
    # not even scan: the keep-alive claim holds for keepalive_interval / 4.)
    clock.shift = 0.0
    assert await engine.keepalive_scan(clock.time()) == 0
    assert engine.scheduler.state(idle) is None


async def test_consent_with_keep_warm_is_warm_from_activation(api, idp_short_ttl, offline_app):
    token_id = await grant(api, idp_short_ttl, keep_warm=True)
    engine = offline_app.services.engine
    assert engine.is_warm(token_id)
    state = engine.scheduler.state(token_id)
    assert state is not None and state.refresh_state == "scheduled"
    # Proactive: scheduled before the access token from the consent expires.
    assert state.next_attempt_at < offline_app.services.broker.cached(token_id).expires_at


# --- the proactive schedule, on a fake clock (no provider, no server) --------------------------

TOKEN = "5b0c1f9e-4c1a-4e8e-9d0f-1a2b3c4d5e6f"


def engine_on(clock: FakeClock, tmp_path, **kwargs) -> RefreshEngine:
    vault = SQLiteTokenStore(tmp_path / "vault.db", encryption_keys=[TEST_KEY])
    broker = TokenBroker(vault, None, None, clock=clock.time)
    settings = OfflineTokenSettings(**kwargs)
    return RefreshEngine(broker, settings, clock=clock, backoff=BackoffPolicy(jitter=0))


def cache_token(engine: RefreshEngine, clock: FakeClock, lifetime: float) -> None:
    engine.broker._cache[TOKEN] = AccessToken(
        access_token="at",
        token_type="Bearer",
        expires_at=clock.time() + lifetime,
        scope=None,
        obtained_at=clock.monotonic(),
        owner="alice",
    )


@pytest.mark.parametrize(
    ("lifetime", "refresh_after"),
    [
        (60, 30),  # 0.8 would leave 12 s: refreshed when 30 s (the default min_ttl) are left
        (300, 240),  # 0.8 already leaves 60 s
        (35, 28),  # 30 s left would mean a refresh every 5 s (< min_refresh_interval): 0.8
        (3, 2.4),  # far too short for 30 s: the margin alone
    ],
)
@run_async
async def test_proactive_refresh_leaves_the_default_min_ttl_when_it_can(
    tmp_path, lifetime, refresh_after
):
    clock = FakeClock()
    engine = engine_on(clock, tmp_path, refresh_margin=0.8, min_refresh_interval=10)
    cache_token(engine, clock, lifetime)
    engine.task_started(TOKEN)
    due = engine.scheduler.state(TOKEN).next_attempt_at
    assert due == pytest.approx(clock.time() + refresh_after)
    if lifetime >= DEFAULT_MIN_TTL + 10:
        assert engine.broker.cached(TOKEN).expires_at - due >= DEFAULT_MIN_TTL
    else:
        assert engine.broker.cached(TOKEN).expires_at - due < DEFAULT_MIN_TTL


@run_async
async def test_an_access_token_request_notices_a_wake_at_once(tmp_path, caplog):
    clock = FakeClock()
    engine = engine_on(clock, tmp_path)
    cache_token(engine, clock, 300)
    engine.task_started(TOKEN)
    await engine.scheduler.start()
    try:
        await clock.advance(0.5)
        clock.jump_wall(7200)  # the laptop slept; the loop's sleep has not ended
        cache_token(engine, clock, 300)  # a cache hit: the check runs before it
        caplog.set_level(logging.INFO, logger="jupyter_offline_token.refresh")
        token = await engine.broker.get_access_token("alice", TOKEN, min_ttl=0)
        assert token.access_token == "at"
        jumps = [r.getMessage() for r in caplog.records if "clock jumped" in r.getMessage()]
        assert jumps == ["clock jumped by +7200 s (suspend/resume?): re-evaluating 1 schedules"]
    finally:
        await engine.scheduler.stop(timeout=0)


async def test_engine_log_lines_reach_the_server_log(jp_serverapp, offline_app):
    """The package's loggers have no handler of their own: their lines must reach the server's
    log handlers (INFO included), not only the root logger."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    jp_serverapp.log.addHandler(keep)
    try:
        await offline_app._start_jupyter_server_extension(jp_serverapp)
    finally:
        jp_serverapp.log.removeHandler(keep)
    started = [r for r in seen if r.getMessage().startswith("refresh engine started")]
    assert len(started) == 1
    assert (started[0].name, started[0].levelname) == ("jupyter_offline_token.refresh", "INFO")
