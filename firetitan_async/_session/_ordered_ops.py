"""Ordered operations of one training client: sequence ids, in-flight tasks, fail-fast.

The server runs a model's operations strictly in ``seq_id`` order and cannot skip a reserved
id. So ids are reserved synchronously at call time, each operation is carried by its own task
in the session's task group (submissions are pipelined, never serialised), and if a submission
is lost for good (retries exhausted) every later operation of the client fails at once with a
clear error instead of waiting forever for a gap the server will never see filled.

At most ``WINDOW`` operations of a client are being submitted, and ``WINDOW`` polling for
their results, at once; the rest wait their turn in call order, holding no connection and no
encoded body. The server runs them one at a time in ``seq_id`` order, so a deeper pipeline
only adds connections and memory: 500 steps called at once used to send 1,000 submissions
at once (a connection and an encoded batch each; the tinker SDK submits one at a time), then
hold a long poll each for results the server would reach last. 64 keeps a fast trainer busy
across a slow network (20 pipelined steps at 50 ms latency on the local trainer: 8 costs 2x
the time, 32 costs 10 %, 64 nothing), and is far above what a real trainer's steps need.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from ..errors import (
    APIStatusError,
    FiretitanError,
    OperationTimeout,
    SessionClosed,
    SubmissionLost,
    TrainerJobFailed,
)
from ._deadlines import Deadlines, call_deadlines
from ._pending import Pending
from ._protocol import OperationRunner

if TYPE_CHECKING:
    from .._http._transport import Transport
    from ..wire.futures import Done

__all__ = ["WINDOW", "OrderedOps", "first_error"]

#: How many of a client's operations are submitted, and how many poll, at once (see above).
WINDOW = 64

T = TypeVar("T")
logger = logging.getLogger("firetitan_async.operations")




class OrderedOps:
    """Reserves sequence ids and runs operations for one training client."""

    def __init__(self, spawner: OperationRunner, *, first_seq_id: int = 1) -> None:
        self._spawner = spawner
        self._next_seq = first_seq_id
        self._broken: SubmissionLost | None = None
        # first seq id -> (pending, the cancel scope of its task, None until the task runs)
        self._inflight: dict[int, tuple[Pending[Any], anyio.CancelScope | None]] = {}
        self._submits = anyio.Semaphore(WINDOW, fast_acquire=True)
        self._polls = anyio.Semaphore(WINDOW, fast_acquire=True)

    @property
    def next_seq_id(self) -> int:
        """The sequence id the next reservation will get."""
        return self._next_seq

    def start(
        self,
        name: str,
        n_seq_ids: int,
        run: Callable[[range, Pending[T]], Awaitable[T]],
        *,
        deadlines: Deadlines | None = None,
        tokens: int | Callable[[], int] | None = None,
    ) -> Pending[T]:
        """Reserve ``n_seq_ids`` ids now and run ``run(ids, pending)`` in a task.

        Returns the operation's :class:`Pending` at once. ``deadlines`` replaces the session's
        for this operation; ``tokens`` (input tokens, or a function counting them in the
        operation's task) goes into its events. The call does the least it can: the task,
        its cancel scope and the token count come later, off the caller's loop turn.
        """
        deadlines = call_deadlines(deadlines)  # before an id is reserved: no gap on bad input
        seqs = range(self._next_seq, self._next_seq + n_seq_ids)
        self._next_seq += n_seq_ids
        pending: Pending[T] = Pending(name, seq_id=seqs[0] if n_seq_ids else None)
        if self._broken is not None:
            pending._set_exception(self._broken)
            return pending
        if n_seq_ids:
            self._inflight[seqs[0]] = (pending, None)
        carried = _Carried(self, seqs, pending, run, deadlines, tokens)
        self._spawner.spawn_operation(carried, pending)
        return pending

    def in_flight(self) -> list[Pending[Any]]:
        """The Pendings of this client's operations that have not finished yet."""
        return [pending for pending, _ in self._inflight.values() if not pending.done()]

    async def submit(self, seq_id: int, name: str, submission: Awaitable[T]) -> T:
        """Await a submission; if it is lost for good, raise :class:`SubmissionLost`.

        A 4xx rejection (other than 408/409/429) is not "lost": the server consumed the id,
        so later operations still run and only this operation fails.
        """
        try:
            async with self._submits:
                return await submission
        except TrainerJobFailed:
            raise  # nothing later can run either: each call fails at once on its own
        except APIStatusError as exc:
            if 400 <= exc.status_code < 500 and exc.status_code not in (408, 409, 429):
                raise
            raise SubmissionLost(f"{name} (seq_id {seq_id}) could not be submitted: {exc}") from exc
        except FiretitanError as exc:
            raise SubmissionLost(f"{name} (seq_id {seq_id}) could not be submitted: {exc}") from exc

    async def retrieve(
        self, transport: Transport, request_id: str, *, request_type: str, **accept: str
    ) -> Done:
        """``transport.retrieve(...)`` in the client's poll window (at most ``WINDOW`` at once,
        first come first served); ``accept``: the poll's ``accept=`` if any."""
        async with self._polls:
            return await transport.retrieve(request_id, request_type=request_type, **accept)

    def _break(self, failed: range, cause: SubmissionLost) -> None:
        if self._broken is None:
            self._broken = SubmissionLost(
                f"an earlier operation of this client was lost ({cause}); the server cannot run "
                f"operations after seq_id {failed[0]}, so this one fails too"
            )
            logger.error("training client is broken: %s", cause)
        for first, (pending, scope) in list(self._inflight.items()):
            if first > failed[-1]:
                pending._set_exception(self._broken)
                if scope is not None:
                    scope.cancel()


class _Carried:
    """One operation's task body: runs ``run(seqs, pending)`` under the session's tracking and
    settles ``pending`` with what it returns or raises.

    One slotted object per operation instead of a closure: a closure over these fields keeps
    a cell per variable (16 more tracked objects per call in a burst of calls)."""

    __slots__ = ("_deadlines", "_ops", "_pending", "_run", "_seqs", "_tokens")

    def __init__(
        self,
        ops: OrderedOps,
        seqs: range,
        pending: Pending[Any],
        run: Callable[[range, Pending[Any]], Awaitable[Any]],
        deadlines: Deadlines | None,
        tokens: int | Callable[[], int] | None,
    ) -> None:
        self._ops = ops
        self._seqs = seqs
        self._pending = pending
        self._run = run
        self._deadlines = deadlines
        self._tokens = tokens

    def _work(self) -> Awaitable[Any]:
        return self._run(self._seqs, self._pending)

    async def __call__(self) -> None:
        ops, seqs, pending = self._ops, self._seqs, self._pending
        name = pending.name
        if pending.done():  # failed by _break before its task started
            if seqs:
                ops._inflight.pop(seqs[0], None)
            return
        scope = anyio.CancelScope()
        if seqs:
            ops._inflight[seqs[0]] = (pending, scope)
        tokens = self._tokens
        count = tokens() if callable(tokens) else tokens
        try:
            with scope:
                pending._set_result(
                    await ops._spawner.track_operation(
                        pending, self._work, deadlines=self._deadlines, tokens=count
                    )
                )
        except anyio.get_cancelled_exc_class():
            pending._set_exception(
                SessionClosed(f"{name} was still running when its session closed")
            )
            raise
        except SubmissionLost as exc:
            if seqs:  # (an operation without ids only relays an inner one's loss)
                ops._break(seqs, exc)
            pending._set_exception(exc)
        except OperationTimeout as exc:
            if exc.phase == "submit" and seqs:  # maybe never delivered: a gap forever
                ops._break(seqs, SubmissionLost(str(exc)))
            pending._set_exception(exc)
        except Exception as exc:
            pending._set_exception(exc)
        finally:
            if seqs:
                ops._inflight.pop(seqs[0], None)
            if not pending.done():  # cancelled by _break: its error was already set
                pending._set_exception(ops._broken or SessionClosed(f"{name} was abandoned"))


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to raise for a task group's failure: a ``SubmissionLost`` (the cause of the
    others) if there is one, else the first leaf.

    Example::

        except BaseExceptionGroup as group:
            raise first_error(group) from None
    """

    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, SubmissionLost):
            return exc
    return leaves[0]
