"""OfflineTokenApp: the jupyter_server extension. Reads config, builds and wires the parts."""

from __future__ import annotations

import contextlib
import getpass
import os
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Type

from . import __version__
from .activity import ServerActivity
from .broker import ProviderSettings, TokenBroker
from .oidc import ProviderClient
from .public_url import CALLBACK_PATH, SERVICE_CALLBACK_PATH, CallbackURL
from .refresh.engine import RefreshEngine
from .serverlog import attach_to_server_log
from .services import Services
from .settings import OfflineTokenSettings
from .stores import SQLiteTaskStore, SQLiteTokenStore, TaskStore, TokenStore
from .tasks import install as install_tasks
from .tasks.runners import LocalTaskRunner, TaskRunner

HERE = Path(__file__).parent


def _server_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


class OfflineTokenApp(OfflineTokenSettings, ExtensionApp):
    """Grant OpenID Connect offline access once; hand long-running work fresh access tokens.

    Its settings (``c.OfflineTokenApp.<name>``) are declared by :class:`OfflineTokenSettings`;
    the swappable parts are the ``*_class`` traits below."""

    name = "jupyter_offline_token"
    description = __doc__
    extension_url = "/offline-token/"
    load_other_extensions = True
    static_paths = [str(HERE / "static")]
    template_paths = [str(HERE / "templates")]
    _owner_scope: str | None = None

    # --- swappable parts ------------------------------------------------------------------------
    token_store_class: Type[type[TokenStore], type[TokenStore]] = Type(
        klass=TokenStore,  # type: ignore[type-abstract]  # an ABC is the point
        default_value=SQLiteTokenStore,
        config=True,
        help="""The token store (vault entries, their encrypted secrets and audit): a subclass of
        jupyter_offline_token.stores.TokenStore, built once at start with parent=<this app> and
        the keyword arguments path (vault_path), encryption_keys, audit_retention and
        max_pending_consents (a PostgresTokenStore subclass also gets url and pool_size).
        Default: jupyter_offline_token.stores.SQLiteTokenStore, or
        jupyter_offline_token.stores.postgres.PostgresTokenStore when database_url is set.""",
    )
    task_store_class: Type[type[TaskStore], type[TaskStore]] = Type(
        klass=TaskStore,  # type: ignore[type-abstract]
        default_value=SQLiteTaskStore,
        config=True,
        help="""The task store: a subclass of jupyter_offline_token.stores.TaskStore, built once
        at start with parent=<this app> and token_store=<the token store>. Default:
        jupyter_offline_token.stores.SQLiteTaskStore (the tasks table in the vault's file), or
        jupyter_offline_token.stores.postgres.PostgresTaskStore when database_url is set.""",
    )
    task_runner_class: Type[type[TaskRunner], type[TaskRunner]] = Type(
        klass=TaskRunner,  # type: ignore[type-abstract]
        default_value=LocalTaskRunner,
        config=True,
        help="""What starts and stops the processes of command and notebook tasks: a subclass of
        jupyter_offline_token.tasks.runners.TaskRunner, built with parent=<this app> (so it
        reads its own config, e.g. c.LocalTaskRunner.python). Default:
        jupyter_offline_token.tasks.runners.LocalTaskRunner (local subprocesses).""",
    )

    def __init__(self, **kwargs: Any) -> None:
        self._server_owner: str | None = None
        self.services: Services | None = None
        super().__init__(**kwargs)

    # --- wiring --------------------------------------------------------------------------------
    def build_services(self) -> Services:
        """Build the parts from settings already checked by ``check_settings``."""
        client_secret = self._client_secret_value
        vault = self.build_token_store()
        provider: ProviderClient | None = None
        settings: ProviderSettings | None = None
        if self.issuer and self.client_id:
            method = self.token_endpoint_auth_method if client_secret else "none"
            settings = ProviderSettings(
                issuer=self.issuer,
                client_id=self.client_id,
                client_secret=client_secret,
                token_endpoint_auth_method=method,
                scopes=list(self.scopes),
                http_timeout=self.http_timeout,
            )
            provider = ProviderClient(
                self.issuer,
                self.client_id,
                client_secret,
                token_endpoint_auth_method=method,
                http_timeout=self.http_timeout,
            )
        else:
            self.log.warning("jupyter-offline-token: %s", self.not_configured_message())
        broker = TokenBroker(
            vault,
            provider,
            settings,
            app_settings=self,
            not_configured_message=self.not_configured_message(),
        )
        engine = RefreshEngine(broker, self)
        tasks = install_tasks(self, vault, broker)
        assert self.serverapp is not None
        activity = ServerActivity(self.serverapp.web_app.settings, self)
        tasks.warmth.add_listener(engine)
        tasks.warmth.add_listener(activity)
        engine.use_task_history(tasks)
        return Services(vault=vault, broker=broker, engine=engine, tasks=tasks, activity=activity)

    def _configured(self, name: str) -> bool:
        section = self.config.get(type(self).__name__)
        return isinstance(section, dict) and name in section

    def build_token_store(self) -> TokenStore:
        """The configured token store. With database_url: the PostgreSQL stores, unless the
        store classes were set explicitly (then a PostgresTokenStore subclass gets the URL)."""
        store_class: type[TokenStore] = self.token_store_class
        settings: dict[str, Any] = {
            "parent": self,
            "path": Path(self.vault_path).expanduser(),
            "encryption_keys": list(self._encryption_keys_value),
            "audit_retention": self.audit_retention,
            "max_pending_consents": self.max_pending_consents,
        }
        url = self._database_url_value
        if url:
            try:
                from .stores import postgres
            except ImportError as exc:
                raise RuntimeError(
                    f"OfflineTokenApp.database_url needs the PostgreSQL driver ({exc.name} is "
                    "missing): pip install 'jupyter-offline-token[postgres]'"
                ) from None
            if not self._configured("token_store_class"):
                store_class = postgres.PostgresTokenStore
            if not self._configured("task_store_class"):
                self.task_store_class = postgres.PostgresTaskStore
            if issubclass(store_class, postgres.PostgresTokenStore):
                settings.update(url=url, pool_size=self.database_pool_size)
        return store_class(**settings)

    def vault_description(self) -> str:
        """Where the vault is, as the log may show it (a database URL without its password)."""
        if self._database_url_value:
            from .stores.postgres.urls import redact_url

            return redact_url(self._database_url_value)
        return str(self.vault_path)

    def initialize_settings(self) -> None:
        """Check the settings and build the parts. Never raises: on a bad setting (or a part
        that cannot be built) nothing is built or created, the handlers are still registered
        and answer 503 naming the setting, and the server stops normally."""
        attach_to_server_log(self.serverapp.log if self.serverapp is not None else self.log)
        assert self.serverapp is not None
        self.callback_url = CallbackURL(
            self.serverapp.base_url,
            configured=self.redirect_uri,
            callback_path=SERVICE_CALLBACK_PATH if self.hub_service else CALLBACK_PATH,
        )
        if not self.check_settings():
            try:
                self.services = self.build_services()
            except Exception as exc:
                self.log.exception("jupyter-offline-token could not be set up")
                self._start_failure = f"offline access could not be set up: {exc}"
        if self.start_error:
            self.log.error("jupyter-offline-token: %s", self.start_error)
        self.settings.update(
            {
                "offline_token_services": self.services,
                "offline_token_owner": self.owner_of,
                "offline_token_callback_url": self.callback_url,
                "offline_token_start_error": lambda: self.start_error,
                "offline_token_hub_service": self.hub_service,
            }
        )

    @property
    def hub_service(self) -> bool:
        """Run by ``jupyter-offline-token serve`` as a JupyterHub service (hub_service.py):
        one callback for every user, hub users as owners, operator scopes."""
        return getattr(self.serverapp, "offline_token_hub_service", False) is True

    def effective_owner_scope(self) -> str:
        if self.hub_service:
            # One vault for the whole hub: an entry always belongs to its hub user.
            if self.owner_scope == "server":
                self.log.warning("OfflineTokenApp.owner_scope=server is ignored by the service")
            return "username"
        if self.owner_scope != "auto":
            return str(self.owner_scope)
        from jupyter_server.auth.identity import IdentityProvider, PasswordIdentityProvider

        provider = getattr(self.serverapp, "identity_provider", None)
        single_user = type(provider) in (IdentityProvider, PasswordIdentityProvider)
        return "server" if single_user else "username"

    def owner_of(self, user: Any) -> str:
        """The vault owner for an authenticated Jupyter user (see ``owner_scope``)."""
        if self._owner_scope is None:
            self._owner_scope = self.effective_owner_scope()
        if self._owner_scope == "server":
            # Once: getpass.getuser() reads the passwd database when $USER is unset.
            if self._server_owner is None:
                self._server_owner = _server_user()
            return self._server_owner
        return str(getattr(user, "username", user))

    def initialize_handlers(self) -> None:
        from .handlers import routes
        from .handlers.dashboard import dashboard_handlers

        self.handlers.extend(routes())
        if self.hub_service:
            from .handlers import service_routes

            self.handlers.extend(service_routes())
        self.handlers.extend(dashboard_handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Open the vault off the event loop and start background work. A vault that cannot
        open answers 503 vault_unavailable (Services) while Services retries in the background
        and starts the rest once it opens; any other failure here turns the extension off (503
        naming it) instead of leaving half-started parts behind."""
        services = self.services
        if services is None:
            return
        with contextlib.suppress(Exception):
            await services.ready()
        if services.error is not None:
            services.retry_open(self._start_background)
            return
        await self._start_background()

    async def _start_background(self) -> None:
        services = self.services
        assert services is not None
        try:
            await services.start_background()
        except Exception as exc:
            self.log.exception("jupyter-offline-token failed to start")
            self._start_failure = f"offline access failed to start: {exc}; see the server log"
            await self._close_services()
            return
        self.log.info(
            "jupyter-offline-token %s: vault %s, provider %s",
            __version__,
            self.vault_description(),
            self.issuer or "(not configured)",
        )

    async def stop_extension(self) -> None:
        """Stop background work and close the vault; never raises, so the server's shutdown
        (and a SIGTERM) always completes."""
        await self._close_services()

    async def _close_services(self) -> None:
        if self.services is None:
            return
        try:
            await self.services.close()
        except Exception:
            self.log.exception("jupyter-offline-token: error while stopping")
