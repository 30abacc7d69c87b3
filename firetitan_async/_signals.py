"""``terminate_on_signals``: SIGTERM and SIGINT cancel a block, so its cleanup runs, then exit.

Python's default SIGTERM ends the process at once: no ``finally``, no ``async with`` exit, so a
trainer job or a session is left running (and billing). Inside this block a signal instead
cancels the block — every ``async with`` in it cleans up (``ServiceSession`` unloads its
models or ends its session, ``jobs.create_and_wait`` deletes its job) — and then raises
``SystemExit(128 + signal)``, the exit status a shell reports for a killed process.

Example::

    async def main() -> None:
        async with terminate_on_signals():
            async with jobs.create_and_wait(config) as endpoint, ServiceSession(...) as s:
                await train(s)

    anyio.run(main)   # `kill <pid>`: the job is deleted, then the process exits with 143
"""

from __future__ import annotations

import signal
from types import TracebackType

import anyio
import anyio.abc

__all__ = ["SignalGuard", "terminate_on_signals"]


def terminate_on_signals(*signals: signal.Signals) -> SignalGuard:
    """An ``async with`` block that SIGTERM or SIGINT (or ``signals``) cancels, after which
    it raises ``SystemExit(128 + signum)``. Use it in the main thread.

    Example::

        async with terminate_on_signals(signal.SIGTERM):
            ...
    """
    return SignalGuard(*signals)


class SignalGuard:
    """What :func:`terminate_on_signals` returns; ``received`` is the signal that arrived.

    Example::

        guard = terminate_on_signals()
        async with guard:
            ...
    """

    def __init__(self, *signals: signal.Signals) -> None:
        self._signals = signals or (signal.SIGTERM, signal.SIGINT)
        #: The signal that cancelled the block, if any.
        self.received: signal.Signals | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> SignalGuard:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        await tg.start(self._watch)
        return self

    async def _watch(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.open_signal_receiver(*self._signals) as received:
            task_status.started()
            async for signum in received:
                self.received = signal.Signals(signum)
                assert self._tg is not None
                self._tg.cancel_scope.cancel()
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        tg, self._tg = self._tg, None
        tg.cancel_scope.cancel()  # stops the watcher
        if self.received is not None and (
            exc_type is None or issubclass(exc_type, anyio.get_cancelled_exc_class())
        ):
            await tg.__aexit__(exc_type, exc, tb)  # our own cancellation ends here
            raise SystemExit(128 + int(self.received))
        # The block's own outcome propagates as itself (not inside an ExceptionGroup).
        await tg.__aexit__(None, None, None)
        return None
