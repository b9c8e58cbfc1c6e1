"""Find the Jupyter server (URL and credential) that this kernel or task process should talk to.

Order, first match wins:

1. Explicit environment: ``JUPYTER_OFFLINE_TOKEN_URL`` with ``JUPYTER_OFFLINE_TOKEN_TASK_SECRET``
   (task processes: ``Authorization: OfflineTokenTask <secret>``) or
   ``JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN`` (``Authorization: token <token>``).
2. JupyterHub single-user environment: ``JUPYTERHUB_SERVICE_URL`` (bind URL of the single-user
   server; a wildcard host such as ``0.0.0.0`` becomes ``127.0.0.1``) with
   ``JUPYTERHUB_API_TOKEN``.
3. Server runtime files ``jpserver-<pid>.json`` in the Jupyter runtime dir: the one whose ``pid``
   is this process's parent (the server that started the kernel); otherwise, when exactly one
   listed server is alive, that one.
4. ``JUPYTERHUB_SERVICE_PREFIX`` alone (JupyterHub before 2.0 did not set the service URL):
   ``http://127.0.0.1:8888`` + the prefix, 8888 being JupyterHub's default single-user port.

``JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN`` overrides the credential of whatever server is found; with
no credential from any source the requests go without ``Authorization`` (a server with
authentication disabled). :class:`ServerNotFound` lists every step that was tried.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .errors import ServerNotFound

ENV_URL = "JUPYTER_OFFLINE_TOKEN_URL"
ENV_TASK_ID = "JUPYTER_OFFLINE_TOKEN_TASK_ID"
ENV_TASK_SECRET = "JUPYTER_OFFLINE_TOKEN_TASK_SECRET"  # noqa: S105 - a variable name
ENV_TOKEN_ID = "JUPYTER_OFFLINE_TOKEN_TOKEN_ID"  # noqa: S105 - a variable name
ENV_SERVER_TOKEN = "JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN"  # noqa: S105 - a variable name
HUB_DEFAULT_HOST = "http://127.0.0.1:8888"
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}  # noqa: S104 - recognised, never bound


@dataclass(frozen=True)
class ServerInfo:
    """Where the server is and how to authenticate to it; the credential never shows in repr.

    ``url`` is the server URL including its base_url and ending in ``/``. ``uds`` is a Unix
    socket path when the server listens on one. ``task_id``/``token_id`` are set inside a task
    process.

    Example::

        info = ServerInfo("http://127.0.0.1:8888/", authorization="token abc")
    """

    url: str
    authorization: str | None = field(default=None, repr=False)
    source: str = ""
    uds: str | None = None
    task_id: str | None = None
    token_id: str | None = None

    def __post_init__(self) -> None:
        if not self.url.endswith("/"):
            object.__setattr__(self, "url", self.url + "/")

    @property
    def is_task_credential(self) -> bool:
        """True when authenticating with a task's scoped credential."""
        return bool(self.authorization and self.authorization.startswith("OfflineTokenTask "))


def _token_header(token: str | None) -> str | None:
    return f"token {token}" if token else None


def _connectable(url: str) -> str:
    """Replace a wildcard bind host by loopback and make sure the path ends in ``/``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = parts.netloc
    if host in _WILDCARD_HOSTS or host == "::":
        netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
    path = parts.path or "/"
    if not path.endswith("/"):
        path += "/"
    return urlunsplit((parts.scheme or "http", netloc, path, "", ""))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):
        return False
    return True


def runtime_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The Jupyter runtime dir (jupyter_core when importable, else ``JUPYTER_RUNTIME_DIR``).

    Example::

        print(runtime_dir())
    """
    env = os.environ if environ is None else environ
    if env.get("JUPYTER_RUNTIME_DIR"):
        return Path(env["JUPYTER_RUNTIME_DIR"])
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return None
    return Path(jupyter_runtime_dir())


@dataclass(frozen=True)
class _RuntimeServer:
    path: Path
    pid: int | None
    url: str
    token: str
    uds: str | None


def _read_runtime_file(path: Path) -> _RuntimeServer:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    pid = data.get("pid")
    base_url = str(data.get("base_url") or "/")
    if not base_url.startswith("/"):
        base_url = "/" + base_url
    sock = data.get("sock") or None
    if sock:
        url = "http://localhost" + base_url
    elif data.get("port"):
        host = str(data.get("hostname") or "localhost")
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        scheme = "https" if data.get("secure") else "http"
        url = f"{scheme}://{host}:{int(data['port'])}{base_url}"
    elif data.get("url"):
        url = str(data["url"])
    else:
        raise ValueError("has neither port, sock nor url")
    return _RuntimeServer(
        path=path,
        pid=pid if isinstance(pid, int) else None,
        url=_connectable(url),
        token=str(data.get("token") or ""),
        uds=str(sock) if sock else None,
    )


