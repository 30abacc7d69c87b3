"""Checks run when a training submission arrives, before it is queued.

A submission that fails them gets a 400 at once (and still consumes its ``seq_id``), instead of
a failed future later. The model checks again when the operation runs.

Example::

    check_forward_backward(submission.loss_fn, submission.loss_fn_config, submission.data)
    check_adam({"learning_rate": 1e-3})   # -> AdamConfig
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._input_error import ModelInputError
from ._losses import resolve_config
from ._model import VOCAB_SIZE, DatumArrays, checked_datums
from ._optim import AdamConfig

__all__ = ["check_adam", "check_forward_backward"]

_ADAM_FIELDS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")


def check_forward_backward(
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str | bool],
    data: Sequence[DatumArrays],
    vocab: int = VOCAB_SIZE,
) -> None:
    """Raise ``ModelInputError`` naming the field (and datum) of the first problem; tokens
    must be in ``[0, vocab)`` (the served model's vocabulary)."""
    resolve_config(loss_fn, loss_fn_config)
    for _ in checked_datums(data, loss_fn, vocab):
        pass


def check_adam(params: Any) -> AdamConfig:
    """``adam_params`` JSON → a validated ``AdamConfig`` (``ModelInputError`` otherwise)."""
    if not isinstance(params, Mapping):
        raise ModelInputError("adam_params", "must be an object")
    unknown = sorted(set(params) - set(_ADAM_FIELDS) - {"type"})
    if unknown:
        raise ModelInputError("adam_params", f"unknown fields {unknown}")
    values: dict[str, float] = {}
    for name in _ADAM_FIELDS:
        if name in params:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ModelInputError(f"adam_params.{name}", f"must be a number, got {value!r}")
            values[name] = float(value)
    config = AdamConfig(**values)
    config.validate()
    return config
