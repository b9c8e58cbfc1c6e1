r"""The typed interfaces between the broker and the parts that follow its vault entries.

The broker changes entries (consent granted, refreshed, failed, revoked) and serves access
tokens; the refresh engine and the task service react. Instead of attributes patched onto the
broker, each follower implements :class:`TokenEvents` and registers once with
``TokenBroker.add_listener``; the task service also answers :class:`TokenUsage`, which the
broker asks before a DELETE (``TokenBroker.use_token_usage``). The task service in turn tells
:class:`WarmthListener`\ s (the refresh engine, the activity beat) when a token's tasks start
and end, and the refresh engine's sweep asks its :class:`TaskHistory` to purge old tasks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .broker import AccessToken
    from .models import TokenRecord


class TokenEvents(Protocol):
    """What the broker tells its listeners, in registration order. A listener that raises is
    logged and does not stop the broker or the other listeners (except ``token_served_from_cache``,
    which runs on the hot path and must not fail)."""

    async def token_activated(self, record: TokenRecord) -> None:
        """A consent was granted: the entry is active (it may name a task to link)."""
        ...

    async def token_refreshed(self, record: TokenRecord, token: AccessToken) -> None:
        """A refresh at the provider succeeded; ``token`` is the new cached access token."""
        ...

    async def token_status_changed(self, record: TokenRecord) -> None:
        """The entry's status changed (activated, failed, expired, revoked or deleted)."""
        ...

    def token_served_from_cache(self, token_id: str) -> None:
        """An access-token request was served from the in-memory cache (no vault read)."""
        ...


class TokenUsage(Protocol):
    """Who uses a token: asked before a DELETE (409 ``token_in_use`` unless forced)."""

    async def tokens_in_use(self, token_id: str) -> list[str]:
        """Ids of the tasks running or queued with the token."""
        ...

    async def cancel_for_token(self, token_id: str) -> list[str]:
        """Cancel those tasks (a forced DELETE does this before it revokes); their ids."""
        ...


class WarmthListener(Protocol):
    """Told by the task service when a token's first running task starts (``warm``) or its last
    one ends; registered with ``TaskService.warmth.add_listener``."""

    async def task_warmth(self, token_id: str, warm: bool) -> None: ...


class TaskHistory(Protocol):
    """Finished tasks, purged by the refresh engine's sweep (``RefreshEngine.use_task_history``)."""

    async def purge_finished(self, before: float) -> int:
        """Delete finished tasks unchanged since ``before`` (epoch seconds); how many."""
        ...
