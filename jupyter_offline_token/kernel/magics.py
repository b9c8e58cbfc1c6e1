"""The ``%offline_token`` line magic (``%load_ext jupyter_offline_token``).

Bad input never produces a traceback: argument errors print the usage, server errors print the
typed error's message (which says what to do). ``token ID --var NAME`` stores the access token in
the user namespace and prints only the variable name and the remaining lifetime.
"""

from __future__ import annotations

import argparse
import keyword
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from IPython.core.magic import Magics, line_magic, magics_class

from .client import OfflineTokenClient, get_default_client
from .errors import OfflineTokenClientError
from .tasks import Task
from .tokens import OfflineToken, in_notebook, request_offline_token

USAGE = """\
usage: %offline_token <command> [options]

commands:
  request [--label L] [--task ID] [--scope S ...]   ask for offline access (consent link)
  list [--status S]                                 your offline tokens
  status ID                                         one token's status and health
  token ID [--var NAME] [--min-ttl SECONDS]         put a fresh access token in variable NAME
                                                    (default NAME: access_token; never printed)
  refresh ID                                        refresh now (rate-limited; no token shown)
  revoke ID [--keep-at-provider] [--force]          revoke at the provider and delete the entry
  tasks [--status S]                                your tasks
  watch TASK_ID                                     live progress of a task
  help                                              this text
"""


class _UsageError(Exception):
    """argparse wanted to print an error and exit."""


