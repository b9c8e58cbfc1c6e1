"""The base class of every REST handler: auth, body parsing, and one error mapping."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from .. import rest_codes
from ..errors import Forbidden, InvalidRequest, NotConfigured, OfflineTokenError, VaultError
from ..hub_scopes import ADMIN_SCOPE, holds, hub_scopes, is_hub_service
from ..public_url import CallbackURL, browser_origin
from ..services import Services, unavailable
from .errors import http_status

if TYPE_CHECKING:
    from ..refresh.engine import RefreshEngine
    from ..tasks.credentials import TaskPrincipal
    from ..tasks.service import TaskService

log = logging.getLogger("jupyter_offline_token.handlers")

AUTH_RESOURCE = "offline_token"
MAX_BODY_BYTES = 64 * 1024
TASK_AUTH_SCHEME = "OfflineTokenTask"
_TASK_ALLOWED = "_offline_token_task_allowed"

F = TypeVar("F", bound=Callable[..., Any])


def forbidden(message: str) -> OfflineTokenError:
    return Forbidden(message)


def authenticated_or_task(method: F) -> F:
    """The Jupyter user (``@web.authenticated`` + ``@authorized``) or the scoped credential of
    the task the route names: ``task_id`` must be its task, ``token_id`` its task's token."""
    as_user = web.authenticated(authorized(method))

    @functools.wraps(method)
    async def wrapper(self: OfflineTokenHandler, *args: Any, **kwargs: Any) -> Any:
        principal = self.task_principal
        if principal is None:
            result = as_user(self, *args, **kwargs)
            return await result if asyncio.iscoroutine(result) else result
        task_id, token_id = kwargs.get("task_id"), kwargs.get("token_id")
        if (
            (task_id is None and token_id is None)
            or (task_id is not None and task_id != principal.task_id)
            or (token_id is not None and token_id != principal.token_id)
        ):
            raise forbidden("a task credential only reaches its own task and its token")
        return await method(self, *args, **kwargs)

    setattr(wrapper, _TASK_ALLOWED, True)
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Field:
    """One accepted body field: its Python type(s), whether required, and a check."""

    types: type | tuple[type, ...]
    required: bool = False
    check: Callable[[Any], str | None] | None = None  # returns an error text or None


