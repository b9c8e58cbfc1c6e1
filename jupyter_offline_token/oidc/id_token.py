"""id_token validation: signature against the provider's JWKS (refetched once on an unknown
``kid``), then iss, aud, azp, exp, iat, sub and nonce."""

from __future__ import annotations

import asyncio
import hmac
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, cast

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

from ..errors import IdTokenInvalid, TransientProviderError
from .transport import log, safe_url

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

_CLAIM_LABELS = {
    "iss": "issuer does not match",
    "aud": "audience does not include this client",
    "exp": "exp is invalid",
    "iat": "iat is invalid or in the future",
    "nbf": "id_token is not valid yet",
    "sub": "sub is invalid",
}

#: ``(url, what) -> JSON object``: a GET whose failures are already provider errors.
FetchJson = Callable[[str, str], Awaitable[dict[str, Any]]]


class IdTokenValidator:
    """Validates id_tokens for one client; caches the provider's JWKS."""

    def __init__(
        self, *, issuer: str, client_id: str, fetch_json: FetchJson, clock: Callable[[], float]
    ) -> None:
        self._issuer = issuer
        self._client_id = client_id
        self._fetch_json = fetch_json
        self._clock = clock
        self._jwks: KeySet | None = None
        self._jwks_lock = asyncio.Lock()
        self._jws_registry = JWSRegistry(algorithms=ID_TOKEN_ALGORITHMS, strict_check_header=False)

    async def validate(
        self, id_token: str, *, nonce: str, jwks_uri: str | None, discovered_issuer: str
    ) -> dict[str, Any]:
        """The verified claims, or ``IdTokenInvalid``."""
        if not jwks_uri:
            raise IdTokenInvalid("the provider publishes no jwks_uri to verify the signature")
        keys = await self._keys(jwks_uri, refresh=False)
        try:
            token = self._verify_signature(id_token, keys)
        except InvalidKeyIdError:
            # The provider may have rotated its signing key since the JWKS was cached.
            keys = await self._keys(jwks_uri, refresh=True, stale=keys)
            try:
                token = self._verify_signature(id_token, keys)
            except InvalidKeyIdError as exc:
                raise IdTokenInvalid("no key in the provider's JWKS matches the id_token") from exc
        claims = dict(token.claims)
        self._check_claims(claims, nonce, discovered_issuer)
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
            iss={"essential": True, "values": [self._issuer, discovered_issuer]},
            aud={"essential": True, "value": self._client_id},
            exp={"essential": True},
            iat={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise IdTokenInvalid("id_token has expired") from exc
        except ClaimError as exc:
            label = _CLAIM_LABELS.get(exc.claim, f"claim {exc.claim!r} is missing or invalid")
            raise IdTokenInvalid(f"id_token {label}") from exc
        audience = claims["aud"]
        azp = claims.get("azp")
        if isinstance(audience, list) and len(audience) > 1 and azp is None:
            raise IdTokenInvalid("id_token has several audiences but no azp")
        if azp is not None and azp != self._client_id:
            raise IdTokenInvalid("id_token azp is not this client")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode(), nonce.encode()
        ):
            raise IdTokenInvalid("id_token nonce does not match")

    async def _keys(self, jwks_uri: str, *, refresh: bool, stale: KeySet | None = None) -> KeySet:
        async with self._jwks_lock:
            # A concurrent caller may already have replaced the stale set.
            if self._jwks is not None and not (refresh and self._jwks is stale):
                return self._jwks
            document = await self._fetch_json(jwks_uri, "JWKS")
            if not isinstance(document.get("keys"), list):
                raise TransientProviderError(
                    f"JWKS at {safe_url(jwks_uri)} has no 'keys' list", kind="malformed"
                )
            try:
                keys: KeySet = KeySet.import_key_set(cast(KeySetSerialization, document))
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise TransientProviderError(
                    f"JWKS at {safe_url(jwks_uri)} holds no usable key", kind="malformed"
                ) from exc
            self._jwks = keys
            log.debug("loaded %d keys from %s", len(keys.keys), safe_url(jwks_uri))
            return keys
