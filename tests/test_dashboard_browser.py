"""The dashboard and the JupyterLab launcher in a real browser (Debian's chromium + Playwright).

A real ``jupyter lab`` process (the installed package, as users run it) and the real dev
provider; the consent is completed at the provider in the same browser. Screenshots land in
``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
# Chromium logs every 4xx answer as a console error; a 409 from Execute without a token and a
# 429 from a second "Refresh now" at once are the API working as designed, not script errors.
EXPECTED_CONSOLE = re.compile(
    r"Failed to load resource: the server responded with a status of (409|429)"
)

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

playwright_async = pytest.importorskip("playwright.async_api")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def lab(idp, tmp_path_factory) -> Iterator[dict[str, str]]:
    """A real `jupyter lab` with the extension configured for the dev provider."""
    home = tmp_path_factory.mktemp("lab")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_OFFLINE_TOKEN_ISSUER": idp.issuer,
        "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": idp.client_id,
        "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": idp.client_secret,
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
    }
    yield from serve_jupyter("lab", home, env, port, token, ["--OfflineTokenApp.sweep_interval=5"])


def serve_jupyter(
    command: str,
    home: Path,
    env: dict[str, str],
    port: int,
    token: str,
    extra: list[str],
) -> Iterator[dict[str, str]]:
    """Run ``jupyter <command>`` on ``port`` until the offline-token API answers; yield its
    base URL and token; stop it (SIGTERM, then SIGKILL after 15 s) when the caller is done."""
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
    argv = [
        jupyter,
        command,
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={home}",
        *extra,
    ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ok = httpx.get(f"{base}api/offline-token/health", params={"token": token})
                if ok.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"jupyter {command} did not start"
            time.sleep(0.3)
        yield {"base": base, "token": token}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator[Any]:
    """A fresh headless chromium page that records console errors and page errors."""
    async with playwright_async.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        context = await chromium.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.console_problems = []

        def on_console(msg: Any) -> None:
            if msg.type in ("error", "warning") and not EXPECTED_CONSOLE.search(msg.text):
                page.console_problems.append(f"{msg.type}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: page.console_problems.append(f"pageerror: {exc}"))
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            yield page
        finally:
            await context.close()
            await chromium.close()


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def test_dashboard_whole_story(lab, idp):
    async with browser_page() as page:
        expect = playwright_async.expect
        await page.goto(f"{lab['base']}offline-token/?token={lab['token']}")
        await expect(page.get_by_test_id("health-banner")).to_be_visible()

        # A demo task, created before there is any token.
        await page.get_by_test_id("task-name").fill("nightly demo")
        await page.get_by_test_id("task-kind").select_option("demo")
        await page.get_by_test_id("create-task").click()
        first = page.get_by_test_id("task-row").filter(has_text="nightly demo")
        await expect(first).to_be_visible()
        await first.get_by_test_id("execute").click()
        await expect(first.get_by_test_id("inline-error")).to_be_visible()
        await expect(first.get_by_test_id("inline-error")).to_have_attribute(
            "data-error", "needs_consent"
        )
        await shot(page, "01-needs-consent")

        # Request a token: the provider opens in a new tab; log in and allow there.
        await page.get_by_test_id("token-label").fill("browser test")
        async with page.context.expect_page() as popup_info:
            await page.get_by_test_id("request-token").click()
        popup = await popup_info.value
        await popup.wait_for_selector("form#login")
        await popup.fill("input[name=login]", "alice")
        await popup.fill("input[name=password]", "alice")
        await popup.click("form#login [type=submit]")
        await popup.wait_for_selector("form#consent")
        await shot(popup, "02-provider-consent")
        await popup.click("form#consent button[value=allow]")
        await popup.wait_for_load_state()
        # A consent started here comes back here (not to a page about a notebook): the tab
        # shows the dashboard with the new token, and drops the id from its address.
        await expect(popup.get_by_test_id("status-message")).to_contain_text(
            "Offline access granted for “browser test”"
        )
        await expect(
            popup.get_by_test_id("token-row")
            .filter(has_text="browser test")
            .get_by_test_id("token-status")
        ).to_have_text(re.compile("active", re.I))
        assert "persistent_token_id" not in popup.url
        assert re.search(r"/offline-token/(\?|$)", popup.url), popup.url
        assert "notebook" not in (await popup.content()).lower()
        await shot(popup, "03-back-on-dashboard")
        await popup.close()

        # The row turns active by itself (no reload).
        row = page.get_by_test_id("token-row").filter(has_text="browser test")
        await expect(row.get_by_test_id("token-status")).to_have_text(re.compile("active", re.I))
        token_id = await row.get_attribute("data-token-id")
        assert token_id

        # Link the token and run the demo task to 100 %.
        await first.get_by_test_id("link-select").select_option(token_id)
        await first.get_by_test_id("link").click()
        await first.get_by_test_id("execute").click()
        await expect(first.get_by_test_id("task-status")).to_have_text(
            re.compile("completed", re.I), timeout=60_000
        )
        await expect(first.get_by_test_id("task-progress")).to_have_attribute(
            "aria-valuenow", "100"
        )
        await shot(page, "04-task-completed")

        # A second task, cancelled while it runs.
        await page.get_by_test_id("task-name").fill("to cancel")
        await page.get_by_test_id("task-kind").select_option("demo")
        await page.get_by_test_id("create-task").click()
        second = page.get_by_test_id("task-row").filter(has_text="to cancel")
        await second.get_by_test_id("link-select").select_option(token_id)
        await second.get_by_test_id("link").click()
        await second.get_by_test_id("execute").click()
        await expect(second.get_by_test_id("task-status")).to_have_text(re.compile("running", re.I))
        await second.get_by_test_id("cancel").click()
        await expect(second.get_by_test_id("task-status")).to_have_text(
            re.compile("cancelled", re.I)
        )
        await shot(page, "05-task-cancelled")

        # Refresh now: one grant, the count goes up; at once again: the rate limit is shown.
        grants = idp.stats()["refresh_token_grants"]
        count = int(await row.get_by_test_id("token-refresh-count").inner_text())
        await row.get_by_test_id("refresh-token").click()
        await expect(page.get_by_test_id("status-message")).to_contain_text(
            "Token “browser test” refreshed."
        )
        await expect(row.get_by_test_id("token-refresh-count")).to_have_text(str(count + 1))
        assert idp.stats()["refresh_token_grants"] == grants + 1
        await row.get_by_test_id("refresh-token").click()
        await expect(page.get_by_test_id("status-message")).to_contain_text("forced refresh")
        assert idp.stats()["refresh_token_grants"] == grants + 1
        await shot(page, "05b-refreshed")

        # Revoke, accepting the confirmation dialog.
        page.once("dialog", lambda dialog: dialog.accept())
        grants = idp.stats()["revocations"]
        await row.get_by_test_id("revoke").click()
        await expect(
            page.get_by_test_id("token-row").filter(has_text="browser test")
        ).to_have_count(0)
        assert idp.stats()["revocations"] == grants + 1
        await shot(page, "06-revoked")
        assert page.console_problems == []  # type: ignore[attr-defined]


async def test_jupyterlab_launcher_opens_the_dashboard(lab):
    async with browser_page() as page:
        expect = playwright_async.expect
        await page.goto(f"{lab['base']}lab?token={lab['token']}")
        card = page.locator(".jp-LauncherCard", has_text="Offline tokens")
        await expect(card).to_be_visible(timeout=60_000)
        await shot(page, "07-launcher")
        await card.click()
        frame = page.frame_locator("iframe").first
        await expect(frame.get_by_test_id("health-banner")).to_be_visible(timeout=30_000)
        await shot(page, "08-dashboard-tab")
        problems = [p for p in page.console_problems if "offline" in p.lower()]  # type: ignore[attr-defined]
        assert problems == []


async def test_keyboard_labels_and_dark_theme(lab):
    async with browser_page() as page:
        expect = playwright_async.expect
        await page.goto(f"{lab['base']}offline-token/?token={lab['token']}&theme=dark")
        # Dark theme: the page's own background really is dark.
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(x) for x in re.findall(r"\d+", background)[:3])
        assert red + green + blue < 3 * 80, background
        # Every form control is reachable by its label.
        for label in ("Name", "Kind", "Label"):
            await expect(page.get_by_label(label, exact=False).first).to_be_visible()
        # Keyboard only: type a name and press Enter to create the task.
        await page.get_by_label("Name", exact=True).focus()
        await page.keyboard.type("typed with the keyboard")
        await page.keyboard.press("Enter")
        row = page.get_by_test_id("task-row").filter(has_text="typed with the keyboard")
        await expect(row).to_be_visible()
        # Its buttons are real buttons that take focus.
        await row.get_by_test_id("execute").focus()
        assert await page.evaluate("document.activeElement.tagName") == "BUTTON"
        await shot(page, "09-dark-keyboard")
        # XSRF: the page's cookie session cannot POST without jupyter_server's XSRF token.
        status = await page.evaluate(
            """async () => (await fetch('api/offline-token/tasks', {
                method: 'POST', headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({name: 'forged'})})).status"""
        )
        assert status == 403
        await expect(page.get_by_test_id("task-row").filter(has_text="forged")).to_have_count(0)
        page.console_problems.clear()  # the forged request's 403 is logged by chromium
        assert page.console_problems == []
