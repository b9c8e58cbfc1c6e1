"""The consent's redirect_uri: configured, JupyterHub's public URL, a browser's origin, or 409.

The order as a unit (CallbackURL, browser_origin), and through the API of a server that runs
with the environment JupyterHub gives a single-user server. tests/test_hub.py does the same with
a real hub and a real browser.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from jupyter_offline_token.errors import Conflict
from jupyter_offline_token.handlers.errors import http_status
from jupyter_offline_token.public_url import SERVICE_CALLBACK_PATH, CallbackURL, browser_origin

BASE = "/user/alice/"
HUB_ENV = {"JUPYTERHUB_SERVICE_PREFIX": BASE}
PUBLIC = {**HUB_ENV, "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/user/alice/"}


def test_configured_wins_then_the_hub_public_url():
    assert (
        CallbackURL(BASE, configured="https://x.example.org/cb", environ=PUBLIC).redirect_uri(
            request_origin="http://127.0.0.1:9999", browser_origin="https://other.example.org"
        )
        == "https://x.example.org/cb"
    )
    callback = CallbackURL(BASE, environ=PUBLIC)
    callback.note_browser_origin("https://seen.example.org")
    assert (
        callback.redirect_uri(
            request_origin="http://127.0.0.1:9999", browser_origin="https://other.example.org"
        )
        == "https://hub.example.org/user/alice/offline-token/callback"
    )


def test_under_a_hub_without_public_url_a_browser_origin_or_409():
    callback = CallbackURL(BASE, environ=HUB_ENV)
    assert callback.under_hub and callback.hub_origin is None
    with pytest.raises(Conflict) as refused:
        callback.redirect_uri(request_origin="http://127.0.0.1:9999")
    assert http_status(refused.value) == 409
    assert refused.value.code == "redirect_uri_unknown"
    assert "OfflineTokenApp.redirect_uri" in refused.value.message
    # This request's browser origin, else the last one seen.
    assert (
        callback.redirect_uri(
            request_origin="http://127.0.0.1:9999", browser_origin="https://a.example.org"
        )
        == "https://a.example.org/user/alice/offline-token/callback"
    )
    callback.note_browser_origin("https://b.example.org")
    callback.note_browser_origin(None)  # a request without a usable origin forgets nothing
    assert (
        callback.redirect_uri(request_origin="http://127.0.0.1:9999")
        == "https://b.example.org/user/alice/offline-token/callback"
    )


def test_outside_a_hub_the_request_decides_as_before():
    # A server started from a hub terminal inherits the variables but has another base_url.
    for environ in ({}, {**PUBLIC, "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/other/"}):
        callback = CallbackURL("/", environ=environ)
        assert not callback.under_hub
        assert (
            callback.redirect_uri(request_origin="http://localhost:8888")
            == "http://localhost:8888/offline-token/callback"
        )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Origin": "https://hub.example.org"}, "https://hub.example.org"),
        ({"Referer": "https://hub.example.org/user/alice/lab?x=1"}, "https://hub.example.org"),
        ({"Origin": "null", "Referer": "https://hub.example.org/x"}, "https://hub.example.org"),
        ({"Origin": "https://evil.example.org"}, None),  # cross-site: not this server's origin
        ({"Referer": "https://user@hub.example.org/"}, None),
        ({"Referer": "javascript:alert(1)"}, None),
        ({"Origin": "https://hub.example.org:99999"}, None),
        ({}, None),
    ],
)
def test_browser_origin_is_same_origin_only(headers, expected):
    assert browser_origin(headers, "hub.example.org") == expected


# --- through the API, with the environment JupyterHub gives its single-user servers -------------
@pytest.fixture
def hub_environment() -> dict[str, str]:
    return {"JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/user/alice/"}


@pytest.fixture
def jp_server_config(jp_server_config, hub_environment, jp_base_url, monkeypatch):
    """The server reads the hub's variables when the extension loads."""
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", jp_base_url)
    monkeypatch.delenv("JUPYTERHUB_PUBLIC_URL", raising=False)
    for key, value in hub_environment.items():
        monkeypatch.setenv(key, value)
    return jp_server_config


def redirect_uri_of(consent_url: str) -> str:
    return parse_qs(urlsplit(consent_url).query)["redirect_uri"][0]


async def test_a_kernel_consent_gets_the_hub_public_url(api, jp_base_url):
    status, created = await api.post("consents", body={"label": "kernel"})
    assert status == 201, created
    assert redirect_uri_of(created["consent_url"]) == (
        f"https://hub.example.org{jp_base_url}offline-token/callback"
    )


@pytest.mark.parametrize("hub_environment", [{}])
async def test_without_a_public_url_a_kernel_consent_is_409_and_creates_nothing(api, jp_base_url):
    # A script may send any Origin: only cookie-authenticated browser requests are believed.
    status, refused = await api.post(
        "consents", body={"label": "kernel"}, headers={"Origin": "http://localhost"}
    )
    assert status == 409, refused
    assert refused["error"] == "redirect_uri_unknown"
    assert "OfflineTokenApp.redirect_uri" in refused["message"]
    assert jp_base_url.lstrip("/") + "offline-token/callback" in refused["message"]
    status, listed = await api.get("tokens")
    assert status == 200 and listed["tokens"] == []


def test_the_hub_service_has_one_callback_for_everybody():
    """``jupyter-offline-token serve``: <public hub URL>/services/<name>/callback."""
    service = {
        "JUPYTERHUB_SERVICE_PREFIX": "/services/offline-token/",
        "JUPYTERHUB_PUBLIC_URL": "https://hub.example.org/services/offline-token/",
    }
    callback = CallbackURL(
        "/services/offline-token/", environ=service, callback_path=SERVICE_CALLBACK_PATH
    )
    assert (
        callback.redirect_uri(request_origin="http://127.0.0.1:10101")
        == "https://hub.example.org/services/offline-token/callback"
    )
