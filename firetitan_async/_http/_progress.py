"""What the transport reports about the exchange it is running: an ``ExchangeObserver``.

The session's operation tracker (``_session/_tracking.Tracker``) implements it and installs
itself in :data:`CURRENT_OBSERVER` for the task of the operation it tracks; the transport
reports to whatever observer is current. The HTTP layer so stays below the session: it knows
this protocol, not the tracker.

Example::

    token = CURRENT_OBSERVER.set(tracker)
    try:
        await transport.submit(path, json_body=body)   # tracker.submitting(), .accepted(id)
    finally:
        CURRENT_OBSERVER.reset(token)
"""

from __future__ import annotations

import contextvars
from typing import Protocol

__all__ = ["CURRENT_OBSERVER", "ExchangeObserver", "current_tracker"]


class ExchangeObserver(Protocol):
    """The phases of one operation's exchanges, as the transport sees them."""

    def submitting(self) -> None: ...
    def accepted(self, request_id: str) -> None: ...
    def retried(self, what: str) -> None: ...
    def polling(self, request_type: str) -> None: ...
    def reply_started(self) -> None: ...
    def try_again(self, queue_state: str | None, reason: str | None) -> None: ...
    def result_ready(self, *, final: bool = True) -> None: ...


CURRENT_OBSERVER: contextvars.ContextVar[ExchangeObserver | None] = contextvars.ContextVar(
    "firetitan_async_tracker", default=None
)
"""The observer of the operation running in this task (``None`` outside one)."""


def current_tracker() -> ExchangeObserver | None:
    """The observer of the operation running in this task, if any."""
    return CURRENT_OBSERVER.get()
