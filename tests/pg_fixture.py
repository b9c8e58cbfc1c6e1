"""A real PostgreSQL server for the suite (issue 11): a pytest plugin registered by ``conftest``,
a thin wrapper around ``dev/dev_postgres.py`` (which the benchmarks use too).

One throwaway cluster per session, started on first use, ``fsync=off`` (a functional suite, not a
durability test), stopped when the session ends. Fixtures: ``pg_cluster`` (session: the running
cluster) and ``pg_url`` (a fresh, empty database per test, its URL). Without PostgreSQL binaries
they FAIL with the reason: CI installs Debian's ``postgresql`` (``.ci/run``). ``cluster()`` gives
the same cluster to code that has no fixture request (the store contract suites' Backend classes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from dev_postgres import SUPERUSER, MissingPostgres, PostgresCluster, find_binaries
from server_fixtures import TEST_KEY

__all__ = ["SUPERUSER", "PostgresCluster", "cluster", "find_binaries", "pg_cluster", "pg_url"]

_cluster: PostgresCluster | None = None


def cluster() -> PostgresCluster:
    """The session's cluster, started on first use (stopped by ``pytest_unconfigure``)."""
    global _cluster
    if _cluster is None:
        try:
            started = PostgresCluster(durable=False)
        except MissingPostgres as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            started.start()
        except BaseException:
            started.stop()
            raise
        _cluster = started
    return _cluster


def pytest_unconfigure(config: pytest.Config) -> None:
    global _cluster
    if _cluster is not None:
        _cluster.stop()
        _cluster = None


@pytest.fixture(scope="session")
def pg_cluster() -> PostgresCluster:
    """The session's real PostgreSQL server."""
    return cluster()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The URL (with password) of a fresh, empty database for this test."""
    yield pg_cluster.create_database()


@pytest.fixture
def pg_app_config(idp: Any, pg_url: str) -> dict[str, Any]:
    """OfflineTokenApp settings for the dev provider on a fresh PostgreSQL vault (``pg_url``),
    for a test class's ``offline_token_config``."""
    return {
        "issuer": idp.issuer,
        "client_id": idp.client_id,
        "client_secret": idp.client_secret,
        "database_url": pg_url,
        "encryption_keys": [TEST_KEY],
    }
