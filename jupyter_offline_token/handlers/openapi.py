"""``GET <base_url>api/offline-token/openapi.json``: the REST API's OpenAPI description.

The document is package data (``jupyter_offline_token/openapi.json``), read once when the routes
are built; ``tests/test_openapi*.py`` keep it true (every route and method of the handler table
in it and back, every error code, real responses validated against it, schemathesis against a
running server). It is served to the authenticated Jupyter user like every other route: it holds
no secret, but jupyter_server's own ``api/spec.yaml`` is not public either, and an anonymous
caller has no use for it. It is served even when the extension is not configured.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .base import OfflineTokenHandler

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.json"


@functools.cache
def load_spec() -> dict[str, Any]:
    """The document as shipped (``servers`` says ``/``: paths are relative to base_url)."""
    spec: dict[str, Any] = json.loads(SPEC_PATH.read_text(encoding="utf-8"))
    return spec


def spec_for(base_url: str) -> dict[str, Any]:
    """The document with ``servers`` naming this server's base_url."""
    spec = copy.deepcopy(load_spec())
    spec["servers"] = [{"url": base_url, "description": "this Jupyter server's base_url"}]
    return spec


class OpenAPIHandler(OfflineTokenHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(spec_for(self.base_url))
