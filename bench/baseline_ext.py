"""A tiny jupyter_server extension for the baseline: ``/bench/constant`` answers constant JSON.

It is an authenticated ``APIHandler`` like the extension's own routes, so the difference between
the two is the work of the offline-token endpoint itself.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

CONSTANT = b'{"access_token": "constant", "token_type": "Bearer", "expires_in": 300}'


class ConstantHandler(APIHandler):
    """GET or POST: the same small JSON body every time."""

    @web.authenticated
    async def get(self) -> None:
        self._constant()

    @web.authenticated
    async def post(self) -> None:
        self._constant()

    def _constant(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(CONSTANT)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    return [{"module": "bench.baseline_ext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(
        ".*$", [(url_path_join(base_url, "bench/constant"), ConstantHandler)]
    )
