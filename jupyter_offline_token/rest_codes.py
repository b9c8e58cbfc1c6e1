"""Every machine code of the REST API's errors, ``{"error": code, "message": text}``, in one place.

The server raises errors with these constants and the kernel side maps them back to typed
exceptions from :data:`CODES`, so the two sides cannot disagree on a spelling. The module imports
nothing (no tornado, no httpx): a kernel, a task process or a Dask worker can import it.
``tests/test_rest_codes.py`` fails when the server passes any ``code="..."`` literal: the server
names every code by its constant here.
"""

from __future__ import annotations

from typing import NamedTuple


class ErrorCode(NamedTuple):
    """What a code means and how the kernel side treats it.

    ``status`` is the HTTP status the server answers with it (the page's status for codes of the
    consent callback, which renders HTML); ``kernel_error`` the name of the class in
    ``jupyter_offline_token.kernel.errors`` raised for it (None: chosen by HTTP status);
    ``advice`` what the kernel side appends to the message, if anything.
    """

    status: int
    meaning: str
    kernel_error: str | None = None
    advice: str | None = None


_CONSENT_AGAIN = "Request offline access again with request_offline_token()."

# --- bad input (400) ---------------------------------------------------------------------------
BAD_REQUEST = "bad_request"
INVALID_REQUEST = "invalid_request"
INVALID_JSON = "invalid_json"
INVALID_FIELD = "invalid_field"
UNKNOWN_FIELD = "unknown_field"
MISSING_FIELD = "missing_field"
BODY_TOO_LARGE = "body_too_large"
INVALID_QUERY = "invalid_query"
INVALID_CURSOR = "invalid_cursor"
INVALID_RETURN_TO = "invalid_return_to"
INVALID_SCOPE = "invalid_scope"
INVALID_KIND = "invalid_kind"
INVALID_NOTEBOOK = "invalid_notebook"
# --- who may ask, and where --------------------------------------------------------------------
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
TASK_CREDENTIAL_ENDED = "task_credential_ended"
NOT_FOUND = "not_found"
METHOD_NOT_ALLOWED = "method_not_allowed"
# --- the server cannot serve ------------------------------------------------------------------
INTERNAL_ERROR = "internal_error"
ERROR = "error"
NOT_CONFIGURED = "not_configured"
VAULT_UNAVAILABLE = "vault_unavailable"
REDIRECT_URI_UNKNOWN = "redirect_uri_unknown"
PROVIDER_UNAVAILABLE = "provider_unavailable"
PROVIDER_ERROR = "provider_error"
# --- a token in the wrong state -----------------------------------------------------------------
CONFLICT = "conflict"
WAITING_CONSENT = "waiting_consent"
NEEDS_CONSENT = "needs_consent"
TOKEN_FAILED = "token_failed"
TOKEN_REVOKED = "token_revoked"
CONSENT_EXPIRED = "consent_expired"
TOKEN_IN_USE = "token_in_use"
TOO_MANY_PENDING_CONSENTS = "too_many_pending_consents"
REFRESH_TOO_SOON = "refresh_too_soon"
# --- a task in the wrong state ------------------------------------------------------------------
TASK_RUNNING = "task_running"
ALREADY_RUNNING = "already_running"
TASK_FINISHED = "task_finished"
NOT_RUNNING = "not_running"
USE_CANCEL = "use_cancel"
TASK_CHANGED = "task_changed"
# --- the consent callback (an HTML page, not JSON) ------------------------------------------------
MISSING_STATE = "missing_state"
UNKNOWN_STATE = "unknown_state"
FOREIGN_STATE = "foreign_state"
STATE_USED = "state_used"
MISSING_CODE = "missing_code"
ACCESS_DENIED = "access_denied"
DECRYPT_FAILED = "decrypt_failed"
INVALID_ID_TOKEN = "invalid_id_token"
NO_REFRESH_TOKEN = "no_refresh_token"
CODE_REJECTED = "code_rejected"
CLIENT_REJECTED = "client_rejected"
EXCHANGE_FAILED = "exchange_failed"

