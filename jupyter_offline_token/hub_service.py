"""``jupyter-offline-token serve``: the broker as a JupyterHub-managed service.

One process for the whole hub holds the vault, the consents, the callback, the refresh engine and
keep-alive, so tokens stay warm while users' servers are culled, and the client secret and keys
live in the service's environment only. It is a plain jupyter_server with JupyterHub's own
identity provider (HubOAuth: the hub's login cookie for browsers, hub API tokens for programs),
so every handler, XSRF rule and REST contract of the extension is unchanged.

What runs there is only this extension: no JupyterLab, terminals, kernels or contents routes,
and an authorizer that allows nothing but the extension's routes, so no user code ever runs in
the process that holds the secrets. (``/metrics`` is jupyter_server's: any authenticated hub
user with access to the service reads the aggregate counters, which name no user or token.)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from jupyter_server.serverapp import ServerApp
from jupyterhub.singleuser.extension import JupyterHubAuthorizer  # type: ignore[import-untyped]

from .errors import Forbidden
from .handlers.base import AUTH_RESOURCE
from .tasks.models import PROCESS_KINDS
from .tasks.runners import LocalTaskRunner, TaskLaunch, TaskRun

# The variables JupyterHub gives a managed service with a ``url`` (services/service.py).
REQUIRED_ENV = (
    "JUPYTERHUB_API_TOKEN",
    "JUPYTERHUB_API_URL",
    "JUPYTERHUB_SERVICE_URL",
    "JUPYTERHUB_SERVICE_PREFIX",
)
IDENTITY_PROVIDER = "jupyterhub.singleuser.extension.JupyterHubIdentityProvider"
AUTHORIZER = "jupyter_offline_token.hub_service.ServiceAuthorizer"
TASK_RUNNER = "jupyter_offline_token.hub_service.ServiceTaskRunner"


class HubEnvironmentMissing(RuntimeError):
    """``serve`` was started outside a JupyterHub service (or one without a ``url``)."""


class ServiceAuthorizer(JupyterHubAuthorizer):  # type: ignore[misc]  # jupyterhub is untyped
    """JupyterHub's access check (``access:services!service=<name>``), for this extension's
    routes only: kernels, contents, terminals and the rest of jupyter_server are refused to
    everyone."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        if resource != AUTH_RESOURCE:
            return False
        return bool(super().is_authorized(handler, user, action, resource))


class ServiceTaskRunner(LocalTaskRunner):
    """The service starts no process: a command or notebook task would run a user's code as
    the service's OS user, next to the client secret and the keys. Such a task fails to start
    with a reason that says where to run it; kernel tasks (no process) and demos are kept."""

    async def start(self, launch: TaskLaunch) -> TaskRun:
        if launch.task.kind in PROCESS_KINDS:
            raise Forbidden(
                f"the JupyterHub offline-token service runs no {launch.task.kind} tasks: run "
                "them in your own server"
            )
        return await super().start(launch)


class OfflineTokenServiceApp(ServerApp):
    """jupyter_server with only the offline-token extension and no kernels, contents or
    terminals (``default_services`` keeps the identity's routes and ``api/status``)."""

    name = "jupyter-offline-token-service"
    description = "The offline-token broker as a JupyterHub-managed service."
    default_services = ("api", "auth")  # type: ignore[assignment]  # a subset, as documented
    # Read by OfflineTokenApp: one callback for every user at <prefix>callback, hub-user owners.
    offline_token_hub_service = True

    def find_server_extensions(self) -> None:
        """Only this package's extension, whatever else is installed next to it."""
        self.jpserver_extensions = {"jupyter_offline_token": True}

    def write_server_info_file(self) -> None:
        """No ``jpserver-<pid>.json``: it would hold the service's hub API token (its
        ``token``), and nothing discovers the service through runtime files."""

    def write_browser_open_files(self) -> None:
        """Nothing to open in a browser (and no URL with a token on disk)."""

    def init_webapp(self) -> None:
        """As jupyterhub-singleuser does: tornado's own XSRF check runs before the hub identity
        is known, and would refuse every POST of a hub API token; jupyter_server checks XSRF in
        ``prepare`` once the identity is known (cookie sessions still need the token). No page
        of the service may be framed."""
        super().init_webapp()
        self.web_app.settings["xsrf_cookies"] = False
        headers = self.web_app.settings.setdefault("headers", {})
        headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")


def _bind(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise HubEnvironmentMissing(
            f"$JUPYTERHUB_SERVICE_URL must be an http:// URL with a host, not {url!r}: set the "
            "service's 'url' in c.JupyterHub.services (e.g. http://127.0.0.1:10101)"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise HubEnvironmentMissing(f"$JUPYTERHUB_SERVICE_URL has a bad port: {url!r}") from None
    return parts.hostname, port


def service_argv(
    extra: Sequence[str], environ: Mapping[str, str] | None = None, *, euid: int | None = None
) -> list[str]:
    """The jupyter_server arguments for the service, from the hub's environment; ``extra``
    (``--OfflineTokenApp.vault_path=...`` and the like) come last, so they win."""
    env = os.environ if environ is None else environ
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise HubEnvironmentMissing(
            "jupyter-offline-token serve runs as a JupyterHub-managed service and takes its "
            f"address and credentials from the hub, but {', '.join('$' + m for m in missing)} "
            "is not set. Start it from c.JupyterHub.services with a 'name', a 'url' and this "
            "'command' (see the README, section 'JupyterHub service')."
        )
    ip, port = _bind(env["JUPYTERHUB_SERVICE_URL"])
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]
    argv = [
        f"--ServerApp.ip={ip}",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.base_url={prefix if prefix.endswith('/') else prefix + '/'}",
        "--ServerApp.default_url=/offline-token/",
        "--ServerApp.open_browser=False",
        "--ServerApp.terminals_enabled=False",
        f"--ServerApp.identity_provider_class={IDENTITY_PROVIDER}",
        f"--ServerApp.authorizer_class={AUTHORIZER}",
        f"--OfflineTokenApp.task_runner_class={TASK_RUNNER}",
    ]
    if (os.geteuid() if euid is None else euid) == 0:
        argv.append("--allow-root")
    return [*argv, *extra]


def main(extra: Sequence[str]) -> int:
    """Run the service until the hub stops it (SIGTERM); 2 when the hub's environment is
    missing, with a message that says what to configure."""
    try:
        argv = service_argv(extra)
    except HubEnvironmentMissing as exc:
        sys.stderr.write(f"jupyter-offline-token serve: {exc}\n")
        return 2
    OfflineTokenServiceApp.launch_instance(argv=argv)
    return 0
