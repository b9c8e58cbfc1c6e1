"""`make demo` (dev/demo.py) stops what it started cleanly on Ctrl-C: Jupyter gets the signal
it stops cleanly on and is waited for (SIGKILL only after a bounded wait), then the provider."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(240)

DEMO = Path(__file__).resolve().parent.parent / "dev" / "demo.py"
LAB_URL = re.compile(r"JupyterLab\s*:\s*(http://127\.0\.0\.1:(\d+))/\S*\?token=([0-9a-f]+)")
ISSUER = re.compile(r"Dev OpenID provider\s*:\s*(http://127\.0\.0\.1:\d+)")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_for(predicate, timeout: float, what: str, output: list[str]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}; demo output:\n" + "".join(output[-60:])
        time.sleep(0.3)


def test_ctrl_c_stops_jupyter_cleanly_then_the_provider(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {
        **os.environ,
        "DEMO_STATE_DIR": str(state),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }
    # Its own process group, like a terminal's foreground job: Ctrl-C signals the whole group.
    demo = subprocess.Popen(
        [sys.executable, str(DEMO), "--no-browser"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(demo.stdout or []), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: LAB_URL.search("".join(output)), 90, "no JupyterLab URL", output)
        found = LAB_URL.search("".join(output))
        assert found
        base, token = found.group(1), found.group(3)
        issuer_match = ISSUER.search("".join(output))
        assert issuer_match
        issuer = issuer_match.group(1)

        def serving() -> bool:
            try:
                return httpx.get(f"{base}/api/status", params={"token": token}).status_code == 200
            except httpx.TransportError:
                return False

        _wait_for(serving, 120, "JupyterLab did not start", output)
        (info_file,) = (state / "runtime").glob("jpserver-*.json")
        jupyter_pid = int(json.loads(info_file.read_text())["pid"])
        assert _alive(jupyter_pid)

        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C in the terminal
        assert demo.wait(timeout=120) == 0
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        reader.join(timeout=10)
        if demo.stdout is not None:
            demo.stdout.close()
    log = "".join(output)
    # Jupyter ran its own clean stop (extensions, kernels, runtime file), nobody killed it.
    assert "received signal 15, stopping" in log, log[-3000:]
    assert re.search(r"Shutting down \d+ extensions", log), log[-3000:]
    assert "kill" not in log.lower(), log[-3000:]
    assert not info_file.exists()
    _wait_for(lambda: not _alive(jupyter_pid), 10, "Jupyter still runs", output)
    for url in (f"{base}/api/status", f"{issuer}/.well-known/openid-configuration"):
        with pytest.raises(httpx.TransportError):
            httpx.get(url, timeout=5)
