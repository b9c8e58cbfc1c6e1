"""``%offline_token`` in a real IPython shell, against the REST API emulation."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from jupyter_offline_token.kernel import create_task, request_offline_token
from jupyter_offline_token.kernel.client import set_default_client
from jupyter_offline_token.kernel.testing import FakeOfflineTokenAPI


@pytest.fixture(scope="module")
def shell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteractiveShell]:
    mp = pytest.MonkeyPatch()
    mp.setenv("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    config = Config()
    config.HistoryManager.enabled = False
    ip = InteractiveShell.instance(config=config)
    yield ip
    InteractiveShell.clear_instance()
    mp.undo()


@pytest.fixture
def api(shell: InteractiveShell) -> Iterator[FakeOfflineTokenAPI]:
    fake = FakeOfflineTokenAPI()
    previous = set_default_client(fake.client())
    shell.extension_manager.load_extension("jupyter_offline_token")
    yield fake
    set_default_client(previous)


def run(shell: InteractiveShell, capsys: pytest.CaptureFixture[str], line: str) -> tuple[str, str]:
    assert shell.run_line_magic("offline_token", line) is None
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out, err


def test_magic_is_registered_by_load_ext(api: FakeOfflineTokenAPI, shell: InteractiveShell) -> None:
    assert "offline_token" in shell.magics_manager.magics["line"]


def test_request_prints_the_consent_link(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    task = create_task("t", client=api.client())
    out, _ = run(shell, capsys, f"request --label 'my run' --task {task.id} --scope openid")
    (entry,) = api.tokens.values()
    assert entry["label"] == "my run"
    assert entry["task_id"] == task.id
    assert entry["scopes"] == ["openid"]
    assert f"{api.consent_url_base}?response_type=code&state=" in out
    assert entry["persistent_token_id"] in out


def test_list_status_and_empty_list(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = run(shell, capsys, "list")
    assert out.strip() == "no offline tokens"
    tok = request_offline_token(label="alpha", client=api.client(), display=False)
    api.grant(tok.id, subject="alice-sub")
    capsys.readouterr()
    out, _ = run(shell, capsys, "list")
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "STATUS", "HEALTH", "LABEL", "LAST", "REFRESH"]
    assert row.split()[:4] == [tok.id, "active", "healthy", "alpha"]
    out, _ = run(shell, capsys, f"status {tok.id}")
    assert f"persistent_token_id: {tok.id}" in out
    assert "status: active" in out
    assert "subject: alice-sub" in out


def test_token_stores_the_access_token_without_printing_it(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = request_offline_token(client=api.client(), display=False)
    api.grant(tok.id)
    capsys.readouterr()
    out, err = run(shell, capsys, f"token {tok.id} --var my_tok")
    value = shell.user_ns["my_tok"]
    assert value in api.valid_access_tokens
    assert value not in out + err
    assert re.fullmatch(r"access token stored in my_tok \(expires in \d+ s\)\n", out)
    run(shell, capsys, f"token {tok.id}")
    assert shell.user_ns["access_token"] == value  # cached: same token, default variable
    assert api.count("POST", "/access-token") == 1


def test_token_errors_are_one_line_messages(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = request_offline_token(client=api.client(), display=False)
    capsys.readouterr()
    _, err = run(shell, capsys, f"token {tok.id} --var pending_tok")
    assert "pending_tok" not in shell.user_ns
    assert err.startswith("%offline_token token: ")
    assert "grant offline access" in err.lower()
    _, err = run(shell, capsys, "status no-such-id")
    assert "no offline token 'no-such-id'" in err


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        ("frobnicate", "invalid choice: 'frobnicate'"),
        ("status", "the following arguments are required: id"),
        ("token abc --var 1bad", "'1bad' is not a valid Python variable name"),
        ("token abc --var class", "'class' is not a valid Python variable name"),
        ("token abc --min-ttl soon", "'soon' is not a number of seconds"),
        ("list --bogus", "unrecognized arguments: --bogus"),
        ("request --label 'unclosed", "No closing quotation"),
    ],
)
def test_bad_input_prints_usage(
    api: FakeOfflineTokenAPI,
    shell: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
    line: str,
    complaint: str,
) -> None:
    _, err = run(shell, capsys, line)
    assert complaint in err
    assert "usage: %offline_token <command>" in err
    assert api.requests == []


def test_help_and_empty_line(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    for line in ("help", ""):
        out, _ = run(shell, capsys, line)
        assert "usage: %offline_token <command>" in out
        for command in (
            "request",
            "list",
            "status",
            "token",
            "refresh",
            "revoke",
            "tasks",
            "watch",
        ):
            assert f"  {command}" in out
    out, _ = run(shell, capsys, "token -h")
    assert "--var NAME" in out


def test_revoke(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = request_offline_token(client=api.client(), display=False)
    api.grant(tok.id)
    capsys.readouterr()
    out, _ = run(shell, capsys, f"revoke {tok.id} --keep-at-provider")
    assert out.strip() == f"offline token {tok.id} deleted (kept at the provider)"
    assert api.requests[-1].method == "DELETE"
    assert api.requests[-1].url.params["revoke"] == "false"
    assert tok.id not in api.tokens
    _, err = run(shell, capsys, f"revoke {tok.id}")
    assert "not_found" in err


def test_tasks_and_watch(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = run(shell, capsys, "tasks")
    assert out.strip() == "no tasks"
    client = api.client()
    tok = request_offline_token(client=client, display=False)
    api.grant(tok.id)
    task = create_task("crunch", token=tok)
    with task.running():
        task.progress(0.4, "reading")
    capsys.readouterr()
    out, _ = run(shell, capsys, "tasks")
    header, row = out.strip().splitlines()
    assert header.split() == ["ID", "STATUS", "PROGRESS", "KIND", "NAME", "TOKEN"]
    assert row.split() == [task.id, "completed", "100", "%", "kernel", "crunch", tok.id]
    out, _ = run(shell, capsys, f"watch {task.id}")
    lines = out.strip().splitlines()
    assert lines[0] == "pending 0 %"
    assert "running 40 % - reading" in lines
    assert lines[-1] == "completed 100 % - reading"
    _, err = run(shell, capsys, "watch nope")
    assert "no task 'nope'" in err


def test_magic_outputs_never_contain_the_server_token(
    api: FakeOfflineTokenAPI,
    shell: InteractiveShell,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tok = request_offline_token(client=api.client(), display=False)
    api.grant(tok.id)
    outputs = []
    for line in ("list", f"status {tok.id}", f"token {tok.id}", "tasks", "help"):
        outputs.append("".join(run(shell, capsys, line)))
    assert all(api.server_token not in text for text in outputs)


def test_refresh(
    api: FakeOfflineTokenAPI, shell: InteractiveShell, capsys: pytest.CaptureFixture[str]
) -> None:
    tok = request_offline_token(client=api.client(), display=False)
    _, err = run(shell, capsys, f"refresh {tok.id}")
    assert "waiting_consent" in err
    api.grant(tok.id)
    out, err = run(shell, capsys, f"refresh {tok.id}")
    assert err == ""
    assert out.startswith(f"offline token {tok.id} refreshed at ")
    assert "refresh #1" in out
    assert api.minted == 1
    access = api._cache[tok.id][0]
    assert access not in out  # the answer has no token, and the magic prints none
    _, err = run(shell, capsys, f"refresh {tok.id}")
    assert "refresh_too_soon" in err and "again in" in err
    assert api.minted == 1
    _, err = run(shell, capsys, "refresh")
    assert "usage" in err