CODES: dict[str, ErrorCode] = {
    BAD_REQUEST: ErrorCode(400, "the request is malformed", "InvalidRequest"),
    INVALID_REQUEST: ErrorCode(400, "the request's input is not acceptable", "InvalidRequest"),
    INVALID_JSON: ErrorCode(400, "the body is not a JSON object"),
    INVALID_FIELD: ErrorCode(400, "a body field has the wrong type or value"),
    UNKNOWN_FIELD: ErrorCode(400, "the body has a field the route does not accept"),
    MISSING_FIELD: ErrorCode(400, "a required body field is missing"),
    BODY_TOO_LARGE: ErrorCode(400, "the body is larger than 64 KiB"),
    INVALID_QUERY: ErrorCode(400, "a query parameter is not acceptable"),
    INVALID_CURSOR: ErrorCode(400, "'cursor' is not a next_cursor of a previous page"),
    INVALID_RETURN_TO: ErrorCode(400, "return_to is not a path on this server"),
    INVALID_SCOPE: ErrorCode(400, "a requested scope is not a single printable word"),
    INVALID_KIND: ErrorCode(400, "the task kind is unknown"),
    INVALID_NOTEBOOK: ErrorCode(400, "the task's notebook cannot be used"),
    UNAUTHORIZED: ErrorCode(401, "no credential", "AuthenticationFailed"),
    FORBIDDEN: ErrorCode(
        403,
        "the credential is refused, or a task credential reaches beyond its task",
        "AuthenticationFailed",
        "Check JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN or the task credential.",
    ),
    TASK_CREDENTIAL_ENDED: ErrorCode(
        403,
        "a task or worker credential that is unknown, or whose task run has ended",
        "TaskEnded",
        "The task ended or was cancelled: its credentials (and its workers') stop with it.",
    ),
    NOT_FOUND: ErrorCode(404, "unknown id (or another user's) or route", "NotFound"),
    METHOD_NOT_ALLOWED: ErrorCode(405, "the route does not take this method"),
    INTERNAL_ERROR: ErrorCode(500, "a bug; the server log has details"),
    ERROR: ErrorCode(500, "another HTTP error of jupyter_server"),
    NOT_CONFIGURED: ErrorCode(
        503, "the extension is not configured; the message names the setting", "NotConfigured"
    ),
    VAULT_UNAVAILABLE: ErrorCode(503, "the vault cannot open (key, schema); the message says why"),
    REDIRECT_URI_UNKNOWN: ErrorCode(
        409,
        "the server does not know its public URL for the provider's redirect",
        "RedirectURIUnknown",
        "Open this server's offline-token dashboard in your browser once and try again, or ask "
        "the administrator to set c.OfflineTokenApp.redirect_uri.",
    ),
    PROVIDER_UNAVAILABLE: ErrorCode(
        503,
        "a transient fault at the provider; Retry-After says when to try again",
        "ProviderUnavailable",
        "The provider is unreachable for now; try again in a moment.",
    ),
    PROVIDER_ERROR: ErrorCode(502, "the provider answered an error that is not the caller's"),
    CONFLICT: ErrorCode(409, "the entry's state forbids the operation"),
    WAITING_CONSENT: ErrorCode(
        409,
        "the consent was not granted yet",
        "ConsentPending",
        "Open the consent link and grant offline access, or call tok.wait().",
    ),
    NEEDS_CONSENT: ErrorCode(
        409,
        "the task has no usable offline token",
        "ConsentRequired",
        "Request offline access with request_offline_token() and link the token.",
    ),
    TOKEN_FAILED: ErrorCode(409, "the offline grant is dead", "TokenFailed", _CONSENT_AGAIN),
    TOKEN_REVOKED: ErrorCode(409, "the offline token was revoked", "TokenRevoked", _CONSENT_AGAIN),
    CONSENT_EXPIRED: ErrorCode(
        409, "nobody granted the consent before it expired", "ConsentExpired", _CONSENT_AGAIN
    ),
    TOKEN_IN_USE: ErrorCode(409, "a running task uses the token", "TokenInUse"),
    TOO_MANY_PENDING_CONSENTS: ErrorCode(
        429,
        "too many consents wait to be granted; Retry-After says when the oldest expires",
        "TooManyPendingConsents",
        "Grant or delete the consents already waiting (list_tokens(status='pending')), or wait "
        "until they expire.",
    ),
    REFRESH_TOO_SOON: ErrorCode(
        429,
        "the token was refreshed less than min_refresh_interval ago; Retry-After says when a "
        "forced refresh is allowed again",
        "RefreshTooSoon",
        "Its access token is fresh already; force another refresh after retry_after seconds.",
    ),
    TASK_RUNNING: ErrorCode(409, "the task runs; cancel it first"),
    ALREADY_RUNNING: ErrorCode(409, "execute on a running task", "TaskAlreadyRunning"),
    TASK_FINISHED: ErrorCode(409, "the task already ended"),
    NOT_RUNNING: ErrorCode(409, "the task is not running"),
    USE_CANCEL: ErrorCode(409, "a task is cancelled with the cancel route, not by a patch"),
    TASK_CHANGED: ErrorCode(409, "the task changed meanwhile; try again"),
    MISSING_STATE: ErrorCode(400, "the provider's redirect has no state"),
    UNKNOWN_STATE: ErrorCode(400, "the consent state is unknown"),
    FOREIGN_STATE: ErrorCode(403, "the consent belongs to another user"),
    STATE_USED: ErrorCode(409, "the consent link was already used"),
    MISSING_CODE: ErrorCode(400, "the provider's redirect has neither code nor error"),
    ACCESS_DENIED: ErrorCode(403, "the user declined at the provider"),
    DECRYPT_FAILED: ErrorCode(503, "the consent's secrets cannot be decrypted (key changed)"),
    INVALID_ID_TOKEN: ErrorCode(502, "the provider's id_token failed validation"),
    NO_REFRESH_TOKEN: ErrorCode(502, "the provider granted no offline token"),
    CODE_REJECTED: ErrorCode(400, "the provider rejected the authorization code"),
    CLIENT_REJECTED: ErrorCode(
        502, "the provider rejected the server's client configuration at the code exchange"
    ),
    EXCHANGE_FAILED: ErrorCode(502, "the code exchange failed"),
}

# Codes only the kernel side raises (no server answer carries them).
CLIENT_ERROR = "client_error"
SERVER_NOT_FOUND = "server_not_found"
SERVER_UNREACHABLE = "server_unreachable"
TASK_ERROR = "task_error"
CANCELLED = "cancelled"
CLIENT_CODES = frozenset(
    {CLIENT_ERROR, SERVER_NOT_FOUND, SERVER_UNREACHABLE, TASK_ERROR, CANCELLED}
)
