"""The provider's discovery document (``/.well-known/openid-configuration``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import TransientProviderError
from .transport import log, safe_url

_REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint")
_OPTIONAL_METADATA = (
    "jwks_uri",
    "revocation_endpoint",
    "userinfo_endpoint",
    "introspection_endpoint",
)


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str | None = None
    revocation_endpoint: str | None = None
    userinfo_endpoint: str | None = None
    introspection_endpoint: str | None = None


def normalise_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def discovery_url(issuer: str) -> str:
    return f"{normalise_issuer(issuer)}/.well-known/openid-configuration"


def parse_metadata(
    document: dict[str, Any], *, url: str, status_code: int, issuer: str
) -> ProviderMetadata:
    """The metadata from a discovery document, whose ``issuer`` must equal ``issuer``
    (trailing slash ignored); a document that lacks a required endpoint is malformed."""
    required: dict[str, str] = {}
    for name in _REQUIRED_METADATA:
        value = document.get(name)
        if not isinstance(value, str) or not value:
            raise TransientProviderError(
                f"discovery document at {safe_url(url)} lacks required field {name!r}",
                kind="malformed",
                status_code=status_code,
            )
        required[name] = value
    optional = {
        name: value if isinstance(value := document.get(name), str) and value else None
        for name in _OPTIONAL_METADATA
    }
    if normalise_issuer(required["issuer"]) != normalise_issuer(issuer):
        raise TransientProviderError(
            f"discovery document names issuer {required['issuer']!r}, "
            f"but the configured issuer is {issuer!r}",
            kind="malformed",
            status_code=status_code,
        )
    log.debug("discovered OpenID provider %s", issuer)
    return ProviderMetadata(
        issuer=required["issuer"],
        authorization_endpoint=required["authorization_endpoint"],
        token_endpoint=required["token_endpoint"],
        jwks_uri=optional["jwks_uri"],
        revocation_endpoint=optional["revocation_endpoint"],
        userinfo_endpoint=optional["userinfo_endpoint"],
        introspection_endpoint=optional["introspection_endpoint"],
    )
