"""``notebooks/dask_workers.ipynb`` end to end in a real kernel, with a real LocalCluster of
worker processes, the real server and the dev provider; the consent is granted over HTTP while
the notebook waits in ``tok.wait()``, as in test_notebook_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_notebook_e2e import kernel_env, run_with_consent  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(240)

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "dask_workers.ipynb"


async def test_dask_notebook_runs_end_to_end(kernel_env, api, idp, tmp_path):  # noqa: F811
    outputs = await run_with_consent(NOTEBOOK, api, idp, tmp_path, timeout=180)
    assert "Traceback" not in outputs
    assert "completed - 200 of 200 calls answered 200" in outputs
    assert "TaskEnded: " in outputs
    _, tasks = await api.get("tasks")
    (task,) = tasks["tasks"]
    assert task["status"] == "completed" and task["progress"] == 100
