"""A further process sharing a PostgreSQL vault: refresh one token N times (like hammer_token.py
for SQLite). Used by test_postgres_servers.py. Arguments: the token id and N; the database URL,
key, issuer, client id and secret come on stdin as one JSON line (never on the command line).
Prints one JSON line: {"ok": n, "errors": [codes]}."""

from __future__ import annotations

import asyncio
import json
import sys

from jupyter_offline_token.broker import ProviderSettings, TokenBroker
from jupyter_offline_token.errors import OfflineTokenError
from jupyter_offline_token.oidc import ProviderClient
from jupyter_offline_token.stores.postgres import PostgresTokenStore


async def main(token_id: str, n: int) -> None:
    given = json.loads(sys.stdin.readline())
    vault = PostgresTokenStore(url=given["url"], encryption_keys=[given["key"]])
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


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
