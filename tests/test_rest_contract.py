"""The REST contract: the same scenario list (rest_scenarios.py) against the real server and
against kernel.testing.FakeOfflineTokenAPI, so the fake users test with cannot drift."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from rest_scenarios import MAX_PENDING, ServerWorld, run

from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI

pytestmark = pytest.mark.timeout(120)


class FakeWorld:
    def __init__(self, fake: FakeOfflineTokenAPI) -> None:
        self.fake = fake
        self.http = httpx.Client(
            base_url=fake.base_url + "api/offline-token/",
            headers={"Authorization": f"token {fake.server_token}"},
            transport=fake.transport(),
        )

    async def request(
        self, method: str, path: str, *, raw: bytes | None, params: dict[str, str]
    ) -> tuple[int, Any]:
        response = self.http.request(method, path, content=raw, params=params)
        if "json" in response.headers.get("Content-Type", "") and response.content:
            return response.status_code, response.json()
        return response.status_code, response.text

    async def grant(self, consent_url: str) -> None:
        assert self.http.get(consent_url).status_code == 200


def test_the_fake_follows_the_contract():
    problems = asyncio.run(run(FakeWorld(FakeOfflineTokenAPI(max_pending_consents=MAX_PENDING))))
    assert not problems, "\n".join(problems)


@pytest.fixture
def offline_token_config(offline_token_config):
    return {**offline_token_config, "max_pending_consents": MAX_PENDING}


async def test_the_server_follows_the_contract(api, idp, tasks):
    problems = await run(ServerWorld(api, idp))
    assert not problems, "\n".join(problems)
