"""idle_expires_at follows refresh_expires_in; Keycloak's 0 for offline tokens means none."""

from __future__ import annotations

from jupyter_offline_token.access_token import idle_expiry
from jupyter_offline_token.oidc import TokenResponse


def response(refresh_expires_in: int | None) -> TokenResponse:
    return TokenResponse("a", "Bearer", 300, "r", refresh_expires_in, "openid", None)


def test_positive_refresh_expires_in_setsidle_expiry():
    assert idle_expiry(response(2_592_000), now=1000.0) == 1000.0 + 2_592_000


def test_zero_or_missing_means_no_fixed_expiry():
    assert idle_expiry(response(0), now=1000.0) is None
    assert idle_expiry(response(None), now=1000.0) is None