def max_len(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return f"is longer than {limit} characters" if len(value) > limit else None

    return check


def in_range(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def parse_body(raw: bytes, fields: dict[str, Field], *, allow_empty: bool = True) -> dict[str, Any]:
    """Parse and validate a JSON object body; raise InvalidRequest naming what is wrong."""
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidRequest(
            f"request body is larger than {MAX_BODY_BYTES} bytes", code=rest_codes.BODY_TOO_LARGE
        )
    if not raw.strip():
        if allow_empty:
            body: Any = {}
        else:
            raise InvalidRequest("a JSON object body is required", code=rest_codes.INVALID_JSON)
    else:
        try:
            body = json.loads(raw, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidRequest(
                "request body is not valid JSON", code=rest_codes.INVALID_JSON
            ) from None
        problem = _unencodable(body)
        if problem:
            raise InvalidRequest(
                f"request body has {problem}: strings must be valid UTF-8 text",
                code=rest_codes.INVALID_FIELD,
            )
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object", code=rest_codes.INVALID_JSON)
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise InvalidRequest(
            f"unknown field(s): {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}",
            code=rest_codes.UNKNOWN_FIELD,
        )
    for name, spec in fields.items():
        if name not in body or body[name] is None:
            if spec.required:
                raise InvalidRequest(f"field {name!r} is required", code=rest_codes.MISSING_FIELD)
            body.pop(name, None)
            continue
        value = body[name]
        types = spec.types if isinstance(spec.types, tuple) else (spec.types,)
        # bool is an int in Python; never accept it where a number is asked for.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join(_json_type(t) for t in types)
            raise InvalidRequest(f"field {name!r} must be {names}", code=rest_codes.INVALID_FIELD)
        if spec.check is not None:
            problem = spec.check(value)
            if problem:
                raise InvalidRequest(f"field {name!r} {problem}", code=rest_codes.INVALID_FIELD)
    return body


def _no_constant(name: str) -> Any:
    """NaN and Infinity are not JSON, though Python's parser accepts them."""
    raise ValueError(f"{name} is not a JSON value")


def _unencodable(value: Any, depth: int = 0) -> str | None:
    """Describe the first string (or key) that cannot be UTF-8 encoded (a lone surrogate)."""
    if depth > 64:
        return "too deeply nested values"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string that is not valid Unicode"
        return None
    items: list[Any] = []
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    for item in items:
        problem = _unencodable(item, depth + 1)
        if problem:
            return problem
    return None


def _json_type(t: type) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "an object",
    }.get(t, t.__name__)


def note_browser_request(handler: JupyterHandler) -> None:
    """Remember the public origin of a cookie-authenticated browser request (for consents that
    kernels start later, see CallbackURL)."""
    if handler.current_user is None or handler.token_authenticated:
        return
    callback_url: CallbackURL = handler.settings["offline_token_callback_url"]
    callback_url.note_browser_origin(browser_origin(handler.request.headers, handler.request.host))


class OfflineTokenHandler(ExtensionHandlerMixin, APIHandler):
    """Every API route: authenticated Jupyter user, JSON errors ``{"error", "message"}``."""

    auth_resource = AUTH_RESOURCE
    task_principal: TaskPrincipal | None = None
    # JupyterHub service only: the methods where ``?owner=<hub user>`` names another user's
    # entries, for a holder of custom:offline-token:admin (metadata, audit, revoke; never an
    # access token or a consent). ``acting_operator`` is then the hub user who acts.
    operator_methods: frozenset[str] = frozenset()
    acting_operator: str | None = None

    @property
    def services(self) -> Services:
        """The extension's parts; 503 naming the setting when the extension could not start
        (a bad setting, or a part that failed), so every route says what to fix."""
        error = self.settings["offline_token_start_error"]()
        if error:
            raise NotConfigured(error)
        services = self.settings["offline_token_services"]
        assert isinstance(services, Services)
        return services

    @property
    def engine(self) -> RefreshEngine:
        """The refresh engine (keep_warm, retry state for health)."""
        return self.services.engine

    @property
    def task_service(self) -> TaskService:
        """The task service (tasks, their links to tokens, task credentials)."""
        return self.services.tasks

    @property
    def callback_url(self) -> CallbackURL:
        url: CallbackURL = self.settings["offline_token_callback_url"]
        return url

    @property
    def owner(self) -> str:
        """The vault owner of this request: the task's owner for a task credential, else the
        Jupyter user's (see OfflineTokenApp.owner_scope)."""
        if self.task_principal is not None:
            return self.task_principal.owner
        own = str(self.settings["offline_token_owner"](self.current_user))
        if not self.settings.get("offline_token_hub_service"):
            return own
        return self.owner_named_by_operator(own)

    def owner_named_by_operator(self, own: str) -> str:
        """``?owner=`` of an operator (JupyterHub service): 403 unless this route allows it and
        the hub identity holds the admin scope for that user. A hub admin is no exception."""
        if is_hub_service(self.current_user):
            raise forbidden(
                "a JupyterHub service's token owns no offline tokens: use a hub user's token"
            )
        named = self.get_query_argument("owner", None)
        if named is None or named == own:
            return own
        if (self.request.method or "") not in self.operator_methods:
            raise forbidden(
                "?owner= is only for reading another user's token metadata and audit and for "
                "revoking; access tokens, consents and tasks belong to their owner alone"
            )
        if not holds(hub_scopes(self.current_user), ADMIN_SCOPE, named):
            raise forbidden(f"acting on another user's tokens needs the scope {ADMIN_SCOPE}")
        if self.acting_operator is None:
            log.info("operator: hub user %s acts for %s: %s", own, named, self.request.method)
        self.acting_operator = own
        return named

    async def audit_operator(self, token_id: str, what: str) -> None:
        """An audit event naming the hub user who acted on another user's entry (nothing when
        the owner acted)."""
        if self.acting_operator is None:
            return
        detail = f"{what} by hub user {self.acting_operator} for {self.owner} ({ADMIN_SCOPE})"
        log.info("operator: %s token %s", detail, token_id)
        await self.services.broker.audit(None, "operator", what, detail, token_id=token_id)

    async def prepare(self) -> None:  # type: ignore[override]
        """``Authorization: OfflineTokenTask <secret>`` is resolved here, not by the identity
        provider: it is not a Jupyter identity and not a cookie (so no XSRF check). It reaches
        only methods marked ``@authenticated_or_task``; anything else answers 403."""
        scheme, _, secret = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != TASK_AUTH_SCHEME.lower():
            await super().prepare()
            note_browser_request(self)
            return
        self.current_user = self._jupyter_current_user = None
        if not self.check_host():
            raise web.HTTPError(403)
        if not self.check_origin():
            raise web.HTTPError(404)
        self.set_cors_headers()
        method = getattr(self, (self.request.method or "").lower(), None)
        if not getattr(method, _TASK_ALLOWED, False):
            raise forbidden("a task credential is not valid for this request")
        await self.services.ready()
        principal = await self.task_service.authenticate(secret.strip())
        if principal is None:
            raise Forbidden(
                "the task credential is not valid: unknown, or its task has ended",
                code=rest_codes.TASK_CREDENTIAL_ENDED,
            )
        self.task_principal = principal

    def update_api_activity(self) -> None:
        """A request with a task's credential is activity of the server, like one by the Jupyter
        user (jupyter_server counts only those): the idle culler must not stop running work."""
        if self.task_principal is None:
            super().update_api_activity()
        elif self._track_activity and self.get_argument("no_track_activity", None) is None:
            self.settings["api_last_activity"] = datetime.now(timezone.utc)

    def failing_since(self, token_id: str) -> float | None:
        """When the current run of transient refresh failures began (for health details)."""
        return self.engine.failing_since(token_id)

    def body(self, fields: dict[str, Field], *, allow_empty: bool = True) -> dict[str, Any]:
        return parse_body(self.request.body or b"", fields, allow_empty=allow_empty)

    def query_flag(self, name: str, default: bool) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise InvalidRequest(
            f"query parameter {name!r} must be true or false", code=rest_codes.INVALID_QUERY
        )

    def query_int(self, name: str, *, default: int | None, low: int, high: int) -> int | None:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise InvalidRequest(
                f"query parameter {name!r} must be an integer from {low} to {high}",
                code=rest_codes.INVALID_QUERY,
            )
        return value

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(payload))

    def no_content(self) -> None:
        self.set_status(204)
        self.finish()

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, VaultError) and not isinstance(e, OfflineTokenError):
            e = unavailable(e)  # a store failing under a request (its database went away): 503
        if isinstance(e, OfflineTokenError):
            if self._finished:
                return
            status = http_status(e)
            self.clear()
            self.set_status(status)
            self.set_header("Content-Type", "application/json; charset=UTF-8")
            self.set_header("Cache-Control", "no-store")
            if e.retry_after is not None:
                self.set_header("Retry-After", str(max(1, round(e.retry_after))))
            log_fn = log.warning if status >= 500 else log.info
            log_fn("%s %s -> %s %s", self.request.method, self.request.path, status, e.code)
            self.finish(json.dumps(e.to_json()))
            return
        super()._handle_request_exception(e)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado/jupyter_server errors (403, 404, 405, 500) in our JSON shape."""
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        message = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info is not None:
            exc = exc_info[1]
            if isinstance(exc, web.HTTPError) and exc.log_message:
                message = exc.log_message % exc.args if exc.args else exc.log_message
        code = {
            400: rest_codes.BAD_REQUEST,
            401: rest_codes.UNAUTHORIZED,
            403: rest_codes.FORBIDDEN,
            404: rest_codes.NOT_FOUND,
            405: rest_codes.METHOD_NOT_ALLOWED,
        }.get(status_code, rest_codes.INTERNAL_ERROR if status_code >= 500 else rest_codes.ERROR)
        if status_code >= 500:
            message = "internal error; the server log has details"
        self.finish(json.dumps({"error": code, "message": message}))
