"""Operation tracking: phases, deadlines, stall reports and events of every operation.

:meth:`OperationMonitor.track` runs one operation's work inside a cancel scope, and the
operation's deadline follows its phase (submit → compute/queue → transfer, see
:mod:`~firetitan_async._session._deadlines`). The transport reports what it sees — the request
accepted, a retry, a reply's headers, a ``try_again`` and its queue state, the result — to the
operation's :class:`Tracker`, which it finds through a context variable: the operation's task
(and the tasks it starts) carry it, so neither the clients nor the wire layer pass it around.

One task per session, the watcher, sleeps until the earliest deadline or stall report of all
running operations (a phase change only wakes it when it brings that moment closer, so an
operation costs no timer of its own). When a phase's budget runs out it cancels that
operation's scope: the HTTP wait ends, the operation fails with
:class:`~firetitan_async.OperationTimeout`, and nothing is sent to the server (the operation
goes on there; later operations are not affected). An operation without progress for
``stall_warning_s`` gets a ``stalled`` event and a WARNING on the ``firetitan_async``
loggers naming it and what the server last said.

Example::

    result = await monitor.track(pending, lambda: run(seqs, pending))
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from .._http._progress import CURRENT_OBSERVER
from .._http._redact import Redactor
from ..errors import OperationTimeout
from ._deadlines import PHASES, DeadlinePolicy, Deadlines, Phase
from ._events import EventHub, EventKind, OperationEvent
from ._pending import Pending

__all__ = ["OperationMonitor", "Tracker", "current_tracker"]

T = TypeVar("T")
logger = logging.getLogger("firetitan_async.operations")

_PAUSED = frozenset({"paused_capacity", "paused_rate_limit"})
# How long the best-effort server-side cancel of a timed-out operation may take.
_CANCEL_TIMEOUT_S = 5.0
# The stall watcher looks at least this often while operations are running.
_MAX_WATCH_INTERVAL_S = 5.0

_now = time.monotonic

_CURRENT = CURRENT_OBSERVER  # the transport reports to the tracker installed here


def current_tracker() -> Tracker | None:
    """The tracker of the operation running in this task, if any."""
    observer = _CURRENT.get()
    return observer if isinstance(observer, Tracker) else None


class Tracker:
    """The phase, timings and last server word of one running operation."""

    def __init__(
        self,
        monitor: OperationMonitor,
        op_id: int,
        pending: Pending[Any],
        deadlines: Deadlines,
        tokens: int | None,
    ) -> None:
        now = _now()
        self._monitor = monitor
        self.op_id = op_id
        self.pending = pending
        self.deadlines = deadlines
        self.tokens = tokens
        self.started_at = now
        # No phase (and no deadline) until the operation's own first submission: an operation
        # that first waits for others (unload_model drains, a composite that awaits an inner
        # operation) is only bounded by theirs.
        self.phase: Phase | None = None
        self._phase_started = now
        self._spent: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.last_progress = now
        self.stall_reports = 0
        self.queue_state: str | None = None
        self.queue_reason: str | None = None
        self.request_type: str | None = None
        self.retries = 0
        self.polls = 0
        self.last_said = "nothing yet (submitting)"
        self._accepted = False
        self._in_body = False
        self._before_body: Phase | None = None
        self._scope: anyio.CancelScope | None = None
        #: When the current phase's budget runs out (``time.monotonic()``; ``inf``: never).
        self.deadline_at = math.inf
        self._expired: Phase | None = None

    # -- what the transport reports ----------------------------------------------------------

    def submitting(self) -> None:
        """A submission is about to be sent (the first one starts the ``submit`` phase)."""
        if self.phase is None and not self._accepted:
            self._progress()  # waiting for earlier operations was not a stall of this one
            self._move("submit")
            self._monitor.look_by(self.next_stall_report_at())

    def accepted(self, request_id: str) -> None:
        """A submission was accepted (for a chunked operation, the first one counts)."""
        if self.pending.request_id is None:
            self.pending.request_id = request_id
        if self._accepted:
            return
        self._accepted = True
        self.last_said = f"accepted as {request_id}"
        self._progress()
        self._emit("accepted")
        self._move("compute")
        self._emit("started")

    def retried(self, what: str) -> None:
        """A submission or poll failed transiently and will be tried again."""
        self.retries += 1
        self.last_said = what
        if self._in_body:  # the reply broke off: back to waiting
            self._in_body = False
            self._move(self._before_body)
        self._emit("retried", detail=what)

    def polling(self, request_type: str) -> None:
        """A ``retrieve_future`` poll is about to be sent."""
        self.request_type = request_type
        self.polls += 1

    def reply_started(self) -> None:
        """A reply's headers arrived: its body is being read (the ``transfer`` phase)."""
        if not self._accepted or self.phase is None:
            return
        if not self._in_body:
            self._in_body, self._before_body = True, self.phase
        self.last_said = "a reply whose body is still arriving"
        self._move("transfer")

    def try_again(self, queue_state: str | None, reason: str | None) -> None:
        """The server answered ``try_again``: not done yet."""
        if self._in_body:
            self._in_body = False
            self._move(self._before_body)
        changed = queue_state != self.queue_state
        self.queue_state, self.queue_reason = queue_state, reason
        self.last_said = f"try_again (queue_state={queue_state})"
        if changed:
            self._progress()
        if queue_state in _PAUSED:
            if self.phase != "queue":
                self._move("queue")
                self._emit("queued", detail=reason)
        elif self.phase == "queue":
            self._move("compute")
            self._emit("started")

    def result_ready(self, *, final: bool = True) -> None:
        """The result (``final``) or a metadata-only reply announcing it has been read."""
        self._in_body = False
        self.last_said = "the result" if final else "the result is ready (metadata only)"
        self._progress()
        if not final:  # the result itself is fetched next: the operation waits again
            self._move("compute")

    # -- phases ------------------------------------------------------------------------------

    def phase_s(self, now: float | None = None) -> dict[str, float]:
        """Seconds spent in each phase so far."""
        spent = dict(self._spent)
        if self.phase is not None:
            now = _now() if now is None else now
            spent[self.phase] += now - self._phase_started
        return spent

    def _move(self, phase: Phase | None) -> float:
        now = _now()
        if self.phase is not None:
            self._spent[self.phase] += now - self._phase_started
        self.phase, self._phase_started = phase, now
        self._apply_deadline()
        return now

    def _apply_deadline(self) -> None:
        budget = None if self.phase is None else self.deadlines.budget(self.phase)
        if budget is None or self.phase is None or self._scope is None:
            self.deadline_at = math.inf
        else:
            self.deadline_at = self._phase_started + budget - self._spent[self.phase]
            self._monitor.look_by(self.deadline_at)

    def expire(self) -> None:
        """The current phase's budget ran out: end the operation's wait (the watcher calls)."""
        if self._scope is not None and self._expired is None:
            self._expired = self.phase
            self.deadline_at = math.inf
            self._scope.cancel()

    def _progress(self) -> None:
        self.last_progress = _now()
        self.stall_reports = 0

    def timeout(self) -> OperationTimeout:
        """The error for the phase whose budget ran out."""
        phase = self._expired or self.phase or "compute"
        return OperationTimeout(
            self.pending.name,
            seq_id=self.pending.seq_id,
            request_id=self.pending.request_id,
            phase=phase,
            budget_s=self.deadlines.budget(phase) or 0.0,
            phase_s=self.phase_s(),
        )

    # -- stall reports -----------------------------------------------------------------------

    def next_stall_report_at(self) -> float:
        """When the next stall report is due (``inf`` if stall warnings are off)."""
        every = self.deadlines.stall_warning_s
        if every is None or self.phase is None:
            return math.inf
        return self.last_progress + every * (self.stall_reports + 1)

    def stall_report(self, now: float) -> str:
        """A one-line report: the operation, how long without progress, what the server said."""
        pending = self.pending
        phase = self.phase or "compute"
        budget = self.deadlines.budget(phase)
        left = "no deadline" if budget is None else (
            f"its {phase} deadline is in {max(0.0, budget - self.phase_s(now)[phase]):.1f}s"
        )
        doing = "reading the reply body" if self._in_body else f"in phase {phase}"
        reason = f" ({self.queue_reason})" if self.queue_reason else ""
        return (
            f"{pending.name} (seq_id {pending.seq_id}, request_id {pending.request_id}) has made "
            f"no progress for {now - self.last_progress:.1f}s, {doing}; the server last said "
            f"{self.last_said}{reason}; X-Tinker-Request-Type={self.request_type}, "
            f"{self.polls} polls, {self.retries} retries; {left}"
        )

    # -- events ------------------------------------------------------------------------------

    def _emit(
        self, kind: EventKind, *, detail: str | None = None, now: float | None = None
    ) -> None:
        hub = self._monitor.hub
        if not hub.listening:
            return
        now = _now() if now is None else now
        redact = self._monitor.redactor.text  # server words: ids, reasons, error texts
        request_id = self.pending.request_id
        hub.emit(
            OperationEvent(
                kind=kind,
                operation=self.pending.name,
                op_id=self.op_id,
                seq_id=self.pending.seq_id,
                request_id=None if request_id is None else redact(request_id),
                time=now,
                wall_time=time.time(),
                elapsed_s=now - self.started_at,
                phase=self.phase,
                phase_s=self.phase_s(now),
                queue_state=self.queue_state,
                request_type=self.request_type,
                retries=self.retries,
                tokens=self.tokens,
                detail=None if detail is None else redact(detail),
            )
        )


