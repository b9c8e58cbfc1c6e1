"""What `pip install` promises: the server extension enabled, the launcher installed, and a
kernel import that pulls in nothing of the server."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _jupyter(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout + result.stderr


def test_server_extension_is_enabled_and_ok():
    out = ANSI.sub("", _jupyter("server", "extension", "list"))
    assert re.search(r"^\s*jupyter_offline_token enabled\s*$", out, re.M), out
    assert re.search(r"^\s*jupyter_offline_token [\d.]+ OK\s*$", out, re.M), out


def test_launcher_labextension_is_installed():
    out = ANSI.sub("", _jupyter("labextension", "list"))
    line = next(line for line in out.splitlines() if "jupyter-offline-token-launcher" in line)
    assert "enabled" in line and "OK" in line


def test_importing_the_package_loads_no_server_code():
    code = (
        "import sys, jupyter_offline_token, jupyter_offline_token.kernel;"
        "bad = [m for m in ('tornado', 'jupyter_server', 'jupyter_offline_token.vault',"
        " 'jupyter_offline_token.handlers', 'jupyter_offline_token.broker') if m in sys.modules];"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
