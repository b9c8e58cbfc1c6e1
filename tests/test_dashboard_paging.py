"""The dashboard shows the newest page of a big vault and loads older entries on demand
(a real ``jupyter server`` and Debian's chromium, as in ``test_dashboard_browser.py``)."""

from __future__ import annotations

import asyncio
import getpass
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_dashboard_browser import browser_page, playwright_async
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
    port = _free_port()
    token = secrets.token_hex(16)
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
    argv = [
        jupyter,
        "server",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={home}",
        f"--OfflineTokenApp.vault_path={vault_path}",
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
    }
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}api/offline-token/health", params={"token": token}).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "jupyter server did not start"
            time.sleep(0.3)
        yield {"base": base, "token": token}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
