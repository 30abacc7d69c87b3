"""tinker 0.38's traced custom losses: ``create_custom_loss`` makes a ``LossHandle``,
``forward_backward_custom`` runs it.

The tracing and its rules (``torch.fx``; torch and math only; metrics keyed
``custom/<name>:sum|mean``) are the tinker SDK's own functions, not a copy: a loss the SDK
refuses, we refuse with the same reason. A handle runs client-side, as the SDK runs it against
a server whose ``client/config`` does not set ``custom_loss_server_side`` (the local trainer):
per-datum losses summed, gradients by torch autograd, trained through the ``cross_entropy``
surrogate of :mod:`._custom_loss`. Where a server offers to run uploaded losses, we still run
them client-side: the same loss and gradients, one extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tinker import LossHandle, types

from .._sdk_private import check_loss_inputs, run_loss_handle, trace_loss
from ..errors import FiretitanError, InvalidInput
from ._custom_loss import CustomLoss

__all__ = ["LossHandle", "LossHandles", "handle_as_custom_loss"]


class LossHandles:
    """The custom losses one session created, each once (as the SDK keeps them).

    Example::

        handles = LossHandles()
        handle = handles.create(neg_ll, {"logprobs": 1, "weights": 1}, session_id="s")
    """

    def __init__(self) -> None:
        self._by_key: dict[str, LossHandle] = {}

    def create(
        self,
        fn: Callable[..., Any],
        input_ranks: Mapping[str, int],
        *,
        session_id: str,
    ) -> LossHandle:
        """Trace ``fn`` into a handle of ``session_id``; a refused function raises
        ``InvalidInput`` naming ``fn`` (or ``input_ranks``) with the SDK's reason."""
        if not callable(fn):
            raise InvalidInput("fn", f"must be a function, got {type(fn).__name__}")
        if not isinstance(input_ranks, Mapping) or not all(
            isinstance(r, int) and not isinstance(r, bool) and r in (0, 1, 2)
            for r in input_ranks.values()
        ):
            raise InvalidInput("input_ranks", "must map each parameter name to a rank 0, 1 or 2")
        try:
            handle = trace_loss(fn, input_ranks, session_id)  # type: ignore[arg-type]
        except ImportError:
            raise FiretitanError(
                "create_custom_loss needs torch (install firetitan_async[torch])"
            ) from None
        except ValueError as exc:
            field = "input_ranks" if "input_ranks" in str(exc) else "fn"
            raise InvalidInput(field, str(exc).removeprefix("create_custom_loss: ")) from None
        earlier = self._by_key.get(handle.key)
        if earlier is not None:
            raise InvalidInput(
                "fn",
                f"this session already created {earlier.name!r} with the same traced loss; "
                "reuse its LossHandle",
            )
        self._by_key[handle.key] = handle
        return handle


def handle_as_custom_loss(
    handle: LossHandle,
    data: list[types.Datum],
    *,
    session_id: str,
    metrics: dict[str, float],
) -> CustomLoss:
    """``handle`` as a :data:`CustomLoss` for these ``data``, checked first (its session, and
    each datum has the inputs it reads at their ranks: ``InvalidInput``). The loss's metrics
    land in ``metrics`` when it runs.

    Example::

        metrics: dict[str, float] = {}
        loss_fn = handle_as_custom_loss(handle, batch, session_id=session.session_id,
                                        metrics=metrics)
    """
    if handle.session_id != session_id:
        raise InvalidInput(
            "loss_fn",
            f"LossHandle {handle.name!r} was created in another session; it only works with "
            "the clients of the session that created it",
        )
    try:
        check_loss_inputs(handle, data)
    except ValueError as exc:
        raise InvalidInput("data", str(exc)) from None

    def loss_fn(
        batch: list[types.Datum], logprobs: list[np.ndarray]
    ) -> tuple[float, list[np.ndarray]]:
        import torch

        # float32, as the SDK builds them from the forward pass's logprobs
        tensors = [
            torch.tensor(lp, dtype=torch.float32).requires_grad_(True) for lp in logprobs
        ]
        loss: Any  # a torch tensor (typed loosely: torch's stubs are not analysed everywhere)
        loss, values = run_loss_handle(handle, batch, tensors)
        loss.backward()
        grads = []
        for t in tensors:
            if t.grad is None:
                raise InvalidInput("loss_fn", f"loss {handle.name!r} does not use its logprobs")
            grads.append(t.grad.numpy())
        metrics.update(values)
        return float(loss.detach().item()), grads

    return loss_fn
