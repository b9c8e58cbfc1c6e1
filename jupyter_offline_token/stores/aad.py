"""The AAD that binds a ciphertext to its entry, the same in every backend (so a vault copied
between backends decrypts unchanged, and a ciphertext moved to another id, owner or column does
not). The key id is bound too, by ``crypto.KeyRing``."""

from __future__ import annotations


def refresh_aad(token_id: str, owner: str) -> bytes:
    return f"token:{token_id}:{owner}:refresh".encode()


def consent_aad(token_id: str, owner: str) -> bytes:
    return f"token:{token_id}:{owner}:consent".encode()


def access_aad(token_id: str, owner: str) -> bytes:
    """The shared access token (issue 11)."""
    return f"token:{token_id}:{owner}:access".encode()
