"""Embedding outputs of the tiny model: what the Fireworks SDK's embedding calls ask for.

The SDK marks an embedding request by ``loss_fn_config.output`` on a JSON ``forward`` or
``forward_backward`` (``loss_fn`` stays ``cross_entropy``, the datums carry no targets):

- ``"embedding"`` (with ``pooling`` ``"mean"`` or ``"last"``): each datum's pooled hidden
  state, ``loss_fn_outputs[i]["embedding"]`` of shape ``[HIDDEN_DIM]``; a ``forward_backward``
  brings ``loss_fn_inputs["embedding_grads"]`` (dL/dz, the same shape) and accumulates its
  gradient.
- ``"cos_similarity_matrix"``: row ``i`` of ``S = Zn @ Zn.T`` (``Zn`` the L2-normalised pooled
  states of the request's datums), shape ``[B]``; ``embedding_grads`` are the rows of dL/dS.
- ``"contrastive_loss"`` (``num_queries`` B, ``temperature``, ``num_extra_negatives`` K):
  the datums are ``[Q_0..Q_B-1, D_0..D_B-1, EN_0..EN_K-1]``; the trainer computes the
  bidirectional in-batch InfoNCE (query→doc over all ``B + K`` documents, doc→query over the
  ``B`` paired ones, averaged) and its gradient in one call; metrics ``loss:sum``,
  ``loss_q2d:mean``, ``loss_d2q:mean``, ``in_batch_recall_at_1:mean``.

``"projection"`` needs a projection head, which the tiny model has not (refused).

Example::

    cfg = embedding_config({"output": "embedding", "pooling": "mean"}, num_datums=2)
    outputs, metrics = run_embedding(model, batch, cfg, backward=False)
    outputs[0]["embedding"].shape   # (128,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from ._input_error import ModelInputError
from ._model import DatumArrays, TinyByteLM

__all__ = ["EmbeddingConfig", "embedding_config", "run_embedding"]

OUTPUTS = ("embedding", "cos_similarity_matrix", "contrastive_loss")
_KEYS = {
    "embedding": {"output", "pooling"},
    "cos_similarity_matrix": {"output", "pooling"},
    "contrastive_loss": {"output", "pooling", "num_queries", "temperature",
                         "num_extra_negatives"},
}


@attrs.frozen
class EmbeddingConfig:
    """A checked embedding ``loss_fn_config``.

    Example::

        EmbeddingConfig("contrastive_loss", "last", num_queries=4, temperature=0.02)
    """

    output: str
    pooling: str
    num_queries: int = 0
    temperature: float = 1.0
    num_extra_negatives: int = 0


def _int(config: Mapping[str, object], key: str, minimum: int) -> int:
    value = config.get(key, minimum)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or (
        value < minimum
    ):
        raise ModelInputError(f"loss_fn_config.{key}", f"must be an integer >= {minimum}")
    return int(value)


def embedding_config(
    config: Mapping[str, object] | None, *, num_datums: int
) -> EmbeddingConfig | None:
    """The embedding request in ``config`` (``None``: an ordinary loss, no ``output`` key).
    ``ModelInputError`` naming the field for a bad one."""
    if not config or config.get("output") in (None, "logprobs"):
        return None
    output = config["output"]
    if output == "projection":
        raise ModelInputError(
            "loss_fn_config.output", "'projection' needs a projection head; the local tiny "
            "model has none (create_model refuses projection_head_dim)"
        )
    if output not in OUTPUTS:
        raise ModelInputError("loss_fn_config.output", f"must be one of {OUTPUTS}, got {output!r}")
    unknown = sorted(set(config) - _KEYS[str(output)])
    if unknown:
        raise ModelInputError("loss_fn_config", f"unknown keys {unknown} for output {output!r}")
    pooling = config.get("pooling", "last" if output == "contrastive_loss" else "mean")
    if pooling not in ("mean", "last"):
        raise ModelInputError("loss_fn_config.pooling", f"must be mean or last, got {pooling!r}")
    if output != "contrastive_loss":
        return EmbeddingConfig(str(output), str(pooling))
    queries = _int(config, "num_queries", 1)
    extra = _int(config, "num_extra_negatives", 0)
    temperature = config.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        0 < temperature < math.inf
    ):
        raise ModelInputError("loss_fn_config.temperature", "must be a number > 0")
    if num_datums != 2 * queries + extra:
        raise ModelInputError(
            "data", f"contrastive_loss needs 2*num_queries + num_extra_negatives = "
            f"{2 * queries + extra} datums, got {num_datums}"
        )
    return EmbeddingConfig(str(output), str(pooling), queries, float(temperature), extra)


def _grads(batch: Sequence[DatumArrays], width: int) -> np.ndarray:
    rows = []
    for i, datum in enumerate(batch):
        g = datum.inputs.get("embedding_grads")
        if g is None:
            raise ModelInputError("loss_fn_inputs.embedding_grads", "is required", index=i)
        arr = np.asarray(g, dtype=np.float64).reshape(-1)
        if arr.shape != (width,):
            raise ModelInputError(
                "loss_fn_inputs.embedding_grads", f"must have {width} values, got {arr.size}",
                index=i,
            )
        rows.append(arr)
    return np.stack(rows)


def _normalise(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    norm = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return z / norm, norm


def _through_normalise(zn: np.ndarray, norm: np.ndarray, dzn: np.ndarray) -> np.ndarray:
    """dL/dz from dL/dzn for zn = z / |z|."""
    out: np.ndarray = (dzn - zn * np.sum(zn * dzn, axis=1, keepdims=True)) / norm
    return out


def _log_softmax(s: np.ndarray) -> np.ndarray:
    shifted = s - s.max(axis=1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


def _info_nce(
    zn: np.ndarray, cfg: EmbeddingConfig
) -> tuple[dict[str, float], np.ndarray]:
    """Bidirectional in-batch InfoNCE over normalised embeddings; metrics and dL/dzn."""
    b, t = cfg.num_queries, cfg.temperature
    q, docs = zn[:b], zn[b:]
    sim = q @ docs.T / t  # (B, B + K)
    targets = np.arange(b)
    lq = _log_softmax(sim)
    ld = _log_softmax(sim[:, :b].T)  # paired documents vs queries
    loss_q2d = -float(lq[targets, targets].mean())
    loss_d2q = -float(ld[targets, targets].mean())
    dq2d = np.exp(lq)
    dq2d[targets, targets] -= 1.0
    dd2q = np.exp(ld)
    dd2q[targets, targets] -= 1.0
    dsim = 0.5 * dq2d / b
    dsim[:, :b] += 0.5 * dd2q.T / b
    dzn = np.concatenate([dsim @ docs / t, dsim.T @ q / t])
    metrics = {
        "loss:sum": 0.5 * (loss_q2d + loss_d2q),
        "loss_q2d:mean": loss_q2d,
        "loss_d2q:mean": loss_d2q,
        "in_batch_recall_at_1:mean": float(np.mean(sim.argmax(axis=1) == targets)),
    }
    return metrics, dzn


def run_embedding(
    model: TinyByteLM, batch: Sequence[DatumArrays], cfg: EmbeddingConfig, *, backward: bool
) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
    """Per-datum outputs (``{"embedding": float64 array}``, sent as float32; ``{}`` for
    ``contrastive_loss``) and metrics; with ``backward``, the gradient is accumulated.
    Everything is checked before any gradient changes."""
    tokens = [d.tokens for d in batch]
    z = model.pooled_hidden(tokens, cfg.pooling)
    if cfg.output == "embedding":
        if backward:
            model.backward_pooled(tokens, cfg.pooling, _grads(batch, z.shape[1]))
        return [{"embedding": row} for row in z], {}
    zn, norm = _normalise(z)
    if cfg.output == "cos_similarity_matrix":
        sim = zn @ zn.T
        if backward:
            g = _grads(batch, len(batch))
            dz = _through_normalise(zn, norm, (g + g.T) @ zn)
            model.backward_pooled(tokens, cfg.pooling, dz)
        return [{"embedding": row} for row in sim], {}
    metrics, dzn = _info_nce(zn, cfg)
    if backward:
        model.backward_pooled(tokens, cfg.pooling, _through_normalise(zn, norm, dzn))
    return [{} for _ in batch], metrics
