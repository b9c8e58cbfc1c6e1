"""Rows as records, and the plaintexts both backends encrypt (so a vault copied between
backends decrypts unchanged). A row is anything indexable by column name: ``sqlite3.Row`` or
psycopg's ``dict_row``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ...errors import VaultError
from ...models import AuditEvent, ConsentSecrets, SharedAccessToken, TokenRecord
from ...paging import Cursor, Page
from ...tasks.models import TaskRecord

R = TypeVar("R")


class Row(Protocol):
    def __getitem__(self, key: str, /) -> Any: ...


# The ``tokens`` columns a TokenRecord is built from (never a secret).
RECORD_COLUMNS = (
    "id, owner, issuer, client_id, status, scopes, created_at, updated_at, label, task_id, "
    "subject, consent_expires_at, return_to, last_refresh_at, refresh_count, last_error, "
    "last_error_kind, refresh_state, next_attempt_at, retry_count, idle_expires_at, keep_warm, "
    "secret_ct IS NOT NULL AS has_secret"
)
# The ``tasks`` columns (as ``t``) a TaskRecord is built from, with the linked entry's status.
TASK_COLUMNS = ", ".join(
    f"t.{name}"
    for name in (
        "id owner name description kind status persistent_token_id progress message result "
        "error spec created_at updated_at started_at completed_at queued_at runner"
    ).split()
)
AUDIT_COLUMNS = "id, ts, owner, token_id, task_id, action, result, detail"


@dataclass(frozen=True)
class Refreshed:
    """What the one durable transaction of a successful refresh stores (see
    ``TokenStore.record_refresh``). The secrets stay out of the repr."""

    token_id: str
    secret: bytes | None = field(repr=False)  # the rotated refresh token; None: keep the old
    access: SharedAccessToken | None = field(repr=False)  # None: clear the shared one
    idle_expires_at: float | None
    now: float
    holder: str | None
    event: AuditEvent | None
    retention: int


def token_record(row: Row) -> TokenRecord:
    return TokenRecord(
        id=row["id"],
        owner=row["owner"],
        issuer=row["issuer"],
        client_id=row["client_id"],
        status=row["status"],
        scopes=row["scopes"].split(),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        label=row["label"],
        task_id=row["task_id"],
        subject=row["subject"],
        consent_expires_at=row["consent_expires_at"],
        return_to=row["return_to"],
        last_refresh_at=row["last_refresh_at"],
        refresh_count=row["refresh_count"],
        last_error=row["last_error"],
        last_error_kind=row["last_error_kind"],
        refresh_state=row["refresh_state"],
        next_attempt_at=row["next_attempt_at"],
        retry_count=row["retry_count"],
        idle_expires_at=row["idle_expires_at"],
        keep_warm=bool(row["keep_warm"]),
        has_secret=bool(row["has_secret"]),
    )


def task_record(row: Row) -> TaskRecord:
    spec = json.loads(row["spec"] or "{}")
    return TaskRecord(
        id=row["id"],
        owner=row["owner"],
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        status=row["status"],
        persistent_token_id=row["persistent_token_id"],
        progress=row["progress"],
        message=row["message"],
        result=row["result"],
        error=row["error"],
        command=spec.get("command"),
        notebook=spec.get("notebook"),
        parameters=spec.get("parameters") or {},
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        queued_at=row["queued_at"],
        runner=row["runner"],
        token_status=row["token_status"],
    )


def task_values(record: TaskRecord) -> tuple[object, ...]:
    """The values of ``sql.INSERT_TASK``, in its column order."""
    spec: dict[str, Any] = {"command": record.command, "notebook": record.notebook}
    spec["parameters"] = record.parameters
    head = (record.id, record.owner, record.name, record.description, record.kind)
    tail = (record.status, record.persistent_token_id, record.progress, record.message)
    return (*head, *tail, json.dumps(spec), record.created_at, record.updated_at)


def audit_event(row: Row) -> AuditEvent:
    return AuditEvent(
        ts=row["ts"],
        action=row["action"],
        result=row["result"],
        token_id=row["token_id"],
        task_id=row["task_id"],
        owner=row["owner"],
        detail=row["detail"],
        id=row["id"],
    )


def keyset_page(found: Sequence[Row], limit: int, build: Callable[[Row], R]) -> Page[R]:
    """A page from up to ``limit + 1`` rows carrying ``created_at`` and the order key ``_r``:
    the extra row only says that there is a next page."""
    more = len(found) > limit
    found = found[:limit]
    after = Cursor(found[-1]["created_at"], found[-1]["_r"]).encode() if more else None
    return Page([build(row) for row in found], after)


def encode_consent(secrets: ConsentSecrets) -> bytes:
    return json.dumps(
        {
            "code_verifier": secrets.code_verifier,
            "nonce": secrets.nonce,
            "redirect_uri": secrets.redirect_uri,
        }
    ).encode()


def encode_access(access: SharedAccessToken) -> bytes:
    """The shared access token's plaintext (its expiry also stands in its own column, so an
    expired one is skipped without decrypting)."""
    return json.dumps(
        {
            "access_token": access.access_token,
            "token_type": access.token_type,
            "expires_at": access.expires_at,
            "scope": access.scope,
        }
    ).encode()


def decode_access(plain: bytes, expires_at: float) -> SharedAccessToken | None:
    """The token, expiring at the column's ``expires_at``; None when the plaintext is
    malformed (it is only a cache)."""
    try:
        fields = json.loads(plain)
        scope = fields.get("scope")
        return SharedAccessToken(
            access_token=str(fields["access_token"]),
            token_type=str(fields.get("token_type") or "Bearer"),
            expires_at=float(expires_at),
            scope=scope if isinstance(scope, str) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def decode_consent(plain: bytes, token_id: str) -> ConsentSecrets:
    """VaultError (naming the entry, never the data) when the plaintext is malformed."""
    try:
        data = json.loads(plain)
        return ConsentSecrets(
            code_verifier=str(data["code_verifier"]),
            nonce=str(data["nonce"]),
            redirect_uri=str(data["redirect_uri"]),
        )
    except (ValueError, KeyError, TypeError):
        raise VaultError(f"the consent secrets of vault entry {token_id} are malformed") from None
