"""Health verdicts: every rule of token_health() and overall_level()."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from jupyter_offline_token.handlers.tokens import token_json
from jupyter_offline_token.health import (
    DECRYPT_FAILED,
    failure_kind,
    level_counts,
    overall_level,
    token_health,
)
from jupyter_offline_token.models import TokenRecord

NOW = datetime(2024, 5, 2, 12, 10, 0, tzinfo=timezone.utc).timestamp()


def health(**overrides):
    fields = {
        "status": "active",
        "refresh_state": "scheduled",
        "last_error": None,
        "next_attempt_at": None,
        "retry_count": 0,
        "failing_since": None,
        "now": NOW,
    }
    fields.update(overrides)
    return token_health(**fields)


def test_pending_waits_for_consent():
    h = health(status="pending", refresh_state="idle")
    assert h == {
        "level": "pending",
        "detail": "waiting for the user to grant consent",
        "action": "none",
        "next_attempt_at": None,
        "retry_count": 0,
    }


def test_expired_consent_asks_for_a_new_one():
    h = health(status="expired", refresh_state="idle")
    assert (h["level"], h["action"]) == ("unhealthy", "request_consent")
    assert h["detail"] == "consent was not granted in time"


def test_revoked_asks_for_consent():
    h = health(status="revoked", refresh_state="idle", next_attempt_at=NOW + 5)
    assert (h["level"], h["action"]) == ("unhealthy", "request_consent")
    assert "revoked" in h["detail"]
    assert h["next_attempt_at"] is None  # nothing will be attempted


def test_failed_by_the_provider_asks_for_consent_again():
    h = health(status="failed", refresh_state="failed", last_error="invalid_grant", retry_count=2)
    assert (h["level"], h["action"]) == ("unhealthy", "request_consent")
    assert (
        h["detail"]
        == "refresh token rejected by the provider (invalid_grant): request consent again"
    )
    assert h["retry_count"] == 2 and h["next_attempt_at"] is None


def test_failed_without_error_text():
    h = health(status="failed", refresh_state="failed")
    assert h["detail"] == "refresh token rejected by the provider: request consent again"


def test_failed_client_configuration_asks_the_admin():
    h = health(
        status="failed",
        refresh_state="failed",
        last_error="invalid_client",
        last_error_kind="configuration",
    )
    assert (h["level"], h["action"]) == ("unhealthy", "fix_configuration")
    assert h["detail"] == (
        "the provider rejected the client (invalid_client): fix the client configuration"
    )


def test_failed_decryption_points_at_the_keys():
    h = health(status="failed", refresh_state="idle", last_error_kind="decrypt")
    assert (h["level"], h["action"]) == ("unhealthy", "fix_configuration")
    assert "encryption_keys" in h["detail"]


def test_active_but_scheduler_failed_is_unhealthy():
    h = health(status="active", refresh_state="failed", last_error="invalid_grant")
    assert (h["level"], h["action"]) == ("unhealthy", "request_consent")


def test_retrying_is_degraded_with_when_and_how_often():
    since = datetime(2024, 5, 2, 12, 3, 7, tzinfo=timezone.utc).timestamp()
    h = health(
        refresh_state="retrying",
        last_error="HTTP 503",
        next_attempt_at=NOW + 40,
        retry_count=3,
        failing_since=since,
    )
    assert (h["level"], h["action"]) == ("degraded", "wait")
    assert h["detail"] == (
        "provider unreachable since 12:03:07 UTC (HTTP 503), next try in 40 s "
        "(after 3 failed attempts)"
    )
    assert h["next_attempt_at"] == "2024-05-02T12:10:40Z"
    assert h["retry_count"] == 3


def test_retrying_long_waits_and_old_failures_read_well():
    since = NOW - 3 * 86400
    h = health(
        refresh_state="retrying",
        next_attempt_at=NOW + 300,
        retry_count=1,
        failing_since=since,
    )
    assert h["detail"] == (
        "provider unreachable since 2024-04-29 12:10:00 UTC, next try in 5 min "
        "(after 1 failed attempt)"
    )


def test_retrying_with_an_overdue_or_missing_next_attempt():
    assert (
        "next try now"
        in health(refresh_state="retrying", next_attempt_at=NOW - 5, retry_count=2)["detail"]
    )
    h = health(refresh_state="retrying", retry_count=2)
    assert "next try not scheduled" in h["detail"] and h["next_attempt_at"] is None


def test_long_error_text_is_shortened():
    h = health(refresh_state="retrying", last_error="x" * 5000, retry_count=1)
    assert len(h["detail"]) < 400


@pytest.mark.parametrize("refresh_state", ["idle", "scheduled"])
def test_active_is_healthy(refresh_state):
    h = health(refresh_state=refresh_state, next_attempt_at=NOW + 240)
    assert h == {
        "level": "healthy",
        "detail": "ok",
        "action": "none",
        "next_attempt_at": "2024-05-02T12:14:00Z",
        "retry_count": 0,
    }


def test_healthy_mentions_the_last_refresh():
    assert health(last_refresh_at=NOW - 300)["detail"] == "ok, last refresh 5 min ago"
    assert health(last_refresh_at=NOW)["detail"] == "ok, last refresh just now"


def test_unknown_status_does_not_crash_a_listing():
    h = health(status="weird")
    assert h["level"] == "unhealthy" and "weird" in h["detail"]


def test_non_finite_times_are_ignored():
    h = health(refresh_state="retrying", next_attempt_at=float("nan"), failing_since=float("inf"))
    assert h["next_attempt_at"] is None and h["level"] == "degraded"


def test_overall_level_is_the_worst():
    assert overall_level([]) == "healthy"
    assert overall_level(["healthy", "healthy"]) == "healthy"
    assert overall_level(["healthy", "pending"]) == "pending"
    assert overall_level(["pending", "degraded", "healthy"]) == "degraded"
    assert overall_level(iter(["degraded", "unhealthy", "pending"])) == "unhealthy"


def test_overall_level_rejects_unknown_levels():
    with pytest.raises(ValueError, match="bogus"):
        overall_level(["healthy", "bogus"])


def test_level_counts_lists_every_level():
    assert level_counts(["healthy", "degraded", "healthy"]) == {
        "healthy": 2,
        "pending": 0,
        "degraded": 1,
        "unhealthy": 0,
    }
    with pytest.raises(ValueError):
        level_counts(["nope"])


def test_failed_detail_is_composed_once_around_the_stored_code():
    """The broker stores the provider's code; health writes the sentence, and tells a client
    problem from a dead grant by that code (not by searching a message)."""
    grant = health(status="failed", refresh_state="failed", last_error="invalid_grant")
    assert grant["detail"] == (
        "refresh token rejected by the provider (invalid_grant): request consent again"
    )
    client = health(status="failed", refresh_state="failed", last_error="unauthorized_client")
    assert (client["action"], client["detail"]) == (
        "fix_configuration",
        "the provider rejected the client (unauthorized_client): fix the client configuration",
    )
    decrypt = health(
        status="failed", refresh_state="failed", last_error="cannot decrypt: wrong key or tampered"
    )
    assert decrypt["action"] == "fix_configuration" and "encryption_keys" in decrypt["detail"]


def test_failure_kind_is_decided_from_the_stored_code_alone():
    assert failure_kind(None) is None and failure_kind("") is None
    assert failure_kind(DECRYPT_FAILED) == "decrypt"
    for code in ("invalid_client", "unauthorized_client", "unsupported_grant_type"):
        assert failure_kind(code) == "configuration"
    assert failure_kind("invalid_grant") == "grant_rejected"
    # A sentence is never searched: text that mentions configuration is not a configuration code.
    assert failure_kind("please fix the client configuration") == "grant_rejected"


def test_token_json_reports_a_refused_client_as_a_configuration_problem():
    def record(last_error):
        return TokenRecord(
            id="00000000-0000-4000-8000-000000000001",
            owner="u",
            label="",
            status="failed",
            issuer="https://idp",
            client_id="c",
            scopes=["openid"],
            created_at=NOW,
            updated_at=NOW,
            last_error=last_error,
            refresh_state="failed",
        )

    assert token_json(record("invalid_client"), now=NOW)["health"]["action"] == "fix_configuration"
    assert token_json(record("invalid_grant"), now=NOW)["health"]["action"] == "request_consent"
