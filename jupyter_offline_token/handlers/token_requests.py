"""The request models of the token routes: each body and query is parsed and validated once,
here, and the broker receives typed values (it still enforces state rules and provider facts).

Every rule answers 400 with a code from ``rest_codes`` (``invalid_field``, ``invalid_scope``,
``invalid_return_to``, ``invalid_query``, ``invalid_cursor``, ...) and never stores anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .. import rest_codes
from ..access_token import DEFAULT_MIN_TTL
from ..consent import is_scope_token
from ..errors import InvalidRequest
from ..models import TOKEN_STATUSES
from ..paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Cursor
from .base import Field, in_range, max_len, parse_body

if TYPE_CHECKING:
    from .base import OfflineTokenHandler

MAX_LABEL = 200
MAX_TASK_ID = 64
MAX_SCOPES = 32
MAX_RETURN_TO = 2048
MAX_MIN_TTL = 86400
AUDIT_EVENTS = 200


def _at_most_scopes(value: Any) -> str | None:
    return None if len(value) <= MAX_SCOPES else f"has more than {MAX_SCOPES} scopes"


@dataclass(frozen=True)
class PageQuery:
    """``limit`` (default DEFAULT_PAGE_SIZE) and ``cursor`` of a list request. ``offset`` is
    refused (400): a deep offset costs what skipping every row before it costs."""

    limit: int = DEFAULT_PAGE_SIZE
    cursor: Cursor | None = None

    @classmethod
    def parse(cls, handler: OfflineTokenHandler) -> PageQuery:
        offset = handler.get_query_argument("offset", None)
        if offset is not None and offset != "0":
            raise InvalidRequest(
                "query parameter 'offset' is not supported: lists page by cursor; pass the "
                "previous page's next_cursor as 'cursor'",
                code=rest_codes.INVALID_QUERY,
            )
        limit = handler.query_int("limit", default=DEFAULT_PAGE_SIZE, low=1, high=MAX_PAGE_SIZE)
        raw = handler.get_query_argument("cursor", None)
        return cls(
            limit=limit or DEFAULT_PAGE_SIZE,
            cursor=Cursor.decode(raw) if raw is not None else None,
        )


def page_query(handler: OfflineTokenHandler) -> tuple[int, Cursor | None]:
    """The ``(limit, cursor)`` of a list request (the task list pages the same way)."""
    page = PageQuery.parse(handler)
    return page.limit, page.cursor


def check_return_to(value: str, base_url: str) -> str:
    """Only a path on this server under its base_url; anything else is an open redirect."""
    parts = urlsplit(value)
    if (
        parts.scheme
        or parts.netloc
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 for c in value)
        or not value.startswith(base_url)
    ):
        raise InvalidRequest(
            f"return_to must be a path on this server starting with {base_url!r}",
            code=rest_codes.INVALID_RETURN_TO,
        )
    return value


def _scopes(scopes: list[Any]) -> list[str]:
    """Every element a string first (``invalid_field``), then each an RFC 6749 scope-token
    (``invalid_scope``)."""
    if not all(isinstance(s, str) for s in scopes):
        raise InvalidRequest(
            "field 'scopes' must be an array of strings", code=rest_codes.INVALID_FIELD
        )
    for scope in scopes:
        if not is_scope_token(scope):
            raise InvalidRequest(
                f"invalid scope {scope!r}: scopes are single words of printable ASCII",
                code=rest_codes.INVALID_SCOPE,
            )
    return list(scopes)


@dataclass(frozen=True)
class CreateConsent:
    """``POST consents``: a pending entry's label, task, scopes and where the callback goes.

    ``scopes`` None means the configured ones; ``return_to`` is a checked path under the
    server's base_url."""

    label: str = ""
    task_id: str | None = None
    scopes: list[str] | None = None
    return_to: str | None = None
    keep_warm: bool = False

    FIELDS = {
        "label": Field(str, check=max_len(MAX_LABEL)),
        "task_id": Field(str, check=max_len(MAX_TASK_ID)),
        "scopes": Field(list, check=_at_most_scopes),
        "return_to": Field(str, check=max_len(MAX_RETURN_TO)),
        "keep_warm": Field(bool),
    }

    @classmethod
    def parse(cls, raw: bytes, *, base_url: str) -> CreateConsent:
        body = parse_body(raw, cls.FIELDS)
        return_to = body.get("return_to")
        if return_to is not None:
            return_to = check_return_to(return_to, base_url)
        scopes = body.get("scopes")
        return cls(
            label=body.get("label", ""),
            task_id=body.get("task_id"),
            scopes=_scopes(scopes) if scopes is not None else None,
            return_to=return_to,
            keep_warm=body.get("keep_warm", False),
        )


@dataclass(frozen=True)
class AccessTokenRequest:
    """``POST tokens/{id}/access-token``: the least lifetime left, and the keep-warm setting
    (None: unchanged)."""

    min_ttl: float = DEFAULT_MIN_TTL
    keep_warm: bool | None = None

    FIELDS = {
        "min_ttl": Field(int, check=in_range(0, MAX_MIN_TTL)),
        "keep_warm": Field(bool),
    }

    @classmethod
    def parse(cls, raw: bytes) -> AccessTokenRequest:
        body = parse_body(raw, cls.FIELDS)
        return cls(
            min_ttl=float(body.get("min_ttl", DEFAULT_MIN_TTL)), keep_warm=body.get("keep_warm")
        )


@dataclass(frozen=True)
class RefreshRequest:
    """``POST tokens/{id}/refresh``: no fields (an empty body, or ``{}``); the route's limits
    are the server's (min_refresh_interval), not the caller's to choose."""

    @classmethod
    def parse(cls, raw: bytes) -> RefreshRequest:
        parse_body(raw, {})
        return cls()


@dataclass(frozen=True)
class TokensQuery:
    """``GET tokens``: an optional status filter and the page."""

    status: str | None = None
    page: PageQuery = PageQuery()

    @classmethod
    def parse(cls, handler: OfflineTokenHandler) -> TokensQuery:
        status = handler.get_query_argument("status", None)
        if status is not None and status not in TOKEN_STATUSES:
            raise InvalidRequest(
                f"status must be one of {', '.join(TOKEN_STATUSES)}",
                code=rest_codes.INVALID_QUERY,
            )
        return cls(status=status, page=PageQuery.parse(handler))


@dataclass(frozen=True)
class DeleteTokenQuery:
    """``DELETE tokens/{id}``: revoke at the provider first (default true); force past a
    running task that uses the token (default false)."""

    revoke: bool = True
    force: bool = False

    @classmethod
    def parse(cls, handler: OfflineTokenHandler) -> DeleteTokenQuery:
        return cls(
            revoke=handler.query_flag("revoke", True), force=handler.query_flag("force", False)
        )


@dataclass(frozen=True)
class AuditQuery:
    """``GET tokens/{id}/audit``: no parameters; the newest AUDIT_EVENTS events."""

    limit: int = AUDIT_EVENTS

    @classmethod
    def parse(cls, handler: OfflineTokenHandler) -> AuditQuery:
        return cls()


@dataclass(frozen=True)
class HealthQuery:
    """``GET health``: the page of entries that need attention."""

    page: PageQuery = PageQuery()

    @classmethod
    def parse(cls, handler: OfflineTokenHandler) -> HealthQuery:
        return cls(page=PageQuery.parse(handler))
