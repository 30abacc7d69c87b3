"""Rollouts in Ray actors (the optional ``ray`` extra): many processes, one pipeline.

:class:`RayRollouts` is a rollout function for :func:`~firetitan_async.loops.run_rl` whose
sampler is a :class:`~firetitan_async.loops.SamplerHandle` (publish with
``TrainerPolicy(...).handles()``). Each call goes to one of ``workers`` Ray actors. An actor
runs its own asyncio event loop with its own :class:`~firetitan_async.ServiceSession` (the API
key comes from the worker's environment, never from the pickle) and a sampling client rebuilt
from each new handle, and runs the user's rollout function there. The trainer stays in the
driver; the driver waits on actor replies without threads (``aresult`` on the reply's
``concurrent.futures.Future``), under asyncio or trio.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import anyio

from .._adapters import aresult
from ..errors import FiretitanError, InvalidInput
from ._policy import SamplerHandle

__all__ = ["RayRollouts"]

P = TypeVar("P")
T = TypeVar("T")

_Rollout = Callable[[Any, Any], Awaitable[Sequence[Any]]]


class _Worker:
    """The actor's body: one long-lived task owns the session; calls are queued to it."""

    def __init__(self, rollout: _Rollout) -> None:
        self._rollout = rollout
        self._send: Any = None
        self._serving: asyncio.Task[None] | None = None

    async def rollout(self, handle: SamplerHandle[Any], prompt: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        if self._serving is None or self._serving.done():
            self._send, receive = anyio.create_memory_object_stream[Any](math.inf)
            self._serving = loop.create_task(self._serve(handle, receive))
        reply: asyncio.Future[list[Any]] = loop.create_future()
        self._send.send_nowait((handle, prompt, reply))
        return await reply

    async def _serve(self, first: SamplerHandle[Any], receive: Any) -> None:
        samplers: dict[int, asyncio.Future[Any]] = {}
        waiting: list[asyncio.Future[list[Any]]] = []

        async def sampler(session: Any, handle: SamplerHandle[Any]) -> Any:
            made = samplers.get(handle.version)
            if made is None:
                made = asyncio.get_running_loop().create_future()
                samplers.clear()  # an older version is not asked for again
                samplers[handle.version] = made
                try:
                    made.set_result(await handle.sampler(session))
                except Exception as exc:
                    made.set_exception(exc)
                    samplers.pop(handle.version, None)
            return await made

        async def one(session: Any, handle: SamplerHandle[Any], prompt: Any, reply: Any) -> None:
            try:
                group = await self._rollout(await sampler(session, handle), prompt)
            except Exception as exc:
                reply.set_exception(exc)
            else:
                reply.set_result(list(group))

        try:
            async with first.session() as session, anyio.create_task_group() as tg:
                async for handle, prompt, reply in receive:
                    waiting[:] = [r for r in waiting if not r.done()]
                    waiting.append(reply)
                    tg.start_soon(one, session, handle, prompt, reply)
        except BaseException as exc:
            for reply in waiting:
                if not reply.done():
                    reply.set_exception(FiretitanError(f"rollout worker failed: {exc!r}"))
            raise


class RayRollouts(Generic[P, T]):
    """Run ``rollout(sampler, prompt)`` in ``workers`` Ray actors, each with its own loop.

    Use it as the rollout function of :func:`~firetitan_async.loops.run_rl` with a publisher
    of handles. ``ray.init()`` must have been called; the actors are created here and killed
    by :meth:`close` (or leaving the ``with`` block). ``rollout`` must be importable in the
    workers (a module-level function of an installed package, or picklable by value).

    Example::

        ray.init(num_cpus=2)
        with RayRollouts(my_rollout, workers=2) as remote:
            await run_rl(client, TrainerPolicy(session, client).handles(), prompts,
                         remote, to_datums, adam=adam, groups_per_step=8)
    """

    def __init__(
        self,
        rollout: Callable[[Any, P], Awaitable[Sequence[T]]],
        *,
        workers: int = 2,
        actor_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise FiretitanError(
                "RayRollouts needs Ray: pip install 'firetitan_async[ray]'"
            ) from exc
        if workers < 1:
            raise InvalidInput("workers", f"must be >= 1, got {workers!r}")
        options = {"num_cpus": 0, **(actor_options or {})}
        actor_class = ray.remote(_Worker).options(**options)
        self._ray = ray
        self._actors: list[Any] = [actor_class.remote(rollout) for _ in range(workers)]
        self._next = itertools.cycle(range(workers))
        self._in_flight = [0] * workers
        #: Rollouts each worker has finished (successfully or not).
        self.calls_per_worker = [0] * workers

    async def __call__(self, handle: SamplerHandle[Any], prompt: P) -> Sequence[T]:
        """One rollout on the least busy worker (ties: round robin)."""
        start = next(self._next)
        order = [(start + k) % len(self._actors) for k in range(len(self._actors))]
        index = min(order, key=lambda i: self._in_flight[i])
        self._in_flight[index] += 1
        try:
            ref = self._actors[index].rollout.remote(handle, prompt)
            group: Sequence[T] = await aresult(ref.future())
        finally:
            self._in_flight[index] -= 1
            self.calls_per_worker[index] += 1
        return group

    def close(self) -> None:
        """Kill the actors (rollouts still running in them are abandoned)."""
        for actor in self._actors:
            self._ray.kill(actor)
        self._actors = []

    def __enter__(self) -> RayRollouts[P, T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
