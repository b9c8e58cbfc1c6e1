"""Services re-opens a vault that could not open at start, in the background (issue 11): the
logic of the loop, with a store that fails on demand and no waits (the first wait and the cap
set to 0). With a real PostgreSQL down at start, then lost and back: test_postgres_reconnect.py.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from jupyter_offline_token import services as services_module
from jupyter_offline_token.errors import VaultError
from jupyter_offline_token.services import Services, VaultUnavailable


class FlakyStore:
    """Fails ``open`` with the given messages in turn, then opens."""

    def __init__(self, failures: list[str]) -> None:
        self.failures = list(failures)
        self.opens = 0
        self.closed = False

    async def open(self) -> None:
        self.opens += 1
        if self.failures:
            raise VaultError(self.failures.pop(0))

    async def close(self) -> None:
        self.closed = True


async def _nothing() -> None:
    return None


def _services(store: FlakyStore) -> Services:
    task_store = SimpleNamespace(open=_nothing, close=_nothing)
    tasks = SimpleNamespace(store=task_store, start=_nothing, stop=_nothing)
    return Services(
        vault=store,  # type: ignore[arg-type]
        broker=SimpleNamespace(aclose=_nothing),  # type: ignore[arg-type]
        engine=SimpleNamespace(start=_nothing, stop=_nothing),  # type: ignore[arg-type]
        tasks=tasks,  # type: ignore[arg-type]
        activity=SimpleNamespace(stop=_nothing),  # type: ignore[arg-type]
    )


DOWN = "cannot connect to the vault database (postgresql://db/v): refused; check OfflineTokenApp.database_url"  # noqa: E501
SCHEMA = "the vault database has schema revision 99; check OfflineTokenApp.database_url"


@pytest.fixture
def no_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_module, "RETRY_FIRST", 0.0)
    monkeypatch.setattr(services_module, "RETRY_MAX", 0.0)


async def test_it_opens_once_the_store_does_and_logs_each_change_once(
    no_waits: None, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore([DOWN, DOWN, DOWN, SCHEMA, DOWN])
    services = _services(store)
    caplog.set_level(logging.INFO, logger="jupyter_offline_token")
    with pytest.raises(VaultUnavailable) as raised:
        await services.ready()
    assert "OfflineTokenApp.database_url" in str(raised.value)
    started: list[bool] = []
    opened = asyncio.Event()

    async def then() -> None:
        started.append(True)
        opened.set()

    services.retry_open(then)
    services.retry_open(then)  # a second call while retrying: the same loop
    await asyncio.wait_for(opened.wait(), 60)
    assert store.opens == 6 and started == [True]
    assert await services.ready() is services.broker and services.error is None
    messages = [r.getMessage() for r in caplog.records]
    unavailable = [m for m in messages if "vault unavailable" in m]
    assert unavailable == [
        f"offline-token vault unavailable: {DOWN}",
        f"offline-token vault unavailable: {SCHEMA}",
        f"offline-token vault unavailable: {DOWN}",
    ]
    assert messages.count("offline-token vault is available again") == 1
    await services.close()


async def test_the_503_answers_at_once_while_a_retry_is_under_way(no_waits: None) -> None:
    store = FlakyStore([DOWN])
    services = _services(store)
    with pytest.raises(VaultUnavailable):
        await services.ready()
    async with services._lock:  # an attempt in progress holds the lock
        with pytest.raises(VaultUnavailable):
            await asyncio.wait_for(services.ready(), 60)  # does not wait for it
    await services.close()


async def test_close_stops_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_module, "RETRY_FIRST", 3600.0)
    store = FlakyStore([DOWN] * 100)
    services = _services(store)
    with pytest.raises(VaultUnavailable):
        await services.ready()
    calls: list[Any] = []
    services.retry_open(lambda: calls.append(1))  # type: ignore[arg-type, func-returns-value]
    assert services.retrying
    retry = services._retry
    await services.close()
    assert retry is not None and retry.cancelled()
    assert not services.retrying and store.closed and store.opens == 1 and calls == []
    with pytest.raises(VaultUnavailable):
        await services.ready()


class SlowStore(FlakyStore):
    """Opens only when released: the first open is still under way when others ask."""

    def __init__(self) -> None:
        super().__init__([])
        self.release = asyncio.Event()

    async def open(self) -> None:
        self.opens += 1
        await self.release.wait()


async def test_callers_during_the_first_open_wait_for_it_instead_of_a_503() -> None:
    store = SlowStore()
    services = _services(store)
    callers = [asyncio.create_task(services.ready()) for _ in range(3)]
    await asyncio.sleep(0)  # every caller is inside ready() before the open finishes
    await asyncio.sleep(0)
    assert not any(c.done() for c in callers)
    store.release.set()
    brokers = await asyncio.gather(*callers)
    assert all(b is brokers[0] for b in brokers) and store.opens == 1
    await services.close()
