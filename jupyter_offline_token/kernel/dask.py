"""Dask integration (``pip install 'jupyter-offline-token[dask]'``): fresh access tokens and
progress on every worker of a ``distributed`` cluster, for as long as the task runs.

Example::

    from jupyter_offline_token.kernel.dask import OfflineTokenPlugin

    cred = task.worker_credential()
    client.register_plugin(OfflineTokenPlugin(cred))

    def fetch(i):
        task = current_task()                     # the task, seen from this worker
        r = httpx.get(url, auth=task.token.auth)  # one broker call per token lifetime per worker
        task.progress(i / n)                      # coalesced: at most one report per second
        return r.json()

``cred.auth`` (picklable) also works without the plugin: ``httpx.get(url, auth=cred.auth)``.
Only the worker credential travels (pickled into the plugin); never the Jupyter server token, a
refresh token or a vault key. When the task ends or is cancelled the next broker call on a worker
raises ``TaskEnded``.
"""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

from .workers import WorkerCredential


class OfflineTokenPlugin(WorkerPlugin):
    """Installs a worker credential in every worker process (those joining later too): there
    ``current_task()``, ``current_task().token.auth`` and ``.progress()`` work as in a task
    process. Its last progress report is sent when the worker closes.

    Example::

        client.register_plugin(OfflineTokenPlugin(task.worker_credential()))
    """

    def __init__(self, credential: WorkerCredential) -> None:
        if not isinstance(credential, WorkerCredential):
            raise TypeError("OfflineTokenPlugin needs a WorkerCredential: task.worker_credential()")
        self.credential = credential
        self.name = f"jupyter-offline-token-{credential.task_id}"

    def __repr__(self) -> str:
        return f"OfflineTokenPlugin({self.credential!r})"

    def setup(self, worker: Any) -> None:
        self.credential.install()

    def teardown(self, worker: Any) -> None:
        self.credential.flush_progress()


def install_on_workers(client: Any, credential: WorkerCredential) -> OfflineTokenPlugin:
    """Register :class:`OfflineTokenPlugin` on a ``distributed.Client``'s cluster.

    Example::

        install_on_workers(client, task.worker_credential())
    """
    plugin = OfflineTokenPlugin(credential)
    client.register_plugin(plugin)
    return plugin


def worker_broker_fetches(credential: WorkerCredential) -> int:
    """On a worker: how many access tokens this worker process fetched from the broker with
    ``credential`` (``client.run(worker_broker_fetches, cred)`` collects them per worker)."""
    return credential.broker_fetches()
