"""The suite's configuration: plugins only. Fixtures live in plugin modules, not here:
``server_fixtures`` (dev provider, configured server, API helpers), ``hub_fixture`` (a real
JupyterHub), ``pg_fixture`` (a real PostgreSQL server) and ``jupyter_offline_token.pytest_plugin``
(the fake REST API users test with)."""

from __future__ import annotations

pytest_plugins = [
    "pytest_jupyter.jupyter_server",
    "jupyter_offline_token.pytest_plugin",
    "server_fixtures",
    "hub_fixture",
    "pg_fixture",
]
