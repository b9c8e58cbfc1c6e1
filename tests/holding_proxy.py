"""A forward HTTP proxy in front of the real dev provider that can hold a refresh grant, for
killing a real server process mid-refresh (tests/test_grant_killed.py).

The server under test gets ``HTTP_PROXY`` pointing here (httpx honours it), so every request it
makes to the provider passes through. Refresh grants (POST .../token with
``grant_type=refresh_token``) follow ``mode``:

- ``pass``: forwarded and answered;
- ``hold_request``: never forwarded, never answered (the process dies before reaching the
  provider);
- ``hold_response``: forwarded (the provider answers and rotates), the answer is held and never
  delivered (the process dies between the provider's answer and its commit).

``held`` is set once a grant is being held. Everything else passes through.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
from typing import Any
from urllib.parse import parse_qs

import httpx

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "proxy-connection",
}


class HoldingProxy:
    def __init__(self) -> None:
        self.mode = "pass"
        self.held = threading.Event()
        self.refresh_grants_forwarded = 0
        self._release = threading.Event()
        self._client = httpx.Client(timeout=30.0, trust_env=False)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request line holds no secret, but keep the test output quiet

            def do_GET(self) -> None:
                proxy._handle(self, b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                proxy._handle(self, self.rfile.read(length))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        target = handler.path  # absolute-form: the proxy sees the whole URL
        grant = (
            handler.command == "POST"
            and target.split("?")[0].endswith("/token")
            and parse_qs(body.decode(errors="replace")).get("grant_type") == ["refresh_token"]
        )
        mode = self.mode if grant else "pass"
        if mode == "hold_request":
            self.held.set()
            self._release.wait()
            handler.close_connection = True
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers.pop("Host", None)
        upstream = self._client.request(handler.command, target, content=body, headers=headers)
        if grant:
            self.refresh_grants_forwarded += 1
        if mode == "hold_response":
            self.held.set()
            self._release.wait()
            handler.close_connection = True
            return
        handler.send_response(upstream.status_code)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(upstream.content)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(upstream.content)
        handler.close_connection = True

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
