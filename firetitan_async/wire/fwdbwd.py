"""``forward`` / ``forward_backward`` on the wire: the protobuf request and the protobuf result.

The request is a ``tinker_public.ForwardBackwardRequest`` (tokens as int32 bytes, tensors as
raw float32/int64 bytes, dense or sparse CSR), sent to ``POST /api/v1/forward_backward`` with
``Content-Type: application/x-protobuf``. The result, fetched from ``retrieve_future``, is a
``tinker_public.ForwardBackwardOutput`` whose per-datum outputs are packed as batched tensors
with byte offsets. Both directions follow the tinker SDK 0.38 converters exactly; arrays move
with ``tobytes``/``frombuffer``, never element by element.

Example::

    body = encode_forward_backward_request(model_id="s:train:0", seq_id=1, data=batch,
                                           loss_fn="cross_entropy", loss_fn_config=None,
                                           forward_only=False)
    output = decode_forward_backward_output(done.payload)
    output.loss_fn_outputs[0]["logprobs"].to_numpy()
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.tensor_dtype import TensorDtype

from ..errors import InvalidInput, ProtocolError

__all__ = ["decode_forward_backward_output", "encode_forward_backward_request"]

_DTYPE_TO_PROTO: dict[str, Any] = {"float32": pb.DTYPE_FLOAT32, "int64": pb.DTYPE_INT64}
_DTYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "int64": np.dtype(np.int64),
}
# What each wire dtype is read as, and what it widens to (the public TensorDtype).
_PROTO_TO_NUMPY: dict[int, np.dtype[Any]] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
    pb.DTYPE_INT32: np.dtype(np.int32),
    pb.DTYPE_BFLOAT16: np.dtype(np.uint16),
}
_PROTO_TO_TENSOR_DTYPE: dict[int, TensorDtype] = {
    pb.DTYPE_FLOAT32: "float32",
    pb.DTYPE_BFLOAT16: "float32",
    pb.DTYPE_INT64: "int64",
    pb.DTYPE_INT32: "int64",
}
_INT64 = np.dtype(np.int64)
_INT32 = np.dtype(np.int32)


# -- request ---------------------------------------------------------------------------------


def encode_forward_backward_request(
    *,
    model_id: str,
    seq_id: int,
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    forward_only: bool,
) -> bytes:
    """Serialize one ``forward_backward`` (or, with ``forward_only``, ``forward``) chunk.

    ``loss_fn_config`` numbers are written to both the legacy ``loss_fn_config`` map and
    ``loss_fn_config_v2``; strings only to ``v2`` (as the SDK does). Raises
    :class:`InvalidInput` for an input the protocol cannot carry (an image-asset-pointer chunk,
    a tensor dtype other than float32/int64, a token id outside int32).

    Example::

        body = encode_forward_backward_request(
            model_id="s:train:0", seq_id=1, data=[datum], loss_fn="ppo",
            loss_fn_config={"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
            forward_only=False)
    """
    msg = pb.ForwardBackwardRequest()
    msg.model_id = model_id
    msg.seq_id = seq_id
    msg.loss_fn = loss_fn
    if loss_fn_config is not None:
        legacy = msg.loss_fn_config
        v2 = msg.loss_fn_config_v2
        for key, value in loss_fn_config.items():
            if isinstance(value, str):
                v2[key].text = value
            else:
                number = float(value)
                legacy[key] = number
                v2[key].number = number
    msg.forward_only = forward_only
    add_datum = msg.data.add
    for index, datum in enumerate(data):
        _write_datum(add_datum(), datum, index)
    body: bytes = msg.SerializeToString()
    return body


def _write_datum(out: Any, datum: types.Datum, index: int) -> None:
    add_chunk = out.model_input.add
    for j, chunk in enumerate(datum.model_input.chunks):
        _write_chunk(add_chunk(), chunk, index, j)
    inputs = out.loss_fn_inputs
    for name, td in datum.loss_fn_inputs.items():
        _write_tensor(inputs[name], td, name, index)
    if datum.model_input_spans is not None:
        add_span = out.model_input_spans.add
        for span in datum.model_input_spans:
            _write_span(add_span(), span)
    if datum.loss_fn_input_spans is not None:
        add_span = out.loss_fn_input_spans.add
        for span in datum.loss_fn_input_spans:
            _write_span(add_span(), span)


def _write_chunk(out: Any, chunk: types.ModelInputChunk, index: int, j: int) -> None:
    if isinstance(chunk, types.EncodedTextChunk):
        try:
            out.encoded_text.tokens = np.asarray(chunk.tokens, dtype=_INT32).tobytes()
        except (OverflowError, ValueError, TypeError) as exc:
            raise InvalidInput(
                f"model_input.chunks[{j}].tokens",
                f"not encodable as int32 token ids: {exc}",
                index=index,
            ) from None
    elif isinstance(chunk, types.ImageChunk):
        image = out.image
        image.data = chunk.data
        image.format = chunk.format
        if chunk.expected_tokens is not None:
            image.expected_tokens = chunk.expected_tokens
    elif isinstance(chunk, types.DmelChunk):
        out.dmel.dmel = chunk.dmel
    else:
        raise InvalidInput(
            f"model_input.chunks[{j}]",
            f"{type(chunk).__name__} cannot be sent in forward_backward "
            "(only encoded_text, image and dmel chunks can)",
            index=index,
        )


def _write_tensor(out: Any, td: types.TensorData, name: str, index: int) -> None:
    proto_dtype = _DTYPE_TO_PROTO.get(td.dtype)
    np_dtype = _DTYPE_TO_NUMPY.get(td.dtype)
    if proto_dtype is None or np_dtype is None:
        raise InvalidInput(
            f"loss_fn_inputs.{name}", f"dtype {td.dtype!r} is not float32 or int64", index=index
        )
    out.dtype = proto_dtype
    if td.shape is not None:
        out.shape.extend(td.shape)
    arr = td._numpy
    if arr.dtype != np_dtype:
        arr = arr.astype(np_dtype)
    if td.sparse_crow_indices is not None:
        if td.sparse_col_indices is None:
            raise InvalidInput(
                f"loss_fn_inputs.{name}",
                "sparse_col_indices is required with sparse_crow_indices",
                index=index,
            )
        csr = out.sparse_csr
        csr.values = arr.tobytes()
        csr.crow_indices = np.asarray(td.sparse_crow_indices, dtype=_INT64).tobytes()
        csr.col_indices = np.asarray(td.sparse_col_indices, dtype=_INT64).tobytes()
    else:
        out.dense = arr.tobytes()


def _write_span(out: Any, span: types.PromptProvenanceSpan | types.SampledProvenanceSpan) -> None:
    arm = out.sampled_tokens if isinstance(span, types.SampledProvenanceSpan) else out.prompt_tokens
    arm.length = span.length
    arm.sequence_id = span.sequence_id
    arm.offset = span.offset


# -- result ----------------------------------------------------------------------------------


def decode_forward_backward_output(payload: bytes) -> types.ForwardBackwardOutput:
    """Parse a protobuf ``ForwardBackwardOutput`` into :class:`tinker.types.ForwardBackwardOutput`.

    Ragged results arrive as several records and are concatenated; int32 values widen to
    int64 and bfloat16 to float32; each datum's shape is ``[n / prod(trailing), *trailing]``.
    Raises :class:`~firetitan_async.errors.ProtocolError` on a malformed payload.

    Example::

        out = decode_forward_backward_output(done.payload)
        out.metrics["loss:sum"], out.loss_fn_outputs[0]["logprobs"].to_numpy()
    """
    what = "ForwardBackwardOutput"
    proto = pb.ForwardBackwardOutput()
    try:
        proto.ParseFromString(payload)
    except DecodeError as exc:
        raise ProtocolError(what, f"not a protobuf ForwardBackwardOutput: {exc}") from None
    metrics = {key: float(value) for key, value in proto.metrics.items()}
    if not proto.loss_fn_outputs:
        return types.ForwardBackwardOutput(
            loss_fn_output_type=proto.loss_fn_output_type or "ArrayRecord",
            loss_fn_outputs=[],
            metrics=metrics,
        )
    outputs: list[dict[str, types.TensorData]] = []
    for r, record in enumerate(proto.loss_fn_outputs):
        outputs.extend(_decode_record(record, f"{what}.loss_fn_outputs[{r}]"))
    return types.ForwardBackwardOutput(
        loss_fn_output_type=proto.loss_fn_output_type.rsplit(":", 1)[-1],
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


def _decode_record(record: Any, what: str) -> list[dict[str, types.TensorData]]:
    columns: dict[str, list[types.TensorData]] = {}
    count = record.num_datums
    for name, bt in record.fields.items():
        column = _decode_batched_tensor(bt, f"{what}.fields[{name!r}]")
        if count == 0 and not columns:
            count = len(column)  # an encoder predating num_datums
        if len(column) != count:
            raise ProtocolError(
                what, f"field {name!r} has {len(column)} datums, the record says {count}"
            )
        columns[name] = column
    if not columns:
        return [{} for _ in range(count)]
    names = list(columns)
    return [dict(zip(names, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def _decode_batched_tensor(bt: Any, what: str) -> list[types.TensorData]:
    src = _PROTO_TO_NUMPY.get(bt.dtype)
    tensor_dtype = _PROTO_TO_TENSOR_DTYPE.get(bt.dtype)
    if src is None or tensor_dtype is None:
        raise ProtocolError(what, f"unsupported dtype enum {bt.dtype}")
    data = bt.data
    if len(data) % src.itemsize or len(bt.offsets) % 8:
        raise ProtocolError(what, "data or offsets length is not a multiple of the item size")
    offsets = np.frombuffer(bt.offsets, dtype=_INT64)
    if len(offsets) == 0:
        return []
    if (
        offsets[0] < 0
        or offsets[-1] > len(data)
        or np.any(np.diff(offsets) < 0)
        or np.any(offsets % src.itemsize)
    ):
        raise ProtocolError(what, "offsets are not ascending item-aligned byte positions")
    raw = np.frombuffer(data, dtype=src)
    # One writable array for the whole batch: the per-datum arrays are views into it.
    if bt.dtype == pb.DTYPE_BFLOAT16:
        buf = (raw.astype(np.uint32) << 16).view(np.float32)
    elif bt.dtype == pb.DTYPE_INT32:
        buf = raw.astype(np.int64)
    else:
        buf = raw.copy()
    trailing = [int(s) for s in bt.trailing_shape]
    if any(s < 0 for s in trailing):
        raise ProtocolError(what, f"negative trailing_shape {trailing}")
    inner = 1
    for s in trailing:
        inner *= s
    bounds = (offsets // src.itemsize).tolist()
    out: list[types.TensorData] = []
    for start, end in itertools.pairwise(bounds):
        arr = buf[start:end]
        leading = arr.size // inner if inner else 0
        if (arr.size % inner) if inner else arr.size:
            raise ProtocolError(
                what, f"a datum's {arr.size} values do not fit trailing_shape {trailing}"
            )
        out.append(types.TensorData(data=arr, dtype=tensor_dtype, shape=[leading, *trailing]))
    return out
