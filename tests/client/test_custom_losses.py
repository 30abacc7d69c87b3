"""``forward_backward_custom``: torch and numpy losses, their metrics, the ``loss:sum`` label
per dialect and ``precomputed_forward`` (the SDK comparison is tests/conformance/
test_custom_loss_torch.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tinker import types

from firetitan_async import InvalidInput, ServiceSession, TorchLoss
from firetitan_async._clients._custom_loss import run_custom_loss
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
BATCH = [sft_datum("custom losses", prompt_len=3), sft_datum("in torch")]
TRAINER_OPTIONS = {"seed": 2}


@TorchLoss
def mean_nll(data: list[types.Datum], logprobs: list[torch.Tensor]) -> Any:
    loss = -torch.cat(logprobs).mean()
    return loss, {"nll": loss.item(), "datums": len(data)}


async def test_a_torch_loss_reports_its_metrics_and_loss_sum_as_the_dialect_sdk_does(
    trainer: LocalTrainer,
) -> None:
    results = {}
    for dialect in ("fireworks", "tinker"):
        async with ServiceSession(trainer.base_url, dialect=dialect) as session:
            client = await session.create_training_client(MODEL, seed=4)
            forward = await client.forward(BATCH, "cross_entropy")
            results[dialect] = await client.forward_backward_custom(
                BATCH, mean_nll, precomputed_forward=forward
            )
    n = sum(len(d.loss_fn_inputs["target_tokens"].data) for d in BATCH)
    fireworks, tinker = results["fireworks"].metrics, results["tinker"].metrics
    for metrics in (fireworks, tinker):
        assert metrics["datums"] == 2.0 and metrics["nll"] > 0
    # tinker 0.38: the custom loss under loss:sum, the trainer's surrogate beside it.
    assert tinker["loss:sum"] == pytest.approx(tinker["nll"], rel=1e-6)
    # The surrogate sum(-logprobs * weights), weights = 1/n: the mean nll again, by the
    # trainer's arithmetic (float32).
    assert tinker["surrogate_loss:sum"] == pytest.approx(tinker["nll"], rel=1e-4)
    # Fireworks SDK 1.2.30: the trainer's surrogate under loss:sum; no surrogate_loss:sum.
    assert fireworks["loss:sum"] == tinker["surrogate_loss:sum"]
    assert "surrogate_loss:sum" not in fireworks
    assert fireworks["response_tokens"] == float(n)


async def test_precomputed_forward_is_what_the_loss_sees_and_no_forward_runs(
    trainer: LocalTrainer,
) -> None:
    seen: list[list[float]] = []

    @TorchLoss
    def record(data: list[types.Datum], logprobs: list[torch.Tensor]) -> Any:
        seen.extend(lp.detach().tolist() for lp in logprobs)
        return sum(lp.sum() for lp in logprobs), {}

    doctored = types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"logprobs": types.TensorData.from_numpy(np.full(len(d.model_input.to_ints()), -0.5,
                                                             np.float32))}
            for d in BATCH
        ],
        metrics={},
    )
    events: list[Any] = []
    async with ServiceSession(trainer.base_url, on_event=events.append) as session:
        client = await session.create_training_client(MODEL, seed=4)
        await client.forward_backward_custom(BATCH, record, precomputed_forward=doctored)
        await client.forward_backward_custom(BATCH, record)
        await client.forward(BATCH, "cross_entropy")
    assert seen[:2] == [[-0.5] * len(d.model_input.to_ints()) for d in BATCH]
    assert seen[2:] != seen[:2]  # the forward's own logprobs
    submitted = [e.seq_id for e in events if e.kind == "submitted"]
    assert submitted == [1, 2, 4]  # one sequence id (the backward alone), then two


async def test_a_precomputed_forward_of_another_batch_is_refused_before_sending(
    trainer: LocalTrainer,
) -> None:
    async with ServiceSession(trainer.base_url) as session:
        client = await session.create_training_client(MODEL, seed=4)
        other = await client.forward([sft_datum("another batch entirely")], "cross_entropy")
        short = await client.forward([*BATCH[:1], sft_datum("in")], "cross_entropy")
        with pytest.raises(InvalidInput, match="1 outputs for 2 datums") as few:
            client.forward_backward_custom(BATCH, mean_nll, precomputed_forward=other)
        with pytest.raises(InvalidInput, match="1 logprobs for 7 target tokens") as misaligned:
            client.forward_backward_custom(BATCH, mean_nll, precomputed_forward=short)
    assert few.value.field == "precomputed_forward"
    assert (misaligned.value.field, misaligned.value.index) == ("precomputed_forward", 1)


async def test_a_numpy_loss_may_return_metrics_and_a_torch_style_return_names_torchloss(
    trainer: LocalTrainer,
) -> None:
    def numpy_nll(data: list[types.Datum], logprobs: list[np.ndarray]) -> Any:
        n = sum(lp.size for lp in logprobs)
        loss = -sum(float(lp.sum()) for lp in logprobs) / n
        return loss, [-np.ones_like(lp) / n for lp in logprobs], {"nll": loss}

    def torch_style(data: list[types.Datum], logprobs: list[Any]) -> Any:
        return torch.zeros(()), {}

    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, seed=4)
        forward = await client.forward(BATCH, "cross_entropy")
        out = await client.forward_backward_custom(BATCH, numpy_nll, precomputed_forward=forward)
        with pytest.raises(InvalidInput, match=r"TorchLoss\(loss_fn\)"):
            await client.forward_backward_custom(BATCH, torch_style, precomputed_forward=forward)
    assert out.metrics["loss:sum"] == out.metrics["nll"] > 0


def _forward_logprobs() -> list[np.ndarray]:
    return [np.linspace(-3, -1, 4, dtype=np.float32), np.full(3, -2.0, np.float32)]


@pytest.mark.parametrize(
    "returned",
    [
        lambda lps: 1.0,  # not a pair
        lambda lps: (1.0, {}),  # not a tensor
        lambda lps: (torch.stack([lp.sum() for lp in lps]), {}),  # not one element
        lambda lps: (torch.tensor(1.0), {}),  # no dependence on the logprobs
        lambda lps: (lps[0].sum(), {"m": "text"}),  # a metric that is no number
        lambda lps: (lps[0].sum(), [1.0]),  # metrics not a dict
        lambda lps: (lps[0].sum() / 0.0, {}),  # an infinite gradient
    ],
    ids=["not_pair", "loss_float", "loss_vector", "no_grad", "metric_text", "metrics_list", "inf"],
)
def test_a_torch_loss_returning_garbage_is_invalid_input(returned: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        run_custom_loss(TorchLoss(lambda data, lps: returned(lps)), BATCH, _forward_logprobs())
    assert info.value.field in {"TorchLoss", "CustomLoss"}


def test_a_datum_the_torch_loss_ignores_gets_zero_gradient() -> None:
    result = run_custom_loss(
        TorchLoss(lambda data, lps: ((lps[0] * 2).sum(), {})), BATCH, _forward_logprobs()
    )
    assert [g.tolist() for g in result.grads] == [[2.0] * 4, [0.0] * 3]
    assert result.loss == pytest.approx(-16.0) and result.metrics == {}
