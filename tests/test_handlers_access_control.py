"""Every route needs the Jupyter user; an entry belongs to the user who created it."""

from __future__ import annotations

import pytest
from server_fixtures import consent_location, grant

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def multi_user():
    return True


async def test_unauthenticated_calls_refused(api):
    anonymous = api.as_user(None)
    some_id = "0" * 8 + "-0000-4000-8000-" + "0" * 12
    api_routes = [
        ("GET", ("tokens",)),
        ("POST", ("consents",)),
        ("GET", ("health",)),
        ("GET", ("tokens", some_id)),
        ("DELETE", ("tokens", some_id)),
        ("POST", ("tokens", some_id, "access-token")),
        ("GET", ("tokens", some_id, "audit")),
        ("GET", ("tasks",)),
        ("POST", ("tasks",)),
        ("GET", ("tasks", some_id)),
        ("PATCH", ("tasks", some_id)),
        ("DELETE", ("tasks", some_id)),
        ("POST", ("tasks", some_id, "link")),
        ("POST", ("tasks", some_id, "execute")),
        ("POST", ("tasks", some_id, "cancel")),
        ("GET", ("tasks", some_id, "events")),
        ("GET", ("tasks", some_id, "log")),
    ]
    for method, parts in api_routes:
        status, _ = await anonymous.request(method, "api", "offline-token", *parts)
        assert status == 403, (method, parts, status)
    # Pages redirect a browser to the login page; nothing is served.
    for parts in (("offline-token", "callback"), ("offline-token",)):
        status, body = await anonymous.request("GET", *parts, params={"state": "s"})
        assert status in (302, 403), (parts, status)
        assert "Offline tokens" not in str(body)


async def test_other_users_entry_is_invisible(api, idp):
    alice, bob = api.as_user("alice"), api.as_user("bob")
    token_id = await grant(alice, idp)
    _, listing = await bob.get("tokens")
    assert listing["tokens"] == []
    for call in (
        bob.get("tokens", token_id),
        bob.post("tokens", token_id, "access-token"),
        bob.delete("tokens", token_id),
        bob.get("tokens", token_id, "audit"),
    ):
        status, err = await call
        assert status == 404 and err["error"] == "not_found"
    # ?owner= means something only in the JupyterHub service: here it changes nothing.
    _, listing = await bob.get("tokens", params={"owner": "alice"})
    assert listing["tokens"] == []
    status, _ = await bob.get("tokens", token_id, params={"owner": "alice"})
    assert status == 404
    status, _ = await api.as_user("alice").get("tokens", token_id, params={"owner": "bob"})
    assert status == 200
    status, _ = await alice.post("tokens", token_id, "access-token")
    assert status == 200


async def test_foreign_state_refused_and_owner_can_finish(api, idp):
    alice, bob = api.as_user("alice"), api.as_user("bob")
    token_id, location = await consent_location(alice, idp)
    status, page = await bob.callback(location)
    assert status == 403 and "another Jupyter user" in page
    _, token = await alice.get("tokens", token_id)
    assert token["status"] == "pending"
    status, _ = await alice.callback(location)
    assert status == 200
    _, token = await alice.get("tokens", token_id)
    assert token["status"] == "active"
