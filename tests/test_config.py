"""Configuration: environment fallbacks, validation that names the setting, safe reprs."""

from __future__ import annotations

import base64

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jupyter_offline_token.app import OfflineTokenApp
from jupyter_offline_token.broker import AccessToken, ProviderSettings
from jupyter_offline_token.models import ConsentSecrets
from jupyter_offline_token.oidc import ProviderClient, TokenResponse

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")


def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "https://idp.example.org/realms/lab/")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_CLIENT_ID", "jupyter")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_REDIRECT_URI", "https://hub.example.org/cb")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", f"{KEY}; {KEY[::-1]}")
    app = OfflineTokenApp()
    assert app.issuer == "https://idp.example.org/realms/lab"  # trailing slash dropped
    assert app.client_id == "jupyter" and app.client_secret == "s3cret"
    assert app.redirect_uri == "https://hub.example.org/cb"
    assert app.encryption_keys == [KEY, KEY[::-1]]


def test_config_beats_environment(monkeypatch):
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "https://env.example.org")
    app = OfflineTokenApp(issuer="https://config.example.org")
    assert app.issuer == "https://config.example.org"


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("issuer", "ftp://idp", "OfflineTokenApp.issuer"),
        ("issuer", "https://idp/realms/x?a=1", "OfflineTokenApp.issuer"),
        ("encryption_keys", ["not-a-key"], "OfflineTokenApp.encryption_keys"),
        ("encryption_keys", [KEY, "short"], "key #2"),
        ("redirect_uri", "javascript:alert(1)", "OfflineTokenApp.redirect_uri"),
        ("consent_timeout", 0, "OfflineTokenApp.consent_timeout"),
        ("http_timeout", -1, "OfflineTokenApp.http_timeout"),
        ("refresh_margin", 1.5, "OfflineTokenApp.refresh_margin"),
        ("backoff_jitter", 1.0, "OfflineTokenApp.backoff_jitter"),
        ("max_running_tasks", 0, "OfflineTokenApp.max_running_tasks"),
        ("task_cancel_grace", -1, "OfflineTokenApp.task_cancel_grace"),
        ("token_endpoint_auth_method", "private_key_jwt", "token_endpoint_auth_method"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(setting, value, named):
    with pytest.raises(TraitError, match=named.replace(".", r"\.")):
        OfflineTokenApp(**{setting: value})


def test_key_error_never_echoes_the_key():
    secretish = "x" * 40
    with pytest.raises(TraitError) as info:
        OfflineTokenApp(encryption_keys=[secretish])
    assert secretish not in str(info.value)


def test_every_setting_has_help_for_admins():
    for name, trait in OfflineTokenApp.class_traits(config=True).items():
        if trait.this_class is OfflineTokenApp:
            assert len(trait.help) > 30, f"OfflineTokenApp.{name} needs help text"


def test_reprs_hold_no_secret():
    settings = ProviderSettings("https://idp", "c", client_secret="client-secret-value")
    token = AccessToken("access-token-value", "Bearer", 1.0, None, 0.0, owner="alice")
    response = TokenResponse("access-token-value", "Bearer", 60, "refresh-token-value", 0, "", None)
    secrets = ConsentSecrets("verifier-value", "nonce-value", "https://x/cb")
    client = ProviderClient("https://idp.example.org", "c", "client-secret-value")
    for obj in (settings, token, response, secrets, client):
        text = repr(obj)
        for secret in (
            "client-secret-value",
            "access-token-value",
            "refresh-token-value",
            "verifier-value",
        ):
            assert secret not in text, (type(obj).__name__, secret)


def test_bad_environment_values_are_refused_too(monkeypatch):
    # Recorded as a bad setting (the server then answers 503 naming it), not raised mid-start.
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_KEYS", "not-a-key")
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_ISSUER", "ftp://idp")
    app = OfflineTokenApp()
    problems = app.check_settings()
    assert len(problems) == 2
    assert app.start_error is not None
    assert "JUPYTER_OFFLINE_TOKEN_KEYS" in app.start_error
    assert "OfflineTokenApp.issuer" in app.start_error
    assert "JUPYTER_OFFLINE_TOKEN_ISSUER" in app.start_error
    assert "not-a-key" not in app.start_error
    assert app.encryption_keys == [] and app.issuer == ""


def test_one_bad_setting_in_config_keeps_the_others():
    config = Config(
        {
            "OfflineTokenApp": {
                "issuer": "https://idp.example.org",
                "client_id": "jupyter",
                "encryption_keys": ["not-a-key"],
                "http_timeout": "soon",
                "client_secret": 12345,
            }
        }
    )
    app = OfflineTokenApp(config=config)
    problems = app.check_settings()
    assert app.issuer == "https://idp.example.org" and app.client_id == "jupyter"
    assert app.encryption_keys == [] and app.http_timeout == 15.0
    names = ["OfflineTokenApp.encryption_keys", "OfflineTokenApp.http_timeout", "client_secret"]
    for name in names:
        assert any(name in problem for problem in problems), (name, problems)
    assert "12345" not in " ".join(problems)  # a secret's bad value is never echoed
