"""The Fireworks SDK's own value types, accepted wherever ``tinker.types`` values are.

A user moving a loop over from ``fireworks.training.sdk`` passes the ``Datum``,
``ModelInput``, ``TensorData`` and ``AdamParams`` it already builds; they are converted here,
at the edge, into the ``tinker.types`` the wire codec reads. ``fireworks-ai`` is not a
dependency: a value is recognised by its module, and nothing is imported from it.

Example::

    from fireworks.training.sdk import types as ft
    datum = ft.Datum(model_input=ft.ModelInput.from_ints([1, 2]),
                     loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})
    client.forward_backward([datum], "cross_entropy")      # converted by to_tinker_data
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinker import types

from .._sdk_private import tensor_array
from ..errors import InvalidInput

__all__ = [
    "RoutedModelInput",
    "is_fireworks_value",
    "to_tinker_adam",
    "to_tinker_data",
    "to_tinker_model_input",
    "to_tinker_sampling_params",
]

_FIREWORKS_MODULE = "fireworks.training.sdk"


def is_fireworks_value(obj: object) -> bool:
    """Whether ``obj`` is one of the Fireworks SDK's types.

    Example::

        is_fireworks_value(ft.AdamParams(learning_rate=1e-4))   # True
    """
    return type(obj).__module__.startswith(_FIREWORKS_MODULE)


def _tensor(td: Any, field: str, index: int) -> types.TensorData:
    if isinstance(td, types.TensorData):
        return td
    if not is_fireworks_value(td):
        return td  # type: ignore[no-any-return]  # a list or array: tinker's Datum converts it
    try:
        return types.TensorData(
            data=tensor_array(td),
            dtype=td.dtype,
            shape=td.shape,
            sparse_crow_indices=td.sparse_crow_indices,
            sparse_col_indices=td.sparse_col_indices,
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInput(
            field, f"cannot convert the Fireworks TensorData: {exc}", index=index
        ) from None


def to_tinker_model_input(model_input: Any, index: int | None = None) -> types.ModelInput:
    """A Fireworks ``ModelInput`` as a tinker one (encoded text and inline images).

    Example::

        to_tinker_model_input(ft.ModelInput.from_ints([1, 2])).to_ints()   # [1, 2]
    """
    if isinstance(model_input, types.ModelInput) or not is_fireworks_value(model_input):
        return model_input  # type: ignore[no-any-return]
    chunks: list[Any] = []
    for chunk in model_input.chunks:
        kind = getattr(chunk, "type", None)
        if kind == "encoded_text":
            chunks.append(types.EncodedTextChunk(tokens=list(chunk.tokens)))
        elif kind == "image":
            chunks.append(types.ImageChunk.model_validate(chunk.model_dump()))
        else:
            raise InvalidInput(
                "model_input.chunks",
                f"a Fireworks {type(chunk).__name__} cannot be converted (encoded text and "
                "inline images only)",
                index=index,
            )
    for extra in ("routing_references", "top_sampling_references", "sampling_mask_references"):
        if getattr(model_input, extra, None) is not None:
            raise InvalidInput(f"model_input.{extra}", "is not supported yet", index=index)
    routing = getattr(model_input, "routing_matrices", None)
    if routing is not None:  # checked with the batch (wire/validation.py)
        return RoutedModelInput(chunks=chunks, routing_matrices=list(routing))
    return types.ModelInput(chunks=chunks)


class RoutedModelInput(types.ModelInput):
    """A tinker ``ModelInput`` carrying the Fireworks SDK's ``routing_matrices`` (router
    replay, R3: one base64 routing matrix per input token), sent in the fireworks dialect's
    ``model_input`` as the SDK sends it. Made from the SDK's ``ModelInput`` at the edge.

    Example::

        to_tinker_model_input(ft.ModelInput.from_ints([1, 2], routing_matrices=["AA", "AQ"]))
        # RoutedModelInput(chunks=[...], routing_matrices=["AA", "AQ"])
    """

    routing_matrices: list[Any]


_TINKER_INPUTS = (types.ModelInput, RoutedModelInput)


def to_tinker_data(data: Sequence[Any]) -> list[types.Datum]:
    """A batch with any Fireworks ``Datum`` converted to ``tinker.types.Datum`` (others kept).

    Example::

        to_tinker_data([ft_datum, tinker_datum])   # two tinker Datums
    """
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        return data  # type: ignore[return-value]  # the validator names the problem
    out: list[types.Datum] = []
    for index, datum in enumerate(data):
        if type(datum) is types.Datum and type(datum.model_input) in _TINKER_INPUTS:
            out.append(datum)  # the common case, two type checks (a third of the general one)
            continue
        if not is_fireworks_value(datum):
            model_input = getattr(datum, "model_input", None)
            if isinstance(datum, types.Datum) and is_fireworks_value(model_input):
                # tinker's Datum keeps a Fireworks ModelInput as it is: convert that part
                datum = types.Datum(
                    model_input=to_tinker_model_input(model_input, index),
                    loss_fn_inputs=datum.loss_fn_inputs,
                )
            out.append(datum)
            continue
        out.append(
            types.Datum(
                model_input=to_tinker_model_input(datum.model_input, index),
                loss_fn_inputs={
                    name: _tensor(td, f"loss_fn_inputs.{name}", index)
                    for name, td in datum.loss_fn_inputs.items()
                },
            )
        )
    return out


def to_tinker_adam(params: Any) -> types.AdamParams:
    """A Fireworks ``AdamParams`` as tinker's (``emit_grad_norm_metrics`` is read apart).

    Example::

        to_tinker_adam(ft.AdamParams(learning_rate=1e-4)).learning_rate   # 0.0001
    """
    if not is_fireworks_value(params):
        return params  # type: ignore[no-any-return]
    fields = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")
    return types.AdamParams(**{f: getattr(params, f) for f in fields})


def to_tinker_sampling_params(params: Any) -> types.SamplingParams:
    """A Fireworks ``SamplingParams`` as tinker's (the same six fields).

    Example::

        to_tinker_sampling_params(ft.SamplingParams(max_tokens=8)).max_tokens   # 8
    """
    if not is_fireworks_value(params):
        return params  # type: ignore[no-any-return]
    return types.SamplingParams.model_validate(params.model_dump())
