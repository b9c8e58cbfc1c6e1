"""The suite's configuration: plugins only. Fixtures live in plugin modules, not here:
``server_fixtures`` (dev provider, configured server, API helpers), ``hub_fixture`` (a real
JupyterHub) and ``jupyter_offline_token.pytest_plugin`` (the fake REST API users test with)."""

from __future__ import annotations

from typing import Any

pytest_plugins = [
    "pytest_jupyter.jupyter_server",
    "jupyter_offline_token.pytest_plugin",
    "server_fixtures",
    "hub_fixture",
]


def __getattr__(name: str) -> Any:
    """Transitional: test modules not yet moved to ``from server_fixtures import ...``
    (test_tasks*, test_refresh_*, test_faults, test_flow, test_consent_errors: edited in
    parallel) still import helpers from conftest. Resolved lazily, after pytest has registered
    (and assertion-rewritten) the plugin. Delete once nothing imports from conftest."""
    import server_fixtures

    return getattr(server_fixtures, name)
