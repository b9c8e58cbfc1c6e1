"""jupyter_offline_token.pytest_plugin: the fixtures users enable to test notebook code."""

from __future__ import annotations

from jupyter_offline_token.kernel import request_offline_token
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI


def test_fixtures_give_a_fake_and_a_client_wired_to_it(offline_token_api, offline_token_client):
    assert isinstance(offline_token_api, FakeOfflineTokenAPI)
    tok = request_offline_token(label="t", client=offline_token_client, display=False)
    offline_token_api.grant(tok.id)
    assert tok.access_token() in offline_token_api.valid_access_tokens
