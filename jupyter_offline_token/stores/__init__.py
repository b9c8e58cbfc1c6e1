"""Stores: the abstract TokenStore / TaskStore interfaces and their implementations.

Stores never import services or handlers. A second backend is one subclass of each interface
in a package beside ``sqlite/``, plus one parameter of the contract tests' fixture.
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
