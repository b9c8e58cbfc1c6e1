"""The base of every live view: a daemon thread polling the REST API until the state is final,
and the ipywidgets box the view displays."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from traitlets import HasTraits

from ..errors import OfflineTokenClientError

MAX_BACKOFF = 30.0


class Poller:
    """Run ``step()`` every ``interval`` seconds in a daemon thread until it returns True.

    An exception from ``step`` goes to ``on_error`` and the interval backs off (up to 30 s).

    Example::

        poller = Poller(widget.poll_once, 1.0, on_error=print)
        poller.start()
    """

    def __init__(
        self,
        step: Callable[[], bool],
        interval: float,
        *,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._step = step
        self.interval = interval
        self._on_error = on_error
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """True while the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling (a no-op while already polling)."""
        if self.running:
            return
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(target=self._run, name="offline-token-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop after its current step."""
        self._stop.set()

    def _run(self) -> None:
        pause = self.interval
        try:
            while not self._stop.is_set():
                try:
                    if self._step():
                        return
                    pause = self.interval
                except Exception as exc:
                    if self._on_error is not None:
                        self._on_error(exc)
                    pause = min(MAX_BACKOFF, max(pause, 0.1) * 2)
                self._stop.wait(pause)
        finally:
            self.finished.set()


def client_message(exc: Exception) -> str:
    if isinstance(exc, OfflineTokenClientError):
        return exc.message
    return f"{type(exc).__name__}: {exc}"


def set_hidden(widget: Any, hidden: bool) -> None:
    widget.layout.display = "none" if hidden else None


class LiveView(HasTraits):
    """Shared plumbing: the ipywidgets box, the poller and display delegation."""

    box: Any
    _poller: Poller

    def poll_once(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _poll_error(self, exc: Exception) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _make_poller(self, interval: float) -> None:
        self._poller = Poller(self.poll_once, interval, on_error=self._poll_error)

    @property
    def polling(self) -> bool:
        """True while the background thread is polling the server."""
        return self._poller.running

    def start(self) -> None:
        """Start (or restart) live updates."""
        self._poller.start()

    def stop(self) -> None:
        """Stop live updates."""
        self._poller.stop()

    def wait_until_settled(self, timeout: float | None = None) -> bool:
        """Block until polling has stopped by itself (final state reached); False on timeout."""
        return self._poller.finished.wait(timeout)

    def close(self) -> None:
        """Stop polling and close the widgets."""
        self.stop()
        self.box.close()

    def text_summary(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        render = getattr(self.box, "_repr_mimebundle_", None)
        bundle = dict(render(**kwargs) or {}) if callable(render) else {}
        # Frontends without widget support (and nbclient readers) still get the facts.
        bundle["text/plain"] = self.text_summary()
        return bundle
