"""Every private part of the tinker and Fireworks SDKs that firetitan_async reads, in one place.

When a tinker release moves one of these, this module is the one to fix (and the fidelity
tests say so first).

Example::

    from firetitan_async._sdk_private import APIFuture, tensor_array

    tensor_array(types.TensorData(data=[1, 2], dtype="int64", shape=[2]))   # array([1, 2])
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tinker.lib.public_interfaces.api_future import APIFuture
from tinker.lib.public_interfaces.custom_loss import check_loss_inputs as check_loss_inputs
from tinker.lib.public_interfaces.custom_loss import run_loss_handle as run_loss_handle
from tinker.lib.public_interfaces.custom_loss import trace_loss as trace_loss
from tinker.lib.public_interfaces.sampling_client import _load_tokenizer_from_model_info

__all__ = [
    "APIFuture",
    "check_loss_inputs",
    "fireworks_immediate_value",
    "fireworks_mapped_future",
    "load_tinker_tokenizer",
    "routing_matrices",
    "run_loss_handle",
    "tensor_array",
    "trace_loss",
]


def routing_matrices(model_input: Any) -> Any:
    """The ``routing_matrices`` a model input carries (router replay, R3), else ``None``.

    Read from the pydantic model's ``__dict__``: ``getattr`` on a plain tinker ``ModelInput``
    (the common case, no such field) goes through pydantic's ``__getattr__`` and an
    ``AttributeError``, about 1.5 µs per datum against 0.1 µs; validation and both size
    estimates ask once per datum on every ``forward_backward`` call.
    """
    return model_input.__dict__.get("routing_matrices")


def tensor_array(td: Any) -> np.ndarray:
    """The numpy array a ``TensorData`` (tinker's or the Fireworks SDK's) holds, uncopied.

    ``to_numpy()`` would do, but copies: the private ``_numpy`` is the array itself.
    """
    array: np.ndarray = td._numpy
    return array


def fireworks_mapped_future(obj: Any) -> tuple[Any, Any] | None:
    """``(inner future, transform)`` of a Fireworks SDK ``_MappedAPIFuture``, else ``None``."""
    if hasattr(obj, "_inner") and callable(getattr(obj, "_transform", None)):
        return obj._inner, obj._transform
    return None


def fireworks_immediate_value(obj: Any) -> tuple[bool, Any]:
    """``(True, value)`` of a Fireworks SDK ``_ImmediateAPIFuture``, else ``(False, None)``."""
    if hasattr(obj, "_value"):
        return True, obj._value
    return False, None


def load_tinker_tokenizer(model_name: str, tokenizer_id: str | None) -> Any:
    """The tinker SDK's tokenizer loader (blocking: imports ``transformers``, reads or
    downloads files): ``tokenizer_id`` if given, else tinker's rule for the model name.

    Example::

        load_tinker_tokenizer("Qwen/Qwen3-8B", None)   # AutoTokenizer.from_pretrained(...)
    """
    return _load_tokenizer_from_model_info(model_name, tokenizer_id)