class _ParserExit(Exception):
    """argparse wanted to exit (after ``-h``)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of calling ``sys.exit``."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, file=sys.stderr)
        raise _ParserExit(status)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(c) if c is not None else "" for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def _identifier(value: str) -> str:
    if not value.isidentifier() or keyword.iskeyword(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid Python variable name")
    return value


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= number <= 86400:
        raise argparse.ArgumentTypeError("--min-ttl must be between 0 and 86400 seconds")
    return number


@magics_class
class OfflineTokenMagics(Magics):
    """``%offline_token``: request, inspect and use offline tokens from a notebook.

    Example::

        %load_ext jupyter_offline_token
        %offline_token request --label nightly
        %offline_token token 0b6f... --var tok
    """

    def __init__(self, shell: Any = None, *, client: OfflineTokenClient | None = None) -> None:
        super().__init__(shell)
        self._client = client
        self._tokens: dict[str, OfflineToken] = {}
        self.parser = self._build_parser()

    @property
    def client(self) -> OfflineTokenClient:
        """The client used by the magic (the process default unless one was given)."""
        return self._client or get_default_client()

    def _build_parser(self) -> _Parser:
        parser = _Parser(prog="%offline_token", add_help=False)
        sub = parser.add_subparsers(dest="command", parser_class=_Parser)
        sub.required = True
        commands: dict[str, Callable[[argparse.Namespace], None]] = {}

        def add(name: str, handler: Callable[[argparse.Namespace], None]) -> _Parser:
            commands[name] = handler
            return sub.add_parser(name, prog=f"%offline_token {name}")

        p = add("request", self._request)
        p.add_argument("--label", default=None)
        p.add_argument("--task", default=None, metavar="TASK_ID")
        p.add_argument("--scope", action="append", default=None, metavar="SCOPE")
        p = add("list", self._list)
        p.add_argument("--status", default=None)
        p = add("status", self._status)
        p.add_argument("id")
        p = add("token", self._token)
        p.add_argument("id")
        p.add_argument("--var", type=_identifier, default="access_token", metavar="NAME")
        p.add_argument("--min-ttl", type=_non_negative, default=30.0, metavar="SECONDS")
        p = add("refresh", self._refresh)
        p.add_argument("id")
        p = add("revoke", self._revoke)
        p.add_argument("id")
        p.add_argument("--keep-at-provider", action="store_true")
        p.add_argument("--force", action="store_true")
        p = add("tasks", self._tasks)
        p.add_argument("--status", default=None)
        p = add("watch", self._watch)
        p.add_argument("task_id")
        add("help", lambda _args: print(USAGE))
        self._commands = commands
        return parser

    @line_magic
    def offline_token(self, line: str) -> None:
        """Request, list, inspect, use and revoke offline tokens; see ``%offline_token help``."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            print(f"%offline_token: {exc}\n\n{USAGE}", file=sys.stderr)
            return
        if not argv:
            print(USAGE)
            return
        try:
            args = self.parser.parse_args(argv)
        except _UsageError as exc:
            print(f"%offline_token: {exc}\n\n{USAGE}", file=sys.stderr)
            return
        except _ParserExit:
            return
        try:
            self._commands[args.command](args)
        except OfflineTokenClientError as exc:
            print(f"%offline_token {args.command}: {exc.message}", file=sys.stderr)
        except (ValueError, TypeError) as exc:
            print(f"%offline_token {args.command}: {exc}", file=sys.stderr)

    # --- subcommands ---------------------------------------------------------------------------
    def _token_object(self, token_id: str) -> OfflineToken:
        token = self._tokens.get(token_id)
        if token is None:
            token = self._tokens[token_id] = OfflineToken(token_id, client=self.client)
        return token

    def _request(self, args: argparse.Namespace) -> None:
        token = request_offline_token(
            label=args.label, task=args.task, scopes=args.scope, client=self.client
        )
        self._tokens[token.id] = token
        if in_notebook():
            print(f"persistent_token_id: {token.id}")

    def _list(self, args: argparse.Namespace) -> None:
        entries = self.client.list_tokens(status=args.status)
        if not entries:
            print("no offline tokens" + (f" with status {args.status}" if args.status else ""))
            return
        rows = [
            (
                e.get("persistent_token_id"),
                e.get("status"),
                (e.get("health") or {}).get("level", ""),
                e.get("label"),
                e.get("last_refresh_at") or "never",
            )
            for e in entries
        ]
        print(_table(rows, ["ID", "STATUS", "HEALTH", "LABEL", "LAST REFRESH"]))

    def _status(self, args: argparse.Namespace) -> None:
        info = self._token_object(args.id).refresh()
        health = info.get("health") or {}
        fields = [
            ("persistent_token_id", info.get("persistent_token_id")),
            ("label", info.get("label")),
            ("status", info.get("status")),
            ("health", health.get("level")),
            ("detail", health.get("detail")),
            ("action", health.get("action")),
            ("subject", info.get("subject")),
            ("scopes", " ".join(info.get("scopes") or [])),
            ("created_at", info.get("created_at")),
            ("last_refresh_at", info.get("last_refresh_at")),
            ("refresh_count", info.get("refresh_count")),
            ("last_error", info.get("last_error")),
            ("tasks", ", ".join(info.get("tasks") or [])),
        ]
        print("\n".join(f"{k}: {v}" for k, v in fields if v not in (None, "")))

    def _token(self, args: argparse.Namespace) -> None:
        access = self._token_object(args.id).access_token_info(min_ttl=args.min_ttl)
        if self.shell is None:
            raise TypeError("%offline_token token needs an IPython shell")
        self.shell.user_ns[args.var] = access.value
        print(f"access token stored in {args.var} (expires in {max(0, int(access.remaining()))} s)")

    def _refresh(self, args: argparse.Namespace) -> None:
        info = self._token_object(args.id).force_refresh()
        print(
            f"offline token {args.id} refreshed at {info.get('last_refresh_at')} "
            f"(refresh #{info.get('refresh_count')}; health: "
            f"{(info.get('health') or {}).get('level', '')})"
        )

    def _revoke(self, args: argparse.Namespace) -> None:
        result = self._token_object(args.id).revoke(
            at_provider=not args.keep_at_provider, force=args.force
        )
        self._tokens.pop(args.id, None)
        how = "deleted (kept at the provider)" if args.keep_at_provider else "revoked and deleted"
        print(f"offline token {args.id} {how}")
        if result.get("warning"):
            print(f"warning: {result['warning']}")

    def _tasks(self, args: argparse.Namespace) -> None:
        tasks = self.client.list_tasks(status=args.status)
        if not tasks:
            print("no tasks" + (f" with status {args.status}" if args.status else ""))
            return
        rows = [
            (
                t.get("id"),
                t.get("status"),
                f"{float(t.get('progress') or 0):.0f} %",
                t.get("kind"),
                t.get("name"),
                t.get("persistent_token_id") or "-",
            )
            for t in tasks
        ]
        print(_table(rows, ["ID", "STATUS", "PROGRESS", "KIND", "NAME", "TOKEN"]))

    def _watch(self, args: argparse.Namespace) -> None:
        task = Task(args.task_id, client=self.client)
        task.refresh()
        if in_notebook():
            from IPython.display import display

            display(task.widget())
            return
        try:
            for state in task.events():
                line = f"{state.get('status')} {float(state.get('progress') or 0):.0f} %"
                if state.get("message"):
                    line += f" - {state['message']}"
                print(line, flush=True)
        except KeyboardInterrupt:
            print("stopped watching")


def load_ipython_extension(ipython: Any) -> None:
    """Register ``%offline_token`` (called by ``%load_ext jupyter_offline_token``).

    Example::

        %load_ext jupyter_offline_token
    """
    ipython.register_magics(OfflineTokenMagics(ipython))
