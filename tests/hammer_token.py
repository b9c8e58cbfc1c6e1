"""A second (and third) process sharing the server's vault: refresh one token N times.

Used by test_grant_cross_process.py. Prints one JSON line: {"ok": n, "errors": [codes]}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from jupyter_offline_token.broker import ProviderSettings, TokenBroker
from jupyter_offline_token.errors import OfflineTokenError
from jupyter_offline_token.oidc import ProviderClient
from jupyter_offline_token.stores import SQLiteTokenStore


async def main(vault_path: str, key: str, issuer: str, client_id: str, token_id: str, n: int):
    secret = sys.stdin.readline().strip()  # never on the command line
    vault = SQLiteTokenStore(Path(vault_path), encryption_keys=[key])
    await vault.open()
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


if __name__ == "__main__":
    v, k, iss, cid, tid, count = sys.argv[1:7]
    asyncio.run(main(v, k, iss, cid, tid, int(count)))
