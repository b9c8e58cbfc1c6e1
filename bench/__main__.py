"""``python -m bench [--quick] [--only NAME ...]``: run the benchmarks and print their figures.

Exit status 0 even when a target is missed (PASS/MISS lines are reports); 1 only when a
benchmark could not run at all (an exception, or its time limit).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable

from . import (
    access_cached,
    dask_workers,
    postgres_store,
    refresh_path,
    shared_vault,
    single_flight,
    vault_scale,
    vault_scale_pg,
)
from .harness import Settings

BENCHMARKS: dict[str, Callable[[Settings], Awaitable[None]]] = {
    "access_cached": access_cached.run,
    "single_flight": single_flight.run,
    "refresh_path": refresh_path.run,
    "vault_scale": vault_scale.run,
    "dask_workers": dask_workers.run,
    "shared_vault": shared_vault.run,
    "pg_shared_vault": shared_vault.run_postgres,
    "pg_cached": postgres_store.run_cached,
    "pg_refresh": postgres_store.run_refresh,
    "pg_vault_scale": vault_scale_pg.run,
}
# Wall-clock limit of each benchmark, (quick, full) seconds; cleanup runs on expiry.
TIME_LIMITS = {
    "access_cached": (60, 300),
    "single_flight": (60, 300),
    "refresh_path": (60, 300),
    "vault_scale": (120, 420),
    "dask_workers": (240, 900),
    "shared_vault": (600, 1200),  # SQLite, then PostgreSQL
    "pg_shared_vault": (300, 600),
    "pg_cached": (90, 420),
    "pg_refresh": (60, 300),
    "pg_vault_scale": (180, 600),
}


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        return "not found"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~30 s each)")
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick)
    names = args.only or list(BENCHMARKS)
    print(
        f"# jupyter-offline-token benchmarks ({'quick' if args.quick else 'full'}) "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        f"# python {platform.python_version()}, node {_node_version()}, "
        f"{platform.machine()} {platform.system()}",
        flush=True,
    )
    failed: list[str] = []
    for name in names:
        print(f"\n## {name}", flush=True)
        started = time.monotonic()
        limit = TIME_LIMITS[name][0 if args.quick else 1]
        try:
            asyncio.run(asyncio.wait_for(BENCHMARKS[name](settings), timeout=limit))
        except Exception as exc:
            failed.append(name)
            if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
                print(f"  ERROR: {name} exceeded its {limit} s limit")
            else:
                traceback.print_exc()
                print(f"  ERROR: {name} could not run: {type(exc).__name__}: {exc}")
        print(f"  ({name} took {time.monotonic() - started:.1f} s)", flush=True)
    if failed:
        print(f"\nbenchmarks that could not run: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
