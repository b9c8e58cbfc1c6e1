"""Keyset pagination shared by the token and task lists: an opaque cursor, newest first.

A cursor names the position after the last row of a page: its ``(created_at, rowid)``. The next
page is ``WHERE (created_at, rowid) < cursor ORDER BY created_at DESC, rowid DESC``, an index
range scan, so a deep page costs what the first one does, and rows inserted between two page
reads (they are newer) never shift the pages that follow.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import rest_codes
from .errors import InvalidRequest

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_MAX_CURSOR_CHARS = 200


@dataclass(frozen=True)
class Cursor:
    created_at: float
    rowid: int

    def encode(self) -> str:
        raw = json.dumps([self.created_at, self.rowid], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor in ``text``; InvalidRequest (400 invalid_cursor) for anything else."""
        bad = InvalidRequest(
            "query parameter 'cursor' is not a cursor from a previous page's next_cursor",
            code=rest_codes.INVALID_CURSOR,
        )
        if not isinstance(text, str) or not text or len(text) > _MAX_CURSOR_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            created_at, rowid = json.loads(raw)
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
            raise bad from None
        if (
            isinstance(created_at, bool)
            or not isinstance(created_at, (int, float))
            or not math.isfinite(created_at)
            or isinstance(rowid, bool)
            or not isinstance(rowid, int)
            or not -(2**63) <= rowid < 2**63
        ):
            raise bad
        return cls(float(created_at), rowid)


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, newest first; ``next_cursor`` is None on the last page."""

    items: list[T]
    next_cursor: str | None


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}")
    return limit
