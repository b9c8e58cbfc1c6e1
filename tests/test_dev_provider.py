"""The development OpenID provider behaves like the real one the extension is built for."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dev_provider import DevProvider, DevProviderError
from joserfc import jwt
from joserfc.jwk import KeySet

ACCESS_TOKEN_TTL = 123  # not the server's default (300), so the env var is shown to apply


@pytest.fixture(scope="module")
def provider() -> Iterator[DevProvider]:
    with DevProvider(access_token_ttl=ACCESS_TOKEN_TTL) as running:
        yield running


@dataclass
class Authorization:
    code: str
    verifier: str
    redirect_uri: str


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def callback_uri(host: str = "127.0.0.1", path: str = "/user/alice/offline-token/callback") -> str:
    return f"http://{host}:{secrets.choice(range(20000, 60000))}{path}"


def authorize(
    provider: DevProvider,
    *,
    username: str = "alice",
    client_id: str | None = None,
    redirect_uri: str | None = None,
) -> Authorization:
    redirect_uri = redirect_uri or callback_uri()
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    url = provider.authorization_url(
        redirect_uri=redirect_uri, state=state, code_challenge=challenge, client_id=client_id
    )
    location = provider.complete_consent(url, username=username)
    params = query(location)
    assert location.startswith(redirect_uri + "?")
    assert params["state"] == state
    assert params["iss"] == provider.issuer
    return Authorization(params["code"], verifier, redirect_uri)


def token_request(
    provider: DevProvider, data: dict[str, str], *, auth_method: str = "client_secret_basic"
) -> httpx.Response:
    if auth_method == "client_secret_basic":
        return provider.http.post(
            provider.endpoint("token"), data=data, auth=(provider.client_id, provider.client_secret)
        )
    if auth_method == "client_secret_post":
        credentials = {"client_id": provider.client_id, "client_secret": provider.client_secret}
        return provider.http.post(provider.endpoint("token"), data={**data, **credentials})
    assert auth_method == "none"
    return provider.http.post(
        provider.endpoint("token"), data={**data, "client_id": provider.public_client_id}
    )


def redeem(provider: DevProvider, grant: Authorization, **kwargs: Any) -> dict[str, Any]:
    response = token_request(
        provider,
        {
            "grant_type": "authorization_code",
            "code": grant.code,
            "redirect_uri": grant.redirect_uri,
            "code_verifier": grant.verifier,
        },
        **kwargs,
    )
    assert response.status_code == 200, response.json()
    return response.json()


def refresh(provider: DevProvider, refresh_token: str, **kwargs: Any) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    return token_request(provider, data, **kwargs)


def offline_tokens(provider: DevProvider, username: str = "alice") -> dict[str, Any]:
    return redeem(provider, authorize(provider, username=username))


def test_code_flow_issues_offline_refresh_token_and_signed_id_token(
    provider: DevProvider,
) -> None:
    before = provider.stats()
    tokens = offline_tokens(provider)

    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == ACCESS_TOKEN_TTL
    assert set(tokens["scope"].split()) == {"openid", "profile", "email", "offline_access"}
    assert tokens["refresh_token"]
    jwks = provider.http.get(provider.endpoint("jwks_uri")).json()
    claims = jwt.decode(tokens["id_token"], KeySet.import_key_set(jwks)).claims
    assert claims["iss"] == provider.issuer
    assert claims["aud"] == provider.client_id
    assert claims["sub"] == "alice"
    assert provider.stats()["authorization_code_grants"] == before["authorization_code_grants"] + 1

    userinfo = provider.userinfo(tokens["access_token"])
    assert userinfo.status_code == 200
    assert userinfo.json()["email"] == "alice@example.org"
    introspection = provider.introspect(tokens["access_token"])
    assert introspection["active"] is True
    assert introspection["exp"] - introspection["iat"] == ACCESS_TOKEN_TTL


def test_client_secret_post_is_accepted(provider: DevProvider) -> None:
    tokens = redeem(provider, authorize(provider), auth_method="client_secret_post")
    response = refresh(provider, tokens["refresh_token"], auth_method="client_secret_post")
    assert response.status_code == 200


def test_wrong_client_secret_is_refused(provider: DevProvider) -> None:
    grant = authorize(provider)
    response = provider.http.post(
        provider.endpoint("token"),
        data={
            "grant_type": "authorization_code",
            "code": grant.code,
            "redirect_uri": grant.redirect_uri,
            "code_verifier": grant.verifier,
        },
        auth=(provider.client_id, "not-the-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_public_client_uses_pkce_without_secret(provider: DevProvider) -> None:
    grant = authorize(provider, client_id=provider.public_client_id)
    tokens = redeem(provider, grant, auth_method="none")
    assert tokens["refresh_token"]
    assert refresh(provider, tokens["refresh_token"], auth_method="none").status_code == 200


def test_refresh_rotates_and_replay_of_old_token_is_invalid_grant(provider: DevProvider) -> None:
    old = offline_tokens(provider)["refresh_token"]
    before = provider.stats()

    response = refresh(provider, old)
    assert response.status_code == 200
    rotated = response.json()
    assert rotated["refresh_token"] != old
    assert rotated["expires_in"] == ACCESS_TOKEN_TTL

    replay = refresh(provider, old)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # The replay revokes the whole grant, so the rotated token dies too.
    assert refresh(provider, rotated["refresh_token"]).json()["error"] == "invalid_grant"

    after = provider.stats()
    assert after["refresh_token_grants"] == before["refresh_token_grants"] + 1
    assert after["refresh_token_grant_errors"] == before["refresh_token_grant_errors"] + 2


def test_deny_redirects_with_access_denied(provider: DevProvider) -> None:
    redirect_uri = callback_uri()
    _, challenge = pkce_pair()
    url = provider.authorization_url(
        redirect_uri=redirect_uri, state="deny-state", code_challenge=challenge
    )
    location = provider.complete_consent(url, decision="deny")
    assert location.startswith(redirect_uri + "?")
    params = query(location)
    assert params["error"] == "access_denied"
    assert params["state"] == "deny-state"
    assert "code" not in params


def test_wrong_password_shows_the_login_form_again(provider: DevProvider) -> None:
    _, challenge = pkce_pair()
    url = provider.authorization_url(
        redirect_uri=callback_uri(), state="s", code_challenge=challenge
    )
    with pytest.raises(DevProviderError, match="Invalid username or password"):
        provider.complete_consent(url, username="bob", password="wrong")


def test_revocation_then_refresh_is_invalid_grant(provider: DevProvider) -> None:
    refresh_token = offline_tokens(provider)["refresh_token"]
    before = provider.stats()

    response = provider.http.post(
        provider.endpoint("revocation"),
        data={"token": refresh_token, "token_type_hint": "refresh_token"},
        auth=(provider.client_id, provider.client_secret),
    )
    assert response.status_code == 200
    assert provider.stats()["revocations"] == before["revocations"] + 1
    assert provider.introspect(refresh_token)["active"] is False
    assert refresh(provider, refresh_token).json()["error"] == "invalid_grant"


def test_revoking_an_accounts_grants_kills_only_its_refresh_tokens(provider: DevProvider) -> None:
    bobs = offline_tokens(provider, username="bob")["refresh_token"]
    alices = offline_tokens(provider, username="alice")["refresh_token"]

    provider.revoke_account_grants("bob")

    response = refresh(provider, bobs)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert refresh(provider, alices).status_code == 200


@pytest.mark.parametrize(
    "redirect_uri",
    [
        callback_uri(),
        callback_uri(),
        callback_uri("localhost", "/other/path"),
        callback_uri("127.0.0.1", "/"),
    ],
)
def test_any_loopback_redirect_uri_is_accepted(provider: DevProvider, redirect_uri: str) -> None:
    tokens = redeem(provider, authorize(provider, redirect_uri=redirect_uri))
    assert tokens["refresh_token"]


@pytest.mark.parametrize(
    "redirect_uri",
    ["http://example.org/callback", "https://127.0.0.1:8888/callback", "http://10.0.0.1:80/cb"],
)
def test_non_loopback_redirect_uri_is_refused(provider: DevProvider, redirect_uri: str) -> None:
    _, challenge = pkce_pair()
    url = provider.authorization_url(redirect_uri=redirect_uri, state="s", code_challenge=challenge)
    response = provider.http.get(url)  # the provider answers itself, it never redirects there
    assert response.status_code == 400
    assert "invalid_redirect_uri" in response.text


def test_pkce_is_required(provider: DevProvider) -> None:
    redirect_uri = callback_uri()
    url = provider.authorization_url(redirect_uri=redirect_uri, state="s", code_challenge=None)
    response = provider.http.get(url)
    assert response.is_redirect
    location = response.headers["location"]
    assert location.startswith(redirect_uri + "?")
    assert query(location)["error"] == "invalid_request"


def test_stats_reset(provider: DevProvider) -> None:
    offline_tokens(provider)
    provider.reset_stats()
    assert set(provider.stats().values()) == {0}
