"""A torch GRPO loss trains through our client exactly as through the Fireworks SDK 1.2.30.

One fixed set of rollouts, the Fireworks cookbook's form of loss (``(data, logprobs_list) ->
(loss, metrics)``: advantages, a PPO-clipped ratio against fixed old logprobs, metrics), two
steps on two fresh local trainers with the same seed: the unmodified SDK's
``forward_backward_custom`` on one, ours on the other. The second step reuses the forward run
after the first (``precomputed_forward``), whose logprobs are also its ratio's denominator.
The results must be identical, bit for bit: the reported metrics (``loss:sum`` is the
trainer's surrogate loss, as the SDK labels it) and the weights after each step (read as the
logprobs of a forward). Bit for bit, not a tolerance: both clients build the same float32
tensors, run the same torch code and send the same float32 weights to the same deterministic
trainer, so any difference is a difference in what the client does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import anyio.to_thread
import numpy as np
import pytest
import torch
from fireworks.training.sdk import FiretitanServiceClient
from fireworks.training.sdk import types as ft
from tinker import types

from firetitan_async import ServiceSession, TorchLoss
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
KEY = "fw-custom-loss-key-0123456789"
SEED = 11
LR = 1e-2

# The rollouts: prompt + completion bytes, the completion's advantage (group-normalised
# rewards of one group of four) and the logprobs the completions were sampled with.
ROLLOUTS = [
    ("2+2=", "4", 1.5),
    ("2+2=", "five", -0.5),
    ("2+2=", "22", -0.5),
    ("2+2=", "four", -0.5),
]
CLIP = 0.2


def _tokens(text: str) -> list[int]:
    return list(text.encode())


def _rollout_arrays() -> tuple[list[list[int]], list[list[int]], list[int], list[float]]:
    inputs, targets, prompt_lens, advantages = [], [], [], []
    for prompt, completion, advantage in ROLLOUTS:
        tokens = _tokens(prompt + completion)
        inputs.append(tokens[:-1])
        targets.append(tokens[1:])
        prompt_lens.append(len(_tokens(prompt)))
        advantages.append(advantage)
    return inputs, targets, prompt_lens, advantages


def _old_logprobs(n_targets: Sequence[int]) -> list[list[float]]:
    """Fixed 'sampling' logprobs near the fresh model's (about -5.8), spread so
    that some ratios clip and some do not."""
    rng = np.random.default_rng(5)
    return [
        [float(x) for x in (-5.8 + rng.uniform(-0.25, 0.25, n)).astype(np.float32)]
        for n in n_targets
    ]


def make_grpo_loss(
    advantages: Sequence[float],
    old_logprobs: Sequence[Sequence[float]],
    prompt_lens: Sequence[int],
    clip: float = CLIP,
) -> Callable[[list[Any], list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]:
    """GRPO in the cookbook's form: the PPO-clipped surrogate on the completion tokens."""

    def loss_fn(
        data: list[Any], logprobs_list: list[torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros((), dtype=logprobs_list[0].dtype)
        clipped = tokens = 0
        ratio_sum = 0.0
        for logprobs, advantage, old, prompt_len in zip(
            logprobs_list, advantages, old_logprobs, prompt_lens, strict=True
        ):
            start = prompt_len - 1  # the first target that is a completion token
            current = logprobs[start:]
            behaviour = torch.tensor(old[start:], dtype=current.dtype)
            ratio = torch.exp(current - behaviour)
            bounded = torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
            per_token = torch.maximum(-ratio * advantage, -bounded * advantage)
            total = total + per_token.sum()
            clipped += int((bounded != ratio).sum().item())
            ratio_sum += float(ratio.detach().sum().item())
            tokens += current.numel()
        metrics = {
            "ppo_clip_frac": clipped / tokens,
            "ppo_ratio_mean": ratio_sum / tokens,
            "active_tokens": float(tokens),
            "mean_loss": float(total.item()) / tokens,
        }
        return total, metrics

    return loss_fn


def _weights(targets: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> list[list[float]]:
    return [
        [0.0 if j < p - 1 else 1.0 for j in range(len(t))]
        for t, p in zip(targets, prompt_lens, strict=True)
    ]


def run_sdk(base_url: str) -> tuple[list[dict[str, float]], list[list[np.ndarray]]]:
    """Two GRPO steps through the unmodified Fireworks SDK (sync; in a worker thread)."""
    inputs, targets, prompt_lens, advantages = _rollout_arrays()
    weights = _weights(targets, prompt_lens)
    batch = [
        ft.Datum(
            model_input=ft.ModelInput.from_ints(i),
            loss_fn_inputs={
                "target_tokens": ft.TensorData(data=t, dtype="int64", shape=[len(t)]),
                "weights": ft.TensorData(data=w, dtype="float32", shape=[len(w)]),
            },
        )
        for i, t, w in zip(inputs, targets, weights, strict=True)
    ]
    loss = make_grpo_loss(advantages, _old_logprobs([len(t) for t in targets]), prompt_lens)
    svc = FiretitanServiceClient(base_url=base_url, api_key=KEY)
    try:
        tc = svc.create_training_client(MODEL, lora_rank=0, seed=SEED)
        metrics, after = [], []
        out = tc.forward_backward_custom(batch, loss).result()
        metrics.append(dict(out.metrics))
        tc.optim_step(ft.AdamParams(learning_rate=LR, weight_decay=0.0)).result()
        forward = tc.forward(batch, "cross_entropy").result()
        after.append([np.asarray(o["logprobs"].data, np.float32) for o in forward.loss_fn_outputs])
        # Step 2 reuses that forward (the SDK's precomputed_forward), and its logprobs are the
        # ratio's denominator (the cookbook's proximal logprobs).
        prox = [list(o["logprobs"].data) for o in forward.loss_fn_outputs]
        loss = make_grpo_loss(advantages, prox, prompt_lens)
        out = tc.forward_backward_custom(batch, loss, precomputed_forward=forward).result()
        metrics.append(dict(out.metrics))
        tc.optim_step(ft.AdamParams(learning_rate=LR, weight_decay=0.0)).result()
        forward = tc.forward(batch, "cross_entropy").result()
        after.append([np.asarray(o["logprobs"].data, np.float32) for o in forward.loss_fn_outputs])
        return metrics, after
    finally:
        svc.close()


async def run_ours(base_url: str) -> tuple[list[dict[str, float]], list[list[np.ndarray]]]:
    """The same two steps through firetitan_async (dialect fireworks)."""
    inputs, targets, prompt_lens, advantages = _rollout_arrays()
    weights = _weights(targets, prompt_lens)
    batch = [
        types.Datum(
            model_input=types.ModelInput.from_ints(i),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.asarray(t, np.int64)),
                "weights": types.TensorData.from_numpy(np.asarray(w, np.float32)),
            },
        )
        for i, t, w in zip(inputs, targets, weights, strict=True)
    ]
    loss = TorchLoss(
        make_grpo_loss(advantages, _old_logprobs([len(t) for t in targets]), prompt_lens)
    )
    adam = types.AdamParams(learning_rate=LR, weight_decay=0.0)
    async with ServiceSession(base_url, api_key=KEY, dialect="fireworks") as session:
        tc = await session.create_training_client(MODEL, lora_rank=0, seed=SEED)
        metrics, after = [], []
        out = await tc.forward_backward_custom(batch, loss)
        metrics.append(dict(out.metrics))
        await tc.optim_step(adam)
        forward = await tc.forward(batch, "cross_entropy")
        after.append([o["logprobs"].to_numpy().astype(np.float32) for o in forward.loss_fn_outputs])
        prox = [o["logprobs"].to_numpy().tolist() for o in forward.loss_fn_outputs]
        loss = TorchLoss(make_grpo_loss(advantages, prox, prompt_lens))
        out = await tc.forward_backward_custom(batch, loss, precomputed_forward=forward)
        metrics.append(dict(out.metrics))
        await tc.optim_step(adam)
        forward = await tc.forward(batch, "cross_entropy")
        after.append([o["logprobs"].to_numpy().astype(np.float32) for o in forward.loss_fn_outputs])
        return metrics, after


async def test_a_torch_grpo_loss_trains_as_through_the_fireworks_sdk() -> None:
    async with (
        LocalTrainer(api_key=KEY, seed=SEED) as sdk_trainer,
        LocalTrainer(api_key=KEY, seed=SEED) as our_trainer,
    ):
        sdk_metrics, sdk_after = await anyio.to_thread.run_sync(run_sdk, sdk_trainer.base_url)
        our_metrics, our_after = await run_ours(our_trainer.base_url)
    # The SDK's labels: loss:sum is the trainer's surrogate sum(-logprobs * weights), which
    # is not the GRPO loss; the loss's own metrics are merged in.
    assert our_metrics == sdk_metrics
    for metrics in our_metrics:
        assert {"loss:sum", "ppo_clip_frac", "mean_loss", "response_tokens"} <= set(metrics)
        assert metrics["loss:sum"] != pytest.approx(metrics["mean_loss"] * metrics["active_tokens"])
    assert 0.0 < our_metrics[0]["ppo_clip_frac"] < 1.0  # the clip is exercised both ways
    # The weights after each step, bit for bit; and each step changed them.
    for ours, sdks in zip(our_after, sdk_after, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(ours, sdks, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(*our_after, strict=True))
