"""Small SQLite helpers shared by the SQLite stores: transactions and migration scripts."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence

# A migration is an SQL script or a function given the connection; each runs in its own
# transaction together with the bump of ``PRAGMA user_version``. Functions must not commit.
Migration = str | Callable[[sqlite3.Connection], None]


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` (take the write lock first, so read-modify-write is atomic across
    processes) ... ``COMMIT``; ``ROLLBACK`` on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def split_statements(script: str) -> Iterator[str]:
    """Cut an SQL script into complete statements (``executescript`` would commit early)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError("incomplete SQL statement at the end of a migration script")


def marks(values: Sequence[object]) -> str:
    """``?, ?, ...``: one placeholder per value, for ``IN (...)``."""
    return ", ".join("?" for _ in values)
