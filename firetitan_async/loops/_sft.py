"""Pipelined supervised fine-tuning: ``depth`` steps in flight, drained at checkpoints and exit.

Each step's ``forward_backward`` and ``optim_step`` are submitted at once (both return
:class:`~firetitan_async.Pending` futures whose sequence ids fix the order), so the trainer
works on step ``n + 1`` while the reply of step ``n`` travels back. The weights are the same
as a one-step-at-a-time loop's: only the waiting moves.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence

import attrs
from tinker import types

from .._clients._training import TrainingClient
from .._session._pending import Pending
from ..errors import InvalidInput
from ._checkpoints import CheckpointManager, SaveRecord
from ._schedules import Schedule, adam_at

__all__ = ["SFTStep", "sft_steps"]


@attrs.frozen
class SFTStep:
    """One finished SFT step.

    Example::

        print(f"{s.step} loss {s.loss:.4f} {s.tokens_per_s:.0f} tok/s {s.wall_s * 1e3:.0f} ms")
    """

    step: int
    #: ``loss:sum`` divided by the step's tokens.
    loss: float
    tokens: int
    #: Throughput so far: tokens of the steps finished over the time since the first began.
    tokens_per_s: float
    #: From submission to the result of this step.
    wall_s: float
    #: Steps still in flight when this one was reported.
    in_flight: int
    metrics: dict[str, float]


@attrs.frozen
class _Submitted:
    step: int
    tokens: int
    submitted: float
    fb: Pending[types.ForwardBackwardOutput]
    #: None for a step at rate 0: measured by ``forward``, nothing trained.
    opt: Pending[types.OptimStepResponse] | None


async def sft_steps(
    client: TrainingClient,
    batches: Iterable[Sequence[types.Datum]] | AsyncIterable[Sequence[types.Datum]],
    *,
    adam: types.AdamParams,
    depth: int = 2,
    loss_fn: str = "cross_entropy",
    loss_fn_config: dict[str, float] | None = None,
    checkpoints: CheckpointManager | None = None,
    start: SaveRecord | None = None,
    lr_schedule: Schedule | None = None,
) -> AsyncIterator[SFTStep]:
    """Train on ``batches``, keeping ``depth`` steps in flight; yields each finished step.

    With ``checkpoints``, a save is made whenever it is due and at the end (``final``, unless
    the last step was just saved): the steps in flight are drained first, the save is
    submitted, and training goes on while it runs. The data cursor recorded is the number of
    batches consumed. ``start`` (the record :meth:`CheckpointManager.resume` returned) skips
    the batches already trained and numbers steps on from it. ``lr_schedule(step)`` (1-based,
    e.g. :func:`cosine`) gives each step's learning rate (a float put into ``adam``) or its
    whole ``AdamParams``; steps go on from ``start``, so does the schedule. A step at rate 0
    (where a decay to ``min_lr_ratio=0`` ends) is measured by ``forward`` and trains nothing.

    Example::

        async for step in sft_steps(client, batches, adam=types.AdamParams(learning_rate=1e-3),
                                    depth=3, checkpoints=ckpt, start=await ckpt.resume()):
            print(step.step, step.loss, step.tokens_per_s)
    """
    if depth < 1:
        raise InvalidInput("depth", f"must be >= 1, got {depth!r}")
    step = start.step if start else 0
    skip = int(start.cursor) if start else 0
    total_tokens = start.tokens if start else 0
    in_flight: deque[_Submitted] = deque()
    began = time.monotonic()
    finished_tokens = 0
    saved_step = step  # the step of the latest save (or of the start)

    async def finish() -> SFTStep:
        nonlocal finished_tokens
        head = in_flight.popleft()
        out = await head.fb
        if head.opt is not None:
            await head.opt
        now = time.monotonic()
        finished_tokens += head.tokens
        return SFTStep(
            step=head.step,
            loss=out.metrics.get("loss:sum", float("nan")) / max(1, head.tokens),
            tokens=head.tokens,
            tokens_per_s=finished_tokens / max(now - began, 1e-9),
            wall_s=now - head.submitted,
            in_flight=len(in_flight),
            metrics=dict(out.metrics),
        )

    async for batch in _batches(batches, skip):
        step += 1
        data = list(batch)
        tokens = sum(d.model_input.length for d in data)
        total_tokens += tokens
        submitted = time.monotonic()
        params = adam_at(lr_schedule, step, adam)
        if params.learning_rate == 0:  # a decay's end: no weight changes, the client refuses it
            fb, opt = client.forward(data, loss_fn, loss_fn_config), None
        else:
            fb = client.forward_backward(data, loss_fn, loss_fn_config)
            opt = client.optim_step(params)
        in_flight.append(_Submitted(step, tokens, submitted, fb, opt))
        if checkpoints is not None and checkpoints.due(step, total_tokens):
            while in_flight:
                yield await finish()
            await checkpoints.save(step, cursor=step, tokens=total_tokens)
            saved_step = step
        while len(in_flight) >= depth:
            yield await finish()
    while in_flight:
        yield await finish()
    if checkpoints is not None:
        if step > saved_step:
            await checkpoints.save(step, cursor=step, tokens=total_tokens, final=True)
        await checkpoints.wait()


async def _batches(
    batches: Iterable[Sequence[types.Datum]] | AsyncIterable[Sequence[types.Datum]], skip: int
) -> AsyncIterator[Sequence[types.Datum]]:
    seen = 0
    if isinstance(batches, AsyncIterable):
        async for batch in batches:
            seen += 1
            if seen > skip:
                yield batch
    else:
        for batch in batches:
            seen += 1
            if seen > skip:
                yield batch
