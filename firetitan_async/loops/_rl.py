"""The RL pipeline: rollout producers → a bounded stream → the trainer, in one task group.

Every prompt taken from the source gets a ticket ``i`` (in order) and is trained in step
``i // groups_per_step + 1``. Staleness is bounded by *pacing*: a producer starts the rollout
of ticket ``i`` only once the published policy is at most ``max_staleness`` versions behind
the one that will be in force when that step trains. So nothing is sampled only to be thrown
away, and the trainer takes each step's tickets whatever order they finish in.
``concurrency`` bounds rollouts in flight; ``max_staleness`` bounds how far ahead they run.

A rollout that raises is handled by ``on_rollout_error`` (retry the group with a fresh call,
skip it, or fail; a circuit breaker on consecutive failures). Any other failure (the loss
function, the trainer, an evaluation; a rollout under ``"fail"``) cancels the other tasks and
:func:`run_rl` raises that original exception, not a group. When the prompt source ends, the
rollouts in flight finish, the last (possibly smaller) step trains, and :func:`run_rl`
returns.

With ``checkpoints``, the loop resumes from the manager's latest save: the weights and
optimizer state, the step count (so the learning-rate schedule goes on where it was), the
policy version, and the position in the prompt source (the prompts already trained are
skipped). A rollout that is a deterministic function of ``(policy version, prompt)`` with
``max_staleness=0`` makes a killed-and-resumed run bit-identical to an uninterrupted one.
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
from ._checkpoints import CheckpointManager, SaveRecord
from ._failures import Breaker, OnRolloutError, RetryGroup, rollout_policy
from ._kl import KLPenalty
from ._policy import Publisher
from ._schedules import Schedule, adam_at

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
    #: The ``forward_backward`` metrics (and ``kl_policy_ref`` with ``kl=``).
    metrics: dict[str, float]
    #: Seconds since :func:`run_rl` started, when the step finished.
    elapsed_s: float
    #: The learning rate of this step's ``optim_step``.
    learning_rate: float = 0.0
    #: Tickets of this step whose rollouts failed and were skipped (``on_rollout_error``).
    skipped: tuple[int, ...] = ()


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


@attrs.frozen
class _Skipped:
    """A ticket whose rollout failed and was skipped."""

    index: int


class _Tickets(Generic[P]):
    """Hands out prompts in order, each with its ticket; counts them once the source ends.

    A plain iterable is read without yielding to the scheduler (no lock, no wait), so many
    producers start at once; an async one is read under a lock. ``skip`` prompts (trained
    before a resume) are read and dropped first; tickets go on from there.
    """

    def __init__(
        self, prompts: Iterable[P] | AsyncIterable[P], limit: int | None, skip: int = 0
    ) -> None:
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
        self._skip = skip

    async def next(self) -> tuple[int, P] | None:
        if self._sync is not None:
            while self._skip > 0 and self.total is None:  # resumed: drop what was trained
                self._skip -= 1
                self._drop(next(self._sync, _END))
            return self._take(next(self._sync, _END) if self._open() else _END)
        assert self._async is not None
        async with self._lock:
            while self._skip > 0 and self.total is None:
                self._skip -= 1
                self._drop(await anext(self._async, _END))
            return self._take(await anext(self._async, _END) if self._open() else _END)

    def _drop(self, prompt: P | _End) -> None:
        if isinstance(prompt, _End):
            self.total = self.issued
        else:
            self.issued += 1

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
    lr_schedule: Schedule | None = None,
    on_rollout_error: OnRolloutError = RetryGroup(times=2),  # noqa: B008 (frozen)
    checkpoints: CheckpointManager | None = None,
    kl: KLPenalty | None = None,
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
    * ``lr_schedule(step)`` (1-based; see :func:`linear`, :func:`cosine`,
      :func:`warmup_stable_decay`) gives each step's learning rate (a float, put into
      ``adam``) or its whole ``AdamParams``. A step at rate 0 (where a decay to
      ``min_lr_ratio=0`` ends) trains nothing; a server loss is still measured (``forward``).
    * ``on_rollout_error``: :class:`RetryGroup` (default: two more tries with a fresh call of
      ``rollout``, then skip the group; a breaker after 10 failed attempts in a row raises
      :class:`~firetitan_async.RolloutsFailing`), ``"skip"`` or ``"fail"`` (raise at once).
      A skipped group is left out of its step (:attr:`RLStep.skipped`).
    * ``kl``: a :class:`KLPenalty`; the reference's logprobs are folded into each step's
      advantages before ``forward_backward``.
    * ``checkpoints``: a :class:`CheckpointManager`; the run resumes from its latest save
      and saves when it is due (at steps where a version is published) and at the end.
    * ``max_staleness``: a rollout is trained at most this many versions after the one it was
      sampled from. Producers wait for that (pacing); nothing is discarded.
    * ``evaluate(sampler, version)`` runs beside training for every ``eval_every``-th
      version (0 included), in the same task group; its results are in the returned value.
    * ``on_step`` (sync or async) sees each :class:`RLStep` as it finishes.

    Stops when ``prompts`` ends (the last step may have fewer groups) or after
    ``max_steps`` (counted from step 1, across resumes). Any failure other than a handled
    rollout failure cancels everything and is raised as is.

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
    policy = rollout_policy(on_rollout_error)
    breaker = Breaker(policy.max_consecutive_failures if policy is not None else None)

    if checkpoints is not None and checkpoints.records:  # refused before the trainer is touched
        _resume_point(checkpoints.records[-1], groups_per_step, publish_every)
    start = await checkpoints.resume() if checkpoints is not None else None
    first_step, first_version, total_tokens = 1, 0, 0
    if start is not None:
        first_step, first_version, total_tokens = _resume_point(
            start, groups_per_step, publish_every
        )
    saved_step = first_step - 1
    started = time.monotonic()
    tickets = _Tickets(
        prompts,
        None if max_steps is None else max_steps * groups_per_step,
        skip=(first_step - 1) * groups_per_step,
    )
    # A publisher whose ``publish`` is a plain call (returning an awaitable) has submitted its
    # save when the call returns, like every operation here: training goes on while the rest
    # (a hot-load, a new sampling session) completes. An ``async def publish`` only starts
    # when awaited, so the trainer awaits it before submitting anything else.
    pipelined = not inspect.iscoroutinefunction(publisher.publish)
    last_published: anyio.Event | None = None
    pacer: _Pacer[S] = _Pacer(await publisher.publish(first_version))
    pacer.version = first_version
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

    async def attempt(ticket: int, prompt: P) -> Rollout[P, T] | _Skipped:
        """One group: the rollout, retried with a fresh call as the policy says."""
        failures = 0
        while True:
            version, sampler = await pacer.wait_for(version_for(ticket) - max_staleness)
            try:
                group = await rollout(sampler, prompt)
            except Exception as exc:  # not a cancellation: that is a BaseException
                if policy is None:
                    raise
                breaker.failed(exc)
                failures += 1
                if failures <= policy.times:
                    continue
                if policy.then == "fail":
                    raise
                return _Skipped(ticket)
            breaker.succeeded()
            return Rollout(ticket, prompt, tuple(group), version)

    async def produce(send: MemoryObjectSendStream[Rollout[P, T] | _Skipped]) -> None:
        with send:
            while (taken := await tickets.next()) is not None:
                await send.send(await attempt(*taken))

    async def train(receive: MemoryObjectReceiveStream[Rollout[P, T] | _Skipped]) -> None:
        waiting: dict[int, list[Rollout[P, T] | _Skipped]] = {}
        ended = False
        step = first_step
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
                    await finish_checkpoints(step - 1)
                    return
                arrived = sorted(waiting.pop(step), key=lambda r: r.index)
                batch = tuple(r for r in arrived if isinstance(r, Rollout))
                skipped = tuple(r.index for r in arrived if isinstance(r, _Skipped))
                await train_step(step, batch, skipped)
                step += 1

    async def finish_checkpoints(last_step: int) -> None:
        """The final save (unless the last step was just saved), then wait for it."""
        if checkpoints is None:
            return
        if last_step > saved_step:
            await checkpoints.save(
                last_step,
                cursor=_cursor(last_step, groups_per_step, publish_every),
                tokens=total_tokens,
                final=True,
            )
        await checkpoints.wait()

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

    async def train_step(
        step: int, batch: tuple[Rollout[P, T], ...], skipped: tuple[int, ...]
    ) -> None:
        nonlocal saved_step, total_tokens
        params = adam_at(lr_schedule, step, adam)
        datums = list(to_datums(batch)) if batch else []
        extra: dict[str, float] = {}
        if kl is not None and datums:
            datums, extra["kl_policy_ref"] = await kl.apply(datums)
        fb: Awaitable[types.ForwardBackwardOutput] | None = None
        opt: Awaitable[types.OptimStepResponse] | None = None
        if datums and params.learning_rate == 0:
            # A zero rate (a decay's last step) changes no weight and the client refuses it:
            # nothing is trained; a server loss is still measured by a forward pass.
            if isinstance(loss_fn, str):
                fb = client.forward(datums, loss_fn, loss_fn_config)
        elif datums:  # every group of the step may have been skipped
            if isinstance(loss_fn, str):
                fb = client.forward_backward(datums, loss_fn, loss_fn_config)
            else:
                fb = client.forward_backward_custom(datums, loss_fn)
            opt = client.optim_step(params)
            total_tokens += sum(d.model_input.length for d in datums)
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
        if checkpoints is not None:
            await checkpoints.wait()  # the previous save, submitted a step ago: record it
            if publish and checkpoints.due(step, total_tokens):
                # Submitted after this step's optim_step (call order): exactly its weights.
                await checkpoints.save(
                    step, cursor=_cursor(step, groups_per_step, publish_every), tokens=total_tokens
                )
                saved_step = step
        metrics = dict((await fb).metrics) if fb is not None else {}
        if opt is not None:
            await opt
        record = RLStep(
            step=step,
            version=version,
            published=publish,
            rollouts=batch,
            staleness=tuple(version - r.version for r in batch),
            metrics=metrics | extra,
            elapsed_s=time.monotonic() - started,
            learning_rate=params.learning_rate,
            skipped=skipped,
        )
        steps.append(record)
        if on_step is not None:
            maybe = on_step(record)
            if inspect.isawaitable(maybe):
                await maybe

    try:
        async with anyio.create_task_group() as task_group:
            send, receive = anyio.create_memory_object_stream[Rollout[P, T] | _Skipped](concurrency)
            maybe_eval(task_group)
            with send:
                for _ in range(concurrency):
                    task_group.start_soon(produce, send.clone())
            task_group.start_soon(train, receive)
    except BaseExceptionGroup as group:
        error = first_error(group)
        raise error from error.__cause__  # its own cause kept; the group's context dropped
    return RLResult(tuple(steps), tuple(sorted(evaluations, key=lambda e: e[0])), pacer.version)


def _cursor(step: int, groups_per_step: int, publish_every: int) -> dict[str, int]:
    """What :func:`run_rl` records in a save: the step, the policy version after it, and the
    shape of the run (``step * groups_per_step`` prompts have been trained)."""
    return {
        "loop": 1,
        "step": step,
        "version": step // publish_every,
        "groups_per_step": groups_per_step,
        "publish_every": publish_every,
    }


def _resume_point(
    start: SaveRecord, groups_per_step: int, publish_every: int
) -> tuple[int, int, int]:
    """The first step, the policy version and the tokens trained, from ``start``; refuses a
    save made by another loop, or by a run of another shape (the step numbers, tickets and
    versions would not line up)."""
    cursor = start.cursor
    if (
        not isinstance(cursor, dict)
        or cursor.get("loop") != 1
        or not isinstance(cursor.get("step"), int)
        or not isinstance(cursor.get("version"), int)
    ):
        raise InvalidInput(
            "checkpoints", f"the latest save ({start.name}) was not made by run_rl: {cursor!r}"
        )
    for name, value in (("groups_per_step", groups_per_step), ("publish_every", publish_every)):
        if cursor.get(name) != value:
            raise InvalidInput(name, f"is {value}, the run being resumed had {cursor.get(name)!r}")
    return cursor["step"] + 1, cursor["version"], start.tokens
