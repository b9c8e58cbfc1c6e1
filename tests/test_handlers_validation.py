"""Bad input gets a clear 4xx JSON error and changes nothing."""

from __future__ import annotations

import uuid

import pytest
from server_fixtures import grant

pytestmark = pytest.mark.timeout(120)


async def _snapshot(api):
    _, listing = await api.get("tokens")
    return listing


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"text"', "invalid_json"),
        (b'{"label": 5}', "invalid_field"),
        (b'{"label": "' + b"x" * 300 + b'"}', "invalid_field"),
        (b'{"scopes": "openid"}', "invalid_field"),
        (b'{"scopes": [1]}', "invalid_field"),
        (b'{"scopes": ["has space"]}', "invalid_scope"),
        (b'{"keep_warm": "yes"}', "invalid_field"),
        (b'{"surprise": 1}', "unknown_field"),
        (b'{"label": "' + b"x" * 70000 + b'"}', "body_too_large"),
        (b"\xff\xfe", "invalid_json"),
    ],
)
async def test_bad_consent_bodies(api, raw, code):
    before = await _snapshot(api)
    status, err = await api.post("consents", raw=raw)
    assert status == 400, err
    assert err["error"] == code and err["message"]
    assert await _snapshot(api) == before


async def test_bad_access_token_bodies_and_unknown_ids(api, idp):
    token_id = await grant(api, idp)
    before = await _snapshot(api)
    for raw in (b'{"min_ttl": "30"}', b'{"min_ttl": -1}', b'{"min_ttl": true}', b'{"x": 1}'):
        status, err = await api.post("tokens", token_id, "access-token", raw=raw)
        assert status == 400 and err["error"] in ("invalid_field", "unknown_field"), err
    for unknown in (str(uuid.uuid4()), "not-a-uuid", "..%2f..%2fetc"):
        for call in (
            api.get("tokens", unknown),
            api.post("tokens", unknown, "access-token"),
            api.delete("tokens", unknown),
        ):
            status, err = await call
            assert status == 404 and err["error"] == "not_found", (unknown, err)
    status, err = await api.get("tokens", params={"status": "bogus"})
    assert status == 400 and err["error"] == "invalid_query"
    status, err = await api.delete("tokens", token_id, params={"revoke": "maybe"})
    assert status == 400 and err["error"] == "invalid_query"
    assert await _snapshot(api) == before


async def test_wrong_method_is_json(api):
    status, err = await api.request("PUT", "api", "offline-token", "tokens", body={})
    assert status == 405 and err["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"label": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
        (b'{"label": "\\ud800"}', "invalid_field"),
        (b'{"scopes": ["openid", "\\udfff"]}', "invalid_field"),
        (b'{"\\ud800": 1}', "invalid_field"),
        (b'{"keep_warm": NaN}', "invalid_json"),
        (b'{"label": Infinity}', "invalid_json"),
    ],
)
async def test_hostile_json_is_a_400_not_a_500(api, raw, code):
    before = await _snapshot(api)
    status, err = await api.post("consents", raw=raw)
    assert status == 400 and err["error"] == code, err
    assert await _snapshot(api) == before


async def test_token_list_pages_newest_first(api, idp):
    ids = [await grant(api, idp, label=f"t{i}") for i in range(3)]
    _, page = await api.get("tokens", params={"limit": "2"})
    assert [t["persistent_token_id"] for t in page["tokens"]] == ids[::-1][:2]
    _, rest = await api.get("tokens", params={"limit": "2", "cursor": page["next_cursor"]})
    assert [t["persistent_token_id"] for t in rest["tokens"]] == [ids[0]]
    assert rest["next_cursor"] is None
    for bad in ({"limit": "0"}, {"limit": "x"}, {"offset": "-1"}, {"limit": "99999999"}):
        status, err = await api.get("tokens", params=bad)
        assert status == 400 and err["error"] == "invalid_query", bad


async def test_bad_queries_are_400_and_change_nothing(api, idp):
    """The query models of the token routes (tokens, token DELETE, health), through the server's
    own query parsing."""
    token_id = await grant(api, idp)
    before = await _snapshot(api)
    for path, params, code in (
        (("tokens",), {"cursor": "not-a-cursor"}, "invalid_cursor"),
        (("tokens",), {"status": "Active"}, "invalid_query"),
        (("health",), {"offset": "3"}, "invalid_query"),
        (("health",), {"limit": "1001"}, "invalid_query"),
        (("health",), {"cursor": "!!"}, "invalid_cursor"),
    ):
        status, err = await api.get(*path, params=params)
        assert status == 400 and err["error"] == code, (path, params, err)
    for params in ({"force": "maybe"}, {"revoke": ""}, {"revoke": "2"}):
        status, err = await api.delete("tokens", token_id, params=params)
        assert status == 400 and err["error"] == "invalid_query", (params, err)
    status, _ = await api.get("tokens", params={"status": "active", "offset": "0"})
    assert status == 200
    # Only the canonical spelling names an entry, as for tasks: another spelling is a 404.
    status, err = await api.get("tokens", token_id.upper())
    assert status == 404 and err["error"] == "not_found"
    assert await _snapshot(api) == before


class TestConfiguredScopes:
    """The configured scopes are configuration, not the caller's input: a bad one is a 503
    naming the setting (scopes the request names are checked by the request model)."""

    @pytest.fixture
    def offline_token_config(self, offline_token_config):
        return {**offline_token_config, "scopes": ["openid", "has space"]}

    async def test_a_bad_configured_scope_names_the_setting(self, api):
        before = await _snapshot(api)
        status, err = await api.post("consents", body={"label": "x"})
        assert status == 503 and err["error"] == "not_configured", err
        assert "c.OfflineTokenApp.scopes" in err["message"] and "has space" in err["message"]
        assert await _snapshot(api) == before
        status, created = await api.post("consents", body={"scopes": ["openid"]})
        assert status == 201, created
