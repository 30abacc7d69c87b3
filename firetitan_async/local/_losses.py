"""The built-in loss functions, on per-token target logprobs.

Every loss is a sum over tokens (and data) of a per-token term; ``compute_loss`` returns the
loss, ``d(loss)/d(logprobs)`` and metrics. Notation: ``lp`` are the trained model's logprobs of
the target tokens, ``q`` the sampler's (input ``logprobs``), ``A`` the ``advantages``,
``ratio = exp(lp - q)``. The formulas are those of the tinker docs (``losses.mdx``):

* ``cross_entropy``: ``Σ -lp·w`` (``w``: ``weights``, or ``loss_mask`` when there are none)
* ``importance_sampling``: ``Σ -ratio·A``
* ``ppo``: ``Σ -min(ratio·A, clip(ratio, low, high)·A)``; the gradient flows through the
  unclipped term where it is the minimum (ties included), else it is 0.
* ``cispo``: ``Σ -sg(clip(ratio, low, high))·A·lp`` (``sg`` = stop-gradient)
* ``dro``: ``Σ -(lp·A - beta/2·(lp - q)²)``

``low``/``high`` are ``clip_low_threshold``/``clip_high_threshold`` (ratio bounds, defaults
0.8/1.2); ``beta`` defaults to 0.05.

Fireworks ``loss_fn_config`` feature switches (strings and bools) are accepted in the form that
asks for what the local model computes, and refused otherwise: ``target_logprob_support``
``"full_vocabulary"``, ``report_policy_diagnostics`` and ``score_centering`` ``false``;
``weighting`` and ``anchor_logprob_source`` (server-side TIS/MIS) are always refused.
``dapo``, ``dppo`` and ``reinforce`` (named by the Fireworks SDK) are refused: the SDK does not
define their inputs or math, so the local trainer does not guess them.

Example::

    out = compute_loss("cross_entropy", lp, {"weights": w}, resolve_config("cross_entropy", None))
    out.loss, out.grad  # Σ -lp·w, -w
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType

import attrs
import numpy as np

from ._input_error import ModelInputError

__all__ = [
    "CONFIG_DEFAULTS",
    "FLOAT_INPUTS",
    "LOSS_FUNCTIONS",
    "REQUIRED_INPUTS",
    "LossOutput",
    "compute_loss",
    "loss_input",
    "resolve_config",
]

_RL_INPUTS = ("target_tokens", "logprobs", "advantages")

REQUIRED_INPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "cross_entropy": ("target_tokens", "weights"),
        "importance_sampling": _RL_INPUTS,
        "ppo": _RL_INPUTS,
        "cispo": _RL_INPUTS,
        "dro": _RL_INPUTS,
    }
)
"""The ``loss_fn_inputs`` each loss needs, each of shape ``(N,)``; other inputs are ignored."""

INPUT_ALIASES: Mapping[str, str] = MappingProxyType({"weights": "loss_mask"})
"""An input sent under another name: ``cross_entropy``'s ``weights`` as ``loss_mask`` (the
Fireworks cookbook's reference forwards send ``target_tokens`` and ``loss_mask``)."""


def loss_input(inputs: Mapping[str, np.ndarray], name: str) -> np.ndarray | None:
    """The input ``name`` of a datum, under its alias if it is not there; ``None`` if neither.

    Example::

        loss_input({"loss_mask": m}, "weights") is m
    """
    value = inputs.get(name)
    if value is None and name in INPUT_ALIASES:
        value = inputs.get(INPUT_ALIASES[name])
    return value


LOSS_FUNCTIONS: frozenset[str] = frozenset(REQUIRED_INPUTS)
"""The loss function names the local model implements."""

FLOAT_INPUTS: frozenset[str] = frozenset({"weights", "logprobs", "advantages"})
"""Inputs that are real-valued (they must be finite); ``target_tokens`` is integer."""

_CLIP = MappingProxyType({"clip_low_threshold": 0.8, "clip_high_threshold": 1.2})

CONFIG_DEFAULTS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "cross_entropy": MappingProxyType({}),
        "importance_sampling": MappingProxyType({}),
        "ppo": _CLIP,
        "cispo": _CLIP,
        "dro": MappingProxyType({"beta": 0.05}),
    }
)
"""Each loss's ``loss_fn_config`` keys and their defaults; any other key is rejected."""


@attrs.frozen(eq=False)
class LossOutput:
    """A loss value, its gradient with respect to the target logprobs, and metrics.

    Example::

        out = compute_loss("dro", lp, inputs, {"beta": 0.05})
        out.metrics["loss:sum"] == out.loss
    """

    loss: float
    grad: np.ndarray  # float64, same shape as the logprobs: d(loss)/d(lp)
    metrics: dict[str, float]