class OperationMonitor:
    """Tracks a session's running operations: deadlines, stall reports, events."""

    def __init__(
        self,
        hub: EventHub,
        policy: DeadlinePolicy,
        redactor: Redactor,
        *,
        cancel: Callable[[Pending[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.hub = hub
        self.policy = policy
        self.redactor = redactor
        self._cancel = cancel
        self._ids = itertools.count(1)
        self._active: set[Tracker] = set()
        self._wake: anyio.Event | None = None
        self._next_look = math.inf

    async def track(
        self,
        pending: Pending[Any],
        work: Callable[[], Awaitable[T]],
        *,
        deadlines: Deadlines | None = None,
        tokens: int | None = None,
    ) -> T:
        """Run ``work()`` as the operation of ``pending``, under its deadlines.

        Raises :class:`OperationTimeout` when a phase's budget runs out.
        """
        tracker = Tracker(
            self,
            next(self._ids),
            pending,
            self.policy.for_operation(pending.name, deadlines),
            tokens,
        )
        token = _CURRENT.set(tracker)
        self._active.add(tracker)
        tracker._emit("submitted")
        try:
            with anyio.CancelScope() as scope:
                tracker._scope = scope
                result = await work()
            if scope.cancelled_caught:
                error = tracker.timeout()
                if tracker.deadlines.cancel_on_timeout and self._cancel is not None:
                    with anyio.move_on_after(_CANCEL_TIMEOUT_S, shield=True):
                        await self._cancel(pending)
                raise error
        except BaseException as exc:
            # Every error leaves the operation scrubbed (its text, attributes, causes): what
            # the Pending, the logs and the events see.
            self.redactor.scrubbed(exc)
            tracker._emit("failed", detail=self.redactor.exception(exc))
            raise
        finally:
            tracker._scope = None
            self._active.discard(tracker)
            _CURRENT.reset(token)
        tracker._emit("finished", now=tracker._move(None))
        return result

    def look_by(self, at: float) -> None:
        """Make sure the watcher looks at the operations again no later than ``at``."""
        if at < self._next_look and self._wake is not None:
            self._next_look = at
            self._wake.set()

    async def watch(self) -> None:
        """Enforce deadlines and report stalls until cancelled (in the session's task group)."""
        while True:
            now = _now()
            due = math.inf
            for tracker in tuple(self._active):
                if tracker.deadline_at <= now:
                    tracker.expire()
                at = tracker.next_stall_report_at()
                if at <= now:
                    self._report(tracker, now)
                    at = tracker.next_stall_report_at()
                due = min(due, at, tracker.deadline_at)
            self._next_look = min(due, now + _MAX_WATCH_INTERVAL_S) if self._active else math.inf
            self._wake = anyio.Event()
            with anyio.move_on_after(self._next_look - now):
                await self._wake.wait()

    def _report(self, tracker: Tracker, now: float) -> None:
        every = tracker.deadlines.stall_warning_s or math.inf
        # One report per stall_warning_s without progress (no catch-up burst after a pause).
        behind = int((now - tracker.last_progress) // every)
        tracker.stall_reports = max(tracker.stall_reports + 1, behind)
        report = self.redactor.text(tracker.stall_report(now))
        logger.warning("stalled: %s", report)
        tracker._emit("stalled", detail=report)
