"""A further process sharing the server's vault (SQLite or PostgreSQL): refresh one token N
times. Used by test_grant_cross_process.py and test_postgres_servers.py through ``hammer``.

Arguments: the token id and N. The vault (``"path"`` of a SQLite file or ``"url"`` of a
PostgreSQL database), key, issuer, client id and secret come on stdin as one JSON line (never on
the command line). Prints one JSON line: {"ok": n, "errors": [codes]}."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from jupyter_offline_token.broker import ProviderSettings, TokenBroker
from jupyter_offline_token.errors import OfflineTokenError
from jupyter_offline_token.oidc import ProviderClient
from jupyter_offline_token.stores.base import TokenStore


def _vault(given: dict[str, Any]) -> TokenStore:
    if "url" in given:
        from jupyter_offline_token.stores.postgres import PostgresTokenStore

        return PostgresTokenStore(url=given["url"], encryption_keys=[given["key"]])
    from jupyter_offline_token.stores import SQLiteTokenStore

    return SQLiteTokenStore(Path(given["path"]), encryption_keys=[given["key"]])


async def main(token_id: str, n: int) -> None:
    given = json.loads(sys.stdin.readline())
    vault = _vault(given)
    await vault.open()
    issuer, client_id, secret = given["issuer"], given["client_id"], given["secret"]
    provider = ProviderClient(issuer, client_id, secret)
    broker = TokenBroker(vault, provider, ProviderSettings(issuer, client_id, secret))
    ok, errors = 0, []
    for _ in range(n):
        try:
            # min_ttl beyond any lifetime: every call is a real refresh grant.
            await broker.get_access_token(None, token_id, min_ttl=10**9)
            ok += 1
        except OfflineTokenError as exc:
            errors.append(exc.code)
    await broker.aclose()
    await vault.close()
    print(json.dumps({"ok": ok, "errors": errors}), flush=True)


async def hammer(vault: dict[str, str], idp: Any, token_id: str, rounds: int) -> dict[str, Any]:
    """Run this script in a new process on ``vault`` ({"path": ...} or {"url": ...}) with the
    dev provider's client; its JSON result."""
    given = {
        **vault,
        "issuer": idp.issuer,
        "client_id": idp.client_id,
        "secret": idp.client_secret,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        token_id,
        str(rounds),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(json.dumps(given).encode() + b"\n")
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
