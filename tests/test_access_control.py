"""Every route needs the Jupyter user; an entry belongs to the user who created it."""

from __future__ import annotations

import pytest
from conftest import consent_location, grant

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def multi_user():
    return True


async def test_unauthenticated_calls_refused(api):
    anonymous = api.as_user(None)
    for method, parts in [
        ("GET", ("api", "offline-token", "tokens")),
        ("POST", ("api", "offline-token", "consents")),
        ("GET", ("api", "offline-token", "health")),
        ("POST", ("api", "offline-token", "tokens", "x", "access-token")),
        ("DELETE", ("api", "offline-token", "tokens", "x")),
    ]:
        status, _ = await anonymous.request(method, *parts)
        assert status == 403, (method, parts)
    status, _ = await anonymous.request("GET", "offline-token", "callback", params={"state": "s"})
    assert status in (302, 403)


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
