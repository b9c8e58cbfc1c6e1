"""Stores: the abstract TokenStore / TaskStore interfaces and their implementations.

Stores never import services or handlers. A second backend is one subclass of each interface
in a package beside ``sqlite/``, plus one parameter of the contract tests' fixture. An SQL
backend reuses ``shared/``: the checks, records and SQL text (``?`` placeholders) and the
``EntryMethods`` / ``TaskReads`` mixins, so it writes only its connections, transactions and
locking (the hooks ``_fetch``, ``_update``, ``_insert_pending``, ``_activate``,
``_record_refresh``).
"""

from .base import ERROR_KINDS, TaskStore, TokenStore
from .sqlite import SCHEMA_VERSION, SQLiteTaskStore, SQLiteTokenStore

__all__ = [
    "ERROR_KINDS",
    "SCHEMA_VERSION",
    "SQLiteTaskStore",
    "SQLiteTokenStore",
    "TaskStore",
    "TokenStore",
]
