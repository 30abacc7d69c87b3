"""Embedding outputs (``loss_fn_config.output``) for the fw-ai/cookbook embedding recipe: exact
gradients of each output mode (finite differences), and the unmodified Fireworks SDK 1.2.30's
embedding calls against a local trainer: pooled embeddings, the cosine-similarity rows that
match them, client-side InfoNCE gradients sent back as ``embedding_grads``, and the server-side
``forward_backward_contrastive`` loss decreasing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fireworks.training import sdk

from firetitan_async.local import LocalTrainer
from firetitan_async.local._embeddings import EmbeddingConfig, embedding_config, run_embedding
from firetitan_async.local._input_error import ModelInputError
from firetitan_async.local._model import HIDDEN_DIM, MODEL_NAME, DatumArrays, TinyByteLM

KEY = "fw_local_embedding_key_0001"
PAIRS = [("what is a cat", "a small furry animal"), ("capital of france", "paris is"),
         ("how hot is the sun", "millions of kelvin"), ("who wrote hamlet", "shakespeare")]


def _texts() -> list[bytes]:
    return [q.encode() for q, _ in PAIRS] + [d.encode() for _, d in PAIRS]


def _loss(model: TinyByteLM, batch: list[DatumArrays], cfg: EmbeddingConfig,
          weights: np.ndarray) -> float:
    outputs, metrics = run_embedding(model, batch, cfg, backward=False)
    if cfg.output == "contrastive_loss":
        return metrics["loss:sum"]
    return float(sum((w * o["embedding"].astype(np.float64)).sum()
                     for w, o in zip(weights, outputs, strict=True)))


@pytest.mark.parametrize("output", ["embedding", "cos_similarity_matrix", "contrastive_loss"])
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_embedding_gradients_match_finite_differences(output: str, lora_rank: int) -> None:
    model = TinyByteLM(seed=2, lora_rank=lora_rank, dtype=np.float64)
    rng = np.random.default_rng(3)
    state = model.state(optimizer=False)
    for k in model.trainable_weights():
        state[f"param/{k}"] = state[f"param/{k}"] + 0.05 * rng.standard_normal(
            state[f"param/{k}"].shape)
    model.load_state(state, optimizer=False)
    base = model.state(optimizer=False)
    texts = _texts()
    width = HIDDEN_DIM if output == "embedding" else len(texts)
    weights = rng.standard_normal((len(texts), width))
    batch = [DatumArrays(np.frombuffer(t, np.uint8).astype(np.int64),
                         {"embedding_grads": weights[i]}) for i, t in enumerate(texts)]
    config: dict[str, Any] = {"output": output, "pooling": "last" if lora_rank else "mean"}
    if output == "contrastive_loss":
        config.update(num_queries=3, temperature=0.1, num_extra_negatives=2)
    cfg = embedding_config(config, num_datums=len(batch))
    assert cfg is not None
    run_embedding(model, batch, cfg, backward=True)
    grads = model.gradients()
    eps = 1e-6
    checked = 0
    for name, g in grads.items():
        if name in ("w2", "b2", "w2.lora_a", "w2.lora_b"):  # the output layer: no gradient
            assert not g.any(), name
            continue
        direction = rng.standard_normal(g.shape)
        plus, minus = dict(base), dict(base)
        plus[f"param/{name}"] = base[f"param/{name}"] + eps * direction
        minus[f"param/{name}"] = base[f"param/{name}"] - eps * direction
        model.load_state(plus, optimizer=False)
        up = _loss(model, batch, cfg, weights)
        model.load_state(minus, optimizer=False)
        down = _loss(model, batch, cfg, weights)
        analytic = float((g * direction).sum())
        assert abs(analytic) > 1e-6, name
        assert (up - down) / (2 * eps) == pytest.approx(analytic, rel=1e-5, abs=1e-7), name
        checked += 1
    assert checked >= 2


def test_embedding_config_refusals_name_the_field() -> None:
    assert embedding_config({}, num_datums=2) is None
    assert embedding_config({"output": "logprobs"}, num_datums=2) is None
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"output": "projection"}, 2, "loss_fn_config.output"),
        ({"output": "hidden"}, 2, "loss_fn_config.output"),
        ({"output": "embedding", "pooling": "max"}, 2, "loss_fn_config.pooling"),
        ({"output": "embedding", "temperature": 1.0}, 2, "loss_fn_config"),
        ({"output": "contrastive_loss", "num_queries": 2, "temperature": 0.0}, 4,
         "loss_fn_config.temperature"),
        ({"output": "contrastive_loss", "num_queries": 2, "temperature": 0.1}, 5, "data"),
    ]
    for config, n, field in cases:
        with pytest.raises(ModelInputError) as info:
            embedding_config(config, num_datums=n)
        assert info.value.field == field, config


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(api_key=KEY, seed=5) as lt:
        yield lt


def _datums(texts: list[bytes], grads: np.ndarray | None = None) -> list[Any]:
    out = []
    for i, text in enumerate(texts):
        inputs = {} if grads is None else {
            "embedding_grads": sdk.TensorData.from_numpy(grads[i].astype(np.float32))}
        out.append(sdk.Datum(model_input=sdk.ModelInput.from_ints(list(text)),
                             loss_fn_inputs=inputs))
    return out


def _info_nce(z: np.ndarray, b: int, t: float) -> tuple[float, np.ndarray]:
    """The recipe's bidirectional InfoNCE on pooled embeddings, and dL/dz, in numpy."""
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    zn = z / norm
    sim = zn[:b] @ zn[b:].T / t
    idx = np.arange(b)

    def ce(s: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.exp(s - s.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = -float(np.log(p[idx, idx]).mean())
        p[idx, idx] -= 1.0
        return loss, p / b

    lq, dq = ce(sim)
    ld, dd = ce(sim.T)
    dsim = 0.5 * (dq + dd.T)
    dzn = np.concatenate([dsim @ zn[b:] / t, dsim.T @ zn[:b] / t])
    dz = (dzn - zn * np.sum(zn * dzn, axis=1, keepdims=True)) / norm
    return 0.5 * (lq + ld), dz


def test_fireworks_sdk_embedding_calls(trainer: LocalTrainer) -> None:
    """The SDK's embedding wire (the calls behind ``forward_backward_custom(output=...)``,
    which needs torch, and the public ``forward_backward_contrastive``) against the trainer."""
    tc = sdk.FiretitanServiceClient(base_url=trainer.base_url, api_key=KEY) \
        .create_training_client(base_model=MODEL_NAME, lora_rank=0)
    texts, b = _texts(), len(PAIRS)
    out = tc._forward_embedding(_datums(texts), "mean", output="embedding").result()
    z = np.stack([o["embedding"].to_numpy() for o in out.loss_fn_outputs]).astype(np.float64)
    assert z.shape == (2 * b, HIDDEN_DIM)
    sims = tc._forward_embedding(_datums(texts), "mean", output="cos_similarity_matrix").result()
    s = np.stack([o["embedding"].to_numpy() for o in sims.loss_fn_outputs])
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(s, zn @ zn.T, atol=1e-5)

    # embedding mode, as the recipe's default: client-side InfoNCE, gradients sent back
    adam = sdk.AdamParams(learning_rate=2e-2)
    losses = []
    for _ in range(4):
        out = tc._forward_embedding(_datums(texts), "mean", output="embedding").result()
        z = np.stack([o["embedding"].to_numpy() for o in out.loss_fn_outputs]).astype(np.float64)
        loss, dz = _info_nce(z, b, 0.1)
        losses.append(loss)
        tc._forward_backward_embedding(_datums(texts, dz), "mean", output="embedding").result()
        tc.optim_step(adam).result()
    assert losses[-1] < losses[0], losses

    # contrastive_loss: the same loss computed by the trainer, one round trip per step
    first = tc.forward_backward_contrastive(
        _datums(texts), num_queries=b, temperature=0.1, pooling="mean").result()
    assert first.metrics["loss:sum"] == pytest.approx(
        _info_nce(np.stack([o["embedding"].to_numpy() for o in tc._forward_embedding(
            _datums(texts), "mean", output="embedding").result().loss_fn_outputs]
        ).astype(np.float64), b, 0.1)[0], rel=1e-4)
    tc.optim_step(adam).result()
    for _ in range(3):
        last = tc.forward_backward_contrastive(
            _datums(texts), num_queries=b, temperature=0.1, pooling="mean").result()
        tc.optim_step(adam).result()
    assert last.metrics["loss:sum"] < first.metrics["loss:sum"]
    assert 0.0 <= last.metrics["in_batch_recall_at_1:mean"] <= 1.0
