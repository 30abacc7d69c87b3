"""Server-side JSON codec of the Fireworks data plane: ``forward_backward`` / ``forward`` bodies
in, ``ForwardBackwardOutput`` JSON out, and ``Accept`` negotiation for future results.

The Fireworks SDK (1.2.30) posts training data as JSON::

    {"forward_backward_input": {"data": [Datum], "loss_fn": "...", "loss_fn_config": {...}},
     "model_id": "...", "seq_id": 3}

(``forward_input`` for ``POST /api/v1/forward``). A ``Datum`` is
``{"model_input": {"chunks": [{"type": "encoded_text", "tokens": [...]}]},
"loss_fn_inputs": {name: TensorData}}`` and a ``TensorData`` is
``{"data": [...], "dtype": "int64"|"float32", "shape": [...]?}``, optionally sparse CSR
(``sparse_crow_indices``/``sparse_col_indices`` with a 2-D ``shape``).

Example::

    head = decode_json_head(body, "forward_backward_input")   # model_id, seq_id
    sub = decode_json_input(body, head)                       # ApiError(400) names the field
    encode_forward_backward_json([lp], {"loss:sum": 1.5})     # bytes
    prefers_json("application/x-protobuf, application/json")  # False
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from ._http_errors import ApiError
from ._model import DatumArrays
from ._proto_codec import ForwardBackwardSubmission, dense_of_csr

__all__ = [
    "JsonHead",
    "decode_json_head",
    "decode_json_input",
    "encode_forward_backward_json",
    "encode_outputs_json",
    "prefers_json",
]

_DTYPES: Mapping[str, np.dtype[np.generic]] = {
    "float32": np.dtype(np.float32),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
}
_ROUTING_FIELDS = (
    "routing_matrices",
    "routing_references",
    "top_sampling_references",
    "sampling_mask_references",
)


@attrs.frozen
class JsonHead:
    """The addressing part of a JSON training body: checked before anything else."""

    model_id: str
    seq_id: int | None
    input_key: str


def decode_json_head(body: Mapping[str, Any], input_key: str) -> JsonHead:
    """``model_id`` and ``seq_id`` of a JSON ``forward_backward``/``forward`` body."""
    model_id = body.get("model_id")
    if not isinstance(model_id, str) or not model_id:
        raise ApiError(400, "model_id is required (a string)")
    seq_id = body.get("seq_id")
    if seq_id is not None and (isinstance(seq_id, bool) or not isinstance(seq_id, int)):
        raise ApiError(400, f"seq_id must be an integer, got {seq_id!r}")
    comms = body.get("comms")
    if comms is not None and comms not in ("v1", "v2"):
        raise ApiError(400, f"comms must be 'v1' or 'v2', got {comms!r}")
    return JsonHead(model_id=model_id, seq_id=seq_id, input_key=input_key)


def decode_json_input(body: Mapping[str, Any], head: JsonHead) -> ForwardBackwardSubmission:
    """The ``forward_backward_input``/``forward_input`` of ``body`` as a submission.

    Raises ``ApiError(400)`` naming the field (``forward_backward_input.data[2]...``).
    """
    key = head.input_key
    section = body.get(key)
    if not isinstance(section, Mapping):
        raise ApiError(400, f"{key} is required (an object with data, loss_fn, loss_fn_config)")
    unknown = sorted(set(section) - {"data", "loss_fn", "loss_fn_config", "type"})
    if unknown:
        raise ApiError(400, f"{key}: unknown fields {unknown}")
    loss_fn = section.get("loss_fn")
    if not isinstance(loss_fn, str) or not loss_fn:
        raise ApiError(400, f"{key}.loss_fn is required (a string)")
    config = _decode_config(section.get("loss_fn_config"), f"{key}.loss_fn_config")
    data = section.get("data")
    if not isinstance(data, list):
        raise ApiError(400, f"{key}.data must be a list of Datum objects")
    datums = [_decode_datum(d, f"{key}.data[{i}]") for i, d in enumerate(data)]
    return ForwardBackwardSubmission(
        model_id=head.model_id,
        seq_id=-1 if head.seq_id is None else head.seq_id,  # -1: none given (the next free)
        loss_fn=loss_fn,
        loss_fn_config=config,
        forward_only=key == "forward_input",
        data=datums,
    )


def _decode_config(value: object, where: str) -> dict[str, float | str | bool]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ApiError(400, f"{where} must be an object")
    out: dict[str, float | str | bool] = {}
    for k, v in value.items():
        if isinstance(v, bool | str):
            out[str(k)] = v
        elif isinstance(v, int | float) and math.isfinite(v):
            out[str(k)] = float(v)
        else:
            raise ApiError(400, f"{where}.{k} must be a finite number, a string or a bool")
    return out


def _decode_datum(datum: object, where: str) -> DatumArrays:
    if not isinstance(datum, Mapping):
        raise ApiError(400, f"{where} must be an object")
    model_input = datum.get("model_input")
    if not isinstance(model_input, Mapping):
        raise ApiError(400, f"{where}.model_input is required (an object with chunks)")
    for name in _ROUTING_FIELDS:
        if model_input.get(name):
            raise ApiError(
                400, f"{where}.model_input.{name}: routing replay is not supported by "
                "local/tiny-byte-lm (it has no experts)"
            )
    toks = model_input_tokens(model_input.get("chunks"), f"{where}.model_input")
    raw_inputs = datum.get("loss_fn_inputs", {})
    if not isinstance(raw_inputs, Mapping):
        raise ApiError(400, f"{where}.loss_fn_inputs must be an object")
    inputs = {
        str(name): _decode_tensor(t, f"{where}.loss_fn_inputs.{name}")
        for name, t in raw_inputs.items()
    }
    return DatumArrays(tokens=toks, inputs=inputs)


def _decode_tensor(tensor: object, where: str) -> np.ndarray:
    if not isinstance(tensor, Mapping):
        raise ApiError(400, f"{where} must be a TensorData object")
    dtype = _DTYPES.get(str(tensor.get("dtype")))
    if dtype is None:
        raise ApiError(
            400, f"{where}.dtype must be one of {sorted(_DTYPES)}, got {tensor.get('dtype')!r}"
        )
    data = tensor.get("data")
    if not isinstance(data, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in data
    ):
        raise ApiError(400, f"{where}.data must be a list of numbers")
    if dtype.kind in "iu" and not all(isinstance(x, int) for x in data):
        raise ApiError(400, f"{where}.data must be integers for dtype {dtype}")
    values = _array(data, dtype, f"{where}.data")
    shape = tensor.get("shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise ApiError(400, f"{where}.shape must be a list of non-negative integers")
    crow, col = tensor.get("sparse_crow_indices"), tensor.get("sparse_col_indices")
    if crow is not None or col is not None:
        return _decode_csr(values, crow, col, shape, where)
    if shape is None:
        return values
    if math.prod(shape) != values.size:
        raise ApiError(400, f"{where}: shape {shape} does not match {values.size} values")
    return values.reshape(shape)


def model_input_tokens(chunks: object, where: str) -> np.ndarray:
    """The token ids (int64) of a JSON ``ModelInput``'s ``chunks`` at ``where``: encoded
    text only, as the local model reads (an ``ApiError`` 400 naming the chunk otherwise).
    Training data and sampling prompts alike.

    Example::

        model_input_tokens([{"tokens": [1, 2], "type": "encoded_text"}], "prompt")  # [1, 2]
    """
    if not isinstance(chunks, list):
        raise ApiError(400, f"{where}.chunks must be a list")
    parts: list[np.ndarray] = []
    for j, chunk in enumerate(chunks):
        cwhere = f"{where}.chunks[{j}]"
        if not isinstance(chunk, Mapping):
            kind: object = type(chunk).__name__
        else:
            kind = chunk.get("type", "encoded_text")
        if kind != "encoded_text":
            raise ApiError(
                400, f"{cwhere}: {kind!r} chunks are not supported by the local model "
                "(only encoded_text)"
            )
        tokens = chunk.get("tokens")
        if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in tokens
        ):
            raise ApiError(400, f"{cwhere}.tokens must be a list of integers")
        parts.append(_array(tokens, np.dtype(np.int64), f"{cwhere}.tokens"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _array(values: list[Any], dtype: np.dtype[Any], where: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=dtype)
    except (OverflowError, ValueError):
        raise ApiError(400, f"{where}: a value does not fit {dtype}") from None


def _decode_csr(
    values: np.ndarray, crow_raw: object, col_raw: object, shape: list[int] | None, where: str
) -> np.ndarray:
    if shape is None or len(shape) != 2:
        raise ApiError(400, f"{where}: a sparse CSR tensor needs a 2-D shape, got {shape}")
    if not isinstance(crow_raw, list) or not isinstance(col_raw, list):
        raise ApiError(
            400, f"{where}: sparse_crow_indices and sparse_col_indices must be set together"
        )
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in [*crow_raw, *col_raw]):
        raise ApiError(400, f"{where}: sparse indices must be integers")
    crow = _array(crow_raw, np.dtype(np.int64), f"{where}.sparse_crow_indices")
    col = _array(col_raw, np.dtype(np.int64), f"{where}.sparse_col_indices")
    return dense_of_csr(values, crow, col, (shape[0], shape[1]), where)


def encode_forward_backward_json(
    logprobs: Sequence[np.ndarray] | None, metrics: Mapping[str, float], *, num_datums: int
) -> bytes:
    """``ForwardBackwardOutput`` as JSON: one ``{"logprobs": TensorData}`` per datum, or one
    empty object per datum when ``logprobs`` is ``None`` (aggregate loss only)."""
    if logprobs is None:
        outputs: list[dict[str, Any]] = [{} for _ in range(num_datums)]
    else:
        outputs = [
            {"logprobs": {"data": np.asarray(lp, dtype=np.float32).astype(np.float64).tolist(),
                          "dtype": "float32", "shape": [int(np.size(lp))]}}
            for lp in logprobs
        ]
    payload = {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": outputs,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    return json.dumps(payload).encode()


def encode_outputs_json(
    outputs: Sequence[Mapping[str, np.ndarray]], metrics: Mapping[str, float]
) -> bytes:
    """``ForwardBackwardOutput`` as JSON with named float32 outputs per datum (an embedding
    request's ``{"embedding": TensorData}``)."""
    payload = {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [
            {name: {"data": np.asarray(v, dtype=np.float32).astype(np.float64).tolist(),
                    "dtype": "float32", "shape": list(np.shape(v))}
             for name, v in out.items()}
            for out in outputs
        ],
        "metrics": {k: float(v) for k, v in metrics.items()},
    }
    return json.dumps(payload).encode()


def prefers_json(accept: str | None) -> bool:
    """Whether an ``Accept`` header prefers ``application/json`` over protobuf.

    Highest ``q`` wins; on a tie the earlier listed type wins. No header, or neither type
    named, keeps the operation's native form (``False``).
    """
    if not accept:
        return False
    best: dict[str, tuple[float, int]] = {}
    for pos, item in enumerate(accept.split(",")):
        fields = [f.strip() for f in item.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            if param.lower().startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media in ("application/json", "application/x-protobuf") and media not in best:
            best[media] = (q, -pos)
    js, pb = best.get("application/json"), best.get("application/x-protobuf")
    if js is None or js[0] <= 0:
        return False
    return pb is None or pb[0] <= 0 or js > pb
