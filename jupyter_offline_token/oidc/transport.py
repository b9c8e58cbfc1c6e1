"""One HTTP exchange with the provider, and the classification of its error answers.

Only a 4xx carrying an OAuth ``error`` is permanent; everything else (network, timeouts, 5xx,
429, a proxy's bare 404, invalid JSON) is transient, so a stored grant is never given up over a
hiccup. Messages name URLs without query strings and never repeat a value we sent.
"""

from __future__ import annotations

import email.utils
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

import httpx

from ..errors import PermanentProviderError, TransientProviderError

# One logger for the whole adapter: operators filter on "jupyter_offline_token.oidc".
log = logging.getLogger("jupyter_offline_token.oidc")

_DESCRIPTION_LIMIT = 200
_ERROR_CODE_LIMIT = 64
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")
# OAuth error codes that mean "the server is struggling", sometimes sent with a 400.
_TRANSIENT_OAUTH_ERRORS = frozenset({"temporarily_unavailable", "server_error"})


class ProviderTransport:
    """An ``httpx.AsyncClient`` whose transport failures become ``TransientProviderError``."""

    def __init__(
        self, *, http_timeout: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._http = httpx.AsyncClient(
            timeout=http_timeout,
            transport=transport,
            headers={"Accept": "application/json"},
            follow_redirects=False,
        )
        self._closed = False

    async def send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange; transport failures become TransientProviderError."""
        if self._closed:
            raise RuntimeError("ProviderClient is closed")
        safe = safe_url(url)
        try:
            response = await self._http.request(method, url, data=data, headers=headers)
        except httpx.TimeoutException:
            log.warning("%s %s timed out", method, safe)
            # "from None": an httpx error holds the request, whose body may carry a token.
            raise TransientProviderError(f"{what} {safe} timed out", kind="timeout") from None
        except (httpx.RequestError, httpx.InvalidURL) as exc:
            log.warning("%s %s failed: %s", method, safe, type(exc).__name__)
            raise TransientProviderError(
                f"{what} {safe} unreachable ({type(exc).__name__})", kind="network"
            ) from None
        log.debug("%s %s -> %d", method, safe, response.status_code)
        return response

    async def aclose(self) -> None:
        """Close the HTTP client. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        await self._http.aclose()


def safe_url(url: str) -> str:
    """The URL without query, fragment or credentials: fit for logs and messages."""
    try:
        return str(
            httpx.URL(url).copy_with(query=None, fragment=None, username=None, password=None)
        )
    except (httpx.InvalidURL, TypeError, ValueError):
        return "<invalid url>"


def json_object(response: httpx.Response, what: str, url: str) -> dict[str, Any]:
    """The answer's JSON object; anything else is a (transient) malformed answer."""
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError keeps the whole body in .doc: do not chain it
        raise TransientProviderError(
            f"{what} {safe_url(url)} answered with invalid JSON",
            kind="malformed",
            status_code=response.status_code,
        ) from None
    if not isinstance(body, dict):
        raise TransientProviderError(
            f"{what} {safe_url(url)} answered with JSON that is not an object",
            kind="malformed",
            status_code=response.status_code,
        )
    return body


def status_error(
    response: httpx.Response, what: str, url: str, *, redact: Iterable[str], now: float
) -> TransientProviderError | PermanentProviderError:
    """Classify a non-2xx answer. Only a 4xx carrying an OAuth ``error`` is permanent."""
    status = response.status_code
    safe = safe_url(url)
    retry_after = _parse_retry_after(response.headers.get("Retry-After"), now)
    oauth = _oauth_error(response, tuple(redact))
    log.warning("%s %s answered HTTP %d", what, safe, status)
    if status == 429:
        return TransientProviderError(
            f"{what} {safe} is rate limiting (HTTP 429)",
            kind="rate_limited",
            status_code=status,
            retry_after=retry_after,
        )
    if status >= 500 or (oauth is not None and oauth[0] in _TRANSIENT_OAUTH_ERRORS):
        detail = f": {oauth[0]}" if oauth else ""
        return TransientProviderError(
            f"{what} {safe} answered HTTP {status}{detail}",
            kind="server_error",
            status_code=status,
            retry_after=retry_after,
        )
    if status == 408:
        return TransientProviderError(
            f"{what} {safe} answered HTTP 408", kind="timeout", status_code=status
        )
    if 400 <= status < 500 and oauth is not None:
        return PermanentProviderError(oauth[0], oauth[1], status_code=status)
    # A 4xx without an OAuth error (a proxy's 404, a 405, a bare 401) or a redirect does not
    # prove the grant dead: report it as malformed so callers retry and operators see it.
    return TransientProviderError(
        f"{what} {safe} answered HTTP {status} without an OAuth error "
        "(check the issuer and endpoint configuration)",
        kind="malformed",
        status_code=status,
        retry_after=retry_after,
    )


def _oauth_error(response: httpx.Response, redact: tuple[str, ...]) -> tuple[str, str] | None:
    """``(error, error_description)`` from an RFC 6749 5.2 body, cleaned, else None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if not isinstance(error, str) or not error.strip():
        return None
    description = body.get("error_description")
    return (
        _clean_text(error, _ERROR_CODE_LIMIT, redact),
        _clean_text(description, _DESCRIPTION_LIMIT, redact)
        if isinstance(description, str)
        else "",
    )


def _clean_text(text: str, limit: int, redact: Iterable[str]) -> str:
    """Provider-supplied text made safe to show: no control characters, no value we sent."""
    for value in redact:
        if value:
            text = text.replace(value, "<redacted>")
    text = _CONTROL_CHARS.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or HTTP-date), else None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was absent
        return None
    return max(0.0, when.timestamp() - now)
