"""The one mapping from a domain error's kind to an HTTP status (JSON API and callback page)."""

from __future__ import annotations

from ..errors import ErrorKind, OfflineTokenError

STATUS_BY_KIND: dict[ErrorKind, int] = {
    ErrorKind.INVALID: 400,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.GONE: 410,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.PROVIDER_REJECTED: 502,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.NOT_CONFIGURED: 503,
}


def http_status(error: OfflineTokenError) -> int:
    """The HTTP status that answers ``error``."""
    return STATUS_BY_KIND[error.kind]
