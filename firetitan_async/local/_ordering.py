"""``OrderedExecutor``: one model's operations, run strictly in ``seq_id`` order.

Submissions may arrive in any order (chunks of one call are POSTed concurrently, retries
arrive late); each is parked under its ``seq_id`` and runs only when every earlier id has run.
An operation runs on a worker thread (the model math), one at a time per model, so the event
loop keeps serving long-polls meanwhile; a ``SmallOperation`` (a few tokens, an optimizer
step of the tiny model: cheaper than the ~100 µs of CPU a thread hand-off costs) runs on the
event loop instead. A submission the server rejected still *consumes* its id (``skip``), so
later operations are never wedged behind it.

A used ``seq_id`` stays bound to the request that used it (its ``fingerprint``): the tinker
SDK's outer retry resends a request whose reply it lost with the same ``seq_id`` and a new
``X-Idempotency-Key``, so ``replay`` answers such a resend with the original request id (or
the original refusal) and the operation never runs twice; a *different* request under a used
``seq_id`` is a client bug and stays a 400. The newest ``REPLAY_WINDOW`` ids per model are
remembered.

Example::

    ex = OrderedExecutor("s:train:0", first_seq=1, futures=store, spawn=spawner.spawn,
                         on_compute=stats.add_compute)
    ex.check_seq(2)
    ex.submit(2, request_id, lambda: FutureReply.json({}), fingerprint)   # waits for seq 1
    ex.skip(1, other_fingerprint, ApiError(400, "..."))                   # now seq 2 runs
    ex.replay(2, fingerprint)                      # the same request again: request_id
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import attrs

from ._future_store import FutureReply, FutureStore
from ._http_errors import ApiError
from ._input_error import ModelInputError

__all__ = ["MAX_SEQ_AHEAD", "REPLAY_WINDOW", "Operation", "OrderedExecutor", "SmallOperation"]

logger = logging.getLogger("firetitan_async.local")

Operation = Callable[[], FutureReply]
"""A model operation: runs on a worker thread and returns its ``retrieve_future`` reply."""


@attrs.frozen
class SmallOperation:
    """An operation cheaper than a thread hand-off: it runs on the event loop.

    Example::

        ex.submit(seq, request_id, SmallOperation(lambda: FutureReply.json({})))
    """

    op: Operation

    def __call__(self) -> FutureReply:
        return self.op()


MAX_SEQ_AHEAD = 1_000_000
"""How far past the next expected ``seq_id`` a submission may be (guards against typos)."""

REPLAY_WINDOW = 4096
"""How many of its newest used ``seq_id``s a model remembers for ``replay`` (a resend of an
older one is refused as a reuse)."""

_INLINE_SLICE_S = 0.002
"""Small operations run on the event loop for at most this long in a row before it yields."""

_Spawn = Callable[[Coroutine[Any, Any, None]], None]


@attrs.frozen
class _Used:
    """What a used ``seq_id`` was bound to: the request, and its request id or refusal."""

    fingerprint: int
    request_id: str | None
    refusal: ApiError | None


class OrderedExecutor:
    """Per-model ``seq_id`` queue; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        first_seq: int,
        futures: FutureStore,
        spawn: _Spawn,
        on_compute: Callable[[float], None],
    ) -> None:
        self.name = name
        self._next = first_seq
        self._parked: dict[int, tuple[str | None, Operation | None]] = {}
        self._futures = futures
        self._spawn = spawn
        self._on_compute = on_compute
        self._draining = False
        self._idle_waiters: list[asyncio.Event] = []
        self._used: OrderedDict[int, _Used] = OrderedDict()

    @property
    def next_seq(self) -> int:
        """The ``seq_id`` that runs next."""
        return self._next

    def assign_seq(self, seq_id: int | None) -> int:
        """``seq_id`` checked (see ``check_seq``), or for ``None`` the next free id."""
        if seq_id is None:
            return max([self._next, *(s + 1 for s in self._parked)])
        self.check_seq(seq_id)
        return seq_id

    def replay(self, seq_id: int, fingerprint: int) -> str | None:
        """The request id of an earlier submission of this very request under ``seq_id``
        (``None`` if ``seq_id`` is not bound to a remembered request). Re-raises the original
        refusal if that submission was refused; ``ApiError(400)`` if ``seq_id`` was used by a
        different request."""
        used = self._used.get(seq_id)
        if used is None:
            return None
        if used.fingerprint != fingerprint:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {self.name!r} was already used by a different request "
                f"(the next expected seq_id is {self._next}); only a resend of the same request "
                "may repeat a seq_id",
            )
        if used.refusal is not None:
            raise ApiError(used.refusal.status, used.refusal.detail, headers=used.refusal.headers)
        logger.debug("seq_id %d of %s resent: answered with its request %s",
                     seq_id, self.name, used.request_id)
        return used.request_id

    def check_seq(self, seq_id: int) -> None:
        """Raise ``ApiError(400)`` if ``seq_id`` was already used or is absurdly far ahead."""
        if isinstance(seq_id, bool) or not isinstance(seq_id, int):
            raise ApiError(400, f"seq_id must be an integer, got {seq_id!r}")
        if seq_id < self._next or seq_id in self._parked:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {self.name!r} was already used "
                f"(the next expected seq_id is {self._next})",
            )
        if seq_id > self._next + MAX_SEQ_AHEAD:
            raise ApiError(
                400,
                f"seq_id {seq_id} of model {self.name!r} is too far ahead of the next "
                f"expected seq_id {self._next}",
            )

    def submit(
        self, seq_id: int, request_id: str, op: Operation, fingerprint: int | None = None
    ) -> None:
        """Park ``op`` under ``seq_id`` (already checked); its reply completes ``request_id``.
        With a ``fingerprint``, a resend of the same request gets ``request_id`` (``replay``)."""
        self._parked[seq_id] = (request_id, op)
        if fingerprint is not None:
            self._remember(seq_id, _Used(fingerprint, request_id, None))
        self._kick()

    def skip(
        self, seq_id: int, fingerprint: int | None = None, refusal: ApiError | None = None
    ) -> None:
        """Consume ``seq_id`` without running anything (a rejected submission); with a
        ``fingerprint``, a resend of the same request gets the same ``refusal``."""
        if seq_id < self._next or seq_id in self._parked:
            return
        self._parked[seq_id] = (None, None)
        if fingerprint is not None and refusal is not None:
            # A copy: the raised one's traceback would keep the request's frames (its body).
            kept = ApiError(refusal.status, refusal.detail, headers=refusal.headers)
            self._remember(seq_id, _Used(fingerprint, None, kept))
        self._kick()

    def _remember(self, seq_id: int, used: _Used) -> None:
        self._used[seq_id] = used
        if len(self._used) > REPLAY_WINDOW:
            self._used.popitem(last=False)

    def _kick(self) -> None:
        if not self._draining and self._next in self._parked:
            self._draining = True
            self._spawn(self._drain())

    async def wait_idle(self) -> None:
        """Return once every parked operation that can run has run (an operation still
        waiting for an earlier ``seq_id`` that never comes is dropped)."""
        while self._draining or self._next in self._parked:
            event = asyncio.Event()
            self._idle_waiters.append(event)
            await event.wait()
        for request_id, _ in self._parked.values():
            if request_id is not None:
                self._futures.complete(
                    request_id,
                    FutureReply.failure(
                        f"model {self.name} was unloaded while this operation waited for an "
                        "earlier seq_id", "user"
                    ),
                )
        self._parked.clear()

    async def _drain(self) -> None:
        try:
            inline_s = 0.0
            while self._next in self._parked:
                request_id, op = self._parked.pop(self._next)
                self._next += 1
                if op is None or request_id is None:
                    continue
                if isinstance(op, SmallOperation):
                    start = time.perf_counter()
                    self._futures.complete(request_id, self._run(op))
                    inline_s += time.perf_counter() - start
                    if inline_s > _INLINE_SLICE_S:
                        inline_s = 0.0
                        await asyncio.sleep(0)
                    continue
                reply = await asyncio.to_thread(self._run, op)
                self._futures.complete(request_id, reply)
                inline_s = 0.0
        finally:
            self._draining = False
        self._kick()
        if not self._draining:
            waiters, self._idle_waiters = self._idle_waiters, []
            for event in waiters:
                event.set()

    def _run(self, op: Operation) -> FutureReply:
        start = time.perf_counter()
        try:
            return op()
        except ModelInputError as exc:
            return FutureReply.failure(str(exc), "user")
        except ApiError as exc:
            return FutureReply.failure(exc.detail, "user" if exc.status < 500 else "server")
        except Exception as exc:
            logger.exception("operation on %s failed", self.name)
            return FutureReply.failure(f"internal error: {type(exc).__name__}: {exc}", "server")
        finally:
            self._on_compute(time.perf_counter() - start)
