"""The dashboard shows the newest page of a big vault and loads older entries on demand
(a real ``jupyter server`` and Debian's chromium, as in ``test_dashboard_browser.py``)."""

from __future__ import annotations

import asyncio
import getpass
import os
import secrets
import time
from collections.abc import Iterator

import pytest
from test_dashboard_browser import _free_port, browser_page, playwright_async, serve_jupyter
from test_scale import fill

from jupyter_offline_token.stores import SQLiteTokenStore

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def big_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A server whose vault holds 230 entries of its user (the bulk fill of test_scale)."""
    home = tmp_path_factory.mktemp("paging")
    vault_path = home / "vault" / "vault.db"

    async def prepare() -> None:
        vault = SQLiteTokenStore(vault_path)
        await vault.open()
        try:
            await fill(vault, getpass.getuser(), 230, created_at=time.time() - 3600)
        finally:
            await vault.close()

    asyncio.run(prepare())
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
    }
    extra = [f"--OfflineTokenApp.vault_path={vault_path}"]
    yield from serve_jupyter("server", home, env, _free_port(), secrets.token_hex(16), extra)


async def test_dashboard_shows_a_page_and_loads_older_on_demand(big_server):
    async with browser_page() as page:
        expect = playwright_async.expect
        await page.goto(f"{big_server['base']}offline-token/?token={big_server['token']}")
        rows = page.get_by_test_id("token-row")
        await expect(rows).to_have_count(100)
        await expect(page.locator("#token-count")).to_have_text("(100+)")
        await expect(page.locator("#tasks-more")).to_be_hidden()
        more = page.get_by_test_id("tokens-more")
        await more.click()
        await expect(rows).to_have_count(200)
        await more.click()
        await expect(rows).to_have_count(230)
        await expect(page.locator("#token-count")).to_have_text("(230)")
        await expect(more).to_be_hidden()
        assert page.console_problems == []
