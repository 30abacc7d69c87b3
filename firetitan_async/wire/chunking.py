"""Splitting a large ``forward_backward`` batch into chunks, and merging the chunks' results.

The split rule is the tinker SDK 0.38's: a chunk is closed when it holds ``max_len`` datums,
or when the next datum would push its estimated protobuf size past ``max_bytes`` (a single
datum larger than ``max_bytes`` still gets a chunk of its own). The estimate counts 4 bytes
per token, the raw bytes of images and dmel chunks, the tensors' value bytes, and 8 bytes per
sparse index. The merge concatenates the per-datum outputs and reduces each metric by the
suffix after its ``:`` (``mean`` and ``slack`` weighted by each chunk's datum count, ``sum``,
``min``, ``max``, ``hash2``, ``unique``), as the SDK's ``combine_fwd_bwd_output_results``.

Example::

    chunks = split_batch(batch, max_len=512)
    outputs = [await run(chunk) for chunk in chunks]
    merged = merge_outputs(outputs)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
from tinker import types

from .._sdk_private import routing_matrices, tensor_array
from ..errors import InvalidInput, ProtocolError

__all__ = [
    "estimate_datum_bytes",
    "merge_outputs",
    "model_input_bytes",
    "plain_values",
    "split_batch",
]

logger = logging.getLogger(__name__)

_BYTES_PER_TOKEN = 4  # tokens travel as int32
_BYTES_PER_SPARSE_INDEX = 8  # CSR indices travel as int64
_MAX_BYTES_PER_VALUE = 10  # the most any SDK's estimate counts (see split_batch)
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_REDUCTIONS = frozenset({"mean", "sum", "min", "max", "slack", "hash2", "unique"})


def model_input_bytes(model_input: types.ModelInput, *, per_token: int) -> int:
    """A model input's size as both SDKs estimate it: the raw bytes of image, dmel and
    asset-pointer chunks, ``per_token`` bytes per token of any other chunk.

    Example::

        model_input_bytes(types.ModelInput.from_ints([1, 2, 3]), per_token=4)   # 12
    """
    total = 0
    for chunk in model_input.chunks:
        if type(chunk) is types.EncodedTextChunk:  # the common case first
            total += len(chunk.tokens) * per_token
        elif isinstance(chunk, types.ImageChunk):
            total += len(chunk.data)
        elif isinstance(chunk, types.DmelChunk):
            total += len(chunk.dmel)
        elif isinstance(chunk, types.ImageAssetPointerChunk):
            total += len(chunk.location)
        else:
            total += chunk.length * per_token
    return total


def estimate_datum_bytes(datum: types.Datum) -> int:
    """The SDK's estimate of a datum's size in the protobuf request.

    Example::

        estimate_datum_bytes(datum)  # 4 * tokens + value bytes of the loss_fn_inputs
    """
    total = model_input_bytes(datum.model_input, per_token=_BYTES_PER_TOKEN)
    for td in datum.loss_fn_inputs.values():
        total += tensor_array(td).nbytes
        if td.sparse_crow_indices is not None:
            total += _BYTES_PER_SPARSE_INDEX * len(td.sparse_crow_indices)
        if td.sparse_col_indices is not None:
            total += _BYTES_PER_SPARSE_INDEX * len(td.sparse_col_indices)
    return total


def plain_values(data: Sequence[types.Datum]) -> float:
    """The number of values (tokens and tensor values) of a batch of one-chunk token inputs
    and dense tensors without routing matrices; ``inf`` when a datum is not that plain.

    Example::

        plain_values([datum_of_40_tokens_with_2_inputs])   # 120
    """
    values = 0
    for datum in data:
        model_input = datum.model_input
        chunks = model_input.chunks
        if (
            len(chunks) != 1
            or type(chunk := chunks[0]) is not types.EncodedTextChunk
            or routing_matrices(model_input) is not None
        ):
            return math.inf
        values += len(chunk.tokens)
        for td in datum.loss_fn_inputs.values():
            if td.sparse_crow_indices is not None or td.sparse_col_indices is not None:
                return math.inf
            values += tensor_array(td).size
    return values


def split_batch(
    data: Sequence[types.Datum],
    *,
    max_len: int = 1024,
    max_bytes: int = 5_000_000,
    estimate: Callable[[types.Datum], int] | None = None,
    values: float | None = None,
) -> list[list[types.Datum]]:
    """Split ``data`` into consecutive chunks, by the SDK's rule (order is kept).

    ``max_len`` and ``max_bytes`` come from the server's ``client/config``
    (``fwdbwd_max_chunk_len``, ``fwdbwd_max_chunk_bytes_count``); ``estimate`` sizes a datum
    (default: :func:`estimate_datum_bytes`, the tinker SDK's); ``values``: the batch's
    :func:`plain_values` when already counted (validation counts them). An empty batch gives
    ``[]``.

    Example::

        [len(c) for c in split_batch(batch_of_2500, max_len=1024)]  # [1024, 1024, 452]
    """
    if max_len < 1:
        raise InvalidInput("max_len", f"must be >= 1, got {max_len!r}")
    if 0 < len(data) <= max_len:
        # A plain batch under max_bytes at 10 bytes a value is one chunk under any SDK's
        # estimate (tinker counts 4 a token and at most 8 a tensor value, Fireworks 10 and 10):
        # no datum is sized. ``values`` is what validation counted, else it is counted here.
        if values is None:
            values = plain_values(data)
        if values * _MAX_BYTES_PER_VALUE <= max_bytes:
            return [list(data)]
    chunks: list[list[types.Datum]] = []
    current: list[types.Datum] = []
    current_bytes = 0
    for datum in data:
        size = (estimate or estimate_datum_bytes)(datum)
        if current and (current_bytes + size > max_bytes or len(current) >= max_len):
            chunks.append(current)
            current = []
            current_bytes = 0
        current.append(datum)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


def merge_outputs(outputs: Sequence[types.ForwardBackwardOutput]) -> types.ForwardBackwardOutput:
    """Merge the results of a batch's chunks into one result, as the tinker SDK does.

    The outputs are concatenated in chunk order. A metric is kept when every chunk reports it
    and its reduction suffix is known (unknown suffixes are dropped, like the SDK); a ``unique``
    metric keeps every chunk's value as ``key``, ``key_1``, ``key_2``, … If no chunk has any
    output datum, ``mean`` and ``slack`` fall back to unweighted (where the SDK would divide by
    zero). Raises :class:`~firetitan_async.errors.ProtocolError` for a metric key that is
    not ``name:reduction``.

    Example::

        merged = merge_outputs([out_a, out_b])
        merged.metrics["loss:sum"] == out_a.metrics["loss:sum"] + out_b.metrics["loss:sum"]
    """
    if not outputs:
        return types.ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    weights = [len(o.loss_fn_outputs) for o in outputs]
    weighted = sum(weights) > 0
    metrics: dict[str, float] = {}
    for key in outputs[0].metrics:
        parts = key.split(":")
        if len(parts) != 2:
            raise ProtocolError(
                "ForwardBackwardOutput", f"metric key {key!r} is not of the form name:reduction"
            )
        reduction = parts[1]
        if reduction not in _REDUCTIONS:
            logger.debug("dropping metric %r: unknown reduction %r", key, reduction)
            continue
        if not all(key in o.metrics for o in outputs):
            continue
        values = [o.metrics[key] for o in outputs]
        if reduction == "mean":
            metrics[key] = _mean(values, weights if weighted else None)
        elif reduction == "slack":
            metrics[key] = float(np.max(values)) - _mean(values, weights if weighted else None)
        elif reduction == "sum":
            metrics[key] = np.sum(values).item()
        elif reduction == "min":
            metrics[key] = np.min(values).item()
        elif reduction == "max":
            metrics[key] = np.max(values).item()
        elif reduction == "hash2":
            metrics[key] = sum(int(v) & _MASK64 for v in values) & _MASK64
        else:  # unique
            metrics[key] = values[0]
            for i, value in enumerate(values[1:], start=1):
                metrics[f"{key}_{i}"] = value
    return types.ForwardBackwardOutput(
        loss_fn_output_type=outputs[0].loss_fn_output_type,
        loss_fn_outputs=[datum for o in outputs for datum in o.loss_fn_outputs],
        metrics=metrics,
    )


def _mean(values: Sequence[float], weights: Sequence[int] | None) -> float:
    if weights is None:
        return np.mean(values).item()
    return np.average(values, weights=weights).item()
