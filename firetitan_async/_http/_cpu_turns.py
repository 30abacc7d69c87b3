"""CPU turns: at most a few operations encode or decode at once, so the event loop keeps ticking.

When hundreds of operations start together, or their replies land within one latency window,
every one of them is ready to run in the same event-loop iteration; each then spends a few
hundred microseconds building or reading its HTTP exchange, and the loop (timers, the user's
other tasks) stalls for the sum. A :class:`CpuTurns` is a small per-session limiter: an exchange
holds a *turn* while it does CPU work and gives it back around every network wait (connecting,
waiting for the reply, a retry's sleep). Waiters are woken one loop iteration at a time, so an
iteration runs at most ``concurrent`` CPU segments, while the network waits of all operations
still overlap. Total throughput is unchanged: the same work runs, in shorter slices.

Example::

    turns = CpuTurns()
    async with turns.hold() as turn:
        request = build()                  # CPU: holding a turn
        async with turns.yielded(turn):
            reply = await receive()        # network: the turn is free for another operation
        return parse(reply)                # CPU again
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

import anyio

__all__ = ["CpuTurns", "Turn", "hold_turn", "sleep_off_turn"]

# Two to four in a throwaway prototype gave the same throughput as no bound, with a 7-16 ms
# worst stall instead of 110-130 ms for a burst of 200 operations.
_DEFAULT_CONCURRENT = 2


class Turn:
    """One holder's claim on a :class:`CpuTurns` (whether it currently holds a slot)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = False


class CpuTurns:
    """A per-session bound on the operations doing CPU work at the same moment.

    A free turn is still taken with one checkpoint (a pass through the event loop), so the
    tasks that become ready in one loop iteration do not all run their CPU segment in it;
    a given-back turn goes straight to the longest waiter.
    """

    __slots__ = ("_semaphore",)

    def __init__(self, concurrent: int = _DEFAULT_CONCURRENT) -> None:
        self._semaphore = anyio.Semaphore(concurrent)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Turn]:
        """Hold a turn for the block (released if the block gives it back and fails)."""
        turn = Turn()
        await self.take(turn)
        try:
            yield turn
        finally:
            self.give_back(turn)

    @asynccontextmanager
    async def yielded(self, turn: Turn | None) -> AsyncIterator[None]:
        """Give ``turn`` back for the block (a network wait), then take it again.

        If the block fails the turn stays given back (its holder is leaving anyway). ``None``
        (an exchange that holds no turn) makes this a no-op.
        """
        if turn is None or not turn.held:
            yield
            return
        self.give_back(turn)
        yield
        await self.take(turn)

    async def take(self, turn: Turn) -> None:
        """Wait for a turn for ``turn``'s holder (the hot path's form of :meth:`yielded`)."""
        await self._semaphore.acquire()
        turn.held = True

    def give_back(self, turn: Turn) -> None:
        """Give ``turn`` back if it is held (idempotent)."""
        if turn.held:
            turn.held = False
            self._semaphore.release()


def hold_turn(turns: CpuTurns | None) -> AbstractAsyncContextManager[Turn | None]:
    """A turn of ``turns`` for one exchange; no bound (``None``) without a limiter (a
    caller's own transport).

    Example::

        async with hold_turn(self._turns) as turn: ...
    """
    return turns.hold() if turns is not None else nullcontext()


async def sleep_off_turn(turns: CpuTurns | None, seconds: float, turn: Turn | None) -> None:
    """A retry's (or a hot-load's) wait, with ``turn`` given back for its length.

    Example::

        await sleep_off_turn(self._turns, 0.5, turn)
    """
    if turns is None:
        await anyio.sleep(seconds)
        return
    async with turns.yielded(turn):
        await anyio.sleep(seconds)
