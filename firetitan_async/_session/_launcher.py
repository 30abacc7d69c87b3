"""The launcher: operation tasks are started off the caller's loop turn, a few per turn.

An operation method returns its :class:`~firetitan_async.Pending` at once; its task used to be
started in the call (``task_group.start_soon``: tens of µs of the caller's turn, more than the
rest of an ``optim_step`` call). A user's loop of 200 calls then held the event
loop for all 200 starts, and the 200 tasks all ran their first step in the next turn. Now the
call only appends the operation to a queue (O(1)), and one long-lived task per session, the
launcher, starts queued operations in call order for at most ``_TURN_BUDGET_S`` of a turn,
then yields, so a burst of calls costs the loop a little every turn instead of everything in
one. Order is unchanged: sequence ids were reserved at the call, and tasks start FIFO.

Example::

    launcher = Launcher()
    task_group.start_soon(launcher.run, start, abandon)
    launcher.launch(operation, pending)   # sync, O(1); ``operation()`` runs in its task soon
"""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from ._pending import Pending

__all__ = ["Launcher"]

# Starting one task costs tens of µs; half a millisecond of starts per loop turn keeps a turn
# short while a burst of 200 queued operations is started within a few dozen turns.
_TURN_BUDGET_S = 0.0005

_Operation = Callable[[], Awaitable[None]]
_StartSoon = Callable[[_Operation, "Pending[Any] | None"], Any]
_Abandon = Callable[[Pending[Any]], None]


class Launcher:
    """A FIFO of operations waiting for their task, started by :meth:`run`."""

    __slots__ = ("_queue", "_running", "_wake")

    def __init__(self) -> None:
        self._queue: collections.deque[tuple[_Operation, Pending[Any] | None]] = (
            collections.deque()
        )
        self._wake: anyio.Event | None = None
        self._running = False

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is there to start what :meth:`launch` queues."""
        return self._running

    def launch(self, operation: _Operation, pending: Pending[Any] | None = None) -> None:
        """Queue ``operation`` to run in its own task (a plain call: nothing waits).

        Only while :attr:`running`; otherwise start it yourself. ``pending`` is the outcome
        the operation sets, handed to ``abandon`` if the launcher stops before starting it.
        """
        self._queue.append((operation, pending))
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    async def run(self, start: _StartSoon, abandon: _Abandon) -> None:
        """Start queued operations with ``start(operation, pending)`` until cancelled (a
        session's task).

        On cancellation (the session closing) every operation still queued is given up:
        ``abandon(pending)`` fails its Pending (a task started in a cancelled task group may
        never run a line, so it could not). One queued without a Pending is started anyway.
        """
        queue = self._queue
        clock = time.perf_counter
        self._running = True
        try:
            while True:
                if not queue:
                    self._wake = wake = anyio.Event()
                    await wake.wait()
                    # Woken by the caller's burst of calls: what was already due (the caller's
                    # timers and I/O) runs before this turn's starts, not after them.
                    await checkpoint()
                    continue
                deadline = clock() + _TURN_BUDGET_S
                while queue:
                    start(*queue.popleft())
                    if clock() >= deadline:
                        break
                await checkpoint()
        finally:
            self._running = False
            while queue:
                operation, pending = queue.popleft()
                if pending is not None:
                    abandon(pending)
                else:
                    start(operation, None)
