"""Pytest fixtures for testing notebook-side code that uses this package, without a server.

Enable with ``pytest_plugins = ["jupyter_offline_token.pytest_plugin"]`` in a ``conftest.py``.
``offline_token_api`` is a :class:`~jupyter_offline_token.kernel.testing.FakeOfflineTokenAPI`
(answers as the real server does: the same error codes, checked against the same scenarios in
this package's own suite); ``offline_token_client`` an ``OfflineTokenClient`` wired to it.
Only the kernel side is imported: no server, tornado or vault.

Example::

    def test_my_analysis(offline_token_api, offline_token_client):
        tok = request_offline_token(label="t", client=offline_token_client, display=False)
        offline_token_api.grant(tok.id)
        assert tok.access_token()
"""

from __future__ import annotations

import pytest

from .kernel.client import OfflineTokenClient
from .kernel.testing import FakeOfflineTokenAPI


@pytest.fixture
def offline_token_api() -> FakeOfflineTokenAPI:
    """A fresh in-memory fake of the REST API."""
    return FakeOfflineTokenAPI()


@pytest.fixture
def offline_token_client(offline_token_api: FakeOfflineTokenAPI) -> OfflineTokenClient:
    """A kernel-side client authenticated as the user against ``offline_token_api``."""
    return offline_token_api.client()
