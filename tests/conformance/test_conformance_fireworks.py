"""Conformance: the unmodified Fireworks Training SDK (1.2.30) trains against the local trainer.

The data-plane half: ``FiretitanServiceClient(base_url=lt.base_url, api_key=...)`` straight at a
key-protected ``LocalTrainer`` (the job / gateway / control-plane parts live in their own file).
The SDK is synchronous with its own background thread, so these are plain sync tests. Every
call must succeed *as the SDK sees it*: the SDK hides some failures behind a log warning (e.g.
``LIST_CHECKPOINTS_ERROR`` and ``[]``), so every warning it logs fails the test.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fireworks.training import sdk

from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME

pytestmark = pytest.mark.conformance

KEY = "fw_local_conformance_key_0001"
TEXTS = [b"hello fireworks, hello world", b"the local trainer is tiny", b"bytes in, bytes out!"]
ADAM = sdk.AdamParams(learning_rate=1e-2)


def _datum(text: bytes) -> sdk.Datum:
    tokens = list(text)
    return sdk.Datum(
        model_input=sdk.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": sdk.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
            "weights": sdk.TensorData.from_numpy(np.ones(len(tokens) - 1, np.float32)),
        },
    )


BATCH = [_datum(t) for t in TEXTS]


@pytest.fixture
def sdk_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Fails the test if the SDK logs any warning or error (a swallowed failure)."""
    caplog.set_level(logging.WARNING, logger="fireworks")
    records: list[logging.LogRecord] = []
    yield records
    bad = [r for r in caplog.records if r.name.startswith("fireworks")
           and r.levelno >= logging.WARNING and r not in records]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(api_key=KEY, seed=5, long_poll_s=5.0) as lt:
        yield lt


def _service(lt: LocalTrainer) -> sdk.FiretitanServiceClient:
    return sdk.FiretitanServiceClient(base_url=lt.base_url, api_key=KEY)


