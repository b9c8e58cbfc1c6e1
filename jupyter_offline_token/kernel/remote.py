"""What OfflineToken and Task share: an id on the server, a client, the last JSON seen."""

from __future__ import annotations

from typing import Any

from .client import OfflineTokenClient, get_default_client


class RemoteRecord:
    """A server-side object seen from the kernel; ``refresh()`` re-reads it (one GET)."""

    _id: str
    _client: OfflineTokenClient | None
    _info: dict[str, Any]

    @property
    def id(self) -> str:
        """The server's id: the ``persistent_token_id`` of a token, the id of a task."""
        return self._id

    @property
    def client(self) -> OfflineTokenClient:
        """The client this object talks through (the process default unless one was given)."""
        return self._client or get_default_client()

    @property
    def info(self) -> dict[str, Any]:
        """The last JSON seen from the server (a copy; no HTTP)."""
        return dict(self._info)

    @property
    def known_status(self) -> str:
        """The last status seen, without asking the server."""
        return str(self._info.get("status") or "unknown")

    @property
    def status(self) -> str:
        """The current status (one GET)."""
        return str(self.refresh()["status"])

    def refresh(self) -> dict[str, Any]:
        raise NotImplementedError
