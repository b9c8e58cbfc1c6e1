"""JupyterHub scopes that the broker understands when it runs as a Hub-managed service.

Importable without JupyterHub: the identity (``JupyterHubUser``) carries the hub's user model,
whose ``scopes`` are the expanded scopes of the token or OAuth session that made the request. A
scope is held for one owner when the unfiltered scope is held, or the same scope filtered to
that user (``custom:offline-token:admin!user=bob``).
"""

from __future__ import annotations

from typing import Any

ADMIN_SCOPE = "custom:offline-token:admin"
HEALTH_SCOPE = "custom:offline-token:health"
SERVICE_NAME = "offline-token"

# The text an admin pastes into c.JupyterHub.custom_scopes (README's "JupyterHub service").
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    ADMIN_SCOPE: {
        "description": "Read the metadata and audit trail of, and revoke, other users' offline "
        "tokens (never their access or refresh tokens); audited as the acting user.",
    },
    HEALTH_SCOPE: {
        "description": "Read the offline-token service's health across all users: counts and "
        "the entries that need attention, without secrets.",
    },
}


def hub_scopes(user: Any) -> frozenset[str]:
    """The scopes of the request's hub identity (empty outside JupyterHub)."""
    model = getattr(user, "hub_user", None)
    scopes = model.get("scopes") if isinstance(model, dict) else None
    if not isinstance(scopes, list):
        return frozenset()
    return frozenset(s for s in scopes if isinstance(s, str))


def is_hub_service(user: Any) -> bool:
    """The request comes with a JupyterHub service's token, not a user's: such an identity
    owns no entries (service and user names are separate namespaces at the hub)."""
    model = getattr(user, "hub_user", None)
    return isinstance(model, dict) and model.get("kind") == "service"


def holds(scopes: frozenset[str], scope: str, owner: str | None = None) -> bool:
    """``scope`` unfiltered, or filtered to ``owner`` when one is given."""
    return scope in scopes or (owner is not None and f"{scope}!user={owner}" in scopes)
