"""SQLite vault. INTERFACE STUB: to be implemented.

Every public method is a coroutine that runs its SQLite work (and crypto) on the vault's own
single worker thread, never on the event loop. Timestamps are epoch seconds (float).
"""

from __future__ import annotations

from pathlib import Path

from ..models import AuditEvent, ConsentSecrets, TokenRecord
from .crypto import KeyRing

SCHEMA_VERSION = 1


class Vault:
    def __init__(
        self,
        path: Path,
        *,
        encryption_keys: list[str] | None = None,
        audit_retention: int = 200,
    ) -> None:
        """``encryption_keys`` empty/None: use the key file ``<vault dir>/vault.key``."""
        raise NotImplementedError

    keyring: KeyRing
    path: Path

    async def open(self) -> None:
        """Create the directory (0700) and database (0600), WAL, synchronous=FULL,
        busy_timeout; apply forward migrations up to SCHEMA_VERSION; refuse a newer schema
        (VaultError naming the file and both versions, telling the admin to upgrade the
        package). Build the key ring: configured keys, else the key file (created 0600 when
        missing and the vault holds no ciphertext; VaultError naming ``encryption_keys`` when it
        is missing but ciphertexts exist). VaultError naming
        ``OfflineTokenApp.encryption_keys`` / ``JUPYTER_OFFLINE_TOKEN_KEYS`` when any stored
        ciphertext uses a key id the ring lacks."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    # --- consent ------------------------------------------------------------------------------
    async def create_pending(
        self,
        *,
        owner: str,
        issuer: str,
        client_id: str,
        scopes: list[str],
        state_hash: str,
        secrets: ConsentSecrets,
        consent_expires_at: float,
        label: str = "",
        task_id: str | None = None,
        return_to: str | None = None,
        now: float,
    ) -> TokenRecord:
        """Insert a ``pending`` entry with a new UUID4 id; consent secrets encrypted."""
        raise NotImplementedError

    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        raise NotImplementedError

    async def consume_consent(self, token_id: str) -> ConsentSecrets | None:
        """Atomically take the consent secrets (single use): decrypt, erase them from the row
        and return them; None when already consumed. ``state_hash`` stays so a replay is
        recognised as such. DecryptionError when they cannot be decrypted."""
        raise NotImplementedError

    async def activate(
        self,
        token_id: str,
        *,
        refresh_token: str,
        subject: str | None,
        scopes: list[str],
        idle_expires_at: float | None,
        now: float,
    ) -> TokenRecord:
        """Store the encrypted refresh token and mark the entry ``active``."""
        raise NotImplementedError

    async def expire_pending(self, now: float) -> list[str]:
        """Mark ``pending`` entries past ``consent_expires_at`` as ``expired``; erase their
        consent secrets; return their ids."""
        raise NotImplementedError

    # --- reading ------------------------------------------------------------------------------
    async def get(self, token_id: str) -> TokenRecord | None:
        raise NotImplementedError

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[TokenRecord]:
        """Newest first."""
        raise NotImplementedError

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        raise NotImplementedError

    async def read_refresh_token(self, token_id: str) -> str:
        """Decrypt the stored refresh token. DecryptionError on a bad key or tampering;
        KeyError when the entry has none."""
        raise NotImplementedError

    # --- refresh bookkeeping -------------------------------------------------------------------
    async def acquire_lease(self, token_id: str, holder: str, ttl: float, now: float) -> bool:
        """Take the cross-process refresh lease (BEGIN IMMEDIATE): True when it was free,
        expired or already ours."""
        raise NotImplementedError

    async def release_lease(self, token_id: str, holder: str) -> None:
        raise NotImplementedError

    async def record_refresh(
        self,
        token_id: str,
        *,
        new_refresh_token: str | None,
        idle_expires_at: float | None,
        now: float,
        holder: str | None = None,
    ) -> TokenRecord:
        """One durable transaction: store the rotated refresh token (if any; else keep the
        old one), last_refresh_at=now, refresh_count+1, last_error=NULL, retry_count=0,
        refresh_state='idle', next_attempt_at=NULL, and release ``holder``'s lease."""
        raise NotImplementedError

    async def update_refresh_state(
        self,
        token_id: str,
        *,
        refresh_state: str,
        next_attempt_at: float | None,
        retry_count: int,
        last_error: str | None,
        now: float,
    ) -> None:
        raise NotImplementedError

    async def mark_failed(self, token_id: str, *, error: str, now: float) -> None:
        """status='failed', refresh_state='failed', last_error=error; the ciphertext is kept
        (an admin may still fix a key), the lease released."""
        raise NotImplementedError

    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        raise NotImplementedError

    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        raise NotImplementedError

    async def delete(self, token_id: str) -> bool:
        """Delete the entry (and erase its ciphertext); True when it existed."""
        raise NotImplementedError

    # --- audit --------------------------------------------------------------------------------
    async def add_audit(self, event: AuditEvent) -> None:
        """Append; keep at most ``audit_retention`` newest events per token."""
        raise NotImplementedError

    async def list_audit(self, token_id: str, *, limit: int = 100) -> list[AuditEvent]:
        """Newest first."""
        raise NotImplementedError
