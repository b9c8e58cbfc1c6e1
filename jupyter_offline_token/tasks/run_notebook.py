"""Execute a notebook headless for a ``notebook`` task: ``python -m
jupyter_offline_token.tasks.run_notebook NOTEBOOK --output EXECUTED``.

Runs in the task's own process (never in the Jupyter server): the parameters from
``$JUPYTER_OFFLINE_TOKEN_PARAMETERS`` become a first code cell, each cell's text output is echoed
to stdout (the task log), and the executed copy is saved even when a cell fails. Exit code 0 when
every cell ran, 1 when one failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import sys
from pathlib import Path
from typing import Any

ENV_PARAMETERS = "JUPYTER_OFFLINE_TOKEN_PARAMETERS"
PARAMETERS_TAG = "injected-parameters"


def parameters_source(parameters: dict[str, Any]) -> str:
    """Python source that defines ``parameters`` and one variable per identifier-like key."""
    lines = ["# Parameters injected by jupyter-offline-token", f"parameters = {parameters!r}"]
    for name in parameters:
        if isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name):
            lines.append(f"{name} = parameters[{name!r}]")
    return "\n".join(lines) + "\n"


def _echo_outputs(cell: Any, cell_index: int, **_: Any) -> None:
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            sys.stdout.write(output.get("text", ""))
        elif kind == "error":
            sys.stdout.write(f"{output.get('ename')}: {output.get('evalue')}\n")
    sys.stdout.write(f"[run_notebook] cell {cell_index} done\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jupyter_offline_token.tasks.run_notebook")
    parser.add_argument("notebook", help="the notebook to execute (left unchanged)")
    parser.add_argument("--output", required=True, help="where to save the executed copy")
    parser.add_argument("--kernel", default="", help="kernel name (default: the notebook's)")
    args = parser.parse_args(argv)

    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, DeadKernelError
    except ImportError as exc:
        print(f"cannot run notebooks: {exc} (pip install nbclient nbformat)", file=sys.stderr)
        return 2

    source = Path(args.notebook)
    try:
        nb = nbformat.read(source, as_version=4)
    except (OSError, ValueError) as exc:
        print(f"cannot read notebook {source}: {exc}", file=sys.stderr)
        return 2
    try:
        parameters = json.loads(os.environ.get(ENV_PARAMETERS) or "{}")
    except ValueError:
        parameters = {}
    if isinstance(parameters, dict) and parameters:
        cell = nbformat.v4.new_code_cell(parameters_source(parameters))
        cell.metadata["tags"] = [PARAMETERS_TAG]
        nb.cells.insert(0, cell)

    kernel = args.kernel or nb.metadata.get("kernelspec", {}).get("name") or "python3"
    client = NotebookClient(
        nb,
        timeout=None,
        kernel_name=kernel,
        resources={"metadata": {"path": str(source.parent.resolve())}},
        on_cell_executed=_echo_outputs,
    )
    total = sum(1 for c in nb.cells if c.cell_type == "code")
    print(f"[run_notebook] executing {source.name}: {total} code cells, kernel {kernel}")
    sys.stdout.flush()
    status = 0
    try:
        client.execute()
    except CellExecutionError as exc:
        print(str(exc).strip()[-4000:], file=sys.stderr)
        status = 1
    except DeadKernelError as exc:
        print(f"the kernel died: {exc}", file=sys.stderr)
        status = 1
    finally:
        output = Path(args.output)
        output.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Owner-only, like the task's log: outputs may show what the work fetched.
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            nbformat.write(nb, handle)
        print(f"[run_notebook] executed copy saved to {output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
