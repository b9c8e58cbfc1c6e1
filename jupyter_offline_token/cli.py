"""``jupyter-offline-token`` (also ``jupyter offline-token``): small admin commands (no server
needed)."""

from __future__ import annotations

import argparse
import sys


def settings_reference() -> str:
    """Every OfflineTokenApp setting with its help, default, choices and environment variable.

    ``jupyter server --help-all`` lists the server's own classes only, not an extension's;
    this is where an admin finds ours.
    """
    from .app import OfflineTokenApp
    from .settings import ENVIRONMENT

    lines = [
        "OfflineTokenApp settings (jupyter-offline-token)",
        "",
        "Set them in jupyter_server_config.py as c.OfflineTokenApp.<name> = ..., or on the",
        "command line as --OfflineTokenApp.<name>=... . Secrets (client_secret, encryption_keys)",
        "belong in files (client_secret_file, encryption_keys_file) or environment variables,",
        "not inline in a config file.",
        "",
    ]
    traits = OfflineTokenApp.setting_traits()
    for name in sorted(traits):
        lines.append(OfflineTokenApp.class_get_trait_help(traits[name]))
        env = ENVIRONMENT.get(name)
        if env:
            lines.append(f"    Environment: ${env} (used when the setting is not configured)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve"]:
        # Every argument after `serve` goes to jupyter_server (--OfflineTokenApp.<name>=...).
        try:
            from .hub_service import main as serve
        except ImportError as exc:
            sys.stderr.write(
                f"jupyter-offline-token serve needs JupyterHub in this environment ({exc}); "
                "run it with the hub's Python (pip install jupyterhub)\n"
            )
            return 2
        return serve(args_list[1:])
    if "--help-all" in args_list:
        sys.stdout.write(settings_reference())
        return 0
    parser = argparse.ArgumentParser(
        prog="jupyter-offline-token",
        description="Admin helpers for jupyter-offline-token (also run as "
        "`jupyter offline-token ...`). --help-all lists every setting.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "generate-key",
        help="print a new random AES-256 key for OfflineTokenApp.encryption_keys(_file)",
    )
    sub.add_parser(
        "serve",
        help="run the broker as a JupyterHub-managed service (the service's 'command'); "
        "--OfflineTokenApp.<name>=... arguments are passed on",
    )
    sub.add_parser(
        "config",
        help="list every OfflineTokenApp setting: help, default, environment variable",
    )
    from . import copy_vault_command, rotate_keys_command

    copy_vault_command.add_parser(sub)
    rotate_keys_command.add_parser(sub)
    args = parser.parse_args(args_list)
    if args.command == "generate-key":
        from .crypto import KeyRing

        sys.stdout.write(KeyRing.generate() + "\n")
    elif args.command == "config":
        sys.stdout.write(settings_reference())
    elif args.command == "copy-vault":
        return copy_vault_command.run(args)
    elif args.command == "rotate-keys":
        return rotate_keys_command.run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
