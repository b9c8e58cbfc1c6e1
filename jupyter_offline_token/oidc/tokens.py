"""The token endpoint's answer, parsed leniently where the spec allows and strictly where a
wrong type would hide a bug (a non-string token is malformed, not absent)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import TransientProviderError
from .transport import safe_url


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


def parse_token_response(body: dict[str, Any], url: str, status_code: int) -> TokenResponse:
    """A successful token endpoint answer; no ``access_token`` is a (transient) malformed one."""
    access_token = body.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise TransientProviderError(
            f"token endpoint {safe_url(url)} answered without an access_token",
            kind="malformed",
            status_code=status_code,
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
