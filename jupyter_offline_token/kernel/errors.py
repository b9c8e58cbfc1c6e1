"""Typed errors raised by the kernel-side client, each with a message that says what to do.

The server answers failures as ``{"error": code, "message": text}``; :func:`error_from_response`
turns that into one of these classes so notebook code can ``except ConsentRequired:`` instead of
parsing status codes. Catch :class:`ConsentRequired` to handle every case that needs a new consent
(:class:`TokenFailed`, :class:`TokenRevoked`, :class:`ConsentExpired` are subclasses).
No error here ever carries a token or credential in its text.
"""

from __future__ import annotations

from typing import Any

import httpx

from .. import rest_codes
from ..rest_codes import CODES


class OfflineTokenClientError(Exception):
    """Base class of every error raised by ``jupyter_offline_token.kernel``.

    ``code`` is the server's machine code (or a client-side one such as ``server_not_found``),
    ``status`` the HTTP status when there was one.

    Example::

        try:
            tok.access_token()
        except OfflineTokenClientError as exc:
            print(exc.code, exc)
    """

    code: str = rest_codes.CLIENT_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.retry_after = retry_after
        self.body = dict(body or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class ServerNotFound(OfflineTokenClientError):
    """No Jupyter server could be located from this process; the message lists what was tried.

    Example::

        try:
            find_server()
        except ServerNotFound as exc:
            print(exc.tried)
    """

    code = rest_codes.SERVER_NOT_FOUND

    def __init__(self, tried: list[str]) -> None:
        self.tried = list(tried)
        lines = "\n".join(f"  - {t}" for t in self.tried) or "  - (nothing)"
        super().__init__(
            "Cannot find the Jupyter server that runs this kernel. Tried:\n"
            f"{lines}\n"
            "Set JUPYTER_OFFLINE_TOKEN_URL (the server URL including its base_url) and "
            "JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN (the server's token) in the kernel's environment."
        )


class ServerUnreachable(OfflineTokenClientError):
    """The server was found but did not answer (network error or timeout).

    Example::

        except ServerUnreachable:
            print("is the Jupyter server still running?")
    """

    code = rest_codes.SERVER_UNREACHABLE


class AuthenticationFailed(OfflineTokenClientError):
    """The server refused our credential (401/403): wrong token or a task credential misused.

    Example::

        except AuthenticationFailed:
            print("set JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN")
    """

    code = rest_codes.FORBIDDEN


class InvalidRequest(OfflineTokenClientError):
    """The server rejected the request's input (400).

    Example::

        except InvalidRequest as exc:
            print(exc.message)
    """

    code = rest_codes.INVALID_REQUEST


class NotFound(OfflineTokenClientError):
    """The token or task id is unknown to the server, or belongs to another user (404).

    Example::

        except NotFound:
            print("no such persistent_token_id")
    """

    code = rest_codes.NOT_FOUND


class NotConfigured(OfflineTokenClientError):
    """The server's administrator has not configured an OpenID provider (503 not_configured).

    Example::

        except NotConfigured as exc:
            print(exc.message)  # names the setting to fix
    """

    code = rest_codes.NOT_CONFIGURED


class RedirectURIUnknown(OfflineTokenClientError):
    """The server runs under JupyterHub and does not know its public URL, so it cannot tell the
    provider where to send the browser back (409 redirect_uri_unknown). Opening the server's
    offline-token dashboard in the browser once teaches it; the administrator's fix is
    ``c.OfflineTokenApp.redirect_uri`` (or ``c.JupyterHub.public_url``).

    Example::

        except RedirectURIUnknown as exc:
            print(exc.message)  # names OfflineTokenApp.redirect_uri
    """

    code = rest_codes.REDIRECT_URI_UNKNOWN


class ProviderUnavailable(OfflineTokenClientError):
    """A transient fault at the OpenID provider; try again after ``retry_after`` seconds.

    Example::

        except ProviderUnavailable as exc:
            time.sleep(exc.retry_after or 10)
    """

    code = rest_codes.PROVIDER_UNAVAILABLE


class ConsentPending(OfflineTokenClientError):
    """The consent was requested but not granted yet: open the consent URL and grant access.

    Example::

        except ConsentPending:
            tok.wait()
    """

    code = rest_codes.WAITING_CONSENT


class ConsentRequired(OfflineTokenClientError):
    """There is no usable offline grant: call ``request_offline_token()`` and grant access.

    Example::

        except ConsentRequired:
            tok = request_offline_token(label="again")
    """

    code = rest_codes.NEEDS_CONSENT


class TokenFailed(ConsentRequired):
    """The offline grant is dead (e.g. the provider rejected the refresh token).

    Example::

        except TokenFailed as exc:
            print(exc.message)
    """

    code = rest_codes.TOKEN_FAILED


class TokenRevoked(TokenFailed):
    """The offline token was revoked.

    Example::

        except TokenRevoked:
            tok = request_offline_token()
    """

    code = rest_codes.TOKEN_REVOKED


class ConsentExpired(TokenFailed):
    """Nobody granted the consent before it expired.

    Example::

        except ConsentExpired:
            tok = request_offline_token()
    """

    code = rest_codes.CONSENT_EXPIRED


class TokenInUse(OfflineTokenClientError):
    """The token is used by a running task; cancel the task or revoke with ``force=True``.

    Example::

        except TokenInUse:
            tok.revoke(force=True)
    """

    code = rest_codes.TOKEN_IN_USE


class TooManyPendingConsents(OfflineTokenClientError):
    """Too many consents of this user wait to be granted (429); grant or delete some first, or
    retry after ``retry_after`` seconds, when the oldest expires.

    Example::

        except TooManyPendingConsents as exc:
            print(exc.retry_after)
    """

    code = rest_codes.TOO_MANY_PENDING_CONSENTS


class RefreshTooSoon(OfflineTokenClientError):
    """``refresh()`` asked within the server's ``min_refresh_interval`` of the token's last
    refresh (429): its access token is fresh already; retry after ``retry_after`` seconds.

    Example::

        except RefreshTooSoon as exc:
            print(exc.retry_after)
    """

    code = rest_codes.REFRESH_TOO_SOON


class TaskError(OfflineTokenClientError):
    """A task operation was refused by the server (wrong state, ...).

    Example::

        except TaskError as exc:
            print(exc.code)
    """

    code = rest_codes.TASK_ERROR


class TaskAlreadyRunning(TaskError):
    """``execute`` on a task that is already running.

    Example::

        except TaskAlreadyRunning:
            pass
    """

    code = rest_codes.ALREADY_RUNNING


class TaskCancelled(TaskError):
    """Raised by ``Task.progress`` when someone cancelled the task (dashboard, widget, API).

    Example::

        except TaskCancelled:
            break
    """

    code = rest_codes.CANCELLED


class TaskEnded(AuthenticationFailed):
    """A task or worker credential stopped working: its task ended, was cancelled or was
    interrupted (403 task_credential_ended). Workers of the task should stop.

    Example::

        except TaskEnded:
            return  # the task is over
    """

    code = rest_codes.TASK_CREDENTIAL_ENDED


# Built from the one table of codes (rest_codes.CODES): a code the server adds is mapped here by
# naming its class there, so the two sides cannot drift.
_ADVICE: dict[str, str] = {code: e.advice for code, e in CODES.items() if e.advice}

_BY_CODE: dict[str, type[OfflineTokenClientError]] = {
    code: globals()[e.kernel_error] for code, e in CODES.items() if e.kernel_error
}

_BY_STATUS: dict[int, type[OfflineTokenClientError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: AuthenticationFailed,
    404: NotFound,
}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _is_task_call(response: httpx.Response) -> bool:
    try:
        return "/api/offline-token/tasks" in response.request.url.path
    except RuntimeError:  # a bare Response built without a request
        return False


def error_from_response(response: httpx.Response) -> OfflineTokenClientError:
    """Map a failed API response to the matching typed error.

    Example::

        if response.is_error:
            raise error_from_response(response)
    """
    body: dict[str, Any] = {}
    try:
        parsed = response.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = body.get("error") if isinstance(body.get("error"), str) else None
    server_message = body.get("message") if isinstance(body.get("message"), str) else None
    if code in _BY_CODE:
        cls = _BY_CODE[code]
    elif response.status_code in _BY_STATUS:
        cls = _BY_STATUS[response.status_code]
    elif response.status_code == 409 and _is_task_call(response):
        cls = TaskError
    else:
        cls = OfflineTokenClientError
    reason = server_message or response.reason_phrase or "request failed"
    message = f"{reason} (HTTP {response.status_code}"
    message += f", {code})" if code else ")"
    advice = _ADVICE.get(code or cls.code)
    if advice and advice not in message:
        message = f"{message}. {advice}"
    return cls(
        message,
        code=code or cls.code,
        status=response.status_code,
        retry_after=_retry_after(response),
        body=body,
    )
