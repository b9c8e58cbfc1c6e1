"""Benchmark 3: the broker's whole refresh path against a raw httpx refresh grant (target <= 1.15x).

In-process: the token store + ``ProviderClient`` + ``TokenBroker`` built as app.py builds them, on a
temporary vault. ``broker.get_access_token(owner, id, min_ttl=10**6)`` always refreshes: lease,
decrypt, grant, encrypt the rotated refresh token, durable write (synchronous=FULL), audit.
The baseline posts the same grant with a kept-alive ``httpx.AsyncClient`` on a refresh token this
process obtained itself. The two alternate call by call (order swapped every pair).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from jupyter_offline_token.broker import ProviderSettings, TokenBroker
from jupyter_offline_token.crypto import KeyRing
from jupyter_offline_token.oidc import ProviderClient
from jupyter_offline_token.stores import SQLiteTokenStore, TokenStore

from .harness import (
    RAW_REDIRECT_URI,
    DevProvider,
    RawRefresher,
    Settings,
    check,
    own_refresh_token,
    show_latency,
)

TARGET_RATIO = 1.15
OWNER = "bench"


def build_broker(provider: DevProvider, vault_path: Path) -> TokenBroker:
    """The same parts OfflineTokenApp.build_services wires, for the dev provider."""
    return broker_on(provider, SQLiteTokenStore(vault_path, encryption_keys=[KeyRing.generate()]))


def broker_on(provider: DevProvider, vault: TokenStore) -> TokenBroker:
    """A broker on ``vault`` (any backend) for the dev provider, as the app wires it."""
    settings = ProviderSettings(
        issuer=provider.issuer,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        token_endpoint_auth_method="client_secret_basic",
    )
    client = ProviderClient(
        provider.issuer,
        provider.client_id,
        provider.client_secret,
        token_endpoint_auth_method="client_secret_basic",
    )
    return TokenBroker(vault, client, settings)


async def consent_through_broker(broker: TokenBroker, provider: DevProvider) -> str:
    _, url = await broker.create_consent(OWNER, redirect_uri=RAW_REDIRECT_URI, label="bench")
    location = await asyncio.to_thread(provider.complete_consent, url)
    query = parse_qs(urlsplit(location).query)
    active = await broker.complete_consent(OWNER, state=query["state"][0], code=query["code"][0])
    return active.id


async def run(settings: Settings) -> None:
    pairs = settings.pick(40, 400)
    print(f"  {pairs} interleaved pairs (broker refresh, raw grant) after 5 warm-up pairs")
    provider = DevProvider(access_token_ttl=300)
    await asyncio.to_thread(provider.start)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-refresh-") as tmp:
            broker = build_broker(provider, Path(tmp) / "vault" / "vault.db")
            await broker.vault.open()
            try:
                token_id = await consent_through_broker(broker, provider)
                raw = RawRefresher(provider, await own_refresh_token(provider))
                async with httpx.AsyncClient(timeout=30.0) as client:
                    broker_times, raw_times = await _interleave(
                        broker, token_id, raw, client, pairs
                    )
                record = await broker.vault.get(token_id)
            finally:
                await broker.aclose()
                await broker.vault.close()
    finally:
        await asyncio.to_thread(provider.stop)
    assert record is not None
    print(
        f"  vault entry after the run: status={record.status} refresh_count={record.refresh_count}"
    )
    raw_figures = show_latency("raw httpx refresh grant", raw_times)
    broker_figures = show_latency("broker refresh path", broker_times)
    mean_ratio = (sum(broker_times) / len(broker_times)) / (sum(raw_times) / len(raw_times))
    print(
        f"  ratios broker/raw: p50 {broker_figures['p50_ms'] / raw_figures['p50_ms']:.2f}x, "
        f"p99 {broker_figures['p99_ms'] / raw_figures['p99_ms']:.2f}x, mean {mean_ratio:.2f}x; "
        f"extra per refresh at p50: "
        f"{broker_figures['p50_ms'] - raw_figures['p50_ms']:.2f} ms"
    )
    check(
        "refresh path p50 / raw grant p50",
        broker_figures["p50_ms"] / raw_figures["p50_ms"],
        TARGET_RATIO,
        at_most=True,
    )


async def _interleave(
    broker: TokenBroker,
    token_id: str,
    raw: RawRefresher,
    client: httpx.AsyncClient,
    pairs: int,
) -> tuple[list[float], list[float]]:
    broker_times: list[float] = []
    raw_times: list[float] = []

    async def via_broker() -> float:
        started = time.perf_counter()
        await broker.get_access_token(OWNER, token_id, min_ttl=10**6)
        return time.perf_counter() - started

    for index in range(5 + pairs):
        if index % 2:
            broker_time, raw_time = await via_broker(), await raw.grant(client)
        else:
            raw_time, broker_time = await raw.grant(client), await via_broker()
        if index >= 5:
            broker_times.append(broker_time)
            raw_times.append(raw_time)
    return broker_times, raw_times
