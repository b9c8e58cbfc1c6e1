"""The live task view: progress bar, status badge, message and a Cancel button."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from traitlets import Bool, Float, Unicode, observe

from ..errors import OfflineTokenClientError
from .badges import badge_html
from .live import LiveView, client_message, set_hidden

if TYPE_CHECKING:
    from ..tasks import Task

TASK_DONE = frozenset({"completed", "failed", "cancelled", "interrupted"})


class TaskProgressWidget(LiveView):
    """A task's live view: progress bar, status badge, message and a Cancel button.

    Example::

        display(task.widget())
    """

    status = Unicode("unknown", help="The task's status as last read from the server.")
    progress = Float(0.0, min=0.0, max=100.0, help="Percent done, 0-100.")
    message = Unicode("", help="The task's latest progress message.")
    error = Unicode("", help="The task's error, or why the widget could not update.")
    cancelled_here = Bool(False, help="True once this widget's Cancel button cancelled the task.")

    def __init__(self, task: Task, *, poll_interval: float = 1.0, autostart: bool = True):
        import ipywidgets as w

        super().__init__()
        self.task = task
        self.title = w.HTML(
            f"<b>{html.escape(task.name or 'task')}</b> <code>{html.escape(task.id)}</code>"
        )
        self.badge = w.HTML()
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=100.0, description="", bar_style="info")
        self.percent = w.HTML()
        self.message_text = w.HTML()
        self.outcome = w.HTML()
        self.cancel_button = w.Button(
            description="Cancel", icon="stop", button_style="danger", tooltip="Cancel this task"
        )
        self.cancel_button.on_click(self._on_cancel)
        self.box = w.VBox(
            [
                w.HBox([self.title, self.badge]),
                w.HBox([self.bar, self.percent, self.cancel_button]),
                self.message_text,
                self.outcome,
            ]
        )
        self._make_poller(poll_interval)
        self._apply(task.info)
        if autostart and self.status not in TASK_DONE:
            self.start()

    def text_summary(self) -> str:
        """Plain-text version of the widget."""
        text = f"Task {self.task.id} ({self.task.name}): {self.status} {self.progress:.0f} %"
        return text + (f" - {self.message}" if self.message else "")

    def _apply(self, info: dict[str, Any]) -> None:
        try:
            progress = float(info.get("progress") or 0.0)
        except (TypeError, ValueError):
            progress = 0.0
        self.progress = min(100.0, max(0.0, progress))
        self.message = str(info.get("message") or "")
        self.error = str(info.get("error") or "")
        result = info.get("result")
        self.status = str(info.get("status") or "unknown")
        self.outcome.value = (
            f'<span style="color:#b71c1c">{html.escape(self.error)}</span>'
            if self.error
            else (f"result: {html.escape(str(result))}" if result not in (None, "") else "")
        )

    @observe("status")
    def _on_status(self, change: Any) -> None:
        status = self.status
        self.badge.value = badge_html(status)
        self.cancel_button.disabled = status in TASK_DONE
        set_hidden(self.cancel_button, status in TASK_DONE)  # a finished task has nothing to cancel
        self.bar.bar_style = {
            "completed": "success",
            "failed": "danger",
            "interrupted": "warning",
        }.get(status, "info")

    @observe("progress")
    def _on_progress(self, change: Any) -> None:
        self.bar.value = self.progress
        self.percent.value = f"{self.progress:.0f} %"

    @observe("message")
    def _on_message(self, change: Any) -> None:
        self.message_text.value = html.escape(self.message)

    def poll_once(self) -> bool:
        """Read the task once; True when it reached a final status."""
        self._apply(self.task.refresh())
        return self.status in TASK_DONE

    def _poll_error(self, exc: Exception) -> None:
        self.outcome.value = (
            f'<span style="color:#b71c1c">cannot read the task: '
            f"{html.escape(client_message(exc))}</span>"
        )

    def _on_cancel(self, _button: Any = None) -> None:
        self.cancel_button.disabled = True
        try:
            info = self.task.cancel().info
        except OfflineTokenClientError as exc:
            self.cancel_button.disabled = False
            self.outcome.value = (
                f'<span style="color:#b71c1c">cancel failed: {html.escape(exc.message)}</span>'
            )
            return
        self.cancelled_here = True
        self._apply(info)
