"""A KL penalty against a reference model, folded into the advantages.

The reference's logprobs of each datum's target tokens come from one ``forward`` on the
reference client; with ``d = sampled logprob - reference logprob`` per token (over the
tokens the penalty covers) and ``mean`` its average over the whole step, each token's
advantage gets ``beta * (mean - d)``: tokens the policy likes more than the reference does
lose advantage, the rest gain, and the step's total is unchanged (tinker-cookbook's
``incorporate_kl_penalty``; the Fireworks cookbook's ``kl_beta`` term has the same gradient
on ``importance_sampling``-style losses, less the centring).

Example::

    reference = await session.create_base_training_client("local/tiny-byte-lm")
    await run_rl(..., kl=KLPenalty(reference, beta=0.05))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
from tinker import types

from .._clients._training import TrainingClient
from ..errors import InvalidInput

__all__ = ["KLPenalty"]


@attrs.frozen
class KLPenalty:
    """Penalise drift from ``reference`` (a frozen client: ``create_base_training_client``,
    or a training client on another trainer) with weight ``beta``.

    Each datum needs ``target_tokens``, ``logprobs`` (the sampler's) and ``advantages``. The
    penalty covers the tokens where ``mask`` (if the datum has one) is > 0, else those whose
    sampled logprob is not 0 (prompt positions carry 0, as in the RL docs). The step's
    metrics gain ``kl_policy_ref``: the mean of ``d`` (an estimate of KL(policy || ref)).

    Example::

        kl = KLPenalty(await session.create_base_training_client(model), beta=0.05)
    """

    reference: TrainingClient
    beta: float

    def __attrs_post_init__(self) -> None:
        if not self.beta >= 0:
            raise InvalidInput("beta", f"must be >= 0, got {self.beta!r}")

    async def apply(self, datums: Sequence[types.Datum]) -> tuple[list[types.Datum], float]:
        """``datums`` with the penalty folded into their advantages, and the mean ``d``."""
        if not datums:
            return [], 0.0
        probes = []
        for i, datum in enumerate(datums):
            for key in ("target_tokens", "logprobs", "advantages"):
                if key not in datum.loss_fn_inputs:
                    raise InvalidInput(f"loss_fn_inputs.{key}", "is needed by kl=", index=i)
            targets = datum.loss_fn_inputs["target_tokens"]
            probes.append(
                types.Datum(
                    model_input=datum.model_input,
                    loss_fn_inputs={
                        "target_tokens": targets,
                        "weights": types.TensorData.from_numpy(
                            np.ones(len(_array(targets)), dtype=np.float32)
                        ),
                    },
                )
            )
        out = await self.reference.forward(probes, "cross_entropy")
        diffs, masks = [], []
        for datum, row in zip(datums, out.loss_fn_outputs, strict=True):
            inputs = datum.loss_fn_inputs
            sampled = _array(inputs["logprobs"]).astype(np.float32)
            ref = _array(row["logprobs"]).astype(np.float32)
            mask = _array(inputs["mask"]) > 0 if "mask" in inputs else sampled != 0
            masks.append(mask.astype(np.float32))
            diffs.append((sampled - ref) * masks[-1])
        total = float(sum(m.sum() for m in masks))
        mean = float(sum(d.sum(dtype=np.float64) for d in diffs) / max(total, 1.0))
        beta = np.float32(self.beta)
        penalised = []
        for datum, diff, mask in zip(datums, diffs, masks, strict=True):
            advantages = _array(datum.loss_fn_inputs["advantages"]).astype(np.float32)
            advantages = advantages + beta * mask * (np.float32(mean) - diff)
            inputs = dict(datum.loss_fn_inputs)
            inputs["advantages"] = types.TensorData.from_numpy(advantages)
            penalised.append(types.Datum(model_input=datum.model_input, loss_fn_inputs=inputs))
        return penalised, mean


def _array(value: Any) -> np.ndarray[Any, Any]:
    """A loss input as a numpy array (a ``TensorData``, an array or a list)."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy is not None else value)
