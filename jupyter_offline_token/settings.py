"""OfflineTokenSettings: every setting of jupyter-offline-token, read once.

The settings are traits of :class:`OfflineTokenSettings`, which :class:`~.app.OfflineTokenApp`
inherits: an admin writes ``c.OfflineTokenApp.<name>`` (or the environment variable), and each
default is declared here, once. The parts (broker, refresh engine, task service, activity beat)
are handed this one typed object and read the settings they need from it; tests build
``OfflineTokenSettings(name=value)`` for other values. Loading is forgiving: a bad value is
recorded under its setting's name (``start_error``), never raised mid-start, so the server
starts and the API answers 503 naming what to fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from traitlets import Enum, Float, Int, List, Unicode, default
from traitlets.config import Config
from traitlets.traitlets import TraitError, TraitType

from . import defaults
from .secret_files import (
    ENVIRONMENT,
    NEVER_ECHOED,
    resolve_database_url,
    resolve_secrets,
    warn_inline_database_url,
    warn_inline_secrets,
)
from .setting_checks import SettingChecks, check_database_url

__all__ = ["ENVIRONMENT", "OfflineTokenSettings"]


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(name, "")
    return [part.strip() for part in raw.split(";") if part.strip()]


class OfflineTokenSettings(SettingChecks):
    """The settings, their checks, and where a bad one is recorded (``start_error``)."""

    # --- provider ------------------------------------------------------------------------------
    issuer = Unicode(
        "",
        config=True,
        help="""Issuer URL of the OpenID provider, e.g. https://keycloak.example.org/realms/lab.
        Discovery reads <issuer>/.well-known/openid-configuration. Required to serve consents:
        without it the server starts and the API answers 503 not_configured.
        Default: $JUPYTER_OFFLINE_TOKEN_ISSUER.""",
    )
    client_id = Unicode(
        "",
        config=True,
        help="""OAuth client id registered at the provider for this Jupyter server. Required with
        issuer. Default: $JUPYTER_OFFLINE_TOKEN_CLIENT_ID.""",
    )
    client_secret = Unicode(
        "",
        config=True,
        help="""Client secret of a confidential client. Empty (the default) means a public client
        that relies on PKCE alone. Default: $JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET. Prefer
        client_secret_file or the environment: a value set inline sits in clear in the config
        file, and in any log that prints the config.""",
    )
    client_secret_file = Unicode(
        "",
        config=True,
        help="""Path of a file holding the client secret (surrounding whitespace ignored), read
        once at start. Use it instead of client_secret so the secret never appears in a config
        file or a log; the file should be readable by the server's user only (mode 600).
        A missing, unreadable or empty file disables the extension with a message naming this
        setting. Default: $JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET_FILE.""",
    )
    token_endpoint_auth_method = Enum(
        ["client_secret_basic", "client_secret_post", "none"],
        default_value="client_secret_basic",
        config=True,
        help="""How the client authenticates at the token and revocation endpoints:
        client_secret_basic (default), client_secret_post, or none (public client; also used
        automatically when client_secret is empty).""",
    )
    scopes = List(
        Unicode(),
        default_value=["openid", "offline_access"],
        config=True,
        help="""Scopes requested at consent. openid and offline_access are always added.
        Default: ["openid", "offline_access"].""",
    )
    redirect_uri = Unicode(
        "",
        config=True,
        help="""The callback URL registered at the provider. Empty (the default) derives it from
        each request: <scheme>://<host><base_url>offline-token/callback. Under JupyterHub it is
        derived from the hub's public URL ($JUPYTERHUB_PUBLIC_URL, set by JupyterHub.public_url)
        or from the browser that opened this server's pages; when neither is known, consents
        answer 409 redirect_uri_unknown. Set it behind proxies that rewrite the host.
        Default: $JUPYTER_OFFLINE_TOKEN_REDIRECT_URI.""",
    )
    http_timeout = Float(
        defaults.HTTP_TIMEOUT,
        config=True,
        help="Timeout in seconds of each request to the provider. Default: 15.",
    )

    # --- vault ---------------------------------------------------------------------------------
    vault_path = Unicode(
        "",
        config=True,
        help="""Path of the vault's SQLite file. Default:
        <jupyter_data_dir>/offline_token/vault.db (directory created 0700, file 0600).""",
    )
    encryption_keys = List(
        Unicode(),
        config=True,
        help="""AES-256-GCM keys, base64url-encoded 32 bytes each. The first encrypts, all
        decrypt: to rotate, put a new key first and keep the old ones until every entry has
        been refreshed. Empty (the default) uses a key file generated next to the vault
        (vault.key, mode 0600). Default: $JUPYTER_OFFLINE_TOKEN_KEYS (';'-separated).
        Generate one with: jupyter-offline-token generate-key. Prefer encryption_keys_file or
        the environment: a value set inline sits in clear in the config file, and in any log
        that prints the config.""",
    )
    encryption_keys_file = Unicode(
        "",
        config=True,
        help="""Path of a file holding the encryption keys, one per line (first encrypts, all
        decrypt; blank lines and lines starting with # are ignored), read once at start. Use it
        instead of encryption_keys so no key appears in a config file or a log; the file should
        be readable by the server's user only (mode 600). A missing, unreadable or empty file,
        or a malformed key, disables the extension with a message naming this setting.
        Default: $JUPYTER_OFFLINE_TOKEN_KEYS_FILE.""",
    )
    database_url = Unicode(
        "",
        config=True,
        help="""PostgreSQL URL of a vault shared by several processes (JupyterHub service
        replicas, several servers of one user), e.g.
        postgresql://jupyter@db.example.org:5432/offline_token. When set, the vault lives in
        that database instead of vault_path (unless token_store_class / task_store_class are
        set), its schema is created or migrated at start, and encryption_keys (or
        encryption_keys_file) must be set: no key file is generated for a database. Needs
        pip install 'jupyter-offline-token[postgres]'. The password is never logged; prefer
        database_url_file, the environment or ~/.pgpass to a password inline in the config.
        Empty (the default): the SQLite vault. Default: $JUPYTER_OFFLINE_TOKEN_DATABASE_URL.""",
    )
    database_url_file = Unicode(
        "",
        config=True,
        help="""Path of a file holding database_url (surrounding whitespace ignored), read once
        at start, so its password never appears in a config file or a log; the file should be
        readable by the server's user only (mode 600). Default:
        $JUPYTER_OFFLINE_TOKEN_DATABASE_URL_FILE.""",
    )
    database_pool_size = Int(
        10,
        config=True,
        help="""At most this many connections this server process keeps open to the PostgreSQL
        vault (plus one that listens for evictions). Default: 10.""",
    )
    consent_timeout = Float(
        600.0,
        config=True,
        help="Seconds a consent link stays valid before the pending entry expires. Default: 600.",
    )
    owner_scope = Enum(
        ["auto", "username", "server"],
        default_value="auto",
        config=True,
        help="""Who owns a vault entry. 'username': each Jupyter user name owns its entries (for
        multi-user setups such as JupyterHub, where names are stable). 'server': every
        authenticated caller of this server is one owner, the server's OS user (for single-user
        servers, whose token or password login gives kernels made-up anonymous names). 'auto'
        (default): 'server' with jupyter_server's own token/password identity providers,
        'username' with any other (JupyterHub's, or a custom one).""",
    )
    audit_retention = Int(
        defaults.AUDIT_RETENTION,
        config=True,
        help="Audit events kept per token (oldest dropped). Default: 200.",
    )
    max_pending_consents = Int(
        50,
        config=True,
        help="""At most this many consents of one user may wait to be granted at once (unexpired
        pending entries); one more answers 429 too_many_pending_consents, with Retry-After set
        to when the oldest of them expires. Default: 50.""",
    )
    history_retention = Float(
        7 * 86400.0,
        config=True,
        help="""Seconds that expired, failed and revoked entries (with their audit events) and
        finished tasks (completed, failed, cancelled, interrupted, with their logs and executed
        notebooks) are kept after their last change; the housekeeping sweep then deletes them
        in small batches. 0 keeps them forever. Default: 604800 (7 days).""",
    )

    # --- refresh engine ------------------------------------------------------------------------
    refresh_margin = Float(
        0.8,
        config=True,
        help="""Warm tokens (used by a running task, or asked for with keep_warm) are refreshed
        when this fraction of the access token's lifetime has passed, so their access-token
        requests are always served from the cache. Between 0.1 and 0.95. Default: 0.8.""",
    )
    keepalive_interval = Float(
        86400.0,
        config=True,
        help="""An active entry not refreshed for this many seconds is refreshed once, so the
        provider's offline-session idle timeout (30 days in Keycloak) never lapses while the
        entry exists. Default: 86400 (1 day).""",
    )
    min_refresh_interval = Float(
        defaults.MIN_REFRESH_INTERVAL,
        config=True,
        help="""Never more than one refresh attempt per token within this many seconds while the
        provider is failing; also the least time between a token's last refresh and a forced
        one (POST .../refresh answers 429 refresh_too_soon before it). Default: 10.""",
    )
    backoff_base = Float(
        defaults.BACKOFF_BASE,
        config=True,
        help="""First retry delay in seconds after a transient provider fault; it doubles on each
        failure up to backoff_max, with jitter. Default: 10.""",
    )
    backoff_max = Float(
        defaults.BACKOFF_MAX,
        config=True,
        help="Longest retry delay in seconds (the cap). Default: 300.",
    )
    backoff_jitter = Float(
        defaults.BACKOFF_JITTER,
        config=True,
        help="Random spread of each retry delay, as a fraction (0.1 = ±10 %). Default: 0.1.",
    )
    refresh_concurrency = Int(
        defaults.REFRESH_CONCURRENCY,
        config=True,
        help="""Background refreshes running at once (after a restart or a laptop's wake, many
        tokens are due together: this keeps them from stampeding the provider). Default: 4.""",
    )
    wake_threshold = Float(
        defaults.WAKE_THRESHOLD,
        config=True,
        help="""A jump of the wall clock against the monotonic clock larger than this many seconds
        (a laptop's sleep) makes every schedule be re-evaluated at once. Default: 60.""",
    )
    sweep_interval = Float(
        60.0,
        config=True,
        help="""Seconds between housekeeping passes: expiring stale consents, the keep-alive
        scan, metrics gauges and the audit of cached accesses. When several servers share the
        vault, each periodic job runs in one of them per interval. Default: 60.""",
    )
    eviction_poll_interval = Float(
        0.25,
        config=True,
        help="""Seconds between reads of the vault's eviction log, when several Jupyter servers
        share one SQLite vault: a token deleted, revoked or failed in one of them stops being
        served from the others' in-memory caches within about this long. Each read is one
        indexed query. A store that notifies (PostgreSQL) wakes the reader at once and is read
        at least this often. Default: 0.25.""",
    )

    # --- tasks --------------------------------------------------------------------------------
    max_running_tasks = Int(
        4,
        config=True,
        help="""At most this many command, notebook and demo tasks run at once; further executes
        wait as pending ("queued: N tasks ahead") and start in order when one ends. Kernel tasks
        run in their kernel and are not counted. Default: 4.""",
    )
    task_cancel_grace = Float(
        10.0,
        config=True,
        help="""Seconds a cancelled task process (or one stopped at server shutdown) gets between
        SIGTERM and SIGKILL. Default: 10.""",
    )

    task_report_grace = Float(
        60.0,
        config=True,
        help="""Seconds a command or notebook task process may keep running after reporting its
        own end through its credential before it is stopped (SIGTERM, then SIGKILL after
        task_cancel_grace). Default: 60.""",
    )

    activity_interval = Float(
        60.0,
        config=True,
        help="""While any task runs, the server's last activity (GET api/status, which JupyterHub
        and its idle culler read) is refreshed every this many seconds, so an idle culler does
        not stop a server whose tasks run. Default: 60.""",
    )

    @classmethod
    def setting_traits(cls) -> dict[str, TraitType[Any, Any]]:
        """Every setting of this package, by name: declared here or on a subclass (the app's
        swappable parts), not those jupyter_server's ExtensionApp adds."""
        traits: dict[str, TraitType[Any, Any]] = {}
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, OfflineTokenSettings):
                traits.update(klass.class_own_traits(config=True))
        return traits

    def __init__(self, **kwargs: Any) -> None:
        # Bad settings found while loading config, by setting name; each message names it.
        self._setting_errors: dict[str, str] = {}
        self._start_failure: str | None = None
        self._client_secret_value = ""
        self._encryption_keys_value: list[str] = []
        self._database_url_value = ""
        super().__init__(**kwargs)

    # --- defaults from the environment -----------------------------------------------------------
    # traitlets does not run @validate on @default values: environment values go through the
    # same checks explicitly. A bad value is recorded as a bad setting (the extension then
    # serves 503 naming it) and the setting falls back to empty, so nothing raises mid-start.
    def _from_env(self, name: str, raw: Any, empty: Any) -> Any:
        checks = {
            "issuer": self._check_issuer,
            "redirect_uri": self._check_redirect_uri,
            "encryption_keys": self._check_keys,
            "database_url": self._check_database_url,
        }
        check = checks.get(name)
        if check is None:
            return raw
        try:
            return check({"value": raw, "trait": self.traits()[name]})
        except TraitError as exc:
            message = str(exc)
            if ENVIRONMENT[name] not in message:
                message += f" (set by ${ENVIRONMENT[name]})"
            self._setting_errors[name] = message
            return empty

    @default("issuer")
    def _issuer_default(self) -> str:
        return str(self._from_env("issuer", os.environ.get(ENVIRONMENT["issuer"], ""), ""))

    @default("client_id")
    def _client_id_default(self) -> str:
        return os.environ.get(ENVIRONMENT["client_id"], "")

    @default("client_secret")
    def _client_secret_default(self) -> str:
        return os.environ.get(ENVIRONMENT["client_secret"], "")

    @default("client_secret_file")
    def _client_secret_file_default(self) -> str:
        return os.environ.get(ENVIRONMENT["client_secret_file"], "")

    @default("redirect_uri")
    def _redirect_uri_default(self) -> str:
        raw = os.environ.get(ENVIRONMENT["redirect_uri"], "")
        return str(self._from_env("redirect_uri", raw, ""))

    @default("encryption_keys")
    def _encryption_keys_default(self) -> list[str]:
        raw = _env_list(ENVIRONMENT["encryption_keys"])
        keys: list[str] = self._from_env("encryption_keys", raw, [])
        return keys

    @default("encryption_keys_file")
    def _encryption_keys_file_default(self) -> str:
        return os.environ.get(ENVIRONMENT["encryption_keys_file"], "")

    @default("database_url")
    def _database_url_default(self) -> str:
        raw = os.environ.get(ENVIRONMENT["database_url"], "")
        return str(self._from_env("database_url", raw, ""))

    @default("database_url_file")
    def _database_url_file_default(self) -> str:
        return os.environ.get(ENVIRONMENT["database_url_file"], "")

    @default("vault_path")
    def _vault_path_default(self) -> str:
        return str(Path(jupyter_data_dir()) / "offline_token" / "vault.db")

    # --- loading config ---------------------------------------------------------------------------
    def _load_config(
        self, cfg: Config, section_names: list[str] | None = None, traits: Any = None
    ) -> None:
        """Load config; one bad setting must not drop the others.

        traitlets applies a config section in one batch and rolls the whole batch back when one
        value fails validation, so a malformed key would also unset issuer and client_id. On a
        failure the settings are applied one at a time instead: the good ones stick, each bad
        one is recorded (``start_error`` names it) and keeps its default.
        """
        try:
            super()._load_config(cfg, section_names=section_names, traits=traits)
            return
        except Exception:  # noqa: S110 - retried setting by setting below, errors recorded there
            pass
        section = type(self).__name__
        known = self.traits(config=True) if traits is None else traits
        for name, value in self._find_my_config(cfg).items():
            if name not in known:
                continue  # not a setting: the batch above already warned about it
            try:
                super()._load_config(
                    Config({section: {name: value}}), section_names=section_names, traits=traits
                )
            except Exception as exc:
                self._setting_errors[name] = self._describe_bad_setting(name, exc)
                self._trait_values.pop(name, None)  # back to its default

    def _describe_bad_setting(self, name: str, exc: BaseException) -> str:
        """The error for one bad setting, naming it; a secret's value is never echoed (our own
        validators never echo it; traitlets' type errors do)."""
        text = str(exc)
        ours = text.startswith(f"OfflineTokenApp.{name}")
        if name in NEVER_ECHOED and not ours:
            return f"OfflineTokenApp.{name} has a value of the wrong type (not shown: a secret)"
        return text if ours else f"OfflineTokenApp.{name}: {text}"

    def check_settings(self) -> list[str]:
        """Read every setting once (environment defaults included), run the checks that span
        several settings, read the secret files, and warn about secrets set inline. Returns
        the problems found, each naming its setting (``start_error`` joins them)."""
        for name in self.setting_traits():
            try:
                getattr(self, name)
            except Exception as exc:
                self._setting_errors.setdefault(name, self._describe_bad_setting(name, exc))
        bad = self._setting_errors
        if "backoff_base" not in bad and "backoff_max" not in bad:
            if self.backoff_max < self.backoff_base:
                bad["backoff_max"] = (
                    f"OfflineTokenApp.backoff_max ({self.backoff_max:g}) must be >= "
                    f"OfflineTokenApp.backoff_base ({self.backoff_base:g})"
                )
        self._read_secret_settings()
        if self._database_url_value and not self._encryption_keys_value:
            if "encryption_keys" not in bad and "encryption_keys_file" not in bad:
                bad["encryption_keys"] = (
                    "OfflineTokenApp.encryption_keys (or $JUPYTER_OFFLINE_TOKEN_KEYS, or "
                    "OfflineTokenApp.encryption_keys_file) must be set with "
                    "OfflineTokenApp.database_url: a PostgreSQL vault never generates a key "
                    "file; generate a key with `jupyter-offline-token generate-key`"
                )
        self._warn_inline_secrets()
        return list(bad.values())

    @property
    def start_error(self) -> str | None:
        """Why the extension is off (bad settings, or a part that failed to start), or None.
        The API answers every route with 503 and this text."""
        if self._setting_errors:
            return (
                "offline access is off because of the server configuration: "
                + "; ".join(self._setting_errors.values())
                + ". Fix it and restart the Jupyter server."
            )
        return self._start_failure

    # --- secrets from files --------------------------------------------------------------------
    def _read_secret_settings(self) -> None:
        """Resolve client_secret / encryption_keys from their inline or file settings."""
        secret, keys = resolve_secrets(
            lambda name: getattr(self, name), self._setting_errors, self.log
        )
        self._client_secret_value, self._encryption_keys_value = secret, keys
        self._database_url_value = resolve_database_url(
            lambda name: getattr(self, name), check_database_url, self._setting_errors, self.log
        )

    def _warn_inline_secrets(self) -> None:
        section = self.config.get(type(self).__name__)
        warn_inline_secrets(section, self.log)
        warn_inline_database_url(section, self.log)

    def not_configured_message(self) -> str:
        missing = [name for name in ("issuer", "client_id") if not getattr(self, name)]
        return (
            "offline access is not configured: set "
            + " and ".join(f"c.OfflineTokenApp.{n} (or ${ENVIRONMENT[n]})" for n in missing)
            + " in the Jupyter server config"
        )
