"""`make demo`: the dev OpenID provider plus JupyterLab with the extension configured for it.

Everything stays on 127.0.0.1. The vault and Jupyter's data live under .demo/ in the repo so a
demo never touches your real Jupyter data dir. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dev"))

from dev_provider import DevProvider  # noqa: E402


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on `kill` as on Ctrl-C
    state = ROOT / ".demo"
    state.mkdir(exist_ok=True)
    provider = DevProvider(
        port=free_port(9010),
        access_token_ttl=int(os.environ.get("DEMO_ACCESS_TOKEN_TTL", "60")),
        client_secret=os.environ.get("DEMO_CLIENT_SECRET", "demo-secret"),
    )
    provider.start()
    port = free_port(8888)
    token = secrets.token_hex(16)
    env = dict(os.environ)
    env.update(
        {
            "JUPYTER_OFFLINE_TOKEN_ISSUER": provider.issuer,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_ID": provider.client_id,
            "JUPYTER_OFFLINE_TOKEN_CLIENT_SECRET": provider.client_secret,
            "JUPYTER_DATA_DIR": str(state / "data"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "OFFLINE_TOKEN_DEMO_ISSUER": provider.issuer,
            "OFFLINE_TOKEN_DEMO_USERINFO_URL": provider.metadata["userinfo_endpoint"],
        }
    )
    jupyter = shutil.which("jupyter", path=str(Path(sys.executable).parent)) or "jupyter"
    has_display = sys.platform == "darwin" or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    argv = [
        jupyter,
        "lab",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={ROOT / 'notebooks'}",
        "--LabApp.default_url=/lab/tree/offline_token_demo.ipynb",
        # Opens the demo notebook in your browser when there is a screen to show it on.
        f"--ServerApp.open_browser={has_display}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # only because this process runs as root
    url = f"http://127.0.0.1:{port}/lab/tree/offline_token_demo.ipynb?token={token}"
    print(
        f"""
  Dev OpenID provider : {provider.issuer}   (log in as alice / alice, or bob / bob)
  JupyterLab          : {url}
  Dashboard           : http://127.0.0.1:{port}/offline-token/?token={token}

  Open the JupyterLab URL, run the demo notebook's cells, and click "Grant offline access"
  when it asks. Access tokens live {provider.access_token_ttl} s here, so you can watch them
  being refreshed. Ctrl-C stops everything.
""",
        flush=True,
    )
    server = subprocess.Popen(argv, env=env)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        return 0
    finally:
        provider.stop()


if __name__ == "__main__":
    raise SystemExit(main())
