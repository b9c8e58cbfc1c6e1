"""Random values of one consent round trip: OAuth ``state``, OpenID ``nonce`` and PKCE S256."""

from __future__ import annotations

import base64
import hashlib
import secrets


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
