"""OpenID Connect provider client over httpx (adapter layer: imports no service or handler).

Error policy: only an OAuth error answer from the provider (``{"error": ...}`` on a 4xx) or a
failed id_token check is a ``PermanentProviderError``; everything that does not prove the grant
dead (network, timeouts, 5xx, 429, unexpected statuses, malformed answers, a discovery
document for another issuer) is a ``TransientProviderError``, so a stored offline token is never
given up because of a proxy hiccup or a provider that is still starting.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import quote_plus

import httpx
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
    SecurityWarning,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import KeySet, KeySetSerialization
from joserfc.jws import JWSRegistry

from .errors import IdTokenInvalid, PermanentProviderError, TransientProviderError

log = logging.getLogger(__name__)

#: Token endpoint client authentication methods (OpenID Connect Core 9).
TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")

#: Asymmetric signature algorithms accepted on an id_token. Never ``none`` or HMAC: an HS*
#: token "signed" with the provider's public key would otherwise verify.
ID_TOKEN_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "Ed25519",
)

#: Clock skew tolerated on ``exp``, ``iat`` and ``nbf`` of an id_token, in seconds.
ID_TOKEN_LEEWAY = 60

_DESCRIPTION_LIMIT = 200
_ERROR_CODE_LIMIT = 64
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
_REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint")
_OPTIONAL_METADATA = (
    "jwks_uri",
    "revocation_endpoint",
    "userinfo_endpoint",
    "introspection_endpoint",
)
# OAuth error codes that mean "the server is struggling", sometimes sent with a 400.
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None = None
    revocation_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    introspection_endpoint: str | None = None


@dataclass(frozen=True, repr=False)
class TokenResponse:
    """A token endpoint answer. ``repr`` never shows a token."""

    access_token: str
    token_type: str
    expires_in: int | None
    refresh_token: str | None
    refresh_expires_in: int | None
    scope: str | None
    id_token: str | None

    def __repr__(self) -> str:
        return (
            f"TokenResponse(token_type={self.token_type!r}, expires_in={self.expires_in!r}, "
            f"scope={self.scope!r}, refresh_token={'<redacted>' if self.refresh_token else None})"
        )


def new_state() -> str:
    """32 random bytes, base64url without padding."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    """32 random bytes, base64url without padding: binds the id_token to this consent."""
    return secrets.token_urlsafe(32)


def pkce_challenge(code_verifier: str) -> str:
    """S256 code challenge: base64url(SHA-256(verifier)) without padding (RFC 7636 4.2)."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_pkce() -> tuple[str, str]:
    """Return ``(code_verifier, code_challenge)`` for PKCE S256 (RFC 7636)."""
    verifier = secrets.token_urlsafe(48)  # 48 bytes -> 64 characters of [A-Za-z0-9_-]
    return verifier, pkce_challenge(verifier)


def _normalise_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def _safe_url(url: str) -> str:
    """The URL without query, fragment or credentials: fit for logs and messages."""
    try:
        return str(
            httpx.URL(url).copy_with(query=None, fragment=None, username=None, password=None)
        )
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"


def _clean_text(text: str, limit: int, redact: Iterable[str]) -> str:
    """Provider-supplied text made safe to show: no control characters, no value we sent."""
    for value in redact:
        if value:
            text = text.replace(value, "<redacted>")
    text = _CONTROL_CHARS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was absent
        return None
    return max(0.0, when.timestamp() - now)


