"""Send this package's log lines to the Jupyter server's log.

The package logs under ``jupyter_offline_token.*``. Those loggers have no handler of their own and
the server's logger does not propagate to the root, so without this hook INFO lines ("refresh
engine started", "clock jumped", retries) were lost and warnings went to bare stderr.
"""

from __future__ import annotations

import logging

PACKAGE_LOGGER = "jupyter_offline_token"


class _ToServerLog(logging.Handler):
    """Hands every record to the server logger's handlers (and its parents' up to where it
    stops propagating), whose format then applies. The root logger is left out: the package's
    records reach it by their own propagation, so nothing is written twice."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        logger: logging.Logger | None = self.target
        while logger is not None and logger is not logging.root:
            for handler in logger.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            if not logger.propagate:
                break
            logger = logger.parent


def attach_to_server_log(target: logging.Logger) -> None:
    """Route ``jupyter_offline_token.*`` records at the server's level to ``target``
    (idempotent: a second call, e.g. for a new server app in the same process, replaces the
    first). The records keep their name, so the server's log shows where they come from."""
    package = logging.getLogger(PACKAGE_LOGGER)
    for handler in list(package.handlers):
        if isinstance(handler, _ToServerLog):
            package.removeHandler(handler)
    package.addHandler(_ToServerLog(target))
    package.setLevel(target.getEffectiveLevel())
