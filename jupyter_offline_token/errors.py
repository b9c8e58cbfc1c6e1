"""Errors shared by every layer.

Each carries a stable machine ``code``, a ``kind`` (what went wrong in general: bad input, an
unknown id, a wrong state, a provider fault, ...) and a human ``message`` that is safe to show:
no error in this package ever holds a token, code, verifier, key or client secret in its text or
repr. HTTP statuses are not here: the handler layer maps kinds to them
(``handlers/errors.py``), in one place.
"""

from __future__ import annotations

import enum
from typing import Any

from . import rest_codes


class ErrorKind(enum.Enum):
    """What a domain error means, independent of the protocol that reports it."""

    INVALID = "invalid"  # the caller's input is wrong
    FORBIDDEN = "forbidden"  # the caller may not do this
    NOT_FOUND = "not_found"  # no such entry (or not the caller's)
    CONFLICT = "conflict"  # the entry's state forbids the operation
    GONE = "gone"  # it existed but is over (an expired consent)
    RATE_LIMITED = "rate_limited"  # too many at once; retry_after says when
    PROVIDER_REJECTED = "provider_rejected"  # the provider refused, not the caller's fault
    UNAVAILABLE = "unavailable"  # transient: the provider or a part is down; retry later
    NOT_CONFIGURED = "not_configured"  # the server's configuration must be fixed


class OfflineTokenError(Exception):
    """A domain error that the API maps to ``{"error": code, "message": text}``."""

    kind: ErrorKind = ErrorKind.INVALID
    code: str = rest_codes.BAD_REQUEST

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        kind: ErrorKind | None = None,
        retry_after: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if kind is not None:
            self.kind = kind
        self.retry_after = retry_after
        self.extra = dict(extra or {})

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        body.update(self.extra)
        return body

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class InvalidRequest(OfflineTokenError):
    kind = ErrorKind.INVALID
    code = rest_codes.INVALID_REQUEST


class Forbidden(OfflineTokenError):
    kind = ErrorKind.FORBIDDEN
    code = rest_codes.FORBIDDEN


class NotFound(OfflineTokenError):
    kind = ErrorKind.NOT_FOUND
    code = rest_codes.NOT_FOUND


class Conflict(OfflineTokenError):
    """The entry exists but is in a state that forbids the operation."""

    kind = ErrorKind.CONFLICT
    code = rest_codes.CONFLICT


class EntryGone(NotFound):
    """A token store entry does not exist, or no longer does: another coroutine or
    process deleted it. A NotFound (404) where it reaches a handler."""

    def __init__(self, entry_id: str, what: str = "vault entry") -> None:
        super().__init__(f"no {what} {entry_id!r}")
        self.entry_id = entry_id


class TooManyPendingConsents(OfflineTokenError):
    """The owner already has ``max_pending_consents`` consents waiting to be granted;
    ``retry_after`` says when the oldest of them expires."""

    kind = ErrorKind.RATE_LIMITED
    code = rest_codes.TOO_MANY_PENDING_CONSENTS


class RefreshTooSoon(OfflineTokenError):
    """A forced refresh asked within ``min_refresh_interval`` of the token's last refresh;
    ``retry_after`` says when one is allowed again."""

    kind = ErrorKind.RATE_LIMITED
    code = rest_codes.REFRESH_TOO_SOON


class NotConfigured(OfflineTokenError):
    kind = ErrorKind.NOT_CONFIGURED
    code = rest_codes.NOT_CONFIGURED


class ProviderUnavailable(OfflineTokenError):
    """A transient fault at the provider: try again later (``retry_after``)."""

    kind = ErrorKind.UNAVAILABLE
    code = rest_codes.PROVIDER_UNAVAILABLE


class ProviderRejected(OfflineTokenError):
    """The provider answered with an error that is not the caller's fault."""

    kind = ErrorKind.PROVIDER_REJECTED
    code = rest_codes.PROVIDER_ERROR


# --- adapter-level errors (raised by oidc/ and vault/, mapped by the broker) ---------------


class ProviderError(Exception):
    """Base for failures talking to the OpenID provider. Messages never include secrets."""


class TransientProviderError(ProviderError):
    """Network error, timeout, 5xx, 429 or a malformed answer: worth retrying later.

    ``kind`` is one of ``network``, ``timeout``, ``server_error``, ``rate_limited``, ``malformed``.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code
        self.retry_after = retry_after


# OAuth error codes that mean the client is misconfigured, not that the user's grant is dead.
CONFIGURATION_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "unsupported_grant_type"}
)


class PermanentProviderError(ProviderError):
    """The provider refused for good (``invalid_grant``, ``invalid_client``, ...).

    ``error`` is the OAuth error code; ``description`` the provider's (short) description.
    """

    def __init__(self, error: str, description: str = "", *, status_code: int | None = None):
        text = f"{error}: {description}" if description else error
        super().__init__(text)
        self.error = error
        self.description = description
        self.status_code = status_code

    @property
    def is_configuration_error(self) -> bool:
        return self.error in CONFIGURATION_ERRORS


class IdTokenInvalid(PermanentProviderError):
    """The id_token failed validation (signature, iss, aud, exp or nonce)."""

    def __init__(self, description: str) -> None:
        super().__init__("invalid_id_token", description)


class VaultError(Exception):
    """The vault cannot be opened or used (bad key configuration, newer schema, ...)."""


class DecryptionError(VaultError):
    """A ciphertext failed authentication: wrong key or tampered data."""
