"""A throwaway PostgreSQL server (issue 11), for the test suite (``tests/pg_fixture.py`` wraps it
in pytest fixtures) and the benchmarks (``bench/``): no pytest here.

``initdb`` in a temporary directory, ``postgres`` on a free loopback port with its Unix socket in
that directory, run as a non-root user (as root, which CI and sessions are, the directory is
handed to ``nobody`` and both programs run as ``nobody:nogroup``). Password authentication over
TCP (scram-sha-256), so URLs carry a password, as deployments' do. ``durable=False`` (the test
suite): ``fsync=off``, a functional suite, not a durability test. ``durable=True`` (benchmarks):
``fsync=on``, ``full_page_writes=on``, ``synchronous_commit=on``, a fair comparison with SQLite's
``synchronous=FULL``. ``stop()`` (fast shutdown) removes the directory; ``with
PostgresCluster(...) as cluster:`` starts and stops it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["SUPERUSER", "MissingPostgres", "PostgresCluster", "find_binaries"]

SUPERUSER = "postgres"
_START_DEADLINE = 60.0


class MissingPostgres(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_binaries() -> Path:
    """The bin directory of the newest PostgreSQL under /usr/lib/postgresql (Debian's layout),
    else wherever ``initdb`` is on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise MissingPostgres(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin "
        "or on PATH: install Debian's postgresql package (apt-get install --no-install-recommends "
        "postgresql; .ci/run does)"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One initdb'd cluster in a temporary directory, run by ``postgres`` as a non-root user."""

    def __init__(self, *, durable: bool = False) -> None:
        """``durable``: ``fsync=on``, ``full_page_writes=on``, ``synchronous_commit=on`` (a fair
        match for SQLite's ``synchronous=FULL`` in benchmarks) and PostgreSQL's default
        ``shared_buffers`` (128MB); else ``fsync=off`` and 32MB (many suites share a machine)."""
        self.durable = durable
        self.bin = find_binaries()
        # As root, under /tmp: $TMPDIR may be a directory ``nobody`` cannot enter.
        where = "/tmp" if os.getuid() == 0 and os.path.isdir("/tmp") else None  # noqa: S108
        self.root = Path(tempfile.mkdtemp(prefix="jot-pg-", dir=where))
        self.data = self.root / "data"
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._counter = 0
        self._as: dict[str, Any] = {}
        if os.getuid() == 0:
            # initdb and postgres refuse to run as root.
            self._as = {"user": "nobody", "group": "nogroup"}
            shutil.chown(self.root, "nobody", "nogroup")
        os.chmod(self.root, 0o700)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, check=False, **self._as)
        if done.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            shutil.chown(pwfile, "nobody", "nogroup")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        log = open(self.root / "postgres.log", "wb")
        self.process = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                *self._durability(),
                "-c",
                "max_connections=200",
                "-c",
                f"shared_buffers={'128MB' if self.durable else '32MB'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **self._as,
        )
        log.close()
        self._wait_ready()

    def _durability(self) -> list[str]:
        settings: tuple[str, ...]
        if self.durable:
            settings = ("fsync=on", "full_page_writes=on", "synchronous_commit=on")
        else:
            settings = ("fsync=off", "full_page_writes=off")
        return [arg for setting in settings for arg in ("-c", setting)]

    def __enter__(self) -> PostgresCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + _START_DEADLINE
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.server_log()}")
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def server_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "postgres.log").read_text(errors="replace")[-4000:]
        return ""

    def url(self, database: str, *, user: str = SUPERUSER, password: str | None = None) -> str:
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        self._counter += 1
        name = f"t{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement on the database at ``url`` (autocommit); its rows, if any."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(2)  # SIGINT: fast shutdown
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
