"""``notebooks/dask_workers.ipynb`` end to end in a real kernel, with a real LocalCluster of
worker processes, the real server and the dev provider; the consent is granted over HTTP while
the notebook waits in ``tok.wait()``, as in test_notebook_e2e.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_notebook_e2e import CONSENT_URL, _text, kernel_env  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "dask_workers.ipynb"


async def test_dask_notebook_runs_end_to_end(kernel_env, api, idp, tmp_path):  # noqa: F811
    nb = nbformat.read(NOTEBOOK, as_version=4)
    consents: list[asyncio.Task] = []

    async def grant_when_asked(url: str) -> None:
        location = await asyncio.to_thread(idp.complete_consent, url)
        status, page = await api.callback(location)
        assert status == 200, page

    def on_cell_executed(cell, cell_index, execute_reply) -> None:
        match = CONSENT_URL.search(_text(cell.get("outputs", [])))
        if match and not consents:
            consents.append(asyncio.ensure_future(grant_when_asked(match.group(0))))

    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        on_cell_executed=on_cell_executed,
    )
    await client.async_execute()
    assert consents, "the notebook never showed a consent URL"
    await consents[0]
    outputs = "\n".join(_text(c.get("outputs", [])) for c in nb.cells if c.cell_type == "code")
    assert "Traceback" not in outputs
    assert "completed - 200 of 200 calls answered 200" in outputs
    assert "TaskEnded: " in outputs
    _, tasks = await api.get("tasks")
    (task,) = tasks["tasks"]
    assert task["status"] == "completed" and task["progress"] == 100