def _from_runtime_files(
    directory: Path | None,
    tried: list[str],
    getppid: Callable[[], int],
    pid_alive: Callable[[int], bool],
) -> _RuntimeServer | None:
    if directory is None:
        tried.append("runtime files: no Jupyter runtime dir (jupyter_core missing)")
        return None
    files = sorted(directory.glob("jpserver-*.json")) if directory.is_dir() else []
    if not files:
        tried.append(f"runtime files: no jpserver-*.json in {directory}")
        return None
    servers: list[_RuntimeServer] = []
    for path in files:
        try:
            servers.append(_read_runtime_file(path))
        except (OSError, ValueError, TypeError) as exc:
            tried.append(f"runtime file {path.name}: unreadable ({exc})")
    parent = getppid()
    for server in servers:
        if server.pid == parent:
            return server
    alive = [s for s in servers if s.pid is not None and pid_alive(s.pid)]
    if len(alive) == 1:
        return alive[0]
    names = ", ".join(s.path.name for s in alive) or "none"
    tried.append(
        f"runtime files in {directory}: none belongs to the parent process (pid {parent}); "
        f"{len(alive)} live server(s) ({names}), so none could be chosen"
    )
    return None


def find_server(
    environ: Mapping[str, str] | None = None,
    *,
    getppid: Callable[[], int] | None = None,
    pid_alive: Callable[[int], bool] = _pid_alive,
) -> ServerInfo:
    """Locate the Jupyter server for this process, or raise :class:`ServerNotFound`.

    ``environ`` defaults to ``os.environ``; ``getppid`` to ``os.getppid`` (both injectable for
    tests and for callers that know better).

    Example::

        info = find_server()
        print(info.url, info.source)
    """
    env = os.environ if environ is None else environ
    tried: list[str] = []
    override = _token_header(env.get(ENV_SERVER_TOKEN) or None)
    authorization = override or _token_header(env.get("JUPYTERHUB_API_TOKEN") or None)
    info = _from_url_variable(env, authorization)
    if info is not None:
        return info
    tried.append(f"{ENV_URL}: not set")
    info = _from_hub_service_url(env, authorization)
    if info is not None:
        return info
    tried.append("JUPYTERHUB_SERVICE_URL: not set")
    server = _from_runtime_files(runtime_dir(env), tried, getppid or os.getppid, pid_alive)
    if server is not None:
        return ServerInfo(
            server.url,
            authorization=override or _token_header(server.token) or authorization,
            source=f"runtime file {server.path}",
            uds=server.uds,
        )
    info = _from_hub_prefix(env, authorization)
    if info is not None:
        return info
    tried.append("JUPYTERHUB_SERVICE_PREFIX: not set")
    raise ServerNotFound(tried)


def _from_url_variable(env: Mapping[str, str], authorization: str | None) -> ServerInfo | None:
    """``JUPYTER_OFFLINE_TOKEN_URL`` (set for task processes), with the task credential if any."""
    url = env.get(ENV_URL, "").strip()
    if not url:
        return None
    secret = env.get(ENV_TASK_SECRET) or None
    if secret:
        return ServerInfo(
            _connectable(url),
            authorization=f"OfflineTokenTask {secret}",
            source=f"{ENV_URL} with the task credential",
            task_id=env.get(ENV_TASK_ID) or None,
            token_id=env.get(ENV_TOKEN_ID) or None,
        )
    return ServerInfo(
        _connectable(url),
        authorization=authorization,
        source=ENV_URL,
        task_id=env.get(ENV_TASK_ID) or None,
        token_id=env.get(ENV_TOKEN_ID) or None,
    )


def _from_hub_service_url(env: Mapping[str, str], authorization: str | None) -> ServerInfo | None:
    """``JUPYTERHUB_SERVICE_URL``, completed with the service prefix when it has no path."""
    hub_url = env.get("JUPYTERHUB_SERVICE_URL", "").strip()
    if not hub_url:
        return None
    hub_prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "").strip()
    if hub_prefix and urlsplit(hub_url).path in ("", "/"):
        hub_url = hub_url.rstrip("/") + "/" + hub_prefix.lstrip("/")
    return ServerInfo(
        _connectable(hub_url), authorization=authorization, source="JUPYTERHUB_SERVICE_URL"
    )


def _from_hub_prefix(env: Mapping[str, str], authorization: str | None) -> ServerInfo | None:
    """``JUPYTERHUB_SERVICE_PREFIX`` alone: the single-user server on JupyterHub's default port."""
    hub_prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "").strip()
    if not hub_prefix:
        return None
    prefix = "/" + hub_prefix.strip("/") + "/" if hub_prefix.strip("/") else "/"
    return ServerInfo(
        HUB_DEFAULT_HOST + prefix,
        authorization=authorization,
        source=f"JUPYTERHUB_SERVICE_PREFIX on {HUB_DEFAULT_HOST} (JupyterHub's default port)",
    )


def task_environment(environ: Mapping[str, str] | None = None) -> tuple[str, str | None] | None:
    """``(task_id, token_id)`` when running inside a task process, else ``None``.

    Example::

        if task_environment():
            print("running as a task")
    """
    env = os.environ if environ is None else environ
    task_id = env.get(ENV_TASK_ID)
    if not task_id:
        return None
    return task_id, env.get(ENV_TOKEN_ID) or None
