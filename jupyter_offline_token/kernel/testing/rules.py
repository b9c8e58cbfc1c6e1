"""The server's input rules as the fake applies them: body fields, query parameters, paths,
and error answers with the codes of ``rest_codes``. Kept equal to the server's by the scenario
list in ``tests/rest_scenarios.py``, which runs against both."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from ... import rest_codes as rc

RESOURCE_URL = "http://resource.test/userinfo"
TASK_STATUSES = ("pending", "running", "completed", "failed", "cancelled", "interrupted")
TASK_TERMINAL = ("completed", "failed", "cancelled", "interrupted")
TASK_KINDS = ("kernel", "command", "notebook", "demo")
TOKEN_STATUSES = ("pending", "active", "failed", "revoked", "expired")
HEALTH_LEVELS = ("healthy", "pending", "degraded", "unhealthy")
MAX_BODY_BYTES = 64 * 1024


def now_iso() -> str:
    return datetime.now(tz=timezone.utc).isoformat().replace("+00:00", "Z")


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message}, headers=headers)


class Reject(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


Check = Callable[[Any], "str | None"]


class Field:
    """One accepted body field, validated as the server's handlers do (same codes)."""

    def __init__(
        self, types: type | tuple[type, ...], *, required: bool = False, check: Check | None = None
    ) -> None:
        self.types = types if isinstance(types, tuple) else (types,)
        self.required = required
        self.check = check


def max_len(limit: int) -> Check:
    return lambda v: f"is longer than {limit} characters" if len(v) > limit else None


def in_range(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low:g} and {high:g}"


def one_of(values: tuple[str, ...]) -> Check:
    return lambda v: None if v in values else f"must be one of {', '.join(values)}"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_body(
    request: httpx.Request, fields: dict[str, Field], *, allow_empty: bool = True
) -> dict[str, Any]:
    """The request's JSON object body, checked like the server checks it: 400 with
    ``invalid_json``, ``unknown_field``, ``missing_field``, ``invalid_field``."""

    def bad(code: str, message: str) -> Reject:
        return Reject(error_response(400, code, message))

    raw = request.content
    if len(raw) > MAX_BODY_BYTES:
        raise bad(rc.BODY_TOO_LARGE, f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if not allow_empty:
            raise bad(rc.INVALID_JSON, "a JSON object body is required")
        body: Any = {}
    else:
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad(rc.INVALID_JSON, "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad(rc.INVALID_JSON, "request body must be a JSON object")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise bad(rc.UNKNOWN_FIELD, f"unknown field(s): {', '.join(unknown)}")
    for name, spec in fields.items():
        value = body.get(name)
        if value is None:
            if spec.required:
                raise bad(rc.MISSING_FIELD, f"field {name!r} is required")
            body.pop(name, None)
            continue
        # bool is an int in Python; never accept it where a number is asked for.
        if not isinstance(value, spec.types) or (
            isinstance(value, bool) and bool not in spec.types
        ):
            raise bad(rc.INVALID_FIELD, f"field {name!r} has the wrong type")
        problem = spec.check(value) if spec.check is not None else None
        if problem:
            raise bad(rc.INVALID_FIELD, f"field {name!r} {problem}")
    return body


SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]{1,128}$")


def is_local_path(value: str, base_path: str) -> bool:
    """``return_to`` must be a path on this server under its base_url (no open redirect)."""
    parts = urlsplit(value)
    return not (
        parts.scheme
        or parts.netloc
        or not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or any(ord(c) < 0x21 for c in value)
        or not value.startswith(base_path)
    )


def query_flag(request: httpx.Request, name: str, default: bool) -> bool:
    raw = request.url.params.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise Reject(
        error_response(400, rc.INVALID_QUERY, f"query parameter {name!r} must be true or false")
    )


def status_filter(request: httpx.Request, allowed: tuple[str, ...]) -> str | None:
    status: str | None = request.url.params.get("status")
    if status is not None and status not in allowed:
        raise Reject(
            error_response(400, rc.INVALID_QUERY, f"status must be one of {', '.join(allowed)}")
        )
    return status


CONSENT_FIELDS = {
    "label": Field(str, check=max_len(200)),
    "task_id": Field(str, check=max_len(64)),
    "scopes": Field(list, check=lambda v: None if len(v) <= 32 else "has more than 32 scopes"),
    "return_to": Field(str, check=max_len(2048)),
    "keep_warm": Field(bool),
}
ACCESS_FIELDS = {"min_ttl": Field(int, check=in_range(0, 86400)), "keep_warm": Field(bool)}
TASK_FIELDS = {
    "name": Field(str, required=True, check=max_len(200)),
    "description": Field(str, check=max_len(2000)),
    "kind": Field(str, check=one_of(TASK_KINDS)),
    "command": Field(list),
    "notebook": Field(str, check=max_len(4096)),
    "persistent_token_id": Field(str, check=max_len(64)),
    "parameters": Field(dict),
}
LINK_FIELDS = {"persistent_token_id": Field(str, required=True, check=max_len(64))}
PATCH_FIELDS = {
    "progress": Field((int, float), check=in_range(0, 100)),
    "message": Field(str, check=max_len(2000)),
    "status": Field(str, check=one_of(("running", "completed", "failed"))),
    "result": Field(str, check=max_len(16000)),
    "error": Field(str, check=max_len(16000)),
}


def keyset_page(
    request: httpx.Request,
    items: list[dict[str, Any]],
    key: str,
    *,
    order: dict[str, int],
    page_size: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """Keyset paging as on the server: newest first (highest ``order[item[key]]``), ``limit``
    (default ``page_size``, at most 1000) after ``cursor``; ``offset`` other than 0 is a 400."""
    params = request.url.params
    if params.get("offset", "0") != "0":
        raise Reject(
            error_response(400, rc.INVALID_QUERY, "query parameter 'offset' is not supported")
        )
    raw_limit = params.get("limit")
    limit = page_size
    if raw_limit is not None:
        limit = int(raw_limit) if raw_limit.isdigit() else 0
        if not 1 <= limit <= 1000:
            raise Reject(
                error_response(
                    400,
                    rc.INVALID_QUERY,
                    "query parameter 'limit' must be an integer from 1 to 1000",
                )
            )
    ordered = sorted(items, key=lambda item: order.get(item[key], 0), reverse=True)
    cursor = params.get("cursor")
    if cursor is not None:
        if not cursor.startswith("f") or not cursor[1:].isdigit():
            raise Reject(error_response(400, rc.INVALID_CURSOR, "not a cursor from next_cursor"))
        below = int(cursor[1:])
        ordered = [i for i in ordered if order.get(i[key], 0) < below]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, f"f{order.get(page[-1][key], 0)}" if more else None
