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


def delete_stale(
    conn: sqlite3.Connection,
    table: str,
    statuses: Sequence[str],
    before: float,
    limit: int,
    *,
    also: Sequence[str] = (),
) -> list[str]:
    """In one transaction: delete up to ``limit`` rows of ``table`` whose status is one of
    ``statuses`` and unchanged since ``before``, and their rows in each ``also`` table (a
    ``<table>_id`` column names them there, e.g. ``audit.token_id``); return their ids.
    ``table`` and ``also`` are this package's own names, never input."""
    owner_column = f"{table.rstrip('s')}_id"
    with transaction(conn):
        ids = [
            row[0]
            for row in conn.execute(
                f"SELECT id FROM {table} WHERE status IN ({marks(statuses)}) "  # noqa: S608
                "AND updated_at < ? LIMIT ?",
                (*statuses, before, limit),
            )
        ]
        conn.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids])  # noqa: S608
        for other in also:
            conn.executemany(
                f"DELETE FROM {other} WHERE {owner_column} = ?",  # noqa: S608
                [(i,) for i in ids],
            )
    return ids
