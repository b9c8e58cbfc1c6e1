"""The TokenStore methods whose logic is the same in every SQL backend: the checks, the SQL
and the records are shared; a backend supplies how one statement runs (``_fetch`` for a read,
``_update`` for a one-row write), its order key and its "no limit" value, and the
transactions of the consent and refresh writes (``_insert_pending``, ``_activate``,
``_record_refresh``: where it encrypts, what it locks)."""

from __future__ import annotations

import builtins
import uuid
from abc import abstractmethod
from typing import Any, ClassVar, Protocol

from ...crypto import KeyRing
from ...models import (
    PENDING,
    TOKEN_STATUSES,
    AuditEvent,
    ConsentSecrets,
    SharedAccessToken,
    TokenRecord,
)
from ...paging import Cursor, Page, check_limit
from . import checks, sql
from .records import Refreshed, Row, audit_event, encode_consent, keyset_page, token_record


class StoreDatabase(Protocol):
    keyring: KeyRing

    @property
    def state(self) -> str:
        """new, open or closed."""


class EntryMethods:
    """Mixed in before ``TokenStore``. ``_fetch`` and ``_update`` take SQL with ``?``
    placeholders (``sql.pyformat`` converts it where the driver wants ``%s``)."""

    # The column that orders rows inserted at the same ``created_at`` (SQLite's rowid).
    order_key: ClassVar[str]
    # The LIMIT value that means "no limit".
    no_limit: ClassVar[object]
    # Audit events kept per token (the backend's setting).
    audit_retention: int
    database: StoreDatabase

    @property
    def keyring(self) -> KeyRing:
        return self.database.keyring

    def _describe(self, where: str) -> str:
        """The repr: where the vault is (never a password), its state and key ids."""
        keyring = getattr(self.database, "keyring", None)
        key_ids = sorted(keyring.key_ids) if keyring is not None else []
        return f"{type(self).__name__}({where}, state={self.database.state}, key_ids={key_ids!r})"

    @abstractmethod
    async def _fetch(self, statement: str, params: Any = ()) -> builtins.list[Row]:
        """The rows of one read statement."""

    @abstractmethod
    async def _update(self, token_id: str, assignments: str, params: tuple[Any, ...]) -> None:
        """``UPDATE tokens SET <assignments>`` for one entry; EntryGone when it does not exist."""

    @abstractmethod
    async def _insert_pending(
        self, values: tuple[object, ...], payload: bytes, *, owner: str, now: float
    ) -> TokenRecord:
        """Encrypt ``payload`` (the consent secrets) and insert the entry: ``values`` in
        ``sql.INSERT_PENDING``'s order up to ``state_hash`` (the first is the new id), under
        the pending-consent cap. VaultError when ``state_hash`` is taken."""

    @abstractmethod
    async def _activate(
        self, token_id: str, secret: bytes, params: tuple[object, ...]
    ) -> TokenRecord:
        """Encrypt ``secret`` for the entry's owner and run ``sql.ACTIVATE`` with ``params``
        (subject, scopes, idle_expires_at, now) in one transaction. EntryGone."""

    @abstractmethod
    async def _record_refresh(self, refreshed: Refreshed) -> TokenRecord:
        """The one durable transaction of a successful refresh."""

    async def _records(self, statement: str, params: Any = ()) -> builtins.list[TokenRecord]:
        return [token_record(row) for row in await self._fetch(statement, params)]

    async def _ids(self, statement: str, params: Any = ()) -> builtins.list[str]:
        return [row["id"] for row in await self._fetch(statement, params)]

    # --- consent and the refresh path ----------------------------------------------------------
    async def create_pending(
        self,
        *,
        owner: str,
        issuer: str,
        client_id: str,
        scopes: builtins.list[str],
        state_hash: str,
        secrets: ConsentSecrets,
        consent_expires_at: float,
        label: str = "",
        task_id: str | None = None,
        return_to: str | None = None,
        now: float,
    ) -> TokenRecord:
        scope_text = checks.scopes_text(scopes)
        checks.check_state_hash(state_hash)
        values: tuple[object, ...] = (str(uuid.uuid4()), owner, issuer, client_id, PENDING)
        values += (scope_text, now, now, label, task_id, consent_expires_at, return_to)
        values += (state_hash,)
        payload = encode_consent(secrets)
        return await self._insert_pending(values, payload, owner=owner, now=now)

    async def activate(
        self,
        token_id: str,
        *,
        refresh_token: str,
        subject: str | None,
        scopes: builtins.list[str],
        idle_expires_at: float | None,
        now: float,
    ) -> TokenRecord:
        secret = checks.refresh_secret(refresh_token)
        params = (subject, checks.scopes_text(scopes), idle_expires_at, now)
        return await self._activate(token_id, secret, params)

    async def record_refresh(
        self,
        token_id: str,
        *,
        new_refresh_token: str | None,
        idle_expires_at: float | None,
        now: float,
        holder: str | None = None,
        audit: AuditEvent | None = None,
        access: SharedAccessToken | None = None,
    ) -> TokenRecord:
        """Returns after a durable COMMIT: the rotated refresh token is safe before the access
        token of that answer leaves the process."""
        secret = checks.rotated_secret(new_refresh_token)
        retention = self.audit_retention
        refreshed = Refreshed(
            token_id, secret, access, idle_expires_at, now, holder, audit, retention
        )
        return await self._record_refresh(refreshed)

    # --- reading ------------------------------------------------------------------------------
    async def get(self, token_id: str) -> TokenRecord | None:
        found = await self._records(sql.RECORD_BY_ID, (token_id,))
        return found[0] if found else None

    async def find_by_state_hash(self, state_hash: str) -> TokenRecord | None:
        found = await self._records(sql.RECORD_BY_STATE_HASH, (state_hash,))
        return found[0] if found else None

    async def list(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[TokenRecord]:
        checks.check_listing(limit, offset)
        where, params = sql.owner_status_filter(owner, status)
        statement = sql.SELECT_RECORD + sql.where_clause(where)
        statement += f" ORDER BY created_at DESC, {self.order_key} DESC LIMIT ? OFFSET ?"
        params += [self.no_limit if limit is None else limit, offset]
        return await self._records(statement, params)

    async def sharing_account(
        self, token_id: str, *, owner: str, subject: str, client_id: str, limit: int = 100
    ) -> builtins.list[str]:
        check_limit(limit)
        statement = sql.sharing_account(self.order_key)
        return await self._ids(statement, (owner, subject, client_id, token_id, limit))

    async def list_page(
        self,
        *,
        owner: str | None = None,
        status: str | None = None,
        limit: int,
        cursor: Cursor | None = None,
        attention: bool = False,
    ) -> Page[TokenRecord]:
        check_limit(limit)
        order = self.order_key
        where, params = sql.owner_status_filter(owner, status)
        if attention:
            where.append(sql.ATTENTION)  # the exact term of the tokens_attention partial index
        if cursor is not None:
            where.append(f"(created_at, {order}) < (?, ?)")
            params += [cursor.created_at, cursor.rowid]
        statement = sql.select_records(order) + sql.where_clause(where)
        statement += f" ORDER BY created_at DESC, {order} DESC LIMIT ?"
        params.append(limit + 1)
        return keyset_page(await self._fetch(statement, params), limit, token_record)

    async def count_by_status(self, owner: str | None = None) -> dict[str, int]:
        """Read from ``token_counts`` (kept by triggers): a few rows per owner."""
        where, params = sql.owner_status_filter(owner, None)
        statement = sql.COUNT_BY_STATUS + sql.where_clause(where) + " GROUP BY status"
        counts = dict.fromkeys(TOKEN_STATUSES, 0)
        for row in await self._fetch(statement, params):
            counts[row["status"]] = int(row["n"])
        return counts

    async def count_by_state(self, owner: str) -> dict[tuple[str, str], int]:
        found = await self._fetch(sql.COUNT_BY_STATE, (owner,))
        return {(row["status"], row["refresh_state"]): int(row["n"]) for row in found}

    async def stale_ids(self, before: float, *, limit: int = 1000) -> builtins.list[str]:
        return await self._ids(sql.STALE_IDS, (before, limit))

    # --- one-statement updates ----------------------------------------------------------------
    async def update_refresh_state(
        self,
        token_id: str,
        *,
        refresh_state: str,
        next_attempt_at: float | None,
        retry_count: int,
        last_error: str | None,
        now: float,
    ) -> None:
        checks.check_refresh_state(refresh_state)
        params = (refresh_state, next_attempt_at, retry_count, last_error, now)
        await self._update(token_id, sql.SET_REFRESH_STATE, params)

    async def mark_failed(
        self, token_id: str, *, error: str, now: float, kind: str | None = None
    ) -> None:
        checks.check_error_kind(kind)
        await self._update(token_id, sql.SET_FAILED, (error, kind, now))

    async def set_status(self, token_id: str, status: str, *, now: float) -> None:
        checks.check_status(status)
        await self._update(token_id, sql.SET_STATUS, (status, now))

    async def set_keep_warm(self, token_id: str, keep_warm: bool, *, now: float) -> None:
        await self._update(token_id, sql.SET_KEEP_WARM, (bool(keep_warm), now))

    # --- audit --------------------------------------------------------------------------------
    async def list_audit(self, token_id: str, *, limit: int = 100) -> builtins.list[AuditEvent]:
        checks.check_audit_limit(limit)
        return [audit_event(row) for row in await self._fetch(sql.AUDIT_NEWEST, (token_id, limit))]
