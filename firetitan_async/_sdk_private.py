"""Every private part of the tinker SDK that firetitan_async reads, in one place.

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
from tinker.lib.public_interfaces.sampling_client import _load_tokenizer_from_model_info

__all__ = ["APIFuture", "load_tinker_tokenizer", "tensor_array"]


def tensor_array(td: Any) -> np.ndarray:
    """The numpy array a ``TensorData`` (tinker's or the Fireworks SDK's) holds, uncopied.

    ``to_numpy()`` would do, but copies: the private ``_numpy`` is the array itself.
    """
    array: np.ndarray = td._numpy
    return array


def load_tinker_tokenizer(model_name: str, tokenizer_id: str | None) -> Any:
    """The tinker SDK's tokenizer loader (blocking: imports ``transformers``, reads or
    downloads files): ``tokenizer_id`` if given, else tinker's rule for the model name.

    Example::

        load_tinker_tokenizer("Qwen/Qwen3-8B", None)   # AutoTokenizer.from_pretrained(...)
    """
    return _load_tokenizer_from_model_info(model_name, tokenizer_id)
