"""An in-memory fake of the extension's REST API, for testing kernel-side code without a server.

``FakeOfflineTokenAPI`` answers like the real server does per the REST contract (status codes,
``{"error", "message"}`` bodies with the codes of ``rest_codes``, bodies and queries checked by
the server's rules, the access-token cache that serves a token while it has at least ``min_ttl``
seconds left, task credentials limited to their own task) through an ``httpx.MockTransport``.
The package's suite runs one scenario list against this fake and the real server
(``tests/rest_scenarios.py``), so the two answer alike.

It also plays the provider's two user-facing parts: a protected resource at
``http://resource.test/userinfo`` that accepts only access tokens the fake minted and has not
invalidated, and the consent URL (a GET on it grants the consent, as a user clicking "allow"
would). Every request is recorded for assertions.

Example::

    api = FakeOfflineTokenAPI()
    client = api.client()
    tok = request_offline_token(label="t", client=client, display=False)
    api.grant(tok.id)
    assert tok.wait().status == "active"
"""

from __future__ import annotations

from .fake import RESOURCE_URL, FakeOfflineTokenAPI

__all__ = ["RESOURCE_URL", "FakeOfflineTokenAPI"]
