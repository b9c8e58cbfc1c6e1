"""Opening a sealed column group of a ``tokens`` row (``<name>_ct``, ``<name>_nonce``,
``<name>_key_id``), bound to its entry by the AAD of ``stores/aad``."""

from __future__ import annotations

from typing import Literal, Protocol

from ..aad import access_aad, consent_aad, refresh_aad
from .records import Row

Sealed = Literal["secret", "consent", "access"]

_AAD = {"secret": refresh_aad, "consent": consent_aad, "access": access_aad}
_WHAT = {
    "secret": "the refresh token",
    "consent": "the consent secrets",
    "access": "the shared access token",
}


class Decrypting(Protocol):
    def decrypt(self, key_id: str, nonce: bytes, ct: bytes, aad: bytes, *, what: str) -> bytes:
        """DecryptionError naming ``what``, never the data."""


def unseal(database: Decrypting, row: Row, name: Sealed, token_id: str, owner: str) -> bytes:
    """The plaintext; DecryptionError naming the entry (a wrong key, a moved or altered row)."""
    return database.decrypt(
        str(row[f"{name}_key_id"]),
        row[f"{name}_nonce"],
        row[f"{name}_ct"],
        _AAD[name](token_id, owner),
        what=f"{_WHAT[name]} of vault entry {token_id}",
    )
