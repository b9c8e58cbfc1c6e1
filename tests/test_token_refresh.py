"""Force refresh (``POST tokens/{id}/refresh``) and clearing the cached access token (``DELETE
tokens/{id}/access-token``) against a real server and the real dev provider: one grant, the
rate limit, single flight, a metadata-only answer, and no secret in the log."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from rest_scenarios import TOKEN_KEYS, UNKNOWN_ID
from server_fixtures import grant, metric, remember_refreshes

pytestmark = pytest.mark.timeout(120)

SOURCE = "offline_token_access_token_requests_total"


async def test_refresh_makes_one_grant_and_answers_no_token(api, idp, offline_app):
    token_id = await grant(api, idp, label="force")
    _, before = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    idp.reset_stats()
    status, body = await api.post("tokens", token_id, "refresh")
    assert status == 200, body
    assert set(body) == TOKEN_KEYS
    assert body["persistent_token_id"] == token_id
    assert body["status"] == "active" and body["refresh_count"] == 1
    assert body["last_refresh_at"] is not None
    assert idp.stats()["refresh_token_grants"] == 1
    # The grant's access token is what the next request gets (from the cache: no grant).
    _, after = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    assert after["access_token"] != before["access_token"]
    assert idp.stats()["refresh_token_grants"] == 1
    text = json.dumps(body)
    assert after["access_token"] not in text and before["access_token"] not in text
    _, audit = await api.get("tokens", token_id, "audit")
    assert any(e["action"] == "refresh" and "forced" in e["detail"] for e in audit["events"]), audit


async def test_refresh_again_at_once_is_rate_limited(api, idp, offline_app):
    token_id = await grant(api, idp)
    status, _ = await api.post("tokens", token_id, "refresh")
    assert status == 200
    interval = offline_app.services.engine.scheduler.min_refresh_interval
    status, err = await api.post("tokens", token_id, "refresh")
    assert status == 429, err
    assert err["error"] == "refresh_too_soon" and str(int(interval)) in err["message"]
    assert 1 <= int(api.last_headers["Retry-After"]) <= interval
    _, token = await api.get("tokens", token_id)
    assert token["refresh_count"] == 1, "the refused refresh must not have been made"


async def test_concurrent_refreshes_make_one_grant(api, idp):
    token_id = await grant(api, idp)
    idp.reset_stats()
    answers = await asyncio.gather(*(api.post("tokens", token_id, "refresh") for _ in range(4)))
    statuses = sorted(status for status, _ in answers)
    # Who queued behind the grant takes its result (200); who came after it is refused (429).
    assert statuses[0] == 200 and set(statuses) <= {200, 429}, answers
    assert idp.stats()["refresh_token_grants"] == 1
    assert {a["refresh_count"] for s, a in answers if s == 200} == {1}


async def test_refresh_refused_for_pending_unknown_and_bad_body(api, idp):
    status, created = await api.post("consents", body={})
    pending = created["persistent_token_id"]
    status, err = await api.post("tokens", pending, "refresh")
    assert (status, err["error"]) == (409, "waiting_consent")
    status, err = await api.post("tokens", UNKNOWN_ID, "refresh")
    assert (status, err["error"]) == (404, "not_found")
    token_id = await grant(api, idp)
    idp.reset_stats()
    status, err = await api.post("tokens", token_id, "refresh", raw=b'{"min_ttl": 5}')
    assert (status, err["error"]) == (400, "unknown_field")
    status, err = await api.post("tokens", token_id, "refresh", raw=b"[")
    assert (status, err["error"]) == (400, "invalid_json")
    assert idp.stats()["refresh_token_grants"] == 0


async def test_clear_cache_next_request_is_not_a_cache_hit(api, idp, offline_app):
    token_id = await grant(api, idp)
    broker = offline_app.services.broker
    _, first = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    assert broker.cached(token_id) is not None
    hits = await metric(api, SOURCE, source="cache")
    status, body = await api.delete("tokens", token_id, "access-token")
    assert (status, body) == (204, "")
    assert broker.cached(token_id) is None
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active", "clearing the cache revokes nothing"
    idp.reset_stats()
    status, second = await api.post("tokens", token_id, "access-token", body={"min_ttl": 0})
    assert status == 200
    assert await metric(api, SOURCE, source="cache") == hits, "served from the cache"
    # The vault's shared copy (this store keeps the last grant's) or a new grant served it.
    grants = idp.stats()["refresh_token_grants"]
    assert (second["access_token"] == first["access_token"]) == (grants == 0)
    status, err = await api.delete("tokens", UNKNOWN_ID, "access-token")
    assert (status, err["error"]) == (404, "not_found")


async def test_refresh_and_clear_log_no_secret(api, idp, offline_app, caplog):
    caplog.set_level(logging.DEBUG)
    issued = remember_refreshes(offline_app.services.broker.provider)
    token_id = await grant(api, idp)
    answers = [await api.post("tokens", token_id, "refresh")]
    answers.append(await api.post("tokens", token_id, "refresh"))  # 429
    answers.append(await api.delete("tokens", token_id, "access-token"))
    refresh_token = await offline_app.services.vault.read_refresh_token(token_id)
    assert len(issued) == 2 and refresh_token in issued, "one grant, with rotation"
    server_records = [r for r in caplog.records if not r.threadName.startswith("asyncio_")]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in server_records)
    assert any("/refresh" in r.getMessage() for r in server_records)
    for value in [*issued, idp.client_secret]:
        assert value not in text
        assert value not in json.dumps([body for _, body in answers])


async def test_any_refresh_counts_for_the_rate_limit(api, idp):
    token_id = await grant(api, idp)
    idp.reset_stats()
    # An on-demand refresh (more lifetime than the cached token has) just happened...
    status, _ = await api.post("tokens", token_id, "access-token", body={"min_ttl": 3600})
    assert status == 200 and idp.stats()["refresh_token_grants"] == 1
    # ...so a forced one is refused: at most one grant per min_refresh_interval.
    status, err = await api.post("tokens", token_id, "refresh")
    assert (status, err["error"]) == (429, "refresh_too_soon")
    assert idp.stats()["refresh_token_grants"] == 1
