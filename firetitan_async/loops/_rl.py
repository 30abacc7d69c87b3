"""The RL pipeline: rollout producers → a bounded stream → the trainer, in one task group.

Every prompt taken from the source gets a ticket ``i`` (in order) and is trained in step
``i // groups_per_step + 1``. Staleness is bounded by *pacing*: a producer starts the rollout
of ticket ``i`` only once the published policy is at most ``max_staleness`` versions behind
the one that will be in force when that step trains. So nothing is sampled only to be thrown
away, and the trainer takes each step's tickets whatever order they finish in.
``concurrency`` bounds rollouts in flight; ``max_staleness`` bounds how far ahead they run.

A failure anywhere (a rollout, the loss function, the trainer, an evaluation) cancels the
other tasks and :func:`run_rl` raises that original exception, not a group. When the prompt
source ends, the rollouts in flight finish, the last (possibly smaller) step trains, and
:func:`run_rl` returns.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from typing import Any, Generic, TypeVar

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tinker import types

from .._clients._custom_loss import CustomLoss, TorchLoss
from .._clients._training import TrainingClient
from .._session._ordered_ops import first_error
from ..errors import FiretitanError, InvalidInput
from ._policy import Publisher

__all__ = ["RLResult", "RLStep", "Rollout", "run_rl"]

P = TypeVar("P")
S = TypeVar("S")
T = TypeVar("T")
E = TypeVar("E")


@attrs.frozen
class Rollout(Generic[P, T]):
    """One prompt's group of trajectories, tagged with the policy version that sampled it.

    Example::

        for r in batch:
            print(r.index, r.version, len(r.group))
    """

    #: The ticket: the prompt's position in the source (0-based).
    index: int
    prompt: P
    group: Sequence[T]
    #: The policy version the rollout function sampled from.
    version: int


@attrs.frozen
class RLStep(Generic[P, T]):
    """What one training step did.

    Example::

        print(step.step, step.metrics["loss:sum"], max(step.staleness))
    """

    step: int
    #: The policy version in force while this step's rollouts were trained.
    version: int
    #: Whether this step published a new version (``version + 1``).
    published: bool
    rollouts: tuple[Rollout[P, T], ...]
    #: ``version - rollout.version`` for each rollout (0 = on-policy).
    staleness: tuple[int, ...]
    #: The ``forward_backward`` metrics.
    metrics: dict[str, float]
    #: Seconds since :func:`run_rl` started, when the step finished.
    elapsed_s: float


@attrs.frozen
class RLResult(Generic[P, T, E]):
    """The steps, the evaluations (``(version, result)``) and the final policy version."""

    steps: tuple[RLStep[P, T], ...]
    evaluations: tuple[tuple[int, E], ...]
    final_version: int


class _Pacer(Generic[S]):
    """The published policy: its version, its sampler, and a way to wait for a newer one."""

    def __init__(self, sampler: S) -> None:
        self.version = 0
        self.sampler = sampler
        self._changed = anyio.Event()

    def advance(self, sampler: S) -> None:
        self.version += 1
        self.sampler = sampler
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, version: int) -> tuple[int, S]:
        while self.version < version:
            await self._changed.wait()
        return self.version, self.sampler


class _Tickets(Generic[P]):
    """Hands out prompts in order, each with its ticket; counts them once the source ends.

    A plain iterable is read without yielding to the scheduler (no lock, no wait), so many
    producers start at once; an async one is read under a lock.
    """

    def __init__(self, prompts: Iterable[P] | AsyncIterable[P], limit: int | None) -> None:
        self._sync: Iterator[P] | None = None
        self._async: AsyncIterator[P] | None = None
        if isinstance(prompts, AsyncIterable):
            self._async = aiter(prompts)
        else:
            self._sync = iter(prompts)
        self._lock = anyio.Lock()
        self._limit = limit
        self.issued = 0
        self.total: int | None = None

    async def next(self) -> tuple[int, P] | None:
        if self._sync is not None:
            return self._take(next(self._sync, _END) if self._open() else _END)
        assert self._async is not None
        async with self._lock:
            return self._take(await anext(self._async, _END) if self._open() else _END)

    def _open(self) -> bool:
        return self.total is None and (self._limit is None or self.issued < self._limit)

    def _take(self, prompt: P | _End) -> tuple[int, P] | None:
        if isinstance(prompt, _End):
            if self.total is None:
                self.total = self.issued
            return None
        ticket = self.issued
        self.issued += 1
        return ticket, prompt


class _End:
    """The end of the prompt source."""


_END = _End()


async def run_rl(
    client: TrainingClient,
    publisher: Publisher[S],
    prompts: Iterable[P] | AsyncIterable[P],
    rollout: Callable[[S, P], Awaitable[Sequence[T]]],
    to_datums: Callable[[Sequence[Rollout[P, T]]], Sequence[types.Datum]],
    *,
    adam: types.AdamParams,
    groups_per_step: int,
    loss_fn: str | CustomLoss | TorchLoss[Any] = "importance_sampling",
    loss_fn_config: dict[str, float] | None = None,
    concurrency: int = 8,
    max_staleness: int = 1,
    publish_every: int = 1,
    max_steps: int | None = None,
    evaluate: Callable[[S, int], Awaitable[E]] | None = None,
    eval_every: int = 1,
    on_step: Callable[[RLStep[P, T]], Awaitable[None] | None] | None = None,
) -> RLResult[P, T, E]:
    """Train ``client`` by RL on rollouts of ``prompts``, sampled from published policies.

    * ``publisher`` publishes version 0 at once, then a new version every ``publish_every``
      steps (:class:`TrainerPolicy` samples from the trainer; :class:`DeploymentPolicy` from
      an inference deployment); the sampler it returns is what ``rollout`` and ``evaluate``
      get. If its ``publish`` is a plain method (see :class:`Publisher`), the next steps
      train while a publication completes; an ``async def publish`` is awaited before the
      next step.
    * ``rollout(sampler, prompt)`` returns a group of trajectories for one prompt; up to
      ``concurrency`` run at once.
    * ``to_datums(rollouts)`` turns one step's ``groups_per_step`` rollouts (in ticket order)
      into datums: advantages and the loss inputs. They train with ``loss_fn`` (a server loss
      name, a :data:`~firetitan_async.CustomLoss` or a :class:`~firetitan_async.TorchLoss`),
      then ``optim_step(adam)``.
    * ``max_staleness``: a rollout is trained at most this many versions after the one it was
      sampled from. Producers wait for that (pacing); nothing is discarded.
    * ``evaluate(sampler, version)`` runs beside training for every ``eval_every``-th
      version (0 included), in the same task group; its results are in the returned value.
    * ``on_step`` (sync or async) sees each :class:`RLStep` as it finishes.

    Stops when ``prompts`` ends (the last step may have fewer groups) or after
    ``max_steps``. Any failure cancels everything and is raised as is.

    Example::

        result = await run_rl(
            client, TrainerPolicy(session, client), prompts, rollout, advantages,
            adam=types.AdamParams(learning_rate=1e-2), groups_per_step=8, concurrency=16,
        )
    """
    for name, value, low in (
        ("groups_per_step", groups_per_step, 1),
        ("concurrency", concurrency, 1),
        ("max_staleness", max_staleness, 0),
        ("publish_every", publish_every, 1),
        ("eval_every", eval_every, 1),
    ):
        if value < low:
            raise InvalidInput(name, f"must be >= {low}, got {value!r}")
    if max_steps is not None and max_steps < 1:
        raise InvalidInput("max_steps", f"must be >= 1, got {max_steps!r}")

    started = time.monotonic()
    tickets = _Tickets(prompts, None if max_steps is None else max_steps * groups_per_step)
    # A publisher whose ``publish`` is a plain call (returning an awaitable) has submitted its
    # save when the call returns, like every operation here: training goes on while the rest
    # (a hot-load, a new sampling session) completes. An ``async def publish`` only starts
    # when awaited, so the trainer awaits it before submitting anything else.
    pipelined = not inspect.iscoroutinefunction(publisher.publish)
    last_published: anyio.Event | None = None
    pacer: _Pacer[S] = _Pacer(await publisher.publish(0))
    steps: list[RLStep[P, T]] = []
    evaluations: list[tuple[int, E]] = []

    def version_for(ticket: int) -> int:
        """The version in force when ``ticket``'s step trains."""
        return (ticket // groups_per_step) // publish_every

    async def run_eval(sampler: S, version: int) -> None:
        assert evaluate is not None
        evaluations.append((version, await evaluate(sampler, version)))

    def maybe_eval(tg: anyio.abc.TaskGroup) -> None:
        if evaluate is not None and pacer.version % eval_every == 0:
            tg.start_soon(run_eval, pacer.sampler, pacer.version)

    async def produce(send: MemoryObjectSendStream[Rollout[P, T]]) -> None:
        with send:
            while (taken := await tickets.next()) is not None:
                ticket, prompt = taken
                version, sampler = await pacer.wait_for(version_for(ticket) - max_staleness)
                group = await rollout(sampler, prompt)
                await send.send(Rollout(ticket, prompt, tuple(group), version))

    async def train(receive: MemoryObjectReceiveStream[Rollout[P, T]]) -> None:
        waiting: dict[int, list[Rollout[P, T]]] = {}
        ended = False
        step = 1
        with receive:
            while True:
                first = (step - 1) * groups_per_step
                while True:
                    total = tickets.total  # known once the source has ended
                    need = groups_per_step if total is None else min(groups_per_step, total - first)
                    if len(waiting.get(step, ())) >= need:
                        break
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        # Producers end only once `total` is known: re-count this step.
                        if tickets.total is None or ended:
                            raise FiretitanError("the rollout stream ended early") from None
                        ended = True
                        continue
                    waiting.setdefault(item.index // groups_per_step + 1, []).append(item)
                if need <= 0:
                    return
                batch = tuple(sorted(waiting.pop(step), key=lambda r: r.index))
                await train_step(step, batch)
                step += 1

    async def finish_publish(
        publishing: Awaitable[S], previous: anyio.Event | None, done: anyio.Event | None
    ) -> None:
        sampler = await publishing
        if previous is not None:  # versions become current in order
            await previous.wait()
        pacer.advance(sampler)
        maybe_eval(task_group)
        if done is not None:
            done.set()

    async def train_step(step: int, batch: tuple[Rollout[P, T], ...]) -> None:
        datums = list(to_datums(batch))
        if isinstance(loss_fn, str):
            fb = client.forward_backward(datums, loss_fn, loss_fn_config)
        else:
            fb = client.forward_backward_custom(datums, loss_fn)
        opt = client.optim_step(adam)
        version = (step - 1) // publish_every  # the weights this step started from
        publish = step % publish_every == 0
        if publish:
            # Called after optim_step (operations run in call order): this step's weights.
            publishing = publisher.publish(version + 1)
            if pipelined:  # the save is submitted: train on while the rest completes
                nonlocal last_published
                previous, last_published = last_published, anyio.Event()
                task_group.start_soon(finish_publish, publishing, previous, last_published)
            else:
                await finish_publish(publishing, None, None)
        out = await fb
        await opt
        record = RLStep(
            step=step,
            version=version,
            published=publish,
            rollouts=batch,
            staleness=tuple(version - r.version for r in batch),
            metrics=dict(out.metrics),
            elapsed_s=time.monotonic() - started,
        )
        steps.append(record)
        if on_step is not None:
            maybe = on_step(record)
            if inspect.isawaitable(maybe):
                await maybe

    try:
        async with anyio.create_task_group() as task_group:
            send, receive = anyio.create_memory_object_stream[Rollout[P, T]](concurrency)
            maybe_eval(task_group)
            with send:
                for _ in range(concurrency):
                    task_group.start_soon(produce, send.clone())
            task_group.start_soon(train, receive)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    return RLResult(tuple(steps), tuple(sorted(evaluations, key=lambda e: e[0])), pacer.version)
