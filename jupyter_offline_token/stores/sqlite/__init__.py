"""The SQLite backend: token and task stores in one vault file (WAL, one worker thread).

Modules: ``database`` (connection, thread, files, migrations), ``schema`` (the revisions),
``keys`` (which key ring, checked at open), ``tokens`` (SQLiteTokenStore), ``consent``,
``leases`` and ``audit`` (its SQL by concern), ``rows`` (row <-> record), ``tasks``
(SQLiteTaskStore and the tasks table's DDL), ``sql`` (transactions).
"""

from .schema import SCHEMA_VERSION
from .tasks import SQLiteTaskStore
from .tokens import SQLiteTokenStore

__all__ = ["SCHEMA_VERSION", "SQLiteTaskStore", "SQLiteTokenStore"]
