"""The callback's failure paths: each renders a page that says what happened and changes only
what it must."""

from __future__ import annotations

import contextlib
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from fault_injection import FaultInjector
from server_fixtures import consent_location

from jupyter_offline_token.consent import ConsentFailure
from jupyter_offline_token.errors import ErrorKind, OfflineTokenError
from jupyter_offline_token.handlers.callback import CONSENT_PAGES
from jupyter_offline_token.handlers.errors import STATUS_BY_KIND
from jupyter_offline_token.oidc import ProviderClient

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def provider_as(offline_app, provider: ProviderClient):
    """The broker talks to the real dev provider through ``provider`` for the block."""
    broker = offline_app.services.broker
    original, broker.provider = broker.provider, provider
    try:
        yield
    finally:
        await provider.aclose()
        broker.provider = original


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


async def test_rejected_code_is_a_400_that_says_request_again(api, idp):
    """The provider answers invalid_grant to a code it never issued: the user's link is dead,
    nothing is wrong with the server, so a 4xx page that says what to do."""
    token_id, location = await consent_location(api, idp)
    state = dict(parse_qsl(urlsplit(location).query))["state"]
    status, page = await api.request(
        "GET", "offline-token", "callback", params={"state": state, "code": "not-a-real-code"}
    )
    assert status == 400, page
    assert "invalid_grant" in page
    assert "Request offline access again" in page
    assert "not-a-real-code" not in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"


async def test_rejected_client_is_a_502_configuration_error(api, idp, offline_app):
    """invalid_client (a wrong client secret) is the server's configuration, not the user's."""
    token_id, location = await consent_location(api, idp)
    wrong = ProviderClient(idp.issuer, idp.client_id, "not-the-secret")
    async with provider_as(offline_app, wrong):
        status, page = await api.callback(location)
    assert status == 502, page
    assert "invalid_client" in page and "administrator" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"


async def test_unreachable_provider_is_a_503(api, idp, offline_app):
    token_id, location = await consent_location(api, idp)
    fault = FaultInjector()
    fault.arm("refuse")
    refusing = ProviderClient(
        idp.issuer, idp.client_id, idp.client_secret, http_timeout=1.0, transport=fault
    )
    async with provider_as(offline_app, refusing):
        status, page = await api.callback(location)
    assert status == 503, page
    assert "could not be reached" in page
    _, token = await api.get("tokens", token_id)
    assert token["status"] == "failed"  # the code was spent: a new consent is needed


def test_every_consent_failure_has_its_page_and_every_error_kind_its_status():
    """The callback's table and the API's one kind -> status mapping are complete, and keep the
    statuses the callback answered before kinds existed."""
    assert set(CONSENT_PAGES) == set(ConsentFailure)
    assert all(hint for _, hint in CONSENT_PAGES.values())
    statuses = {failure.name: status for failure, (status, _) in CONSENT_PAGES.items()}
    assert statuses == {
        "MISSING_STATE": 400,
        "UNKNOWN_STATE": 400,
        "FOREIGN_STATE": 403,
        "STATE_USED": 409,
        "EXPIRED": 410,
        "MISSING_CODE": 400,
        "DECRYPT_FAILED": 503,
        "DENIED": 403,
        "PROVIDER_ERROR": 502,
        "CODE_REJECTED": 400,
        "CLIENT_REJECTED": 502,
        "EXCHANGE_FAILED": 502,
        "INVALID_ID_TOKEN": 502,
        "PROVIDER_UNAVAILABLE": 503,
        "NO_REFRESH_TOKEN": 502,
    }
    assert set(STATUS_BY_KIND) == set(ErrorKind)
    assert not hasattr(OfflineTokenError("x"), "status")  # statuses live in handlers only
    assert all(400 <= status < 600 for status in STATUS_BY_KIND.values())
