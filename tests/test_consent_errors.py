"""The callback's failure paths: each renders a page that says what happened and changes only
what it must."""

from __future__ import annotations

import time

import pytest
from conftest import consent_location

pytestmark = pytest.mark.timeout(120)


async def test_state_replay_is_refused_and_token_stays_active(api, idp):
    token_id, location = await consent_location(api, idp)
    status, _ = await api.callback(location)
    assert status == 200
    status, page = await api.callback(location)
    assert status == 409
    assert "already used" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "active"


async def test_unknown_state(api, idp):
    status, page = await api.request(
        "GET", "offline-token", "callback", params={"state": "x" * 43, "code": "abc"}
    )
    assert status == 400 and "unknown" in page


async def test_missing_state(api):
    status, page = await api.request("GET", "offline-token", "callback", params={"code": "abc"})
    assert status == 400 and "no state" in page


async def test_missing_code_changes_nothing(api, idp):
    token_id, location = await consent_location(api, idp)
    state = location.split("state=")[1].split("&")[0]
    status, page = await api.request("GET", "offline-token", "callback", params={"state": state})
    assert status == 400 and "neither a code nor an error" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "pending"
    # The real answer still completes it.
    status, _ = await api.callback(location)
    assert status == 200


async def test_access_denied_marks_failed(api, idp):
    token_id, location = await consent_location(api, idp, decision="deny")
    assert "error=access_denied" in location
    status, page = await api.callback(location)
    assert status == 403
    assert "declined" in page and "Allow" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "token_failed"


async def test_expired_state(api, idp, offline_app):
    token_id, location = await consent_location(api, idp)
    broker = offline_app.services.broker
    broker.clock = lambda: time.time() + 3600  # an hour later than the 10-minute consent window
    status, page = await api.callback(location)
    assert status == 410 and "expired" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "expired"
    status, err = await api.post("tokens", token_id, "access-token")
    assert status == 409 and err["error"] == "consent_expired"


async def test_return_to_must_stay_on_this_server(api, idp):
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil", "lab", "javascript:x"):
        status, err = await api.post("consents", body={"return_to": bad})
        assert status == 400 and err["error"] == "invalid_return_to", bad
    status, listing = await api.get("tokens")
    assert listing["tokens"] == []
