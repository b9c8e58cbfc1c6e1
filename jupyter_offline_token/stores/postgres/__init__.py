"""The PostgreSQL backend (issue 11): token and task stores in one database, shared by any
number of processes. Needs the ``[postgres]`` extra (psycopg 3 and psycopg_pool); nothing else
in the package imports this one unless ``OfflineTokenApp.database_url`` is set.

Modules: ``database`` (pool, migrations, key ring, transactions), ``schema`` (the revisions and
their triggers), ``urls`` (showing a URL without its password), ``tokens``
(PostgresTokenStore), ``consent``, ``leases``, ``coordination`` (eviction log, sweep claims)
and ``audit`` (its SQL by concern), ``listener`` (LISTEN for evictions), ``rows``
(row <-> record), ``tasks`` (PostgresTaskStore), ``copy_vault`` (move a SQLite vault in,
ciphertexts unchanged).
"""

from .schema import SCHEMA_VERSION
from .tasks import PostgresTaskStore
from .tokens import PostgresTokenStore
from .urls import redact_url

__all__ = ["SCHEMA_VERSION", "PostgresTaskStore", "PostgresTokenStore", "redact_url"]
