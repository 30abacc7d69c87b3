"""KLPenalty: the reference's logprobs folded into the advantages run_rl trains on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from tinker import types

from firetitan_async import InvalidInput, SamplingClient, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import KLPenalty, RLStep, Rollout, TrainerPolicy, run_rl

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
PROMPT = list(b"Q: ")
BETA = 0.5


def _tensor(array: np.ndarray[Any, Any]) -> types.TensorData:
    return types.TensorData.from_numpy(array)


async def _rollout(sampler: SamplingClient, seed: int) -> list[Any]:
    params = types.SamplingParams(max_tokens=4, seed=seed)
    return list((await sampler.sample(types.ModelInput.from_ints(PROMPT), 3, params)).sequences)


def _datums(rollouts: Sequence[Rollout[int, Any]]) -> list[types.Datum]:
    datums = []
    for r in rollouts:
        for rank, s in enumerate(r.group):
            pad = [0.0] * (len(PROMPT) - 1)
            seq = PROMPT + list(s.tokens)
            datums.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(seq[:-1]),
                    loss_fn_inputs={
                        "target_tokens": _tensor(np.asarray(seq[1:], np.int64)),
                        "logprobs": _tensor(np.asarray(pad + list(s.logprobs), np.float32)),
                        "advantages": _tensor(
                            np.asarray(pad + [rank - 1.0] * len(s.tokens), np.float32)
                        ),
                    },
                )
            )
    return datums


async def test_the_penalty_is_folded_into_the_advantages_that_are_trained(
    anyio_backend: str,
) -> None:
    sent: list[list[types.Datum]] = []

    def recording_loss(
        data: list[types.Datum], logprobs: list[np.ndarray[Any, Any]]
    ) -> tuple[float, list[np.ndarray[Any, Any]]]:
        """-sum(advantages * logprobs), recording what it was given."""
        sent.append(data)
        advantages = [d.loss_fn_inputs["advantages"].to_numpy() for d in data]
        loss = -sum(float((a * lp).sum()) for a, lp in zip(advantages, logprobs, strict=True))
        return loss, [-a for a in advantages]

    steps: list[RLStep[int, Any]] = []
    # A Fireworks serverless session: a base-only reference (the Fireworks dialect's) and
    # TrainerPolicy sampling through the gateway's completions.
    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, serverless=True) as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        reference = await session.create_base_training_client(MODEL)
        await run_rl(
            client,
            TrainerPolicy(session, client),
            range(4),
            _rollout,
            _datums,
            adam=types.AdamParams(learning_rate=5e-2),
            loss_fn=recording_loss,
            groups_per_step=2,
            max_staleness=0,
            kl=KLPenalty(reference, beta=BETA),
            on_step=steps.append,
        )
        assert len(sent) == 2
        for step, data in zip(steps, sent, strict=True):
            original = _datums(step.rollouts)
            probes = [
                types.Datum(
                    model_input=d.model_input,
                    loss_fn_inputs={
                        "target_tokens": d.loss_fn_inputs["target_tokens"],
                        "weights": _tensor(np.ones(d.model_input.length, np.float32)),
                    },
                )
                for d in original
            ]
            ref = await reference.forward(probes, "cross_entropy")
            diffs, penalties = [], []
            for o, d, row in zip(original, data, ref.loss_fn_outputs, strict=True):
                sampled = o.loss_fn_inputs["logprobs"].to_numpy()
                mask = sampled != 0
                diffs.append((sampled - row["logprobs"].to_numpy())[mask])
                penalty = (
                    d.loss_fn_inputs["advantages"].to_numpy()
                    - o.loss_fn_inputs["advantages"].to_numpy()
                )
                assert not penalty[~mask].any()  # prompt positions untouched
                penalties.append(penalty[mask])
            mean = np.concatenate(diffs).mean()
            assert step.metrics["kl_policy_ref"] == pytest.approx(mean, rel=1e-5)
            for diff, penalty in zip(diffs, penalties, strict=True):
                np.testing.assert_allclose(penalty, BETA * (mean - diff), rtol=1e-4, atol=1e-6)
            assert abs(np.concatenate(penalties).sum()) < 1e-4  # centred: the total is kept
        assert np.abs(np.concatenate(penalties)).max() > 1e-3  # the policy did move away

        # An explicit "mask" picks the tokens instead of the non-zero sampled logprobs.
        one = sent[1][0]
        masked = types.Datum(
            model_input=one.model_input,
            loss_fn_inputs={
                **one.loss_fn_inputs,
                "mask": _tensor(np.eye(1, one.model_input.length, -1, np.float32)[0]),
            },
        )
        (penalised,), _ = await KLPenalty(reference, beta=BETA).apply([masked])
        change = (
            penalised.loss_fn_inputs["advantages"].to_numpy()
            - one.loss_fn_inputs["advantages"].to_numpy()
        )
        assert not change.any()  # one masked token: it is its own mean, no penalty
        with pytest.raises(InvalidInput, match="logprobs: is needed by kl="):
            bare = types.Datum(
                model_input=one.model_input,
                loss_fn_inputs={"target_tokens": one.loss_fn_inputs["target_tokens"]},
            )
            await KLPenalty(reference, beta=BETA).apply([bare])
    with pytest.raises(InvalidInput, match="beta"):
        KLPenalty(reference, beta=-1.0)
