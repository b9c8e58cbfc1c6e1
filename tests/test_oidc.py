"""ProviderClient against a respx-mocked provider: discovery, token and revocation endpoints,
id_token validation with keys minted here, and that no failure ever shows a secret."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import logging
import string
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import httpx
import pytest
import respx
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from jupyter_offline_token.errors import (
    IdTokenInvalid,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
)
from jupyter_offline_token.oidc import (
    ProviderClient,
    TokenResponse,
    new_nonce,
    new_pkce,
    new_state,
    pkce_challenge,
)

ISSUER = "https://idp.example.test/realms/lab"
DISCOVERY_URL = f"{ISSUER}/.well-known/openid-configuration"
AUTH_URL = f"{ISSUER}/protocol/openid-connect/auth"
TOKEN_URL = f"{ISSUER}/protocol/openid-connect/token"
REVOKE_URL = f"{ISSUER}/protocol/openid-connect/revoke"
JWKS_URL = f"{ISSUER}/protocol/openid-connect/certs"
REDIRECT_URI = "http://127.0.0.1:8888/offline-token/callback"

CLIENT_ID = "jupyter-lab"
CLIENT_SECRET = "client-secret-7f3a9c1e52"
REFRESH_TOKEN = "refresh-token-b81d40e2aa"
NEW_REFRESH_TOKEN = "rotated-refresh-token-55c0d1"
ACCESS_TOKEN = "access-token-90fe13"
CODE = "authorization-code-3c8e77"
VERIFIER = "pkce-verifier-e4b2d9f0a1c35e7b9d1f3a5c7e9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5"
NONCE = "expected-nonce-4d2e"
SECRETS = (CLIENT_SECRET, REFRESH_TOKEN, NEW_REFRESH_TOKEN, ACCESS_TOKEN, CODE, VERIFIER)

NOW = 1_700_000_000


def discovery_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "issuer": ISSUER,
        "authorization_endpoint": AUTH_URL,
        "token_endpoint": TOKEN_URL,
        "jwks_uri": JWKS_URL,
        "revocation_endpoint": REVOKE_URL,
        "userinfo_endpoint": f"{ISSUER}/protocol/openid-connect/userinfo",
    }
    doc.update(overrides)
    return {k: v for k, v in doc.items() if v is not None}


def form_of(request: httpx.Request) -> dict[str, str]:
    parsed = parse_qs(request.content.decode(), keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values()), parsed
    return {k: v[0] for k, v in parsed.items()}


@pytest.fixture
def idp() -> Iterator[respx.MockRouter]:
    """A mocked provider; any request to an unmocked URL fails the test."""
    with respx.mock(assert_all_called=False) as router:
        router.get(DISCOVERY_URL, name="discovery").respond(200, json=discovery_doc())
        yield router


@pytest.fixture
def client(idp: respx.MockRouter, jp_asyncio_loop) -> Iterator[ProviderClient]:
    c = ProviderClient(ISSUER, CLIENT_ID, CLIENT_SECRET, clock=lambda: NOW)
    yield c
    jp_asyncio_loop.run_until_complete(c.aclose())


# --- state, nonce, PKCE ---------------------------------------------------------------------

URLSAFE = set(string.ascii_letters + string.digits + "-_")


def test_state_and_nonce_are_32_random_bytes_base64url() -> None:
    for make in (new_state, new_nonce):
        values = {make() for _ in range(20)}
        assert len(values) == 20
        for value in values:
            assert len(value) == 43 and set(value) <= URLSAFE
            assert len(base64.urlsafe_b64decode(value + "=")) == 32


def test_pkce_challenge_matches_rfc7636_appendix_b() -> None:
    # The verifier is base64url of the RFC's 32 octets; the challenge is the RFC's value.
    octets = bytes(
        [
            116,
            24,
            223,
            180,
            151,
            153,
            224,
            37,
            79,
            250,
            96,
            125,
            216,
            173,
            187,
            186,
            22,
            212,
            37,
            77,
            105,
            214,
            191,
            240,
            91,
            88,
            5,
            88,
            83,
            132,
            141,
            121,
        ]
    )
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert base64.urlsafe_b64encode(octets).rstrip(b"=").decode() == verifier
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_new_pkce_pairs_a_64_char_verifier_with_its_s256_challenge() -> None:
    verifier, challenge = new_pkce()
    assert len(verifier) == 64 and set(verifier) <= URLSAFE
    assert challenge == pkce_challenge(verifier)
    assert "=" not in challenge and len(challenge) == 43
    assert new_pkce()[0] != verifier


# --- construction -----------------------------------------------------------------------------


def test_unknown_auth_method_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="token_endpoint_auth_method"):
        ProviderClient(ISSUER, CLIENT_ID, CLIENT_SECRET, token_endpoint_auth_method="private_jwt")


def test_bad_issuer_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="issuer"):
        ProviderClient("idp.example.test", CLIENT_ID)


async def test_repr_hides_the_client_secret(client: ProviderClient) -> None:
    assert CLIENT_ID in repr(client)
    assert CLIENT_SECRET not in repr(client) and CLIENT_SECRET not in str(client)


async def test_aclose_is_idempotent(idp: respx.MockRouter) -> None:
    c = ProviderClient(ISSUER, CLIENT_ID, CLIENT_SECRET)
    await c.aclose()
    await c.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await c.metadata()


# --- discovery --------------------------------------------------------------------------------


async def test_discovery_is_cached_after_success(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    first = await client.metadata()
    second = await client.metadata()
    assert first is second
    assert first.token_endpoint == TOKEN_URL
    assert first.jwks_uri == JWKS_URL
    assert first.revocation_endpoint == REVOKE_URL
    assert first.introspection_endpoint is None
    assert idp["discovery"].call_count == 1


async def test_discovery_failure_is_not_cached(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp["discovery"].side_effect = [
        httpx.Response(503),
        httpx.Response(200, json=discovery_doc()),
    ]
    with pytest.raises(TransientProviderError) as info:
        await client.metadata()
    assert info.value.kind == "server_error"
    assert (await client.metadata()).issuer == ISSUER
    await client.metadata()
    assert idp["discovery"].call_count == 2


async def test_discovery_tolerates_a_trailing_slash_on_the_issuer(
    idp: respx.MockRouter,
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(issuer=ISSUER + "/"))
    c = ProviderClient(ISSUER + "/", CLIENT_ID, CLIENT_SECRET)
    try:
        assert (await c.metadata()).token_endpoint == TOKEN_URL
    finally:
        await c.aclose()
    assert idp["discovery"].call_count == 1


async def test_discovery_rejects_another_issuer(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(issuer="https://evil.example.test/realms/lab"))
    with pytest.raises(TransientProviderError) as info:
        await client.metadata()
    assert info.value.kind == "malformed"
    assert "issuer" in str(info.value) and "evil.example.test" in str(info.value)


@pytest.mark.parametrize("field", ["issuer", "authorization_endpoint", "token_endpoint"])
async def test_discovery_names_a_missing_required_field(
    idp: respx.MockRouter, client: ProviderClient, field: str
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(**{field: None}))
    with pytest.raises(TransientProviderError) as info:
        await client.metadata()
    assert info.value.kind == "malformed"
    assert repr(field) in str(info.value)


async def test_discovery_with_invalid_json_is_malformed(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp["discovery"].respond(200, text="<html>login</html>")
    with pytest.raises(TransientProviderError) as info:
        await client.metadata()
    assert info.value.kind == "malformed"


# --- authorization URL ------------------------------------------------------------------------


async def test_authorization_url_carries_every_parameter(client: ProviderClient) -> None:
    verifier, challenge = new_pkce()
    url = await client.authorization_url(
        redirect_uri=REDIRECT_URI,
        scopes=["openid", "offline_access", "profile"],
        state="the-state",
        nonce=NONCE,
        code_challenge=challenge,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AUTH_URL
    query = parse_qs(parts.query, strict_parsing=True)
    assert query == {
        "response_type": ["code"],
        "client_id": [CLIENT_ID],
        "redirect_uri": [REDIRECT_URI],
        "scope": ["openid offline_access profile"],
        "state": ["the-state"],
        "nonce": [NONCE],
        "code_challenge": [challenge],
        "code_challenge_method": ["S256"],
        "prompt": ["consent"],
    }
    assert verifier not in url


async def test_authorization_url_keeps_an_existing_query(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(authorization_endpoint=AUTH_URL + "?kc=1"))
    url = await client.authorization_url(
        redirect_uri=REDIRECT_URI, scopes=["openid"], state="s", nonce="n", code_challenge="c"
    )
    query = parse_qs(urlsplit(url).query)
    assert query["kc"] == ["1"] and query["state"] == ["s"]


async def test_authorization_url_rejects_empty_input(client: ProviderClient) -> None:
    with pytest.raises(ValueError, match="state"):
        await client.authorization_url(
            redirect_uri=REDIRECT_URI, scopes=["openid"], state="", nonce="n", code_challenge="c"
        )
    with pytest.raises(ValueError, match="scopes"):
        await client.authorization_url(
            redirect_uri=REDIRECT_URI, scopes=[], state="s", nonce="n", code_challenge="c"
        )


# --- token endpoint ---------------------------------------------------------------------------

TOKEN_BODY = {
    "access_token": ACCESS_TOKEN,
    "token_type": "Bearer",
    "expires_in": 300,
    "refresh_token": NEW_REFRESH_TOKEN,
    "refresh_expires_in": 0,
    "scope": "openid offline_access",
}


@pytest.mark.parametrize(
    ("client_id", "secret", "method", "auth_header", "auth_fields"),
    [
        # RFC 6749 2.3.1: both parts form-urlencoded, then "id:secret" in base64.
        (
            "lab client",
            "p@ss:w/rd+1",
            "client_secret_basic",
            "Basic " + base64.b64encode(b"lab+client:p%40ss%3Aw%2Frd%2B1").decode(),
            {},
        ),
        (
            CLIENT_ID,
            CLIENT_SECRET,
            "client_secret_post",
            None,
            {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET},
        ),
        (CLIENT_ID, "", "none", None, {"client_id": CLIENT_ID}),
    ],
)
async def test_exchange_code_authenticates_the_client(
    idp: respx.MockRouter,
    client_id: str,
    secret: str,
    method: str,
    auth_header: str | None,
    auth_fields: dict[str, str],
) -> None:
    route = idp.post(TOKEN_URL).respond(200, json=TOKEN_BODY)
    c = ProviderClient(ISSUER, client_id, secret, token_endpoint_auth_method=method)
    try:
        result = await c.exchange_code(code=CODE, redirect_uri=REDIRECT_URI, code_verifier=VERIFIER)
    finally:
        await c.aclose()
    assert result.access_token == ACCESS_TOKEN
    request = route.calls.last.request
    assert request.headers.get("Authorization") == auth_header
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form_of(request) == {
        "grant_type": "authorization_code",
        "code": CODE,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": VERIFIER,
        **auth_fields,
    }


async def test_refresh_parses_a_rotated_token(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    body = dict(TOKEN_BODY, expires_in="300", refresh_expires_in=1800, id_token="x.y.z")
    route = idp.post(TOKEN_URL).respond(200, json=body)
    result = await client.refresh(REFRESH_TOKEN)
    assert result == TokenResponse(
        access_token=ACCESS_TOKEN,
        token_type="Bearer",
        expires_in=300,
        refresh_token=NEW_REFRESH_TOKEN,
        refresh_expires_in=1800,
        scope="openid offline_access",
        id_token="x.y.z",
    )
    request = route.calls.last.request
    assert form_of(request) == {"grant_type": "refresh_token", "refresh_token": REFRESH_TOKEN}
    expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    for text in (repr(result), str(result)):
        assert ACCESS_TOKEN not in text and NEW_REFRESH_TOKEN not in text


async def test_refresh_without_rotation_leaves_optional_fields_empty(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp.post(TOKEN_URL).respond(200, json={"access_token": ACCESS_TOKEN, "token_type": "Bearer"})
    result = await client.refresh(REFRESH_TOKEN)
    assert result.refresh_token is None
    assert result.expires_in is None and result.refresh_expires_in is None
    assert result.scope is None and result.id_token is None


async def test_invalid_grant_is_permanent(idp: respx.MockRouter, client: ProviderClient) -> None:
    description = "Offline user session not found " + "x" * 400
    idp.post(TOKEN_URL).respond(
        400, json={"error": "invalid_grant", "error_description": description}
    )
    with pytest.raises(PermanentProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.error == "invalid_grant"
    assert info.value.status_code == 400
    assert info.value.description.startswith("Offline user session not found")
    assert len(info.value.description) <= 200
    assert not info.value.is_configuration_error


async def test_invalid_client_is_a_permanent_configuration_error(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
    with pytest.raises(PermanentProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.error == "invalid_client" and info.value.status_code == 401
    assert info.value.is_configuration_error


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient(
    idp: respx.MockRouter, client: ProviderClient, status: int
) -> None:
    idp.post(TOKEN_URL).respond(status, text="Bad Gateway")
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == "server_error"
    assert info.value.status_code == status
    assert info.value.retry_after is None


async def test_temporarily_unavailable_oauth_error_is_transient(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp.post(TOKEN_URL).respond(400, json={"error": "temporarily_unavailable"})
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == "server_error"


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("30", 30.0),
        (email.utils.formatdate(NOW + 120, usegmt=True), 120.0),
        (email.utils.formatdate(NOW - 50, usegmt=True), 0.0),
        ("soon", None),
        (None, None),
    ],
)
async def test_rate_limit_reports_retry_after(
    idp: respx.MockRouter, client: ProviderClient, retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    idp.post(TOKEN_URL).respond(429, headers=headers)
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == "rate_limited"
    assert info.value.status_code == 429
    assert info.value.retry_after == expected


async def test_503_with_retry_after_keeps_it(idp: respx.MockRouter, client: ProviderClient) -> None:
    idp.post(TOKEN_URL).respond(503, headers={"Retry-After": "7"})
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert (info.value.kind, info.value.retry_after) == ("server_error", 7.0)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (httpx.ReadTimeout("read timed out"), "timeout"),
        (httpx.ConnectTimeout("connect timed out"), "timeout"),
        (httpx.ConnectError("connection refused"), "network"),
        (httpx.RemoteProtocolError("peer closed connection"), "network"),
    ],
)
async def test_transport_failures_are_transient(
    idp: respx.MockRouter, client: ProviderClient, error: Exception, kind: str
) -> None:
    idp.post(TOKEN_URL).mock(side_effect=error)
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == kind
    assert info.value.status_code is None


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="{not json"),
        httpx.Response(200, json=["access_token"]),
        httpx.Response(200, json={"token_type": "Bearer", "expires_in": 300}),
        httpx.Response(200, json={"access_token": ""}),
        httpx.Response(200, json={"access_token": ACCESS_TOKEN, "refresh_token": 42}),
    ],
    ids=["bad-json", "json-list", "no-access-token", "empty-access-token", "bad-refresh-type"],
)
async def test_malformed_token_answers_are_transient(
    idp: respx.MockRouter, client: ProviderClient, response: httpx.Response
) -> None:
    idp.post(TOKEN_URL).mock(return_value=response)
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == "malformed"


@pytest.mark.parametrize("status", [401, 404, 405])
async def test_4xx_without_oauth_error_is_transient_malformed(
    idp: respx.MockRouter, client: ProviderClient, status: int
) -> None:
    # Decision: a bare 4xx (a proxy's 404, a 405) does not prove the grant dead, so it is
    # retried; the message points at the configuration.
    idp.post(TOKEN_URL).respond(status, text="<html>Not Found</html>")
    with pytest.raises(TransientProviderError) as info:
        await client.refresh(REFRESH_TOKEN)
    assert info.value.kind == "malformed"
    assert info.value.status_code == status
    assert f"HTTP {status}" in str(info.value) and "configuration" in str(info.value)


# --- revocation -------------------------------------------------------------------------------


async def test_revoke_posts_token_hint_and_client_auth(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    route = idp.post(REVOKE_URL).respond(200)
    assert await client.revoke(REFRESH_TOKEN) is True
    request = route.calls.last.request
    assert form_of(request) == {"token": REFRESH_TOKEN, "token_type_hint": "refresh_token"}
    assert request.headers["Authorization"].startswith("Basic ")


async def test_revoke_without_endpoint_returns_false(
    idp: respx.MockRouter, client: ProviderClient
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(revocation_endpoint=None))
    assert await client.revoke(REFRESH_TOKEN) is False


async def test_revoke_failures(idp: respx.MockRouter, client: ProviderClient) -> None:
    route = idp.post(REVOKE_URL)
    route.respond(503)
    with pytest.raises(TransientProviderError) as transient:
        await client.revoke(REFRESH_TOKEN)
    assert transient.value.kind == "server_error"

    route.mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientProviderError) as network:
        await client.revoke(REFRESH_TOKEN)
    assert network.value.kind == "network"

    route.mock(side_effect=None, return_value=httpx.Response(400, json={"error": "invalid_client"}))
    with pytest.raises(PermanentProviderError) as permanent:
        await client.revoke(REFRESH_TOKEN, token_type_hint="access_token")
    assert permanent.value.error == "invalid_client"
    assert form_of(route.calls.last.request)["token_type_hint"] == "access_token"


# --- id_token ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "k2", "use": "sig"})


def jwks(*keys: Any) -> dict[str, Any]:
    return KeySet(list(keys)).as_dict(private=False)  # type: ignore[return-value]


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-123",
        "aud": CLIENT_ID,
        "azp": CLIENT_ID,
        "exp": NOW + 300,
        "iat": NOW - 5,
        "nonce": NONCE,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def mint(key: Any, payload: dict[str, Any], *, alg: str = "RS256", kid: str = "k1") -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # joserfc flags the "EdDSA" name
        return jwt.encode({"alg": alg, "kid": kid}, payload, key, algorithms=[alg])


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def jwks_route(idp: respx.MockRouter, rsa_key: RSAKey) -> respx.Route:
    return idp.get(JWKS_URL, name="jwks").respond(200, json=jwks(rsa_key))


async def test_valid_id_token_returns_its_claims(
    client: ProviderClient, rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    result = await client.validate_id_token(mint(rsa_key, claims()), nonce=NONCE)
    assert result["sub"] == "user-123" and result["nonce"] == NONCE
    await client.validate_id_token(mint(rsa_key, claims(exp=NOW - 30)), nonce=NONCE)  # leeway
    assert jwks_route.call_count == 1


@pytest.mark.parametrize(
    ("alg", "make_key"),
    [
        ("ES256", lambda: ECKey.generate_key("P-256", parameters={"kid": "k1"})),
        ("EdDSA", lambda: OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})),
        ("PS256", lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"})),
    ],
)
async def test_other_asymmetric_algorithms_are_accepted(
    idp: respx.MockRouter, client: ProviderClient, alg: str, make_key: Any
) -> None:
    key = make_key()
    idp.get(JWKS_URL).respond(200, json=jwks(key))
    result = await client.validate_id_token(mint(key, claims(), alg=alg), nonce=NONCE)
    assert result["sub"] == "user-123"


@pytest.mark.parametrize(
    ("payload", "nonce", "message"),
    [
        (claims(), "another-nonce", "nonce"),
        (claims(nonce=None), NONCE, "nonce"),
        (claims(aud="someone-else", azp=None), NONCE, "audience"),
        (claims(aud=["someone-else", "other"], azp=None), NONCE, "audience"),
        (claims(aud=[CLIENT_ID, "other"], azp=None), NONCE, "azp"),
        (claims(aud=[CLIENT_ID, "other"], azp="other"), NONCE, "azp"),
        (claims(iss="https://evil.example.test/realms/lab"), NONCE, "issuer"),
        (claims(exp=NOW - 61), NONCE, "expired"),
        (claims(exp=None), NONCE, "exp"),
        (claims(iat=None), NONCE, "iat"),
        (claims(iat=NOW + 3600), NONCE, "iat"),
    ],
    ids=[
        "wrong-nonce",
        "no-nonce",
        "wrong-aud",
        "wrong-aud-list",
        "multi-aud-no-azp",
        "wrong-azp",
        "wrong-iss",
        "expired",
        "no-exp",
        "no-iat",
        "iat-future",
    ],
)
async def test_id_token_claim_checks(
    client: ProviderClient,
    rsa_key: RSAKey,
    jwks_route: respx.Route,
    payload: dict[str, Any],
    nonce: str,
    message: str,
) -> None:
    with pytest.raises(IdTokenInvalid) as info:
        await client.validate_id_token(mint(rsa_key, payload), nonce=nonce)
    assert message in str(info.value)
    assert info.value.error == "invalid_id_token"


async def test_id_token_with_several_audiences_and_our_azp_is_accepted(
    client: ProviderClient, rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    token = mint(rsa_key, claims(aud=[CLIENT_ID, "account"], azp=CLIENT_ID))
    assert (await client.validate_id_token(token, nonce=NONCE))["aud"] == [CLIENT_ID, "account"]


async def test_id_token_with_a_bad_signature_is_rejected(
    client: ProviderClient, rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    impostor = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    with pytest.raises(IdTokenInvalid, match="signature"):
        await client.validate_id_token(mint(impostor, claims()), nonce=NONCE)
    header, _payload, signature = mint(rsa_key, claims()).split(".")
    tampered = b64(claims(sub="admin"))
    with pytest.raises(IdTokenInvalid, match="signature"):
        await client.validate_id_token(f"{header}.{tampered}.{signature}", nonce=NONCE)


async def test_unknown_kid_triggers_one_jwks_refetch(
    idp: respx.MockRouter, client: ProviderClient, rsa_key: RSAKey, other_rsa_key: RSAKey
) -> None:
    route = idp.get(JWKS_URL).mock(
        side_effect=[
            httpx.Response(200, json=jwks(rsa_key)),
            httpx.Response(200, json=jwks(rsa_key, other_rsa_key)),
        ]
    )
    await client.validate_id_token(mint(rsa_key, claims()), nonce=NONCE)
    rotated = mint(other_rsa_key, claims(), kid="k2")
    assert (await client.validate_id_token(rotated, nonce=NONCE))["sub"] == "user-123"
    assert route.call_count == 2
    await client.validate_id_token(rotated, nonce=NONCE)
    assert route.call_count == 2


async def test_kid_missing_after_refetch_is_rejected(
    client: ProviderClient, other_rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    with pytest.raises(IdTokenInvalid, match="no key"):
        await client.validate_id_token(mint(other_rsa_key, claims(), kid="k2"), nonce=NONCE)
    assert jwks_route.call_count == 2


async def test_alg_none_is_rejected(
    client: ProviderClient, rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    unsigned = f"{b64({'alg': 'none', 'kid': 'k1'})}.{b64(claims())}."
    with pytest.raises(IdTokenInvalid, match="algorithm"):
        await client.validate_id_token(unsigned, nonce=NONCE)


async def test_hs256_signed_with_the_public_key_is_rejected(
    client: ProviderClient, rsa_key: RSAKey, jwks_route: respx.Route
) -> None:
    # The classic confusion attack: HMAC keyed with the provider's public key. joserfc will
    # not build such a key, so the signature is computed by hand.
    signing_input = f"{b64({'alg': 'HS256', 'kid': 'k1'})}.{b64(claims())}"
    mac = hmac.new(rsa_key.as_pem(private=False), signing_input.encode(), hashlib.sha256)
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac.digest()).rstrip(b'=').decode()}"
    with pytest.raises(IdTokenInvalid, match="algorithm"):
        await client.validate_id_token(forged, nonce=NONCE)


@pytest.mark.parametrize("token", ["", "not-a-jwt", "a.b.c", "a.b.c.d.e"])
async def test_garbage_id_token_is_rejected(
    client: ProviderClient, jwks_route: respx.Route, token: str
) -> None:
    with pytest.raises(IdTokenInvalid):
        await client.validate_id_token(token, nonce=NONCE)


async def test_jwks_failures_are_transient(idp: respx.MockRouter, client: ProviderClient) -> None:
    route = idp.get(JWKS_URL)
    route.respond(503)
    with pytest.raises(TransientProviderError) as info:
        await client.validate_id_token("a.b.c", nonce=NONCE)
    assert info.value.kind == "server_error"
    route.respond(200, json={"keys": [{"kty": "unknown"}]})
    with pytest.raises(TransientProviderError) as info:
        await client.validate_id_token("a.b.c", nonce=NONCE)
    assert info.value.kind == "malformed"


async def test_missing_jwks_uri_is_an_invalid_id_token(
    idp: respx.MockRouter, client: ProviderClient, rsa_key: RSAKey
) -> None:
    idp["discovery"].respond(200, json=discovery_doc(jwks_uri=None))
    with pytest.raises(IdTokenInvalid, match="jwks_uri"):
        await client.validate_id_token(mint(rsa_key, claims()), nonce=NONCE)


# --- no secret in any failure -----------------------------------------------------------------


def echo(request: httpx.Request) -> str:
    """What a careless provider might put in an error: everything it was sent."""
    return f"{unquote_plus(request.content.decode())} {request.headers} {CLIENT_SECRET}"


FAILING_ANSWERS: list[Any] = [
    lambda r: httpx.Response(400, json={"error": "invalid_grant", "error_description": echo(r)}),
    lambda r: httpx.Response(401, json={"error": f"invalid_client {echo(r)}"}),
    lambda r: httpx.Response(
        400, json={"error": "temporarily_unavailable", "error_description": echo(r)}
    ),
    lambda r: httpx.Response(500, text=echo(r)),
    lambda r: httpx.Response(503, json={"error": "server_error", "error_description": echo(r)}),
    lambda r: httpx.Response(429, text=echo(r), headers={"Retry-After": "5"}),
    lambda r: httpx.Response(404, text=echo(r)),
    lambda r: httpx.Response(403, json={"error": "access_denied", "error_description": echo(r)}),
    httpx.ReadTimeout(" ".join(SECRETS)),
    httpx.ConnectError(" ".join(SECRETS)),
]


async def test_no_failure_reveals_a_secret(
    idp: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jupyter_offline_token.oidc")
    routes = [idp.post(TOKEN_URL), idp.post(REVOKE_URL)]
    clients = [
        ProviderClient(ISSUER, CLIENT_ID, CLIENT_SECRET, token_endpoint_auth_method=method)
        for method in ("client_secret_basic", "client_secret_post")
    ]
    calls = [
        lambda c: c.refresh(REFRESH_TOKEN),
        lambda c: c.exchange_code(code=CODE, redirect_uri=REDIRECT_URI, code_verifier=VERIFIER),
        lambda c: c.revoke(REFRESH_TOKEN),
    ]
    seen: list[ProviderError] = []
    try:
        for answer in FAILING_ANSWERS:
            for route in routes:
                route.mock(side_effect=answer)
            for c in clients:
                for call in calls:
                    with pytest.raises(ProviderError) as info:
                        await call(c)
                    seen.append(info.value)
    finally:
        for c in clients:
            await c.aclose()
    assert len(seen) == len(FAILING_ANSWERS) * len(clients) * len(calls)
    assert any(isinstance(e, PermanentProviderError) and e.description for e in seen)
    for exc in seen:
        texts = (str(exc), repr(exc), getattr(exc, "description", ""), repr(exc.__cause__))
        for text in texts:
            for secret in SECRETS:
                assert secret not in text, (type(exc).__name__, secret)
    assert caplog.records
    for record in caplog.records:
        for secret in SECRETS:
            assert secret not in record.getMessage()