def _optional_int(value: Any) -> int | None:
    """``expires_in``-style numbers: int, float or numeric string; anything else is unknown."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float):
        return max(0, int(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return max(0, int(number)) if math.isfinite(number) else None
    return None


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TransientProviderError(
            f"token endpoint answer has a non-string {field!r}", kind="malformed"
        )
    return value


class ProviderClient:
    """Talks to one OpenID provider for one client.

    All methods raise only ``TransientProviderError`` (network, timeout, 5xx, 429 with
    ``retry_after`` from Retry-After, malformed JSON or a 200 without ``access_token``) or
    ``PermanentProviderError`` (an OAuth error answer such as ``invalid_grant``,
    ``invalid_client``; ``IdTokenInvalid`` for id_token failures) from ``errors.py``. No message
    or repr contains a token, code, verifier or client secret.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str = "",
        *,
        token_endpoint_auth_method: str = "client_secret_basic",  # noqa: S107 (a method name)
        http_timeout: float = 15.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if token_endpoint_auth_method not in TOKEN_ENDPOINT_AUTH_METHODS:
            raise ValueError(
                f"unknown token_endpoint_auth_method {token_endpoint_auth_method!r}; "
                f"expected one of {', '.join(TOKEN_ENDPOINT_AUTH_METHODS)}"
            )
        if not http_timeout > 0:
            raise ValueError("http_timeout must be a positive number of seconds")
        self.issuer = _normalise_issuer(issuer)
        self.client_id = client_id
        self._client_secret = client_secret
        self.token_endpoint_auth_method = token_endpoint_auth_method
        self._clock = clock
        self._http = httpx.AsyncClient(
            timeout=http_timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        self._closed = False
        self._metadata: ProviderMetadata | None = None
        self._metadata_lock = asyncio.Lock()
        self._jwks: KeySet | None = None
        self._jwks_lock = asyncio.Lock()
        self._jws_registry = JWSRegistry(algorithms=ID_TOKEN_ALGORITHMS, strict_check_header=False)

    def __repr__(self) -> str:
        return (
            f"ProviderClient(issuer={self.issuer!r}, client_id={self.client_id!r}, "
            f"token_endpoint_auth_method={self.token_endpoint_auth_method!r})"
        )

    # --- discovery -------------------------------------------------------------------------

    async def metadata(self) -> ProviderMetadata:
        """Discovery document from ``<issuer>/.well-known/openid-configuration``.

        Cached after success; a failure is not cached (the next call fetches again). The
        document's ``issuer`` must equal the configured issuer (trailing slash ignored).
        """
        if self._metadata is not None:
            return self._metadata
        async with self._metadata_lock:  # concurrent first callers share one fetch
            if self._metadata is None:
                self._metadata = await self._fetch_metadata()
            return self._metadata

    async def _fetch_metadata(self) -> ProviderMetadata:
        url = f"{self.issuer}/.well-known/openid-configuration"
        response = await self._send("GET", url, what="discovery")
        if not response.is_success:
            raise self._status_error(response, "discovery", url)
        document = self._json_object(response, "discovery", url)
        required: dict[str, str] = {}
        for name in _REQUIRED_METADATA:
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise TransientProviderError(
                    f"discovery document at {_safe_url(url)} lacks required field {name!r}",
                    kind="malformed",
                    status_code=response.status_code,
                )
            required[name] = value
        optional = {
            name: value if isinstance(value := document.get(name), str) and value else None
            for name in _OPTIONAL_METADATA
        }
        if _normalise_issuer(required["issuer"]) != self.issuer:
            raise TransientProviderError(
                f"discovery document names issuer {required['issuer']!r}, "
                f"but the configured issuer is {self.issuer!r}",
                kind="malformed",
                status_code=response.status_code,
            )
        log.debug("discovered OpenID provider %s", self.issuer)
        return ProviderMetadata(
            issuer=required["issuer"],
            authorization_endpoint=required["authorization_endpoint"],
            token_endpoint=required["token_endpoint"],
            jwks_uri=optional["jwks_uri"],
            revocation_endpoint=optional["revocation_endpoint"],
            userinfo_endpoint=optional["userinfo_endpoint"],
            introspection_endpoint=optional["introspection_endpoint"],
        )

    # --- authorization ---------------------------------------------------------------------

    async def authorization_url(
        self, *, redirect_uri: str, scopes: list[str], state: str, nonce: str, code_challenge: str
    ) -> str:
        """URL with response_type=code, client_id, redirect_uri, scope, state, nonce,
        code_challenge, code_challenge_method=S256 and prompt=consent."""
        for name, value in (
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", code_challenge),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        if not scopes or not all(isinstance(s, str) and s and " " not in s for s in scopes):
            raise ValueError("scopes must be a non-empty list of scope names without spaces")
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(dict.fromkeys(scopes)),
            "state": state,
            "nonce": nonce,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "prompt": "consent",
        }
        try:
            return str(httpx.URL(meta.authorization_endpoint).copy_merge_params(params))
        except httpx.InvalidURL as exc:
            raise TransientProviderError(
                "discovery document has an invalid authorization_endpoint", kind="malformed"
            ) from exc

    # --- token endpoint --------------------------------------------------------------------

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: str
    ) -> TokenResponse:
        """``grant_type=authorization_code`` with the PKCE verifier."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token_request(form, redact=(code, code_verifier))

    async def refresh(self, refresh_token: str) -> TokenResponse:
        """``grant_type=refresh_token``."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return await self._token_request(form, redact=(refresh_token,))

    async def _token_request(self, form: dict[str, str], redact: tuple[str, ...]) -> TokenResponse:
        meta = await self.metadata()
        url = meta.token_endpoint
        response = await self._post_with_client_auth(url, form, what="token endpoint")
        if not response.is_success:
            raise self._status_error(response, "token endpoint", url, redact=redact)
        body = self._json_object(response, "token endpoint", url)
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TransientProviderError(
                f"token endpoint {_safe_url(url)} answered without an access_token",
                kind="malformed",
                status_code=response.status_code,
            )
        token_type = body.get("token_type")
        return TokenResponse(
            access_token=access_token,
            token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
            expires_in=_optional_int(body.get("expires_in")),
            refresh_token=_optional_str(body, "refresh_token"),
            refresh_expires_in=_optional_int(body.get("refresh_expires_in")),
            scope=_optional_str(body, "scope"),
            id_token=_optional_str(body, "id_token"),
        )

    async def revoke(self, token: str, *, token_type_hint: str = "refresh_token") -> bool:  # noqa: S107
        """RFC 7009. Returns False when the provider has no revocation endpoint."""
        meta = await self.metadata()
        url = meta.revocation_endpoint
        if not url:
            return False
        form = {"token": token, "token_type_hint": token_type_hint}
        response = await self._post_with_client_auth(url, form, what="revocation endpoint")
        if not response.is_success:
            raise self._status_error(response, "revocation endpoint", url, redact=(token,))
        return True

    def _client_auth(self, form: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Form and headers with this client's authentication added (OIDC Core 9)."""
        form = dict(form)
        headers: dict[str, str] = {}
        method = self.token_endpoint_auth_method
        if method == "client_secret_basic":
            # RFC 6749 2.3.1: id and secret are form-urlencoded before Basic encoding.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif method == "client_secret_post":
            form["client_id"] = self.client_id
            form["client_secret"] = self._client_secret
        else:
            form["client_id"] = self.client_id
        return form, headers

    async def _post_with_client_auth(
        self, url: str, form: dict[str, str], *, what: str
    ) -> httpx.Response:
        data, headers = self._client_auth(form)
        return await self._send("POST", url, what=what, data=data, headers=headers)

    # --- id_token --------------------------------------------------------------------------

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Verify signature (JWKS, refetched once on an unknown ``kid``), iss, aud, exp (small
        leeway) and nonce with joserfc; return the claims or raise ``IdTokenInvalid``."""
        if not isinstance(id_token, str) or not id_token:
            raise IdTokenInvalid("id_token is missing")
        if not isinstance(nonce, str) or not nonce:
            raise IdTokenInvalid("no expected nonce to compare with")
        meta = await self.metadata()
        if not meta.jwks_uri:
            raise IdTokenInvalid("the provider publishes no jwks_uri to verify the signature")
        keys = await self._jwks_keys(meta.jwks_uri, refresh=False)
        try:
            token = self._verify_signature(id_token, keys)
        except InvalidKeyIdError:
            # The provider may have rotated its signing key since the JWKS was cached.
            keys = await self._jwks_keys(meta.jwks_uri, refresh=True, stale=keys)
            try:
                token = self._verify_signature(id_token, keys)
            except InvalidKeyIdError as exc:
                raise IdTokenInvalid("no key in the provider's JWKS matches the id_token") from exc
        claims = dict(token.claims)
        self._check_claims(claims, nonce, meta.issuer)
        return claims

    def _verify_signature(self, id_token: str, keys: KeySet) -> jwt.Token:
        """Signature check only; raises InvalidKeyIdError (for a refetch) or IdTokenInvalid."""
        try:
            with warnings.catch_warnings():
                # joserfc flags the "EdDSA" name as deprecated by RFC 9864; providers still use it.
                warnings.simplefilter("ignore", SecurityWarning)
                return jwt.decode(id_token, keys, registry=self._jws_registry)
        except InvalidKeyIdError:
            raise
        except UnsupportedAlgorithmError as exc:
            raise IdTokenInvalid("id_token signature algorithm is not allowed") from exc
        except BadSignatureError as exc:
            raise IdTokenInvalid("id_token signature does not verify") from exc
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise IdTokenInvalid("id_token is malformed or cannot be verified") from exc

    def _check_claims(self, claims: dict[str, Any], nonce: str, discovered_issuer: str) -> None:
        registry = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=ID_TOKEN_LEEWAY,
            iss={"essential": True, "values": [self.issuer, discovered_issuer]},
            aud={"essential": True, "value": self.client_id},
            exp={"essential": True},
            iat={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise IdTokenInvalid("id_token has expired") from exc
        except ClaimError as exc:
            label = {
                "iss": "issuer does not match",
                "aud": "audience does not include this client",
                "exp": "exp is invalid",
                "iat": "iat is invalid or in the future",
                "nbf": "id_token is not valid yet",
                "sub": "sub is invalid",
            }.get(exc.claim, f"claim {exc.claim!r} is missing or invalid")
            raise IdTokenInvalid(f"id_token {label}") from exc
        audience = claims["aud"]
        azp = claims.get("azp")
        if isinstance(audience, list) and len(audience) > 1 and azp is None:
            raise IdTokenInvalid("id_token has several audiences but no azp")
        if azp is not None and azp != self.client_id:
            raise IdTokenInvalid("id_token azp is not this client")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise IdTokenInvalid("id_token nonce does not match")

    async def _jwks_keys(
        self, jwks_uri: str, *, refresh: bool, stale: KeySet | None = None
    ) -> KeySet:
        async with self._jwks_lock:
            # A concurrent caller may already have replaced the stale set.
            if self._jwks is not None and not (refresh and self._jwks is stale):
                return self._jwks
            response = await self._send("GET", jwks_uri, what="JWKS")
            if not response.is_success:
                raise self._status_error(response, "JWKS", jwks_uri)
            document = self._json_object(response, "JWKS", jwks_uri)
            if not isinstance(document.get("keys"), list):
                raise TransientProviderError(
                    f"JWKS at {_safe_url(jwks_uri)} has no 'keys' list", kind="malformed"
                )
            try:
                keys = KeySet.import_key_set(cast(KeySetSerialization, document))
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise TransientProviderError(
                    f"JWKS at {_safe_url(jwks_uri)} holds no usable key", kind="malformed"
                ) from exc
            self._jwks = keys
            log.debug("loaded %d keys from %s", len(keys.keys), _safe_url(jwks_uri))
            return keys

    # --- transport -------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange; transport failures become TransientProviderError."""
        if self._closed:
            raise RuntimeError("ProviderClient is closed")
        safe = _safe_url(url)
        try:
            response = await self._http.request(method, url, data=data, headers=headers)
        except httpx.TimeoutException:
            log.warning("%s %s timed out", method, safe)
            # "from None": an httpx error holds the request, whose body may carry a token.
            raise TransientProviderError(f"{what} {safe} timed out", kind="timeout") from None
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            log.warning("%s %s failed: %s", method, safe, type(exc).__name__)
            raise TransientProviderError(
                f"{what} {safe} unreachable ({type(exc).__name__})", kind="network"
            ) from None
        log.debug("%s %s -> %d", method, safe, response.status_code)
        return response

    @staticmethod
    def _json_object(response: httpx.Response, what: str, url: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:  # JSONDecodeError keeps the whole body in .doc: do not chain it
            raise TransientProviderError(
                f"{what} {_safe_url(url)} answered with invalid JSON",
                kind="malformed",
                status_code=response.status_code,
            ) from None
        if not isinstance(body, dict):
            raise TransientProviderError(
                f"{what} {_safe_url(url)} answered with JSON that is not an object",
                kind="malformed",
                status_code=response.status_code,
            )
        return body

    def _status_error(
        self, response: httpx.Response, what: str, url: str, *, redact: tuple[str, ...] = ()
    ) -> TransientProviderError | PermanentProviderError:
        """Classify a non-2xx answer. Only a 4xx carrying an OAuth ``error`` is permanent."""
        status = response.status_code
        safe = _safe_url(url)
        retry_after = _parse_retry_after(response.headers.get("Retry-After"), self._clock())
        oauth = self._oauth_error(response, (*redact, self._client_secret))
        log.warning("%s %s answered HTTP %d", what, safe, status)
        if status == 429:
            return TransientProviderError(
                f"{what} {safe} is rate limiting (HTTP 429)",
                kind="rate_limited",
                status_code=status,
                retry_after=retry_after,
            )
        if status >= 500 or (oauth is not None and oauth[0] in _TRANSIENT_OAUTH_ERRORS):
            detail = f": {oauth[0]}" if oauth else ""
            return TransientProviderError(
                f"{what} {safe} answered HTTP {status}{detail}",
                kind="server_error",
                status_code=status,
                retry_after=retry_after,
            )
        if status == 408:
            return TransientProviderError(
                f"{what} {safe} answered HTTP 408", kind="timeout", status_code=status
            )
        if 400 <= status < 500 and oauth is not None:
            return PermanentProviderError(oauth[0], oauth[1], status_code=status)
        # A 4xx without an OAuth error (a proxy's 404, a 405, a bare 401) or a redirect does not
        # prove the grant dead: report it as malformed so callers retry and operators see it.
        return TransientProviderError(
            f"{what} {safe} answered HTTP {status} without an OAuth error "
            "(check the issuer and endpoint configuration)",
            kind="malformed",
            status_code=status,
            retry_after=retry_after,
        )

    @staticmethod
    def _oauth_error(response: httpx.Response, redact: tuple[str, ...]) -> tuple[str, str] | None:
        """``(error, error_description)`` from an RFC 6749 5.2 body, cleaned, else None."""
        try:
            body = response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        error = body.get("error")
        if not isinstance(error, str) or not error.strip():
            return None
        description = body.get("error_description")
        return (
            _clean_text(error, _ERROR_CODE_LIMIT, redact),
            _clean_text(description, _DESCRIPTION_LIMIT, redact)
            if isinstance(description, str)
            else "",
        )

    async def aclose(self) -> None:
        """Close the HTTP client. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()