def _checkpoints(lt: LocalTrainer, run_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{lt.base_url}/api/v1/training_runs/{run_id}/checkpoints",
                  headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["checkpoints"]
    return rows


def _loss(out: Any) -> float:
    return float(out.metrics["loss:sum"])


def test_full_parameter_training_flow(trainer: LocalTrainer, sdk_warnings: Any) -> None:
    svc = _service(trainer)
    tc = svc.create_training_client(base_model=MODEL_NAME, lora_rank=0)
    assert tc.comms == "v1"
    # 5 pipelined forward_backward + optim_step: all submitted before any result is read.
    futures = [(tc.forward_backward(BATCH, "cross_entropy"), tc.optim_step(ADAM))
               for _ in range(5)]
    losses = []
    for fb, optim in futures:
        out = fb.result()
        losses.append(_loss(out))
        assert len(out.loss_fn_outputs) == len(BATCH)
        assert out.loss_fn_outputs[0]["logprobs"].to_numpy().shape == (len(TEXTS[0]) - 1,)
        assert set(optim.result().metrics) >= {"grad_norm:mean", "learning_rate:mean"}
    assert all(b < a for a, b in itertools.pairwise(losses)), losses

    # forward: per-token logprobs whose sum is the loss, and no gradient accumulated.
    fwd = tc.forward(BATCH, "cross_entropy").result()
    lps = np.concatenate([o["logprobs"].to_numpy() for o in fwd.loss_fn_outputs])
    assert _loss(fwd) == pytest.approx(-float(lps.astype(np.float64).sum()), rel=1e-5)
    assert _loss(fwd) < losses[-1]

    # optim extras: normalization by loss tokens and detailed grad-norm metrics.
    tc.forward_backward(BATCH, "cross_entropy").result()
    extras = tc.optim_step(
        ADAM, grad_accumulation_normalization=sdk.GradAccNormalization.NUM_LOSS_TOKENS,
        emit_grad_norm_metrics="detailed",
    ).result().metrics
    n_tokens = sum(len(t) - 1 for t in TEXTS)
    assert extras["grad_norm/global:mean"] == pytest.approx(extras["grad_norm:mean"])
    assert extras["grad_norm/param/w1:mean"] > 0
    plain = tc.forward_backward(BATCH, "cross_entropy")
    raw = tc.optim_step(ADAM, emit_grad_norm_metrics=True).result().metrics
    plain.result()
    # Without normalization the norm is about n_tokens times larger (the weights moved a bit).
    assert raw["grad_norm:mean"] > extras["grad_norm:mean"] * n_tokens / 3
    assert "grad_norm/param/w1:mean" not in raw and "grad_norm/rms:mean" in raw

    # sampler snapshots: base first, then the SDK's automatic delta.
    first = tc.save_weights_for_sampler_ext("snap-a")
    second = tc.save_weights_for_sampler_ext("snap-b")
    rows = {r["tinker_path"]: r for r in _checkpoints(trainer, tc.model_id)}
    assert rows[first.path]["snapshot_type"] == "base"
    assert rows[second.path]["snapshot_type"] == "delta"

    # save_state, list_checkpoints, then a second service resumes and reproduces the next step.
    saved = tc.save_state("step-7").result()
    assert saved.path.endswith("/weights/step-7")
    assert "step-7" in tc.list_checkpoints()
    tc.optim_step(ADAM).result()  # no gradient: only Adam's moments move the weights
    tc.forward_backward(BATCH, "cross_entropy").result()
    tc.optim_step(ADAM).result()
    expected = _loss(tc.forward(BATCH, "cross_entropy").result())

    svc2 = _service(trainer)
    tc2 = svc2.create_training_client(base_model=MODEL_NAME, lora_rank=0)
    tc2.load_state_with_optimizer(tc2.resolve_checkpoint_path("step-7")).result()
    tc2.optim_step(ADAM).result()
    tc2.forward_backward(BATCH, "cross_entropy").result()
    tc2.optim_step(ADAM).result()
    assert _loss(tc2.forward(BATCH, "cross_entropy").result()) == expected

    # unload: drains first, then the model is gone.
    tc2.forward_backward(BATCH, "cross_entropy")
    assert tc2.unload_model().result().model_id == tc2.model_id
    r = httpx.post(f"{trainer.base_url}/api/v1/get_info", headers={"X-API-Key": KEY},
                   json={"model_id": tc2.model_id})
    assert r.status_code == 404 and "unloaded" in r.json()["detail"]
    svc.close()
    svc2.close()


def test_lora_flow_with_merged_base_and_adapter(
    trainer: LocalTrainer, sdk_warnings: Any
) -> None:
    svc = _service(trainer)
    tc = svc.create_training_client(base_model=MODEL_NAME, lora_rank=4)
    losses = []
    for _ in range(3):
        fb = tc.forward_backward(BATCH, "cross_entropy")
        tc.optim_step(ADAM)
        losses.append(_loss(fb.result()))
    assert losses[2] < losses[0]
    a = tc.save_weights_for_sampler_ext("lora-a")
    b = tc.save_weights_for_sampler_ext("lora-b")
    merged = tc.save_weights_for_sampler_ext("lora-m", checkpoint_type="merged_base")
    rows = {r["tinker_path"]: r for r in _checkpoints(trainer, tc.model_id)}
    assert [rows[p]["snapshot_type"] for p in (a.path, b.path)] == ["base", "base"]
    assert rows[merged.path]["snapshot_type"] == "merged_base"
    assert rows[merged.path]["export_precision"] == "source"
    tc.save_state("lora-ckpt").result()
    expected = _loss(tc.forward(BATCH, "cross_entropy").result())

    # A fresh LoRA model takes the adapter (weights only) and computes the same loss.
    svc2 = _service(trainer)
    tc2 = svc2.create_training_client(base_model=MODEL_NAME, lora_rank=4)
    assert tc2.load_adapter("lora-ckpt").result().model_id == tc2.model_id
    assert _loss(tc2.forward(BATCH, "cross_entropy").result()) == expected

    # A frozen reference model: forward works, training it is refused.
    ref = svc2.create_base_training_client(MODEL_NAME)
    assert _loss(ref.forward(BATCH, "cross_entropy").result()) == pytest.approx(losses[0])
    with pytest.raises(sdk.APIStatusError, match="frozen base_only reference model"):
        ref.optim_step(ADAM).result()
    svc.close()
    svc2.close()


def test_dedicated_trainer_knobs(sdk_warnings: Any) -> None:
    with LocalTrainer(api_key=KEY, seed=5, forward_backward_logprobs=False,
                      checkpoint_step_names=True) as lt:
        svc = _service(lt)
        tc = svc.create_training_client(base_model=MODEL_NAME, lora_rank=0)
        out = tc.forward_backward(BATCH, "cross_entropy").result()
        assert out.metrics["loss:sum"] > 0 and out.metrics["response_tokens"] > 0
        assert [dict(o) for o in out.loss_fn_outputs] == [{}] * len(BATCH)
        tc.optim_step(ADAM).result()
        fwd = tc.forward(BATCH, "cross_entropy").result()
        assert "logprobs" in fwd.loss_fn_outputs[0]
        saved = tc.save_state("my-name").result()
        assert saved.path.endswith("/weights/step-1")
        assert tc.list_checkpoints() == ["step-1"]
        svc.close()