_FEATURE_OFF: Mapping[str, object] = MappingProxyType(
    {
        "target_logprob_support": "full_vocabulary",
        "report_policy_diagnostics": False,
        "score_centering": False,
    }
)
_FEATURE_REFUSED = frozenset({"weighting", "anchor_logprob_source"})
UNDEFINED_LOSSES: frozenset[str] = frozenset({"dapo", "dppo", "reinforce"})
"""Losses the Fireworks SDK names without defining their inputs or math (refused)."""


def _check_feature(key: str, value: object) -> None:
    field = f"loss_fn_config.{key}"
    if key in _FEATURE_REFUSED:
        raise ModelInputError(field, "server-side policy importance weighting is not supported "
                              "by the local trainer (create_model reports it unsupported)")
    off = _FEATURE_OFF[key]
    if type(value) is not type(off):
        raise ModelInputError(field, f"must be a {type(off).__name__}, got {value!r}")
    if value != off:
        raise ModelInputError(
            field, f"{value!r} is not supported by the local trainer (only {off!r})"
        )


def resolve_config(
    loss_fn: str, config: Mapping[str, float | str | bool] | None
) -> dict[str, float]:
    """``config`` checked against ``loss_fn``'s keys, with defaults filled in.

    Raises ``ModelInputError`` for an unknown loss, an unknown key or a bad value.

    Example::

        resolve_config("ppo", {"clip_high_threshold": 1.1})
        # {'clip_low_threshold': 0.8, 'clip_high_threshold': 1.1}
    """
    if loss_fn in UNDEFINED_LOSSES:
        raise ModelInputError(
            "loss_fn", f"{loss_fn!r} is not implemented by the local trainer: the Fireworks SDK "
            "names it but does not define its inputs or math (use a custom loss)"
        )
    if loss_fn not in LOSS_FUNCTIONS:
        known = ", ".join(sorted(LOSS_FUNCTIONS))
        raise ModelInputError("loss_fn", f"unknown loss function {loss_fn!r} (known: {known})")
    defaults = CONFIG_DEFAULTS[loss_fn]
    resolved = dict(defaults)
    for key, value in (config or {}).items():
        field = f"loss_fn_config.{key}"
        if key in _FEATURE_OFF or key in _FEATURE_REFUSED:
            _check_feature(key, value)
            continue
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ModelInputError(field, f"unknown key for {loss_fn!r} (allowed: {allowed})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelInputError(field, f"must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ModelInputError(field, "must be finite")
        resolved[key] = float(value)
    if "clip_low_threshold" in resolved:
        low, high = resolved["clip_low_threshold"], resolved["clip_high_threshold"]
        if not 0.0 <= low <= high:
            raise ModelInputError(
                "loss_fn_config",
                f"need 0 <= clip_low_threshold <= clip_high_threshold, got {low} and {high}",
            )
    if resolved.get("beta", 0.0) < 0.0:
        raise ModelInputError("loss_fn_config.beta", "must be >= 0")
    return resolved


def compute_loss(
    loss_fn: str,
    logprobs: np.ndarray,
    inputs: Mapping[str, np.ndarray],
    config: Mapping[str, float],
) -> LossOutput:
    """The loss ``loss_fn`` of target ``logprobs`` (any shape), with ``inputs`` of that shape.

    ``config`` must come from ``resolve_config``. Computed in float64.

    Example::

        out = compute_loss("importance_sampling", lp, {"logprobs": q, "advantages": a}, {})
    """
    lp = np.asarray(logprobs, dtype=np.float64)
    if loss_fn == "cross_entropy":
        w = np.asarray(inputs["weights"], dtype=np.float64)
        terms, grad = -lp * w, -w
    else:
        q = np.asarray(inputs["logprobs"], dtype=np.float64)
        adv = np.asarray(inputs["advantages"], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            terms, grad = _rl_terms(loss_fn, lp, q, adv, config)
    loss = float(terms.sum())
    return LossOutput(loss=loss, grad=grad, metrics={"loss:sum": loss})


def _rl_terms(
    loss_fn: str, lp: np.ndarray, q: np.ndarray, adv: np.ndarray, config: Mapping[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    if loss_fn == "dro":
        beta = config["beta"]
        diff = lp - q
        return -(lp * adv - 0.5 * beta * diff * diff), -adv + beta * diff
    ratio = np.exp(lp - q)
    if loss_fn == "importance_sampling":
        return -ratio * adv, -ratio * adv  # d ratio / d lp = ratio
    clipped = np.clip(ratio, config["clip_low_threshold"], config["clip_high_threshold"])
    if loss_fn == "cispo":
        return -clipped * adv * lp, -clipped * adv
    # ppo
    unclipped_obj, clipped_obj = ratio * adv, clipped * adv
    use_unclipped = unclipped_obj <= clipped_obj
    objective = np.where(use_unclipped, unclipped_obj, clipped_obj)
    grad = np.where(use_unclipped, -ratio * adv, 0.0)
    return -objective, grad
