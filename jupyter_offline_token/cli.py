"""``jupyter-offline-token``: small admin commands (no server needed)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jupyter-offline-token", description="Admin helpers for jupyter-offline-token."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "generate-key",
        help="print a new random AES-256 key for OfflineTokenApp.encryption_keys",
    )
    args = parser.parse_args(argv)
    if args.command == "generate-key":
        from .vault.crypto import KeyRing

        sys.stdout.write(KeyRing.generate() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
