"""issue 25 item 5, done-when: an RL run with a learning-rate schedule, a KL penalty against a
reference, a rollout-failure policy and a checkpoint every 3 steps, killed at step 7 and
resumed, ends bit-identical to an uninterrupted run with the same failures."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from tinker import types

from firetitan_async import SamplingClient, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import (
    CheckpointManager,
    KLPenalty,
    RetryGroup,
    RLStep,
    Rollout,
    TrainerCheckpoints,
    TrainerPolicy,
    run_rl,
    warmup_stable_decay,
)

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
PROMPT = list(b"Say: ")
TARGET = list(b"abc")
STEPS, GROUPS = 10, 2
ADAM = types.AdamParams(learning_rate=1.0, beta2=0.99)  # the schedule sets the rate
SCHEDULE = warmup_stable_decay(5e-2, total_steps=STEPS, warmup_steps=2, decay_ratio=0.4)
PROBE = types.Datum(
    model_input=types.ModelInput.from_ints([*PROMPT, *TARGET[:-1]]),
    loss_fn_inputs={
        "target_tokens": types.TensorData.from_numpy(np.asarray([*PROMPT[1:], *TARGET], np.int64)),
        "weights": types.TensorData.from_numpy(np.ones(len(PROMPT) + len(TARGET) - 1, np.float32)),
    },
)


class Rollouts:
    """Rollout 5 raises twice then succeeds; rollout 9 always raises. Deterministic otherwise:
    the sample's seed is the ticket, so a rollout is a function of (policy, prompt)."""

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}

    async def __call__(self, sampler: SamplingClient, ticket: int) -> list[Any]:
        self.attempts[ticket] = self.attempts.get(ticket, 0) + 1
        if ticket == 9 or (ticket == 5 and self.attempts[ticket] <= 2):
            raise ConnectionError(f"environment {ticket} broke")
        params = types.SamplingParams(max_tokens=len(TARGET), seed=ticket)
        out = await sampler.sample(types.ModelInput.from_ints(PROMPT), 4, params)
        return list(out.sequences)


def _tensor(array: np.ndarray[Any, Any]) -> types.TensorData:
    return types.TensorData.from_numpy(array)


def to_datums(rollouts: Sequence[Rollout[int, Any]]) -> list[types.Datum]:
    datums = []
    for r in rollouts:
        rewards = np.array([np.mean([t % 2 == 0 for t in s.tokens]) for s in r.group])  # even bytes
        for s, adv in zip(r.group, rewards - rewards.mean(), strict=True):
            pad = [0.0] * (len(PROMPT) - 1)
            seq = PROMPT + list(s.tokens)
            datums.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(seq[:-1]),
                    loss_fn_inputs={
                        "target_tokens": _tensor(np.asarray(seq[1:], np.int64)),
                        "logprobs": _tensor(np.asarray(pad + list(s.logprobs), np.float32)),
                        "advantages": _tensor(np.asarray(pad + [adv] * len(s.tokens), np.float32)),
                    },
                )
            )
    return datums


async def _run(
    lt: LocalTrainer, run_dir: Path | None, kill_at: int | None = None
) -> tuple[list[RLStep[int, Any]], np.ndarray[Any, Any], Rollouts]:
    """One process's life: a session, the policy, the reference; run until the end (or until
    step ``kill_at``, cancelled there); then the policy's logprobs on a fixed probe."""
    steps: list[RLStep[int, Any]] = []
    rollouts = Rollouts()
    # A Fireworks serverless session: a base-only reference (the Fireworks dialect's) and
    # TrainerPolicy sampling through the gateway's completions.
    async with ServiceSession(lt.base_url, serverless=True) as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        reference = await session.create_base_training_client(MODEL)
        manager = None
        if run_dir is not None:
            manager = CheckpointManager(
                TrainerCheckpoints(session, client), run_dir, config={"run": 1}, every_steps=3
            )

        def on_step(step: RLStep[int, Any]) -> None:
            steps.append(step)
            if step.step == kill_at:
                scope.cancel()

        with anyio.CancelScope() as scope:
            await run_rl(
                client,
                TrainerPolicy(session, client),
                range(STEPS * GROUPS),
                rollouts,
                to_datums,
                adam=ADAM,
                loss_fn="importance_sampling",
                groups_per_step=GROUPS,
                concurrency=4,
                max_staleness=0,  # every rollout samples the version it trains under
                lr_schedule=SCHEDULE,
                on_rollout_error=RetryGroup(times=2),
                checkpoints=manager,
                kl=KLPenalty(reference, beta=0.5),
                on_step=on_step,
            )
        assert scope.cancel_called == (kill_at is not None)
        probe = await client.forward([PROBE], "cross_entropy")
    return steps, probe.loss_fn_outputs[0]["logprobs"].to_numpy(), rollouts


async def test_killed_at_step_7_and_resumed_ends_bit_identical(
    anyio_backend: str, tmp_path: Path
) -> None:
    with anyio.fail_after(30):
        async with LocalTrainer(seed=0) as lt:
            whole, whole_probe, whole_rollouts = await _run(lt, None)
            killed, _, _ = await _run(lt, tmp_path, kill_at=7)
            resumed, resumed_probe, resumed_rollouts = await _run(lt, tmp_path)

    # The uninterrupted run: the schedule, the failures, the penalty all took effect.
    assert [s.step for s in whole] == list(range(1, STEPS + 1))
    assert [s.learning_rate for s in whole] == [SCHEDULE(n) for n in range(1, STEPS + 1)]
    assert len({s.learning_rate for s in whole}) >= 4
    assert whole_rollouts.attempts[5] == 3 and whole_rollouts.attempts[9] == 3
    assert [s.skipped for s in whole] == [(), (), (), (), (9,), (), (), (), (), ()]
    assert [r.index for r in whole[2].rollouts] == [4, 5]  # 5 trained, on its third try
    assert [r.index for r in whole[4].rollouts] == [8]
    assert all(s.metrics["kl_policy_ref"] != 0 for s in whole[1:])

    # Killed after step 7; the resumed process starts from the save after step 6.
    assert [s.step for s in killed] == list(range(1, 8))
    assert [s.step for s in resumed] == list(range(7, STEPS + 1))
    assert sorted(resumed_rollouts.attempts) == list(range(12, 20))  # none trained twice
    for a, b in zip(whole[6:], resumed, strict=True):
        assert a.metrics == b.metrics, a.step
        assert a.learning_rate == b.learning_rate
        assert [(r.index, r.version) for r in a.rollouts] == [
            (r.index, r.version) for r in b.rollouts
        ]
    assert np.array_equal(whole_probe, resumed_probe)  # bit-identical weights
    assert whole_probe.dtype == np.float32
