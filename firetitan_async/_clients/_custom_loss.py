"""Client-side custom losses: ``CustomLoss`` and the surrogate batches it is trained through.

A custom loss ``C(logprobs)`` runs as a ``forward`` (to get per-token target logprobs), then a
``cross_entropy`` ``forward_backward`` whose weights are ``-dC/dlogprobs``: the server's loss
``sum(-logprobs * weights)`` then has exactly the gradient of ``C``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tinker import types

from ..errors import InvalidInput, ProtocolError

__all__ = ["CustomLoss", "backward_batch", "forward_batch", "run_custom_loss"]

CustomLoss = Callable[[list[types.Datum], list[np.ndarray]], tuple[float, list[np.ndarray]]]
"""``loss_fn(data, logprobs) -> (loss, grads)``: given each datum's target-token logprobs
(float arrays), return the scalar loss and d(loss)/d(logprobs) per datum, same shapes."""


def forward_batch(data: Sequence[types.Datum]) -> list[types.Datum]:
    """The batch for the forward pass: ``target_tokens`` plus zero weights where absent."""
    out = []
    for index, datum in enumerate(data):
        target = datum.loss_fn_inputs.get("target_tokens")
        if target is None:
            raise InvalidInput("loss_fn_inputs.target_tokens", "is required", index=index)
        weights = datum.loss_fn_inputs.get("weights")
        if weights is None:
            weights = types.TensorData(
                data=np.zeros(target.to_numpy().shape, dtype=np.float32),
                dtype="float32",
                shape=target.shape,
            )
        out.append(
            types.Datum(
                model_input=datum.model_input,
                loss_fn_inputs={"target_tokens": target, "weights": weights},
            )
        )
    return out


def run_custom_loss(
    loss_fn: CustomLoss, data: Sequence[types.Datum], output: types.ForwardBackwardOutput
) -> tuple[float, list[np.ndarray]]:
    """Call the user's loss on the forward output's logprobs and check what it returns.

    A forward result without per-token logprobs (or with too few datums) raises
    :class:`ProtocolError`: nothing is invented.
    """
    outputs = output.loss_fn_outputs
    if len(outputs) != len(data) or any("logprobs" not in o for o in outputs):
        raise ProtocolError(
            "forward result",
            "the trainer returned no per-token logprobs for every datum; a custom loss needs "
            "them",
        )
    logprobs = [np.asarray(o["logprobs"].to_numpy(), dtype=np.float64) for o in outputs]
    result = loss_fn(list(data), logprobs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidInput("CustomLoss", "must return (loss, grads)")
    loss, grads = result
    try:
        loss, grads = float(loss), list(grads)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("CustomLoss", f"must return (a number, arrays): {exc}") from None
    if len(grads) != len(logprobs):
        raise InvalidInput(
            "CustomLoss", f"returned {len(grads)} gradients for {len(logprobs)} datums"
        )
    arrays = []
    for index, (grad, lp) in enumerate(zip(grads, logprobs, strict=True)):
        try:
            g = np.asarray(grad, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("CustomLoss", f"gradient {index} is not an array: {exc}") from None
        if g.shape != lp.shape:
            raise InvalidInput(
                "CustomLoss", f"gradient {index} has shape {g.shape}, logprobs have {lp.shape}"
            )
        if not np.all(np.isfinite(g)):
            raise InvalidInput("CustomLoss", f"gradient {index} is not finite")
        arrays.append(g)
    return loss, arrays


def backward_batch(data: Sequence[types.Datum], grads: Sequence[np.ndarray]) -> list[types.Datum]:
    """The ``cross_entropy`` batch whose gradient equals the custom loss's: weights = -grad."""
    return [
        types.Datum(
            model_input=datum.model_input,
            loss_fn_inputs={
                "target_tokens": datum.loss_fn_inputs["target_tokens"],
                "weights": types.TensorData.from_numpy((-grad).astype(np.float32)),
            },
        )
        for datum, grad in zip(data, grads, strict=True)
    ]
