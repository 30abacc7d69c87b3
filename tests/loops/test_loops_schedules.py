"""Learning-rate schedules: the same rates as the Fireworks SDK's ``training_spec.compute_lr``
(a differential test against the installed SDK), and ``sft_steps(lr_schedule=...)`` trains
with them."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest
from tinker import types

from firetitan_async import InvalidInput, ServiceSession
from firetitan_async.local import LocalTrainer, sft_datum
from firetitan_async.loops import (
    LRSchedule,
    constant,
    cosine,
    linear,
    sft_steps,
    warmup_stable_decay,
)
from firetitan_async.loops._schedules import adam_at

MODEL = "local/tiny-byte-lm"


def _cases() -> list[tuple[LRSchedule, dict[str, Any]]]:
    """Our schedule and the SDK spec payload for the same curve, over a grid of settings."""
    cases: list[tuple[LRSchedule, dict[str, Any]]] = []
    warmups: tuple[dict[str, Any], ...] = (
        {"warmup_steps": 0},
        {"warmup_steps": 3},
        {"warmup_ratio": 0.25},
    )
    decay_types: tuple[Literal["linear", "cosine", "sqrt"], ...] = ("linear", "cosine", "sqrt")
    for total, warm, ratio, floor in itertools.product(
        (1, 7, 13, 40),
        warmups,
        (None, 0.3, 1.0),
        (0.0, 0.2),
    ):
        lr = 3e-4
        common: dict[str, Any] = {**warm, "min_lr_ratio": floor}
        cases.append((constant(lr, total_steps=total, **warm), {"type": "constant", **warm}))
        for helper, kind in ((linear, "linear"), (cosine, "cosine")):
            cases.append(
                (
                    helper(lr, total, decay_ratio=ratio, **common),
                    {"type": kind, "decay_ratio": ratio, **common},
                )
            )
        for decay_type in decay_types:
            wsd_ratio = 0.1 if ratio is None else ratio
            cases.append(
                (
                    warmup_stable_decay(
                        lr, total, decay_ratio=wsd_ratio, decay_type=decay_type, **common
                    ),
                    {"type": "wsd", "decay_ratio": wsd_ratio, "decay_type": decay_type, **common},
                )
            )
    return cases


def test_every_helper_gives_the_sdks_compute_lr_rate_at_every_step() -> None:
    training_spec: Any = pytest.importorskip("fireworks.training.sdk.training_spec")
    cases = _cases()
    assert len(cases) == 432  # 72 settings x 6 curves
    for ours, payload in cases:
        spec = training_spec.parse_lr_scheduler_spec(payload)
        total = ours.total_steps
        assert total is not None
        for step in range(1, total + 3):
            expected = training_spec.compute_lr(spec, step, ours.learning_rate, total_steps=total)
            assert ours(step) == expected, (payload, total, step)


def test_a_schedule_sets_the_rate_or_the_whole_adam_params() -> None:
    base = types.AdamParams(learning_rate=1.0, beta2=0.99, weight_decay=0.1)
    scheduled = adam_at(cosine(1e-3, 100, warmup_steps=10), 5, base)
    assert scheduled.learning_rate == pytest.approx(5e-4)
    assert (scheduled.beta2, scheduled.weight_decay) == (0.99, 0.1)
    whole = types.AdamParams(learning_rate=2e-3)
    assert adam_at(lambda step: whole, 3, base) is whole
    assert adam_at(None, 3, base) is base
    with pytest.raises(InvalidInput, match="lr_schedule"):
        adam_at(lambda step: -1.0, 1, base)
    bad_calls: tuple[Callable[[], object], ...] = (
        lambda: linear(1e-3, 0),
        lambda: cosine(1e-3, 10, warmup_steps=2, warmup_ratio=0.1),
        lambda: warmup_stable_decay(1e-3, 10, decay_ratio=0.0),
        lambda: linear(1e-3, 10, min_lr_ratio=1.5),
    )
    for bad in bad_calls:
        with pytest.raises(InvalidInput):
            bad()


@pytest.mark.anyio
async def test_sft_steps_trains_at_the_scheduled_rates(anyio_backend: str) -> None:
    """Same weights as a hand-written loop at the schedule's rates; the last step of a decay
    to 0 trains nothing (the client refuses a zero rate) and is still measured."""
    schedule = linear(5e-2, total_steps=4, warmup_steps=1)
    batches = [[sft_datum(text)] for text in ("one batch", "two batches", "three", "four")]
    probe = [sft_datum("probe text")]
    base = types.AdamParams(learning_rate=1.0)
    async with LocalTrainer(seed=0) as lt:
        async with ServiceSession(lt.base_url) as session:
            client = await session.create_training_client(MODEL, lora_rank=2)
            steps = [
                s
                async for s in sft_steps(client, batches, adam=base, depth=2, lr_schedule=schedule)
            ]
            ours = (await client.forward(probe, "cross_entropy")).loss_fn_outputs[0]
        async with ServiceSession(lt.base_url) as session:
            client = await session.create_training_client(MODEL, lora_rank=2)
            for step, batch in enumerate(batches[:3], start=1):
                await client.forward_backward(batch, "cross_entropy")
                await client.optim_step(types.AdamParams(learning_rate=schedule(step)))
            by_hand = (await client.forward(probe, "cross_entropy")).loss_fn_outputs[0]
            unscheduled = await client.forward(batches[3], "cross_entropy")
    assert schedule(4) == 0.0
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert steps[3].metrics["loss:sum"] == unscheduled.metrics["loss:sum"]
    assert np.array_equal(ours["logprobs"].to_numpy(), by_hand["logprobs"].to_numpy())
