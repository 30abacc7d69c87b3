"""Server-side protobuf codec: ``ForwardBackwardRequest`` in, ``ForwardBackwardOutput`` and
``SampleResponse`` out (schema: ``tinker.proto.tinker_public_pb2``).

Decoding checks everything the wire can get wrong (undecodable bytes, image/dmel chunks, bad
tensor byte lengths or dtypes) and raises ``ApiError(400)`` naming the field and datum.

Example::

    sub = decode_forward_backward(body, content_encoding="zstd")
    sub.model_id, sub.seq_id, sub.loss_fn, sub.data[0].tokens
    encode_forward_backward_output([lp0, lp1], {"loss:sum": 1.5})   # -> bytes
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np
import zstandard
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tinker.proto import tinker_public_pb2 as pb

from ._http_errors import ApiError
from ._model import DatumArrays

__all__ = [
    "BadForwardBackwardData",
    "ForwardBackwardSubmission",
    "decode_forward_backward",
    "encode_forward_backward_output",
    "encode_sample_response",
]

_MAX_BODY = 512 * 1024 * 1024
_DTYPES: Mapping[int, np.dtype[np.generic]] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
    pb.DTYPE_INT32: np.dtype(np.int32),
}
_LITTLE_ENDIAN = {dtype: dtype.newbyteorder("<") for dtype in _DTYPES.values()}


class BadForwardBackwardData(ApiError):
    """The request names ``model_id`` and ``seq_id`` but its data cannot be decoded (the
    server still consumes that ``seq_id``)."""

    def __init__(self, status: int, detail: str, model_id: str, seq_id: int) -> None:
        super().__init__(status, detail)
        self.model_id = model_id
        self.seq_id = seq_id


@attrs.frozen(eq=False)
class ForwardBackwardSubmission:
    """A decoded ``forward_backward`` (or ``forward``) request."""

    model_id: str
    seq_id: int
    loss_fn: str
    loss_fn_config: dict[str, float | str | bool]
    forward_only: bool
    data: list[DatumArrays]


def decode_forward_backward(
    body: bytes, *, content_encoding: str | None = None
) -> ForwardBackwardSubmission:
    """Decode a protobuf ``ForwardBackwardRequest`` (optionally zstd-compressed)."""
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("zstd", "zstandard"):
        try:
            body = zstandard.ZstdDecompressor().decompressobj().decompress(body)
        except zstandard.ZstdError as exc:
            raise ApiError(400, f"body is not valid zstd: {exc}") from None
        if len(body) > _MAX_BODY:
            raise ApiError(413, "decompressed body is too large")
    elif encoding not in ("", "identity"):
        raise ApiError(415, f"unsupported Content-Encoding {content_encoding!r} (use zstd)")
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except DecodeError as exc:
        raise ApiError(
            400, f"body is not a protobuf ForwardBackwardRequest: {exc or 'decode error'}"
        ) from None
    if not msg.model_id:
        raise ApiError(400, "model_id is missing")
    config: dict[str, float | str | bool] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():
        which = value.WhichOneof("value")
        if which == "number":
            config[key] = float(value.number)
        elif which == "text":
            config[key] = str(value.text)
    try:
        data = [_decode_datum(d, i) for i, d in enumerate(msg.data)]
    except ApiError as exc:
        seq_id = int(msg.seq_id)
        raise BadForwardBackwardData(exc.status, exc.detail, msg.model_id, seq_id) from None
    return ForwardBackwardSubmission(
        model_id=msg.model_id,
        seq_id=int(msg.seq_id),
        loss_fn=msg.loss_fn,
        loss_fn_config=config,
        forward_only=bool(msg.forward_only),
        data=data,
    )


def _decode_datum(datum: pb.Datum, index: int) -> DatumArrays:
    parts: list[np.ndarray] = []
    for chunk in datum.model_input:
        which = chunk.WhichOneof("chunk")
        if which != "encoded_text":
            raise ApiError(
                400,
                f"data[{index}].model_input: {which or 'empty'} chunks are not supported by "
                "local/tiny-byte-lm (only encoded_text)",
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise ApiError(
                400, f"data[{index}].model_input: token bytes are not a multiple of 4 (int32)"
            )
        parts.append(np.frombuffer(raw, dtype="<i4").astype(np.int64))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    inputs = {
        name: _decode_tensor(tensor, f"data[{index}].loss_fn_inputs.{name}")
        for name, tensor in datum.loss_fn_inputs.items()
    }
    return DatumArrays(tokens=tokens, inputs=inputs)


def _decode_tensor(tensor: pb.Tensor, where: str) -> np.ndarray:
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise ApiError(400, f"{where}: unsupported dtype {pb.DType.Name(tensor.dtype)}")
    shape = [int(s) for s in tensor.shape]
    encoding = tensor.WhichOneof("encoding")
    if encoding == "sparse_csr":
        return _decode_csr(tensor.sparse_csr, dtype, shape, where)
    raw = tensor.dense if encoding == "dense" else b""
    if len(raw) % dtype.itemsize:
        raise ApiError(400, f"{where}: {len(raw)} bytes is not a whole number of {dtype}")
    arr = np.frombuffer(raw, dtype=_LITTLE_ENDIAN[dtype])
    if shape:
        if any(s < 0 for s in shape) or math.prod(shape) != arr.size:
            raise ApiError(400, f"{where}: shape {shape} does not match {arr.size} values")
        arr = arr.reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _decode_csr(
    csr: pb.SparseCsr, dtype: np.dtype[np.generic], shape: list[int], where: str
) -> np.ndarray:
    if len(shape) != 2 or any(s < 0 for s in shape):
        raise ApiError(400, f"{where}: a sparse CSR tensor needs a 2-D shape, got {shape}")
    for raw, size, what in (
        (csr.values, dtype.itemsize, "values"),
        (csr.crow_indices, 8, "crow_indices"),
        (csr.col_indices, 8, "col_indices"),
    ):
        if len(raw) % size:
            raise ApiError(400, f"{where}: sparse {what} has a partial element")
    values = np.frombuffer(csr.values, dtype=dtype.newbyteorder("<"))
    crow = np.frombuffer(csr.crow_indices, dtype="<i8")
    col = np.frombuffer(csr.col_indices, dtype="<i8")
    return dense_of_csr(values, crow, col, (shape[0], shape[1]), where)


def dense_of_csr(
    values: np.ndarray, crow: np.ndarray, col: np.ndarray, shape: tuple[int, int], where: str
) -> np.ndarray:
    """The dense ``shape`` array of a sparse CSR tensor (protobuf or JSON), its indices checked
    first (an ``ApiError`` 400 names ``where``).

    Example::

        dense_of_csr(np.array([5.0]), np.array([0, 1]), np.array([2]), (1, 3), "t")
        # array([[0., 0., 5.]])
    """
    rows, cols = shape
    if (
        crow.size != rows + 1
        or col.size != values.size
        or (crow.size and (crow[0] != 0 or crow[-1] != values.size or np.any(np.diff(crow) < 0)))
        or (col.size and (col.min() < 0 or col.max() >= cols))
    ):
        raise ApiError(400, f"{where}: inconsistent sparse CSR indices for shape {list(shape)}")
    dense = np.zeros((rows, cols), dtype=values.dtype.newbyteorder("="))
    dense[np.repeat(np.arange(rows), np.diff(crow)), col] = values
    return dense


def encode_forward_backward_output(
    logprobs: Sequence[np.ndarray] | None,
    metrics: Mapping[str, float],
    *,
    num_datums: int | None = None,
    name: str = "logprobs",
) -> bytes:
    """``ForwardBackwardOutput`` with one ``logprobs`` (float32, 1-D) field per datum (or
    another ``name``: an embedding request's ``embedding``); with ``logprobs=None``,
    ``num_datums`` records with no fields (the aggregate loss only)."""
    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    record = out.loss_fn_outputs.add()
    if logprobs is None:
        record.num_datums = int(num_datums or 0)
        for key, value in metrics.items():
            out.metrics[key] = float(value)
        return bytes(out.SerializeToString())
    record.num_datums = len(logprobs)
    field = record.fields[name]
    field.dtype = pb.DTYPE_FLOAT32
    arrays = [np.ascontiguousarray(lp, dtype="<f4") for lp in logprobs]
    field.data = b"".join(a.tobytes() for a in arrays)
    sizes = [0] + [a.nbytes for a in arrays]
    field.offsets = np.cumsum(sizes, dtype=np.int64).astype("<i8").tobytes()
    for key, value in metrics.items():
        out.metrics[key] = float(value)
    return bytes(out.SerializeToString())


def encode_sample_response(
    sequences: Sequence[tuple[np.ndarray, np.ndarray, str]],
    prompt_logprobs: np.ndarray | None = None,
    *,
    prompt_topk: tuple[np.ndarray, np.ndarray] | None = None,
    sequence_topk: Sequence[tuple[np.ndarray, np.ndarray] | None] | None = None,
) -> bytes:
    """``SampleResponse`` from ``(tokens, logprobs, stop_reason)`` triples; top-k logprobs
    (``(ids, logprobs)`` matrices of shape ``(n, k)``) of the prompt and of each sequence."""
    resp = pb.SampleResponse()
    for i, (tokens, lps, stop_reason) in enumerate(sequences):
        seq = resp.sequences.add()
        seq.stop_reason = pb.STOP_REASON_STOP if stop_reason == "stop" else pb.STOP_REASON_LENGTH
        seq.tokens = np.ascontiguousarray(tokens, dtype="<i4").tobytes()
        seq.logprobs = np.ascontiguousarray(lps, dtype="<f4").tobytes()
        topk = sequence_topk[i] if sequence_topk is not None else None
        if topk is not None:
            _fill_topk(seq.topk_sampled_logprobs, *topk)
    if prompt_logprobs is not None:
        resp.prompt_logprobs = np.ascontiguousarray(prompt_logprobs, dtype="<f4").tobytes()
    if prompt_topk is not None:
        _fill_topk(resp.topk_prompt_logprobs, *prompt_topk)
    return bytes(resp.SerializeToString())


def _fill_topk(msg: pb.TopkLogprobs, ids: np.ndarray, logprobs: np.ndarray) -> None:
    msg.length, msg.k = (int(n) for n in ids.shape)
    msg.token_ids = np.ascontiguousarray(ids, dtype="<i4").tobytes()
    msg.logprobs = np.ascontiguousarray(logprobs, dtype="<f4").tobytes()
