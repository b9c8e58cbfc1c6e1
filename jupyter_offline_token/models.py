"""Plain data records passed between the vault, the broker and the handlers (no secrets)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# token.status
PENDING = "pending"
ACTIVE = "active"
FAILED = "failed"
REVOKED = "revoked"
EXPIRED = "expired"
TOKEN_STATUSES = (PENDING, ACTIVE, FAILED, REVOKED, EXPIRED)

# token.refresh_state
IDLE = "idle"
SCHEDULED = "scheduled"
RETRYING = "retrying"
REFRESH_FAILED = "failed"


def iso(ts: float | None) -> str | None:
    """Epoch seconds -> RFC 3339 UTC string (``None`` stays ``None``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


# The kind of a failed entry (``last_error_kind``): what must happen next. Decided from codes by
# health.failure_kind() and the broker, stored by the token store, never guessed from text.
KIND_CONFIGURATION = "configuration"  # invalid_client / unauthorized_client: the admin must act
KIND_DECRYPT = "decrypt"  # the vault cannot decrypt the entry: wrong key or tampered
KIND_GRANT_REJECTED = "grant_rejected"  # the provider refused the refresh token: consent again
KIND_CONSENT = "consent"  # the consent itself failed (denied, code refused, ...): consent again
FAILURE_KINDS = (KIND_CONFIGURATION, KIND_DECRYPT, KIND_GRANT_REJECTED, KIND_CONSENT)


@dataclass
class TokenRecord:
    """One vault entry's metadata. ``id`` is the public ``persistent_token_id``.

    The encrypted refresh token and consent secrets stay inside the vault; this record never
    carries them, so it is safe to log or serialize.
    """

    id: str
    owner: str
    issuer: str
    client_id: str
    status: str
    scopes: list[str]
    created_at: float
    updated_at: float
    label: str = ""
    task_id: str | None = None
    subject: str | None = None
    consent_expires_at: float | None = None
    return_to: str | None = None
    last_refresh_at: float | None = None
    refresh_count: int = 0
    last_error: str | None = None
    last_error_kind: str | None = None  # one of FAILURE_KINDS; None = unknown
    refresh_state: str = IDLE
    next_attempt_at: float | None = None
    retry_count: int = 0
    idle_expires_at: float | None = None
    keep_warm: bool = False
    has_secret: bool = False

    def replace(self, **changes: Any) -> TokenRecord:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ConsentSecrets:
    """What the callback needs to finish a consent; decrypted from the vault, single use."""

    code_verifier: str
    nonce: str
    redirect_uri: str

    def __repr__(self) -> str:
        return f"ConsentSecrets(redirect_uri={self.redirect_uri!r}, code_verifier=<redacted>)"


@dataclass(frozen=True)
class AuditEvent:
    ts: float
    action: str
    result: str
    token_id: str | None = None
    task_id: str | None = None
    owner: str | None = None
    detail: str = ""
    id: int | None = None


@dataclass
class Page:
    items: list[Any] = field(default_factory=list)
    total: int = 0


@dataclass(repr=False, frozen=True)
class SharedAccessToken:
    """An access token as the store keeps it for every process sharing it (issue 11: one grant per
    expiry cluster-wide). Encrypted at rest like the refresh token; ``expires_at`` is wall time."""

    access_token: str
    token_type: str
    expires_at: float
    scope: str | None

    def __repr__(self) -> str:
        return f"SharedAccessToken(token_type={self.token_type!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class RefreshStart:
    """What ``TokenStore.begin_refresh`` hands the lease holder. ``taken_over``: the lease was
    another holder's and had expired without being released (that holder died or hung mid-refresh,
    so the stored refresh token may already have been redeemed: check it before use)."""

    record: TokenRecord
    refresh_token: str | None = field(repr=False)
    taken_over: bool = False
