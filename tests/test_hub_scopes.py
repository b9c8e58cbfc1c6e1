"""The hub scopes the service reads from a request's identity (hub_scopes.py)."""

from __future__ import annotations

from types import SimpleNamespace

from jupyter_offline_token.hub_scopes import ADMIN_SCOPE, holds, hub_scopes, is_hub_service


def test_scopes_come_from_the_hub_user_model_and_nothing_else():
    user = SimpleNamespace(hub_user={"name": "oscar", "scopes": [ADMIN_SCOPE, 7, "self"]})
    assert hub_scopes(user) == {ADMIN_SCOPE, "self"}
    assert hub_scopes(SimpleNamespace(username="alice")) == frozenset()  # not under a hub
    assert hub_scopes(SimpleNamespace(hub_user={"scopes": "admin"})) == frozenset()


def test_a_filtered_scope_holds_for_its_user_only():
    scopes = frozenset({f"{ADMIN_SCOPE}!user=bob"})
    assert holds(scopes, ADMIN_SCOPE, "bob")
    assert not holds(scopes, ADMIN_SCOPE, "alice")
    assert not holds(scopes, ADMIN_SCOPE)  # across users needs the unfiltered scope
    assert holds(frozenset({ADMIN_SCOPE}), ADMIN_SCOPE, "alice")
    assert not holds(frozenset({f"{ADMIN_SCOPE}!group=staff"}), ADMIN_SCOPE, "bob")


def test_a_service_identity_is_told_apart_from_a_user():
    assert is_hub_service(SimpleNamespace(hub_user={"name": "x", "kind": "service"}))
    assert not is_hub_service(SimpleNamespace(hub_user={"name": "x", "kind": "user"}))
    assert not is_hub_service(SimpleNamespace(username="x"))


def test_in_the_service_entries_always_belong_to_the_hub_user():
    """owner_scope=server would make every hub user one owner: the service ignores it."""
    from jupyter_offline_token.app import OfflineTokenApp

    app = OfflineTokenApp(owner_scope="server")
    app.serverapp = SimpleNamespace(offline_token_hub_service=True)
    assert app.owner_of(SimpleNamespace(username="alice")) == "alice"
    assert app.owner_of(SimpleNamespace(username="bob")) == "bob"
    single = OfflineTokenApp(owner_scope="server")
    single.serverapp = SimpleNamespace()
    # (outside the service the setting still means one owner for every caller)
    alice, bob = SimpleNamespace(username="alice"), SimpleNamespace(username="bob")
    assert single.owner_of(alice) == single.owner_of(bob)
