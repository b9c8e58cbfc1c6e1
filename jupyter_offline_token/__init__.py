"""jupyter-offline-token: grant OpenID Connect offline access once, get fresh access tokens later.

Importing this package is cheap: the server extension and the kernel helper are imported lazily,
so a kernel that does ``import jupyter_offline_token`` never loads tornado handlers or the vault.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import OfflineTokenApp

    return [{"module": "jupyter_offline_token", "app": OfflineTokenApp}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_offline_token`` registers the ``%offline_token`` magic."""
    from .kernel.magics import load_ipython_extension as _load

    _load(ipython)
