"""Finding the Jupyter server from a kernel: explicit env, JupyterHub env, runtime files."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from jupyter_offline_token.kernel import OfflineTokenClient, ServerNotFound, find_server

PARENT_PID = 424242


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No discovery variable from the real environment; an empty runtime dir."""
    for name in list(os.environ):
        if name.startswith(("JUPYTER_OFFLINE_TOKEN_", "JUPYTERHUB_")):
            monkeypatch.delenv(name)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(os, "getppid", lambda: PARENT_PID)
    return runtime


def write_server(runtime: Path, pid: int, port: int, token: str, **extra: object) -> Path:
    info = {
        "base_url": "/",
        "hostname": "localhost",
        "password": False,
        "pid": pid,
        "port": port,
        "root_dir": "/home/u",
        "secure": False,
        "sock": "",
        "token": token,
        "url": f"http://localhost:{port}/",
        "version": "2.14.0",
    }
    info.update(extra)
    path = runtime / f"jpserver-{pid}.json"
    path.write_text(json.dumps(info))
    return path


def dead_pid() -> int:
    """A pid that belonged to a process that has exited (and been reaped)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def test_explicit_env_with_task_credential(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_URL", "http://127.0.0.1:9999/base")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_TASK_ID", "task-1")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_TASK_SECRET", "s3cret")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_TOKEN_ID", "tok-1")
    write_server(clean_env, PARENT_PID, 8888, "runtime-token")  # explicit env wins
    info = find_server()
    assert info.url == "http://127.0.0.1:9999/base/"
    assert info.authorization == "OfflineTokenTask s3cret"
    assert (info.task_id, info.token_id) == ("task-1", "tok-1")
    assert info.is_task_credential
    assert "s3cret" not in repr(info)


def test_explicit_env_with_server_token(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_URL", "http://0.0.0.0:8890/")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN", "abc")
    info = find_server()
    assert info.url == "http://127.0.0.1:8890/"
    assert info.authorization == "token abc"
    assert not info.is_task_credential


def test_jupyterhub_service_url(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://0.0.0.0:41234/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hubtok")
    info = find_server()
    assert info.url == "http://127.0.0.1:41234/user/alice/"
    assert info.authorization == "token hubtok"
    assert "JUPYTERHUB_SERVICE_URL" in info.source


def test_jupyterhub_prefix_prefers_runtime_file_then_guesses(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/bob/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hubtok")
    info = find_server()
    assert info.url == "http://127.0.0.1:8888/user/bob/"
    assert info.authorization == "token hubtok"
    write_server(clean_env, PARENT_PID, 50505, "", base_url="/user/bob/")
    info = find_server()
    assert info.url == "http://localhost:50505/user/bob/"
    assert info.authorization == "token hubtok"  # the runtime file has no token


def test_runtime_file_of_the_parent_process(clean_env: Path) -> None:
    write_server(clean_env, os.getpid(), 8001, "other")  # alive but not our parent
    write_server(clean_env, PARENT_PID, 8002, "mine", base_url="/lab/")
    info = find_server()
    assert info.url == "http://localhost:8002/lab/"
    assert info.authorization == "token mine"
    assert "jpserver-424242.json" in info.source


def test_single_live_server_when_parent_unknown(clean_env: Path) -> None:
    write_server(clean_env, dead_pid(), 8001, "stale")
    write_server(clean_env, os.getpid(), 8003, "live", hostname="0.0.0.0")  # noqa: S104
    info = find_server()
    assert info.url == "http://127.0.0.1:8003/"
    assert info.authorization == "token live"


def test_server_token_overrides_runtime_token(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN", "override")
    write_server(clean_env, PARENT_PID, 8002, "mine")
    assert find_server().authorization == "token override"


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"level": "healthy", "auth": self.headers.get("Authorization")}).encode()
        self.send_response(200 if self.path == "/api/offline-token/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_unix_socket_server(clean_env: Path, tmp_path: Path) -> None:
    sock = tmp_path / "jp.sock"
    write_server(clean_env, PARENT_PID, 0, "t", sock=str(sock))
    info = find_server()
    assert info.uds == str(sock)
    assert info.url == "http://localhost/"
    server = _UnixHTTPServer(str(sock), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with OfflineTokenClient(info) as client:
            assert client.health() == {"level": "healthy", "auth": "token t"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_nothing_found_lists_every_attempt(clean_env: Path) -> None:
    with pytest.raises(ServerNotFound) as info:
        find_server()
    message = str(info.value)
    for step in (
        "JUPYTER_OFFLINE_TOKEN_URL: not set",
        "JUPYTERHUB_SERVICE_URL: not set",
        f"no jpserver-*.json in {clean_env}",
        "JUPYTERHUB_SERVICE_PREFIX: not set",
        "JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN",  # the advice
    ):
        assert step in message


def test_ambiguous_and_unreadable_runtime_files(clean_env: Path) -> None:
    write_server(clean_env, os.getpid(), 8001, "tok-aaaa")
    write_server(clean_env, 1, 8002, "tok-bbbb")  # pid 1 is always alive
    (clean_env / "jpserver-7.json").write_text("{not json")
    with pytest.raises(ServerNotFound) as info:
        find_server()
    message = str(info.value)
    assert "jpserver-7.json: unreadable" in message
    assert "2 live server(s)" in message
    assert "tok-aaaa" not in message and "tok-bbbb" not in message


def test_a_hub_service_url_wins_over_the_user_server_with_the_server_token(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a user server whose spawner env points at the JupyterHub service: the service, with
    the server's own hub API token (its server_token_scopes grant access to the service)."""
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:41234/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hubtok")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_URL", "http://hub:8000/services/offline-token")
    write_server(clean_env, PARENT_PID, 50505, "runtime-token", base_url="/user/alice/")
    info = find_server()
    assert info.url == "http://hub:8000/services/offline-token/"
    assert info.authorization == "token hubtok"
    assert not info.is_task_credential
