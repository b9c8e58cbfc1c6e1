"""The token routes' request models (handlers/token_requests.py): each body is validated once,
there, and the broker receives typed values. The API-level twins of these cases (400, nothing
stored) are in test_handlers_validation.py and the REST scenarios; the query models are tested
there too, through a real server's query parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jupyter_offline_token.errors import InvalidRequest
from jupyter_offline_token.handlers.token_requests import (
    AccessTokenRequest,
    CreateConsent,
    check_return_to,
)

BASE = "/user/alice/"


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_consent_gives_typed_values_with_defaults():
    assert CreateConsent.parse(b"", base_url=BASE) == CreateConsent()
    assert CreateConsent.parse(b"{}", base_url=BASE).scopes is None  # the configured ones
    request = CreateConsent.parse(
        body(
            label="train",
            task_id="t-1",
            scopes=["openid", "profile"],
            return_to=BASE + "lab?x=1",
            keep_warm=True,
        ),
        base_url=BASE,
    )
    assert request == CreateConsent(
        label="train",
        task_id="t-1",
        scopes=["openid", "profile"],
        return_to=BASE + "lab?x=1",
        keep_warm=True,
    )
    assert CreateConsent.parse(body(label=None, scopes=None), base_url=BASE) == CreateConsent()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"label": 5}, "invalid_field"),
        ({"label": "x" * 201}, "invalid_field"),
        ({"task_id": "x" * 65}, "invalid_field"),
        ({"scopes": "openid"}, "invalid_field"),
        ({"scopes": [1]}, "invalid_field"),
        ({"scopes": ["openid", None]}, "invalid_field"),
        ({"scopes": ["s"] * 33}, "invalid_field"),
        ({"scopes": ["has space"]}, "invalid_scope"),
        ({"scopes": [""]}, "invalid_scope"),
        ({"scopes": ['quo"te']}, "invalid_scope"),
        ({"scopes": ["back\\slash"]}, "invalid_scope"),
        ({"scopes": ["é"]}, "invalid_scope"),
        ({"scopes": ["x" * 129]}, "invalid_scope"),
        ({"return_to": "https://elsewhere.test/"}, "invalid_return_to"),
        ({"return_to": "//elsewhere.test/user/alice/"}, "invalid_return_to"),
        ({"return_to": "/user/bob/lab"}, "invalid_return_to"),
        ({"return_to": "/user/alice/\\evil"}, "invalid_return_to"),
        ({"return_to": "/user/alice/a b"}, "invalid_return_to"),
        ({"return_to": "x" * 2049}, "invalid_field"),
        ({"keep_warm": "yes"}, "invalid_field"),
        ({"keep_warm": 1}, "invalid_field"),
        ({"surprise": 1}, "unknown_field"),
        # return_to is checked before the scopes' elements, as it always was
        ({"return_to": "https://x.test/", "scopes": [1]}, "invalid_return_to"),
        # every element is a string before any is checked as a scope
        ({"scopes": ["has space", 1]}, "invalid_field"),
    ],
)
def test_consent_refuses_bad_bodies_with_their_code(fields, code):
    with pytest.raises(InvalidRequest) as refused:
        CreateConsent.parse(body(**fields), base_url=BASE)
    assert refused.value.code == code, refused.value.message


def test_invalid_scope_message_names_the_scope():
    with pytest.raises(InvalidRequest) as refused:
        CreateConsent.parse(body(scopes=["openid", "has space"]), base_url=BASE)
    assert refused.value.message == (
        "invalid scope 'has space': scopes are single words of printable ASCII"
    )


def test_return_to_is_a_path_under_the_base_url():
    assert check_return_to("/user/alice/tree", BASE) == "/user/alice/tree"
    with pytest.raises(InvalidRequest) as refused:
        check_return_to("javascript:alert(1)", BASE)
    assert refused.value.message == (
        "return_to must be a path on this server starting with '/user/alice/'"
    )


def test_access_token_request_gives_a_float_ttl_and_keeps_warmth_unset():
    assert AccessTokenRequest.parse(b"") == AccessTokenRequest(min_ttl=30.0, keep_warm=None)
    request = AccessTokenRequest.parse(body(min_ttl=600, keep_warm=False))
    assert request == AccessTokenRequest(min_ttl=600.0, keep_warm=False)
    assert isinstance(request.min_ttl, float)
    for raw in (
        body(min_ttl="30"),
        body(min_ttl=-1),
        body(min_ttl=86401),
        body(min_ttl=1.5),
        body(min_ttl=True),
        body(keep_warm="no"),
        body(x=1),
        b"[]",
        b'{"min_ttl": NaN}',
    ):
        with pytest.raises(InvalidRequest):
            AccessTokenRequest.parse(raw)
