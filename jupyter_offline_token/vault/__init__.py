"""The encrypted vault: SQLite store + AES-256-GCM key ring."""

from .crypto import KeyRing
from .store import SCHEMA_VERSION, Vault

__all__ = ["SCHEMA_VERSION", "KeyRing", "Vault"]
