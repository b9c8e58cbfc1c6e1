"""Behind a real JupyterHub (tests/hub_fixture.py): the dashboard, consents started by kernels,
and running tasks as server activity. One hub and one server per user for the whole module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from hub_fixture import NO_PUBLIC_URL, PASSWORD, Hub, UserServer, allow_in_browser, until

from jupyter_offline_token.kernel import OfflineTokenClient, RedirectURIUnknown

pytestmark = [pytest.mark.timeout(180)]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
USER = "alice"
CULL_TIMEOUT = 8  # seconds without activity before jupyterhub-idle-culler stops a server


def kernel(server: UserServer) -> OfflineTokenClient:
    """The kernel helper's client, as a kernel in this server finds it (JUPYTERHUB_SERVICE_URL and
    JUPYTERHUB_API_TOKEN): the server's internal address and its own API token."""
    return OfflineTokenClient(server.internal_url, token=server.api_token)


def redirect_uri_of(consent_url: str) -> str:
    return parse_qs(urlsplit(consent_url).query)["redirect_uri"][0]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- the browser --------------------------------------------------------------------------------
def _need_chromium() -> Any:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    return pytest.importorskip("playwright.async_api")


@contextlib.asynccontextmanager
async def hub_browser(hub: Hub, server: UserServer) -> AsyncIterator[Any]:
    """Chromium logged in at the hub and showing the server's dashboard; ``page.api_calls``
    collects ``(status, path)`` of every API response the page got."""
    playwright_async = _need_chromium()
    async with playwright_async.async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"],
        )
        page = await (await chromium.new_context()).new_page()
        page.api_calls = []
        page.on(
            "response",
            lambda r: (
                page.api_calls.append((r.status, urlsplit(r.url).path))
                if "/api/offline-token/" in r.url
                else None
            ),
        )
        dashboard = urlsplit(server.public_url).path + "offline-token/"
        try:
            await page.goto(f"{hub.url}hub/login?next={quote(dashboard)}")
            await page.fill("input[name=username]", server.user)
            await page.fill("input[name=password]", PASSWORD)
            await page.click("[type=submit]")
            await page.wait_for_url(re.compile(re.escape(dashboard) + "$"))
            # Loaded: the banner leaves "Loading" once tokens, tasks and health have answered.
            banner = page.get_by_test_id("health-banner")
            await playwright_async.expect(banner).not_to_have_attribute("data-level", "unknown")
            yield page
        finally:
            with contextlib.suppress(Exception):
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / f"hub-{server.name or 'default'}.png"))
            await chromium.close()


@pytest.mark.browser
async def test_dashboard_works_and_a_kernel_consent_comes_back_to_the_public_url(hub, idp):
    server = await asyncio.to_thread(hub.user_server, USER)
    async with hub_browser(hub, server) as page:
        banner = page.get_by_test_id("health-banner")
        assert await banner.get_attribute("data-level") != "offline", await banner.inner_text()
        seen = {path.rsplit("/", 1)[-1] for _, path in page.api_calls}
        assert {"tokens", "tasks", "health"} <= seen, page.api_calls
        assert all(status == 200 for status, _ in page.api_calls), page.api_calls

        # A consent started by a kernel (internal address) carries the public callback URL ...
        with kernel(server) as client:
            created = await asyncio.to_thread(client.create_consent, label="from a kernel")
        assert (
            redirect_uri_of(created["consent_url"]) == server.public_url + "offline-token/callback"
        )

        # ... where the provider sends the browser back, and the grant completes.
        await allow_in_browser(page, created["consent_url"])
        title = page.get_by_test_id("callback-title")
        assert await title.inner_text() == "Offline access granted"
        with kernel(server) as client:
            token = await asyncio.to_thread(client.get_token, created["persistent_token_id"])
        assert token["status"] == "active"


@pytest.mark.browser
async def test_without_a_public_url_a_kernel_consent_waits_for_a_browser(hub):
    server = await asyncio.to_thread(hub.user_server, USER, NO_PUBLIC_URL)
    with kernel(server) as client, pytest.raises(RedirectURIUnknown) as refused:
        await asyncio.to_thread(client.create_consent, label="too early")
    assert refused.value.status == 409
    assert "OfflineTokenApp.redirect_uri" in refused.value.message
    with kernel(server) as client:
        # Nothing was created (the user's named servers share one vault: other entries may be).
        labels = [t["label"] for t in await asyncio.to_thread(client.list_tokens)]
        assert "too early" not in labels

    async with hub_browser(hub, server) as page:
        assert all(status == 200 for status, _ in page.api_calls), page.api_calls
    # The browser showed the server its public address; the kernel's consent now uses it.
    with kernel(server) as client:
        created = await asyncio.to_thread(client.create_consent, label="after the browser")
    assert redirect_uri_of(created["consent_url"]) == server.public_url + "offline-token/callback"
    assert server.public_url.endswith(f"/user/{USER}/{NO_PUBLIC_URL}/")  # a named server's own


def test_a_running_task_is_activity_that_the_hub_and_its_idle_culler_see(hub, idp):
    server = hub.user_server(USER)
    idle = hub.user_server(USER, NO_PUBLIC_URL)  # the culler's control: no task runs there
    # A grant: the kernel asks, the user allows at the provider, the browser session (cookies of
    # the hub login) delivers the provider's redirect to the public callback.
    with contextlib.closing(hub.login(USER)) as browser, kernel(server) as client:
        created = client.create_consent(label="for a task")
        location = idp.complete_consent(created["consent_url"])
        assert location.startswith(server.public_url + "offline-token/callback?")
        assert browser.get(location).status_code == 200
        token_id = created["persistent_token_id"]
        assert client.get_token(token_id)["status"] == "active"

        task = client.create_task(
            name="long computation", kind="kernel", persistent_token_id=token_id
        )
        client.execute_task(task["id"])
        last_request = time.monotonic()  # no request from here on counts (api/status does not)
        with server.kernel_client() as raw:
            started = parse_time(raw.get("api/status").json()["last_activity"])

            def moved() -> datetime | None:
                value = parse_time(raw.get("api/status").json()["last_activity"])
                return value if value > started else None

            fresh = until(moved, "api/status last_activity to move while the task runs")

        # The single-user server reports it to the hub, where jupyterhub-idle-culler reads it.
        def hub_saw() -> bool:
            model = hub.server_model(USER)
            return bool(model and parse_time(model["last_activity"]) >= fresh)

        until(hub_saw, "the hub's last_activity of the server to follow")

        # The culler stops the idle server, and not the one whose task runs, although no request
        # reached it for longer than the timeout.
        with hub.idle_culler(timeout=CULL_TIMEOUT):
            until(lambda: hub.server_model(USER, idle.name) is None, "the idle server culled", 40)
            until(
                lambda: time.monotonic() - last_request > CULL_TIMEOUT + 3,
                "the busy server to be past the culler's timeout",
                limit=CULL_TIMEOUT + 10,
            )
            model = hub.server_model(USER)
            assert model and model["ready"] and not model["pending"], model
        hub.wait_for_service()  # the culler stops users' servers, never the hub's services
        assert client.get_task(task["id"])["status"] == "running"
        client.update_task(task["id"], status="completed")
