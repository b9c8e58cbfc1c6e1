"""The scoped task credential and the environment a task process starts with.

A task process gets a random secret that the server stores only as its SHA-256; it authorizes
``Authorization: OfflineTokenTask <secret>`` calls for that task alone, while the task runs.
The process never sees the Jupyter server token, the refresh token or the vault keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ENV_URL = "JUPYTER_OFFLINE_TOKEN_URL"
ENV_TASK_ID = "JUPYTER_OFFLINE_TOKEN_TASK_ID"
ENV_TOKEN_ID = "JUPYTER_OFFLINE_TOKEN_TOKEN_ID"  # noqa: S105 - a variable name
ENV_TASK_SECRET = "JUPYTER_OFFLINE_TOKEN_TASK_SECRET"  # noqa: S105 - a variable name
ENV_PARAMETERS = "JUPYTER_OFFLINE_TOKEN_PARAMETERS"

# Credentials of the server itself or of JupyterHub: never handed to a task process. Every
# other JUPYTER_OFFLINE_TOKEN_* variable of the server (keys, client secret) is dropped too.
_STRIPPED = frozenset(
    {
        "JUPYTER_TOKEN",
        "JUPYTER_PASSWORD",
        "JPY_API_TOKEN",
        "JPY_SESSION_NAME",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_CLIENT_ID",
        "JUPYTERHUB_OAUTH_CALLBACK_URL",
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES",
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
        "JUPYTERHUB_OAUTH_SCOPES",
        "JUPYTERHUB_COOKIE_SECRET",
        "JUPYTERHUB_CRYPT_KEY",
    }
)
_STRIPPED_PREFIXES = ("JUPYTER_OFFLINE_TOKEN_",)


@dataclass(frozen=True)
class TaskPrincipal:
    """Who a valid task credential speaks for: one running task, its token and its owner."""

    task_id: str
    token_id: str | None
    owner: str
    worker: bool = False  # a worker credential: narrower (see worker_credentials.py)
    run_hash: str = field(default="", repr=False)  # the run's stored hash: mints worker ones


def new_task_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def task_environment(
    base: Mapping[str, str] | None,
    *,
    server_url: str,
    task_id: str,
    token_id: str | None,
    secret: str,
    parameters: dict[str, Any],
    server_secrets: Iterable[str] = (),
) -> dict[str, str]:
    """The environment of a task process: the server's, minus any server credential, plus the
    task's own variables."""
    source = dict(os.environ if base is None else base)
    hidden = [s for s in server_secrets if s]
    env = {
        name: value
        for name, value in source.items()
        if name not in _STRIPPED
        and not name.startswith(_STRIPPED_PREFIXES)
        and not any(s in value for s in hidden)
    }
    env[ENV_URL] = server_url if server_url.endswith("/") else server_url + "/"
    env[ENV_TASK_ID] = task_id
    env[ENV_TOKEN_ID] = token_id or ""
    env[ENV_TASK_SECRET] = secret
    env[ENV_PARAMETERS] = json.dumps(parameters)
    env.setdefault("PYTHONUNBUFFERED", "1")  # output reaches the task log as it happens
    return env
