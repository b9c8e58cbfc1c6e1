"""The checks of each setting (traitlets ``@validate``), kept apart from the declarations in
:mod:`.settings`: every message names its setting; a secret's value is never echoed."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from traitlets import validate
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import TraitError

from .secret_files import is_32_byte_key


class SettingChecks(LoggingConfigurable):
    """The validators of :class:`~.settings.OfflineTokenSettings`' traits (declared there)."""

    @validate("issuer")
    def _check_issuer(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise TraitError(
                f"OfflineTokenApp.issuer must be an http(s) URL, got {value!r} "
                "(e.g. https://keycloak.example.org/realms/lab)"
            )
        if parts.query or parts.fragment:
            raise TraitError("OfflineTokenApp.issuer must not have a query or fragment")
        if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
            self.log.warning(
                "OfflineTokenApp.issuer %s uses plain http: tokens would cross the network "
                "unencrypted; use https outside local development",
                value,
            )
        return value.rstrip("/")

    @validate("redirect_uri")
    def _check_redirect_uri(self, proposal: Any) -> str:
        value = str(proposal["value"]).strip()
        if value and urlsplit(value).scheme not in ("http", "https"):
            raise TraitError(f"OfflineTokenApp.redirect_uri must be an http(s) URL, got {value!r}")
        return value

    @validate("encryption_keys")
    def _check_keys(self, proposal: Any) -> list[str]:
        keys = [str(k).strip() for k in proposal["value"] if str(k).strip()]
        for position, key in enumerate(keys, start=1):
            if not is_32_byte_key(key):
                raise TraitError(
                    "OfflineTokenApp.encryption_keys (or JUPYTER_OFFLINE_TOKEN_KEYS) "
                    f"key #{position} is not a base64url-encoded 32-byte key; generate one with "
                    "`jupyter-offline-token generate-key`"
                )
        return keys

    @validate("database_url")
    def _check_database_url(self, proposal: Any) -> str:
        try:
            return check_database_url(str(proposal["value"]))
        except ValueError as exc:
            raise TraitError(f"OfflineTokenApp.database_url: {exc}") from None

    @validate("refresh_margin")
    def _check_margin(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0.1 <= value <= 0.95:
            raise TraitError(f"OfflineTokenApp.refresh_margin must be in [0.1, 0.95], got {value}")
        return value

    @validate("backoff_jitter")
    def _check_jitter(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not 0 <= value < 1:
            raise TraitError(f"OfflineTokenApp.backoff_jitter must be in [0, 1), got {value}")
        return value

    @validate("task_cancel_grace", "task_report_grace")
    def _check_grace(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value < 0:
            raise TraitError(f"OfflineTokenApp.{proposal['trait'].name} must be >= 0, got {value}")
        return value

    @validate("history_retention")
    def _check_retention(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not value >= 0 or value == float("inf"):
            raise TraitError(
                f"OfflineTokenApp.history_retention must be a number of seconds >= 0 (0 keeps "
                f"history forever), got {value}"
            )
        return value

    @validate(
        "refresh_concurrency",
        "audit_retention",
        "max_running_tasks",
        "max_pending_consents",
        "database_pool_size",
    )
    def _check_positive_int(self, proposal: Any) -> int:
        value = int(proposal["value"])
        if value < 1:
            raise TraitError(f"OfflineTokenApp.{proposal['trait'].name} must be >= 1, got {value}")
        return value

    @validate(
        "consent_timeout",
        "http_timeout",
        "keepalive_interval",
        "min_refresh_interval",
        "backoff_base",
        "backoff_max",
        "wake_threshold",
        "sweep_interval",
        "activity_interval",
        "eviction_poll_interval",
    )
    def _check_positive(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if value <= 0:
            raise TraitError(f"OfflineTokenApp.{proposal['trait'].name} must be > 0, got {value}")
        return value


def check_database_url(value: str) -> str:
    """A PostgreSQL URL (``postgresql://user:password@host:port/db``), stripped, or "".
    ValueError (never echoing the value: it may hold a password) otherwise."""
    value = value.strip()
    if not value:
        return ""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("not a URL (value not shown: it may hold a password)") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(
            "must be a postgresql:// URL, e.g. postgresql://jupyter@db.example.org:5432/"
            "offline_token (value not shown: it may hold a password)"
        )
    if not parts.path.strip("/"):
        raise ValueError("must name the database, e.g. postgresql://user@host:5432/offline_token")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
