"""Client-side custom losses: ``CustomLoss`` (numpy), ``TorchLoss`` and the surrogate batches.

A custom loss ``C(logprobs)`` runs as a ``forward`` (to get per-token target logprobs), then a
``cross_entropy`` ``forward_backward`` whose weights are ``-dC/dlogprobs``: the server's loss
``sum(-logprobs * weights)`` then has exactly the gradient of ``C``. The gradient comes from the
loss itself (numpy: it returns it) or from ``torch.autograd`` (a :class:`TorchLoss`).

torch is imported here only when a :class:`TorchLoss` runs: the client imports without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import numpy as np
from tinker import types

from ..errors import InvalidInput, ProtocolError

if TYPE_CHECKING:
    import torch

__all__ = [
    "CustomLoss",
    "CustomLossResult",
    "TorchLoss",
    "backward_batch",
    "custom_loss_metrics",
    "forward_batch",
    "forward_logprobs",
    "precomputed_logprobs",
    "run_custom_loss",
]

CustomLoss = Callable[
    [list[types.Datum], list[np.ndarray]],
    tuple[float, list[np.ndarray]] | tuple[float, list[np.ndarray], Mapping[str, float]],
]
"""A numpy custom loss: ``loss_fn(data, logprobs) -> (loss, grads)`` or
``(loss, grads, metrics)``. Given each datum's target-token logprobs (float64 arrays), return
the scalar loss, d(loss)/d(logprobs) per datum (same shapes) and, optionally, a dict of
metrics that lands in the result's ``metrics``. A plain callable is always this form; wrap a
torch loss in :class:`TorchLoss`."""

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class TorchLoss(Generic[F]):
    """A custom loss written in torch: ``fn(data, logprobs) -> (loss, metrics)``.

    ``fn`` receives one 1-D tensor of target-token logprobs per datum (the default float
    dtype, ``requires_grad=True``) and returns a scalar loss tensor and a dict of metrics (the
    form the Fireworks SDK's and tinker's ``forward_backward_custom`` take, and the Fireworks
    cookbook's losses have). The gradients come from ``loss.backward()``; a datum the loss does
    not depend on gets zero gradient. Needs the ``torch`` extra (imported only when the loss
    runs). The wrapper is what tells the client the form: a plain callable is a numpy
    :data:`CustomLoss`. Usable as a decorator.

    Example::

        @TorchLoss
        def mean_nll(data, logprobs):
            loss = -torch.cat(logprobs).mean()
            return loss, {"nll": loss.item()}

        out = await client.forward_backward_custom(batch, mean_nll)
    """

    fn: F

    def __call__(self, data: list[types.Datum], logprobs: list[torch.Tensor]) -> Any:
        """Call the wrapped loss."""
        return self.fn(data, logprobs)


@attrs.frozen
class CustomLossResult:
    """What a custom loss gave: its value, the gradient per datum and its metrics."""

    loss: float
    grads: list[np.ndarray]
    metrics: dict[str, float]


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


def forward_logprobs(output: types.ForwardBackwardOutput, n: int) -> list[np.ndarray]:
    """The per-datum logprobs of a forward result (in the dtype the trainer sent).

    A forward result without per-token logprobs (or with too few datums) raises
    :class:`ProtocolError`: nothing is invented.
    """
    outputs = output.loss_fn_outputs
    if len(outputs) != n or any("logprobs" not in o for o in outputs):
        raise ProtocolError(
            "forward result",
            "the trainer returned no per-token logprobs for every datum; a custom loss needs "
            "them",
        )
    return [np.asarray(o["logprobs"].to_numpy()) for o in outputs]


def precomputed_logprobs(
    output: Any, data: Sequence[types.Datum]
) -> list[np.ndarray]:
    """Check a ``precomputed_forward`` against ``data`` and take its logprobs.

    It must be a forward result of this batch: one output per datum, each with as many
    logprobs as the datum has target tokens (the Fireworks SDK's checks), else
    :class:`InvalidInput` before anything is sent.
    """
    outputs = getattr(output, "loss_fn_outputs", None)
    if not isinstance(outputs, Sequence):
        raise InvalidInput("precomputed_forward", "must be a forward result (loss_fn_outputs)")
    if len(outputs) != len(data):
        raise InvalidInput(
            "precomputed_forward", f"has {len(outputs)} outputs for {len(data)} datums"
        )
    arrays = []
    for index, (datum, out) in enumerate(zip(data, outputs, strict=True)):
        if not isinstance(out, Mapping) or "logprobs" not in out:
            raise InvalidInput("precomputed_forward", "has no logprobs", index=index)
        lp = out["logprobs"]
        to_numpy = getattr(lp, "to_numpy", None)
        values = to_numpy() if to_numpy is not None else lp
        try:
            array = np.asarray(values, dtype=np.float64 if to_numpy is None else None)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("precomputed_forward", f"logprobs: {exc}", index=index) from None
        if array.dtype.kind != "f":
            raise InvalidInput("precomputed_forward", "logprobs are not floats", index=index)
        n_targets = int(np.prod(datum.loss_fn_inputs["target_tokens"].to_numpy().shape))
        if array.size != n_targets:
            raise InvalidInput(
                "precomputed_forward",
                f"has {array.size} logprobs for {n_targets} target tokens",
                index=index,
            )
        arrays.append(array)
    return arrays


def run_custom_loss(
    loss_fn: CustomLoss | TorchLoss[Any],
    data: Sequence[types.Datum],
    logprobs: Sequence[np.ndarray],
) -> CustomLossResult:
    """Call the user's loss on the logprobs and check what it returns."""
    if isinstance(loss_fn, TorchLoss):
        return _run_torch(loss_fn, data, logprobs)
    return _run_numpy(loss_fn, data, logprobs)


_TORCH_HINT = "; a torch loss returns (loss, metrics): wrap it as TorchLoss(loss_fn)"


def _run_numpy(
    loss_fn: CustomLoss, data: Sequence[types.Datum], logprobs: Sequence[np.ndarray]
) -> CustomLossResult:
    arrays = [lp.astype(np.float64) for lp in logprobs]
    result: Any = loss_fn(list(data), arrays)
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        raise InvalidInput("CustomLoss", "must return (loss, grads) or (loss, grads, metrics)")
    loss, grads = result[0], result[1]
    if _is_torch(loss) or isinstance(grads, Mapping):
        raise InvalidInput("CustomLoss", "returned a torch-style (loss, metrics)" + _TORCH_HINT)
    try:
        loss, grads = float(loss), list(grads)
    except (TypeError, ValueError) as exc:
        raise InvalidInput("CustomLoss", f"must return (a number, arrays): {exc}") from None
    if len(grads) != len(arrays):
        raise InvalidInput(
            "CustomLoss", f"returned {len(grads)} gradients for {len(arrays)} datums"
        )
    checked = []
    for index, (grad, lp) in enumerate(zip(grads, arrays, strict=True)):
        try:
            g = np.asarray(grad, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput("CustomLoss", f"gradient {index} is not an array: {exc}") from None
        if g.shape != lp.shape:
            raise InvalidInput(
                "CustomLoss", f"gradient {index} has shape {g.shape}, logprobs have {lp.shape}"
            )
        checked.append(g)
    metrics = _metrics(result[2] if len(result) == 3 else {})
    return CustomLossResult(loss, _finite(checked), metrics)


def _run_torch(
    loss_fn: TorchLoss[Any], data: Sequence[types.Datum], logprobs: Sequence[np.ndarray]
) -> CustomLossResult:
    try:
        import torch
    except ImportError:
        raise InvalidInput(
            "TorchLoss", "needs torch: pip install 'firetitan_async[torch]'"
        ) from None
    # The SDKs build each tensor as torch.tensor(list_of_floats): the default float dtype.
    dtype = torch.get_default_dtype()
    tensors = [torch.tensor(lp, dtype=dtype).requires_grad_(True) for lp in logprobs]
    result: Any = loss_fn(list(data), tensors)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise InvalidInput("TorchLoss", "must return (loss, metrics)")
    loss, metrics = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise InvalidInput("TorchLoss", "the loss must be a one-element torch tensor")
    if not loss.requires_grad:
        raise InvalidInput("TorchLoss", "the loss does not depend on the logprobs (no grad)")
    loss.backward()
    grads = []
    for tensor in tensors:
        grad = tensor.grad
        if grad is None:  # a datum the loss does not use: no gradient
            grads.append(np.zeros(tensor.shape, dtype=np.float32))
        else:
            grads.append(grad.detach().to(torch.float32).numpy())
    value = float(loss.detach().sum().item())
    return CustomLossResult(value, _finite(grads), _metrics(metrics))


def _is_torch(value: object) -> bool:
    return type(value).__module__.split(".", 1)[0] == "torch"


def _metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise InvalidInput("CustomLoss", "metrics must be a dict of numbers")
    out = {}
    for key, value in metrics.items():
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidInput("CustomLoss", f"metric {key!r} is not a number") from None
    return out


def _finite(grads: list[np.ndarray]) -> list[np.ndarray]:
    for index, g in enumerate(grads):
        if not np.all(np.isfinite(g)):
            raise InvalidInput("CustomLoss", f"gradient {index} is not finite")
    return grads


def custom_loss_metrics(
    server: Mapping[str, float],
    result: CustomLossResult,
    *,
    surrogate_under_loss_sum: bool,
) -> dict[str, float]:
    """The result's metrics, labelled as the dialect's SDK labels them.

    The Fireworks SDK keeps the trainer's surrogate loss under ``loss:sum`` and merges the
    loss's metrics over the trainer's; tinker puts the custom loss under ``loss:sum`` and the
    surrogate under ``surrogate_loss:sum``.
    """
    metrics = dict(server)
    if surrogate_under_loss_sum:
        metrics.update(result.metrics)
        return metrics
    surrogate = metrics.pop("loss:sum", 0.0)
    metrics.update(result.metrics)
    metrics["loss:sum"] = result.loss
    metrics["surrogate_loss:sum"] = surrogate
    return metrics


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
