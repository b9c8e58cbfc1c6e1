"""Kernel-side client, OfflineToken and Task against an in-memory emulation of the REST API."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx
import pytest

from jupyter_offline_token.kernel import (
    AuthenticationFailed,
    ConsentExpired,
    ConsentPending,
    ConsentRequired,
    InvalidRequest,
    NotConfigured,
    NotFound,
    OfflineToken,
    OfflineTokenClient,
    OfflineTokenClientError,
    ProviderUnavailable,
    RefreshTooSoon,
    ServerInfo,
    ServerUnreachable,
    TaskAlreadyRunning,
    TaskCancelled,
    TokenFailed,
    TokenInUse,
    TokenRevoked,
    create_task,
    current_task,
    list_tokens,
    request_offline_token,
)
from jupyter_offline_token.kernel.client import clamp_min_ttl
from jupyter_offline_token.kernel.tasks import to_percent
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI


@pytest.fixture
def api() -> FakeOfflineTokenAPI:
    return FakeOfflineTokenAPI()


@pytest.fixture
def client(api: FakeOfflineTokenAPI) -> OfflineTokenClient:
    return api.client()


def granted(api: FakeOfflineTokenAPI, client: OfflineTokenClient, label: str = "t") -> OfflineToken:
    tok = request_offline_token(label=label, client=client, display=False)
    api.grant(tok.id)
    return tok


def static_client(response: httpx.Response) -> OfflineTokenClient:
    """A client whose every request gets ``response`` (to exercise the error mapping alone)."""
    return OfflineTokenClient(
        ServerInfo("http://jupyter.test/", authorization="token x"),
        transport=httpx.MockTransport(lambda request: response),
    )


# --- error mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (409, "waiting_consent", ConsentPending),
        (409, "needs_consent", ConsentRequired),
        (409, "token_failed", TokenFailed),
        (409, "token_revoked", TokenRevoked),
        (409, "consent_expired", ConsentExpired),
        (409, "token_in_use", TokenInUse),
        (429, "refresh_too_soon", RefreshTooSoon),
        (503, "not_configured", NotConfigured),
        (404, "not_found", NotFound),
        (403, "forbidden", AuthenticationFailed),
        (400, "invalid_request", InvalidRequest),
        (401, "whatever", AuthenticationFailed),
        (500, "boom", OfflineTokenClientError),
    ],
)
def test_error_codes_map_to_typed_errors(status: int, code: str, expected: type) -> None:
    client = static_client(httpx.Response(status, json={"error": code, "message": "server says"}))
    with pytest.raises(expected) as info:
        client.get_token("abc")
    assert type(info.value) is expected
    assert info.value.code == code
    assert info.value.status == status
    assert "server says" in str(info.value)


def test_dead_token_errors_are_all_consent_required() -> None:
    for cls in (TokenFailed, TokenRevoked, ConsentExpired):
        assert issubclass(cls, ConsentRequired)
    assert not issubclass(ConsentPending, ConsentRequired)


def test_provider_unavailable_carries_retry_after_and_advice() -> None:
    response = httpx.Response(
        503,
        json={"error": "provider_unavailable", "message": "provider down"},
        headers={"Retry-After": "17"},
    )
    with pytest.raises(ProviderUnavailable) as info:
        static_client(response).access_token("abc")
    assert info.value.retry_after == 17
    assert "try again" in info.value.message


def test_non_json_error_and_redirect_and_network_failure() -> None:
    with pytest.raises(OfflineTokenClientError) as info:
        static_client(httpx.Response(502, text="<html>bad gateway</html>")).health()
    assert info.value.status == 502
    assert "502" in str(info.value)

    redirect = httpx.Response(302, headers={"Location": "/login"})
    with pytest.raises(AuthenticationFailed, match="JUPYTER_OFFLINE_TOKEN_SERVER_TOKEN"):
        static_client(redirect).list_tokens()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = OfflineTokenClient(
        ServerInfo("http://127.0.0.1:9/", authorization="token x", source="test"),
        transport=httpx.MockTransport(refuse),
    )
    with pytest.raises(ServerUnreachable, match=r"127\.0\.0\.1:9"):
        down.list_tokens()


def test_task_conflict_without_known_code_is_a_task_error() -> None:
    from jupyter_offline_token.kernel import TaskError

    client = static_client(httpx.Response(409, json={"error": "weird", "message": "no"}))
    with pytest.raises(TaskError):
        client.cancel_task("t1")


def test_ids_are_path_escaped(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    with pytest.raises(NotFound):
        client.get_token("../health")
    assert api.requests[-1].url.raw_path.endswith(b"/tokens/..%2Fhealth")
    with pytest.raises(ValueError, match="non-empty"):
        client.get_token("")


def test_reprs_never_show_credentials(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    tok = granted(api, client)
    secret_value = tok.access_token()
    for text in (repr(client), repr(client.server), repr(tok), repr(tok.access_token_info())):
        assert api.server_token not in text
        assert secret_value not in text
    assert repr(tok) == f"<OfflineToken id={tok.id!r} label='t' status='active'>"


# --- OfflineToken ------------------------------------------------------------------------------


def test_request_prints_consent_url_outside_a_notebook(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = request_offline_token(label="nightly", scopes=["openid", "offline_access"], client=client)
    out = capsys.readouterr().out
    assert tok.consent_url and tok.consent_url in out
    assert tok.id in out
    body = json.loads(api.requests[-1].content)
    assert body == {"label": "nightly", "scopes": ["openid", "offline_access"]}
    assert tok.known_status == "pending"
    with pytest.raises(TypeError):
        request_offline_token(scopes="openid", client=client, display=False)  # type: ignore[arg-type]


def test_access_token_is_cached_without_http(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient
) -> None:
    tok = granted(api, client)
    first = tok.access_token()
    before = len(api.requests)
    assert tok.access_token() == first
    assert tok.access_token(min_ttl=60) == first
    assert len(api.requests) == before  # cached calls make zero requests
    assert json.loads(api.requests[-1].content) == {"min_ttl": 30}


def test_access_token_refetched_when_cache_too_short() -> None:
    api = FakeOfflineTokenAPI(access_token_ttl=20)  # shorter than the default min_ttl of 30
    client = api.client()
    tok = granted(api, client)
    tok.access_token()
    tok.access_token()
    assert api.count("POST", "/access-token") == 2
    assert api.minted == 2  # the server refreshed too, honouring min_ttl
    tok.access_token(min_ttl=5)
    assert api.count("POST", "/access-token") == 2  # 5 s is satisfied by the cache


def test_access_token_errors_by_state(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    tok = request_offline_token(client=client, display=False)
    with pytest.raises(ConsentPending, match="grant offline access"):
        tok.access_token()
    api.grant(tok.id)
    api.provider_down_retry_after = 5
    with pytest.raises(ProviderUnavailable):
        tok.access_token()
    api.provider_down_retry_after = None
    api.fail(tok.id, "refresh token rejected by the provider")
    with pytest.raises(TokenFailed, match="rejected"):
        tok.access_token()


def test_clamp_min_ttl() -> None:
    assert clamp_min_ttl(2.1) == 3
    assert clamp_min_ttl(-5) == 0
    assert clamp_min_ttl(10**9) == 86400
    with pytest.raises(ValueError):
        clamp_min_ttl(float("nan"))
    with pytest.raises(TypeError):
        clamp_min_ttl(True)


def test_wait_polls_until_granted(api: FakeOfflineTokenAPI) -> None:
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/tokens/" in request.url.path:
            polls.append(request)
            if len(polls) == 3:
                api.grant(request.url.path.rsplit("/", 1)[1])
        return api.handle(request)

    client = OfflineTokenClient(api.server_info(), transport=httpx.MockTransport(handler))
    tok = request_offline_token(client=client, display=False)
    assert tok.wait(poll_interval=0.01) is tok
    assert len(polls) == 3
    assert tok.known_status == "active"


@pytest.mark.parametrize(
    ("status", "error"),
    [("failed", TokenFailed), ("expired", ConsentExpired), ("revoked", TokenRevoked)],
)
def test_wait_raises_on_dead_consent(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient, status: str, error: type
) -> None:
    tok = request_offline_token(client=client, display=False)
    if status == "failed":
        api.fail(tok.id, "access_denied at the provider")
    else:
        api.set_status(tok.id, status)
    with pytest.raises(error) as info:
        tok.wait(poll_interval=0.01)
    assert "request_offline_token" in info.value.message
    if status == "failed":
        assert "access_denied" in info.value.message


def test_wait_timeout_raises_consent_pending(client: OfflineTokenClient) -> None:
    tok = request_offline_token(client=client, display=False)
    with pytest.raises(ConsentPending, match=r"still not granted after 0 s"):
        tok.wait(timeout=0)


def test_revoke_from_id_and_list(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    tok = granted(api, client, label="a")
    granted(api, client, label="b")
    assert [t.label for t in list_tokens(client=client)] == ["b", "a"]
    assert [t.label for t in list_tokens(status="pending", client=client)] == []
    same = OfflineToken.from_id(tok.id, client=client)
    assert same.label == "a"
    assert same.status == "active"
    assert tok.revoke() == {"deleted": True}
    assert api.requests[-1].method == "DELETE"
    assert tok.known_status == "revoked"
    with pytest.raises(NotFound):
        OfflineToken.from_id(tok.id, client=client)
    with pytest.raises(NotFound):
        tok.access_token()


def test_revoke_refused_while_a_task_runs(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient
) -> None:
    tok = granted(api, client)
    task = create_task("job", token=tok)
    task.execute()
    with pytest.raises(TokenInUse):
        tok.revoke()
    tok.revoke(force=True)
    assert api.requests[-1].url.params["force"] == "true"
    assert task.status == "cancelled"


def test_request_again_follows_the_new_entry(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient
) -> None:
    tok = request_offline_token(label="again", client=client, display=False)
    old_id = tok.id
    api.set_status(old_id, "expired")
    tok.request_again()
    assert tok.id != old_id
    assert tok.label == "again"
    assert json.loads(api.requests[-1].content) == {"label": "again"}
    assert tok.status == "pending"


# --- tasks -------------------------------------------------------------------------------------


def test_progress_accepts_fraction_or_percent() -> None:
    assert to_percent(0.25) == 25
    assert to_percent(1.0) == 100
    assert to_percent(1) == 1
    assert to_percent(75) == 75
    for bad in (-0.1, 101, float("nan")):
        with pytest.raises(ValueError):
            to_percent(bad)
    with pytest.raises(TypeError):
        to_percent(True)


def test_task_running_reports_progress_and_completes(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient
) -> None:
    tok = granted(api, client)
    task = create_task("sync", token=tok, description="demo")
    assert task.known_status == "pending"
    with task.running():
        assert task.known_status == "running"
        task.progress(0.5, message="half")
        assert api.tasks[task.id]["progress"] == 50
        assert api.tasks[task.id]["message"] == "half"
        assert task.access_token() == tok.access_token()
    assert api.tasks[task.id]["status"] == "completed"
    assert api.tasks[task.id]["progress"] == 100
    states = [s["status"] for s in task.events()]
    assert states[0] == "pending"
    assert states[-1] == "completed"


def test_task_running_fails_with_exception_text(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient
) -> None:
    task = create_task("boom", token=granted(api, client))
    with pytest.raises(RuntimeError, match="disk full"), task.running():
        raise RuntimeError("disk full")
    assert api.tasks[task.id]["status"] == "failed"
    assert api.tasks[task.id]["error"] == "RuntimeError: disk full"


def test_task_cancelled_meanwhile_stops_the_block(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient, capsys: pytest.CaptureFixture[str]
) -> None:
    task = create_task("long", token=granted(api, client))
    steps = []
    with task.running():
        for step in range(5):
            if step == 2:
                api.tasks[task.id]["status"] = "cancelled"  # someone pressed Cancel elsewhere
            steps.append(step)
            task.progress(step * 20)
    assert steps == [0, 1, 2]
    assert api.tasks[task.id]["status"] == "cancelled"
    assert "cancelled" in capsys.readouterr().out
    with pytest.raises(TaskCancelled):
        task.progress(50)


def test_execute_errors(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    bare = create_task("no token", client=client)
    with pytest.raises(ConsentRequired):
        bare.execute()
    with pytest.raises(ConsentRequired, match="no offline token linked"):
        bare.access_token()
    tok = request_offline_token(client=client, display=False)
    bare.link(tok)
    assert bare.info["persistent_token_id"] == tok.id
    with pytest.raises(ConsentPending), bare.running(wait_for_consent=False):
        pass
    api.grant(tok.id)
    bare.execute()
    with pytest.raises(TaskAlreadyRunning):
        bare.execute()


def test_running_waits_for_a_pending_consent(api: FakeOfflineTokenAPI) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/tokens/" in request.url.path:
            api.grant(request.url.path.rsplit("/", 1)[1])
        return api.handle(request)

    client = OfflineTokenClient(api.server_info(), transport=httpx.MockTransport(handler))
    tok = request_offline_token(client=client, display=False)
    task = create_task("waits", token=tok)
    with task.running():
        assert task.known_status == "running"
    assert api.tasks[task.id]["status"] == "completed"


def test_list_cancel_delete_log(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    task = create_task("one", token=granted(api, client), kind="demo")
    assert [t["id"] for t in client.list_tasks()] == [task.id]
    task.execute()
    assert task.cancel().known_status == "cancelled"
    assert task.log() == ["started", "done"]
    task.delete()
    with pytest.raises(NotFound):
        task.refresh()
    with pytest.raises(InvalidRequest):
        create_task("bad kind", kind="shell", client=client)


def test_current_task_uses_the_scoped_credential(
    api: FakeOfflineTokenAPI, client: OfflineTokenClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUPYTER_OFFLINE_TOKEN_TASK_ID", raising=False)
    assert current_task() is None
    tok = granted(api, client)
    task = create_task("proc", token=tok, kind="command", command=["python", "x.py"])
    task.execute()
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_TASK_ID", task.id)
    monkeypatch.setenv("JUPYTER_OFFLINE_TOKEN_TOKEN_ID", tok.id)
    mine = current_task(client=api.task_client(task.id))
    assert mine is not None and mine.id == task.id
    assert mine.access_token() == tok.access_token()
    mine.progress(0.3, "working")
    assert api.tasks[task.id]["progress"] == 30
    assert api.requests[-1].headers["Authorization"].startswith("OfflineTokenTask ")
    with pytest.raises(AuthenticationFailed):
        mine.token.refresh()  # type: ignore[union-attr]  # listing tokens is not allowed
    mine.complete(result={"rows": 3})
    assert api.tasks[task.id]["result"] == '{"rows": 3}'
    with pytest.raises(AuthenticationFailed):
        mine.progress(1.0)  # the credential died with the task


def test_thread_safe_cache(api: FakeOfflineTokenAPI, client: OfflineTokenClient) -> None:
    tok = granted(api, client)
    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(tok.access_token())) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1
    assert api.count("POST", "/access-token") == 1


def test_importing_the_kernel_package_stays_light() -> None:
    code = (
        "import sys, jupyter_offline_token, jupyter_offline_token.kernel;"
        "heavy = ('tornado', 'jupyter_server', 'ipywidgets', 'requests',"
        " 'jupyter_offline_token.app', 'jupyter_offline_token.handlers',"
        " 'jupyter_offline_token.vault', 'jupyter_offline_token.broker');"
        "print(sorted(m for m in sys.modules"
        " if any(m == h or m.startswith(h + '.') for h in heavy)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


def test_force_refresh_and_clear_cache() -> None:
    now = [100.0]
    api = FakeOfflineTokenAPI(clock=lambda: now[0])
    tok = granted(api, api.client())
    first = tok.access_token()
    assert api.minted == 1
    info = tok.force_refresh()
    assert info["persistent_token_id"] == tok.id and info["status"] == "active"
    assert first not in json.dumps(info) and "access_token" not in info
    assert api.minted == 2
    # The kernel's cached token was dropped: the next call gets the refresh's token.
    second = tok.access_token()
    assert second != first and api.count("POST", "/access-token") == 2
    with pytest.raises(RefreshTooSoon) as info_too_soon:
        tok.force_refresh()
    assert info_too_soon.value.status == 429
    assert info_too_soon.value.retry_after == api.min_refresh_interval
    assert api.minted == 2
    # clear_cache: here and at the server, so the next call is an HTTP request the server
    # cannot answer from its cache (the fake mints again).
    tok.clear_cache()
    assert api.count("DELETE", "/access-token") == 1
    third = tok.access_token()
    assert api.count("POST", "/access-token") == 3 and third != second
    assert tok.id in api.tokens and api.tokens[tok.id]["status"] == "active"  # not revoked
