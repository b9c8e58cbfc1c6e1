"""`make demo`: the dev OpenID provider plus JupyterLab with the extension configured for it.

Everything stays on 127.0.0.1. The vault and Jupyter's data live under .demo/ in the repo (or
$DEMO_STATE_DIR) so a demo never touches your real Jupyter data dir. Ctrl-C (or SIGTERM) stops
both cleanly: Jupyter gets SIGTERM, its own clean stop (extensions, kernels, runtime files), and
is killed only if it has not stopped within JUPYTER_STOP_GRACE seconds or on a second Ctrl-C;
then the provider the same way.
"""

from __future__ import annotations

import argparse
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


JUPYTER_STOP_GRACE = 30.0  # shutting down kernels and extensions can take a while


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_gracefully(process: subprocess.Popen[bytes], name: str, grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, and SIGKILL only if it is still running then (or
    on another Ctrl-C while waiting)."""
    if process.poll() is not None:
        return
    print(f"Stopping {name} (pid {process.pid})...", flush=True)
    process.terminate()
    try:
        process.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop within {grace:.0f} s: sending SIGKILL", flush=True)
    except KeyboardInterrupt:
        print(f"Interrupted again: sending SIGKILL to {name}", flush=True)
    process.kill()
    process.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--no-browser", action="store_true", help="do not open the demo notebook in a browser"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on `kill` as on Ctrl-C
    state = Path(os.environ.get("DEMO_STATE_DIR") or ROOT / ".demo")
    state.mkdir(parents=True, exist_ok=True)
    provider = DevProvider(
        port=free_port(9010),
        access_token_ttl=int(os.environ.get("DEMO_ACCESS_TOKEN_TTL", "60")),
        client_secret=os.environ.get("DEMO_CLIENT_SECRET", "demo-secret"),
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        provider.start()
        server = start_jupyter(provider, state, open_browser=not args.no_browser)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # Jupyter first, then the provider: DevProvider.stop sends SIGTERM and kills only after
        # 10 s (a Ctrl-C in the terminal has usually stopped it already, cleanly, by SIGINT).
        if server is not None:
            stop_gracefully(server, "JupyterLab", JUPYTER_STOP_GRACE)
        provider.stop()
        print("Demo stopped.", flush=True)


def start_jupyter(
    provider: DevProvider, state: Path, *, open_browser: bool
) -> subprocess.Popen[bytes]:
    """Start JupyterLab configured for ``provider`` and print where to go."""
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
    has_display = open_browser and (
        sys.platform == "darwin"
        or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    )
    argv = [
        jupyter,
        "lab",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",  # fail loudly rather than serve on a port not printed below
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
    # Its own session: a Ctrl-C in the terminal reaches only this launcher, which stops Jupyter
    # with SIGTERM. A SIGINT would make Jupyter ask for confirmation on a terminal, or die on a
    # KeyboardInterrupt without its clean stop when stdin is not a terminal.
    return subprocess.Popen(argv, env=env, start_new_session=True)


if __name__ == "__main__":
    raise SystemExit(main())
