"""One grant per expiry across processes, in one test process (issue 11): the server's broker and
a second broker on the same vault file (another process's view: its own store connection, cache
and lease holder id), both against the real dev provider.

A grant stores its access token encrypted in the vault; the other broker serves it on a cache
miss instead of making its own grant (before the lease, and again under it), and a proactive
refresh adopts a sibling's newer token. The two-server version is test_grant_shared.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fault_injection import FaultInjector
from server_fixtures import TEST_KEY, grant, metric

from jupyter_offline_token.access_token import access_token_from, shared_from
from jupyter_offline_token.broker import ProviderSettings, TokenBroker
from jupyter_offline_token.oidc import ProviderClient
from jupyter_offline_token.stores import SQLiteTokenStore

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def sibling(offline_app, idp, jp_asyncio_loop):
    """A second broker on the server's vault, as another process has it."""
    vault = SQLiteTokenStore(Path(offline_app.vault_path), encryption_keys=[TEST_KEY])
    jp_asyncio_loop.run_until_complete(vault.open())
    provider = ProviderClient(idp.issuer, idp.client_id, idp.client_secret)
    broker = TokenBroker(
        vault, provider, ProviderSettings(idp.issuer, idp.client_id, idp.client_secret)
    )
    yield broker
    jp_asyncio_loop.run_until_complete(broker.aclose())
    jp_asyncio_loop.run_until_complete(vault.close())


def grants(idp) -> int:
    return idp.stats()["refresh_token_grants"]


async def test_a_cache_miss_serves_the_siblings_grant(api, idp, offline_app, sibling):
    token_id = await grant(api, idp)
    offline_app.services.broker.forget(token_id)
    before, shared_before = (
        grants(idp),
        await metric(api, "offline_token_access_token_requests_total", source="shared"),
    )
    theirs = await sibling.get_access_token(None, token_id)
    assert grants(idp) == before + 1
    status, ours = await api.post("tokens", token_id, "access-token")
    assert status == 200, ours
    assert ours["access_token"] == theirs.access_token
    assert grants(idp) == before + 1  # no second grant for the same expiry
    shared_after = await metric(api, "offline_token_access_token_requests_total", source="shared")
    assert shared_after == shared_before + 1
    # Now cached here: a hit reads nothing.
    status, again = await api.post("tokens", token_id, "access-token")
    assert again["access_token"] == theirs.access_token
    # A caller who needs more life than the shared token has gets a grant of its own.
    status, longer = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    assert status == 200 and longer["access_token"] != theirs.access_token
    assert grants(idp) == before + 2


async def test_waiting_for_the_lease_then_serving_what_its_holder_stored(
    api, idp, offline_app, sibling, monkeypatch
):
    """The sibling holds the lease and is mid-grant: the server waits for the lease, then finds
    the sibling's fresh token under it and makes no grant."""
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker.forget(token_id)
    vault = sibling.vault
    start = await vault.begin_refresh(token_id, sibling.holder, 60.0, sibling.clock())
    assert start is not None and start.refresh_token
    before = grants(idp)
    asked = asyncio.Event()
    begin = broker.vault.begin_refresh

    async def begin_refresh(*args, **kwargs):
        asked.set()  # the server is at the lease: past its check before the lease
        return await begin(*args, **kwargs)

    monkeypatch.setattr(broker.vault, "begin_refresh", begin_refresh)
    call = asyncio.ensure_future(api.post("tokens", token_id, "access-token"))
    response = await sibling.provider.refresh(start.refresh_token)  # type: ignore[union-attr]
    await asyncio.wait_for(asked.wait(), 30)
    assert not call.done()  # it cannot have the lease: the sibling holds it
    token = access_token_from(response, sibling.clock(), owner="x")
    await vault.record_refresh(
        token_id,
        new_refresh_token=response.refresh_token,
        idle_expires_at=None,
        now=sibling.clock(),
        holder=sibling.holder,
        access=shared_from(token),
    )
    status, served = await call
    assert status == 200, served
    assert served["access_token"] == response.access_token
    assert grants(idp) == before + 1  # the sibling's alone


async def test_proactive_refresh_adopts_a_newer_sibling_token_once(api, idp, offline_app, sibling):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    mine = broker.cached(token_id)  # the consent's token
    assert mine is not None
    await asyncio.sleep(1.1)  # so the sibling's token expires later than the consent's
    theirs = await sibling.get_access_token(None, token_id, min_ttl=10**6)
    assert theirs.expires_at > mine.expires_at
    before = grants(idp)
    outcome = await broker.refresh(token_id, "warm")
    assert outcome.kind == "success"
    cached = broker.cached(token_id)
    assert cached is not None and cached.access_token == theirs.access_token
    assert grants(idp) == before  # adopted, no grant
    # Nothing newer than what we hold: the next warm refresh is a real grant.
    outcome = await broker.refresh(token_id, "warm")
    assert outcome.kind == "success" and grants(idp) == before + 1
    # Keep-alive always uses the refresh token (its point is to keep the session alive).
    outcome = await broker.refresh(token_id, "keepalive")
    assert outcome.kind == "success" and grants(idp) == before + 2


async def test_a_siblings_grant_serves_while_the_provider_fails_for_this_process(
    api, idp, offline_app, sibling
):
    """This process's last attempt failed (it waits for the scheduler's retry): a token the
    sibling got meanwhile is served at once instead of a 503."""
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    broker.forget(token_id)
    fault = FaultInjector()
    working = broker.provider
    broker.provider = ProviderClient(
        idp.issuer, idp.client_id, idp.client_secret, http_timeout=2.0, transport=fault
    )
    try:
        fault.arm("503")
        status, err = await api.post("tokens", token_id, "access-token")
        assert status == 503, err
        status, err = await api.post("tokens", token_id, "access-token")
        assert status == 503 and "next attempt in" in err["message"], err  # the retry wait
        theirs = await sibling.get_access_token(None, token_id)
        status, ours = await api.post("tokens", token_id, "access-token")
        assert status == 200, ours
        assert ours["access_token"] == theirs.access_token
        assert fault.faults_served == 1  # the wait was honoured: no second attempt here
    finally:
        await broker.provider.aclose()
        broker.provider = working
