"""``cleanup_on_signals()``: SIGINT and SIGTERM become cancellation, so every block unwinds.

Without it, SIGTERM kills the process on the spot (nothing is cleaned up) and SIGINT raises
``KeyboardInterrupt`` wherever the loop happens to be. Inside it, the first SIGINT or SIGTERM
cancels the block: every ``async with`` in it exits as on any cancellation, so trainer jobs
and deployments created with :meth:`TrainerJobs.create_and_wait
<firetitan_async.TrainerJobs.create_and_wait>` / ``Deployments.create_or_get`` as context
managers are deleted, and ``ServiceSession`` ends its server session. Then it raises
:class:`Interrupted` (``exit_code`` 130 for SIGINT, 143 for SIGTERM; a ``SystemExit``, so a
script that does not catch it exits with that status). The signals are received
by anyio's ``open_signal_receiver`` in a task group (no thread); the previous handlers are put
back when the block ends, so a second signal during cleanup gets the default behaviour
(SIGINT: ``KeyboardInterrupt``; SIGTERM: the process ends) — an escape hatch, like a second
Ctrl-C. Main thread only; do not nest it.

Example::

    async def main() -> None:
        async with cleanup_on_signals():
            async with TrainerJobs() as jobs, jobs.create_and_wait(config) as endpoint:
                ...

    anyio.run(main)     # SIGTERM: cleaned up, then the process exits with status 143
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio

from .errors import FiretitanError, Interrupted, UsageError

__all__ = ["Interrupted", "cleanup_on_signals"]

logger = logging.getLogger("firetitan_async")

_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)



class cleanup_on_signals:  # lower case: reads like a function, `async with cleanup_on_signals():`
    """Turn SIGINT/SIGTERM (or ``signals``) into cancellation of the block, then raise
    :class:`Interrupted` (see the module docstring). Works under asyncio and trio.

    ``received`` is the signal number once one arrived (None before).

    Example::

        async with cleanup_on_signals():
            await train()
    """

    def __init__(self, *signals: signal.Signals) -> None:
        self.signals = tuple(signals) or _DEFAULT_SIGNALS
        self.received: int | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._stack: AsyncExitStack | None = None
        self._scope: anyio.CancelScope | None = None

    async def __aenter__(self) -> cleanup_on_signals:
        if threading.current_thread() is not threading.main_thread():
            raise FiretitanError("cleanup_on_signals() must run in the main thread")
        if self._stack is not None:
            raise UsageError("cleanup_on_signals() can be entered only once")
        self._previous = {s: signal.getsignal(s) for s in self.signals}
        stack = AsyncExitStack()
        self._stack = stack
        try:
            # Registered first, so it runs last: after asyncio's receiver has reset the handlers
            # to the defaults (it does not restore the previous ones; trio's does).
            stack.callback(self._restore_handlers)
            receiver = stack.enter_context(anyio.open_signal_receiver(*self.signals))
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(task_group.cancel_scope.cancel)  # runs before the group is awaited
            self._scope = anyio.CancelScope()
            task_group.start_soon(self._watch, receiver, self._scope)
        except BaseException:
            await stack.aclose()
            raise
        self._scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._stack is not None and self._scope is not None
        try:
            swallowed = bool(self._scope.__exit__(exc_type, exc, tb))
        finally:
            # The body's exception is not handed to the task group: it propagates unchanged.
            await self._stack.__aexit__(None, None, None)
        if self.received is not None:
            raise Interrupted(self.received) from (None if swallowed else exc)
        return swallowed

    async def _watch(self, receiver: AsyncIterator[int], scope: anyio.CancelScope) -> None:
        async for signum in receiver:
            self.received = signum
            logger.warning(
                "%s received: cancelling and cleaning up (send it again to stop at once)",
                signal.Signals(signum).name,
            )
            scope.cancel()
            self._restore_handlers()
            return

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
