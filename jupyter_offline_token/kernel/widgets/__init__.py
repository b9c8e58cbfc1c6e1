"""ipywidgets views: consent, token status and task progress, each updating itself by polling.

ipywidgets is imported only when a widget is built, so the rest of the kernel package works
without it: ``consent_view``, ``token_view`` and ``task_view`` then return a ``StaticView`` (a
one-time HTML/text snapshot with a clickable consent link) that says what to install.

Each live view is a ``traitlets.HasTraits`` controller (``status``, ``error``, ...) that owns a
``box`` of ipywidgets; displaying the controller displays the box. A daemon thread polls
the REST API (about once a second) and stops by itself once the state is final, so logic is
testable without a browser: call ``poll_once()`` or ``button.click()`` and read the traits.

Note: a foreground cell keeps the kernel busy, so a *click* (Retry, Cancel) in this same kernel is
only handled once the running cell ends; updates pushed by the polling thread still show live.

Modules: ``tokens`` (consent and token status widgets), ``tasks`` (task progress widget),
``fallback`` (what ``consent_view``/``token_view``/``task_view`` return without ipywidgets),
``live`` (the polling thread and the base of every live view), ``badges`` (shared HTML).
"""

from __future__ import annotations

from .badges import BADGE_COLORS, badge_html, consent_link_html
from .fallback import (
    INSTALL_HINT,
    StaticView,
    consent_view,
    have_ipywidgets,
    task_view,
    token_view,
)
from .live import MAX_BACKOFF, Poller
from .tasks import TASK_DONE, TaskProgressWidget
from .tokens import TOKEN_DEAD, TOKEN_DONE, ConsentWidget, TokenStatusWidget, token_facts

__all__ = [
    "BADGE_COLORS",
    "INSTALL_HINT",
    "MAX_BACKOFF",
    "TASK_DONE",
    "TOKEN_DEAD",
    "TOKEN_DONE",
    "ConsentWidget",
    "Poller",
    "StaticView",
    "TaskProgressWidget",
    "TokenStatusWidget",
    "badge_html",
    "consent_link_html",
    "consent_view",
    "have_ipywidgets",
    "task_view",
    "token_facts",
    "token_view",
]
