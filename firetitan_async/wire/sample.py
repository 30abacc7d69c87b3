"""Sampling on the wire: the ``asample`` JSON body and the protobuf ``SampleResponse``.

``POST /api/v1/asample`` takes a JSON ``SampleRequest`` addressed to a sampling session and a
``seq_id``; its future (which carries one ``sample_sequence_id`` per sample) resolves to a
protobuf ``tinker_public.SampleResponse``. The sequence ids are not in the protobuf: the client
stamps them from the submission reply, in order. Mirrors the tinker SDK 0.38.

Example::

    body = sample_request_body(sampling_session_id="s:sample:0", seq_id=0, prompt=prompt,
                               num_samples=2, sampling_params=types.SamplingParams(max_tokens=8))
    response = decode_sample_response(done.payload, accepted.sample_sequence_ids or ())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]
from tinker import types
from tinker.proto import tinker_public_pb2 as pb
from tinker.types.topk_logprobs import TopkLogprobs

from ..errors import ProtocolError
from .fwdbwd import _PROTO_TO_NUMPY, _PROTO_TO_TENSOR_DTYPE  # one dtype table

__all__ = ["decode_sample_response", "prompt_logprobs_of", "sample_request_body"]

_STOP_REASON: dict[int, Any] = {pb.STOP_REASON_STOP: "stop", pb.STOP_REASON_LENGTH: "length"}
_WHAT = "SampleResponse"


def sample_request_body(
    *,
    sampling_session_id: str,
    seq_id: int,
    prompt: types.ModelInput,
    num_samples: int,
    sampling_params: types.SamplingParams,
    include_prompt_logprobs: bool = False,
    topk_prompt_logprobs: int = 0,
    topk_sample_logprobs: int = 0,
    prompt_logprobs_last_n: int | None = None,
    record_stability_info: bool = False,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/asample``, equal to the SDK's ``SampleRequest`` dump.

    Example::

        sample_request_body(sampling_session_id="s:sample:0", seq_id=3,
                            prompt=types.ModelInput.from_ints([1, 2, 3]), num_samples=1,
                            sampling_params=types.SamplingParams(max_tokens=1),
                            include_prompt_logprobs=True)
    """
    body: dict[str, Any] = {
        "num_samples": num_samples,
        "prompt": prompt.model_dump(exclude_none=True, mode="json"),
        "sampling_params": sampling_params.model_dump(exclude_none=True, mode="json"),
        "sampling_session_id": sampling_session_id,
        "seq_id": seq_id,
        "prompt_logprobs": include_prompt_logprobs,
        "topk_prompt_logprobs": topk_prompt_logprobs,
        "topk_sample_logprobs": topk_sample_logprobs,
        "prompt_alt_tokens_k": 0,
    }
    if prompt_logprobs_last_n is not None:
        body["prompt_logprobs_last_n"] = prompt_logprobs_last_n
    body["record_stability_info"] = record_stability_info
    body["type"] = "sample"
    return body


def decode_sample_response(payload: bytes, sequence_ids: Sequence[str]) -> types.SampleResponse:
    """Parse a protobuf ``SampleResponse`` and stamp ``sequence_ids`` (the submission's
    ``sample_sequence_ids``) onto its sequences, in order.

    Tokens come back as int32 arrays, logprobs as float32; prompt logprobs keep ``NaN`` where
    there is no value (``response.prompt_logprobs`` shows those as ``None``). Raises
    :class:`~firetitan_async.errors.ProtocolError` on a malformed payload or when the
    number of ids differs from the number of sequences.

    Example::

        response = decode_sample_response(done.payload, ("seq-a", "seq-b"))
        response.sequences[0].sequence_id  # "seq-a"
    """
    proto = pb.SampleResponse()
    try:
        proto.ParseFromString(payload)
    except DecodeError as exc:
        raise ProtocolError(_WHAT, f"not a protobuf SampleResponse: {exc}") from None
    if len(sequence_ids) != len(proto.sequences):
        raise ProtocolError(
            _WHAT,
            f"{len(proto.sequences)} sequences but the submission gave "
            f"{len(sequence_ids)} sample_sequence_ids",
        )
    sequences = []
    for i, (seq, sequence_id) in enumerate(zip(proto.sequences, sequence_ids, strict=True)):
        stop_reason = _STOP_REASON.get(seq.stop_reason)
        if stop_reason is None:
            raise ProtocolError(_WHAT, f"sequences[{i}]: unknown stop_reason {seq.stop_reason}")
        tokens = _array(seq.tokens, np.int32, f"sequences[{i}].tokens")
        logprobs = (
            _array(seq.logprobs, np.float32, f"sequences[{i}].logprobs") if seq.logprobs else None
        )
        if logprobs is not None and len(logprobs) != len(tokens):
            raise ProtocolError(
                _WHAT, f"sequences[{i}]: {len(tokens)} tokens but {len(logprobs)} logprobs"
            )
        topk = (
            _topk(seq.topk_sampled_logprobs, f"sequences[{i}].topk_sampled_logprobs")
            if seq.HasField("topk_sampled_logprobs")
            else None
        )
        sequences.append(
            types.SampledSequence(
                stop_reason=stop_reason,
                sequence_id=sequence_id,
                tokens_np=tokens,
                logprobs_np=logprobs,
                topk_logprobs_np=topk,
            )
        )
    prompt_logprobs = (
        _array(proto.prompt_logprobs, np.float32, "prompt_logprobs")
        if proto.prompt_logprobs
        else None
    )
    return types.SampleResponse(
        sequences=sequences,
        prompt_logprobs_np=prompt_logprobs,
        topk_prompt_logprobs_np=(
            _topk(proto.topk_prompt_logprobs, "topk_prompt_logprobs")
            if proto.HasField("topk_prompt_logprobs")
            else None
        ),
        target_prompt_logprobs=(
            _tensor(proto.target_prompt_logprobs, "target_prompt_logprobs")
            if proto.HasField("target_prompt_logprobs")
            else None
        ),
        prompt_alt_tokens=(
            types.PromptAltTokens(
                tokens=_tensor(proto.prompt_alt_tokens.tokens, "prompt_alt_tokens.tokens"),
                logprobs=_tensor(proto.prompt_alt_tokens.logprobs, "prompt_alt_tokens.logprobs"),
            )
            if proto.HasField("prompt_alt_tokens")
            else None
        ),
        prompt_cache_hit_tokens=proto.prompt_cache_hit_tokens,
    )


def prompt_logprobs_of(response: types.SampleResponse) -> list[float | None]:
    """The prompt's per-token logprobs (``None`` where there is none, e.g. the first token),
    i.e. what ``compute_logprobs`` returns.

    Raises :class:`~firetitan_async.errors.ProtocolError` if the server sent none.

    Example::

        prompt_logprobs_of(response)  # [None, -1.2, -0.4]
    """
    values = response.prompt_logprobs
    if values is None:
        raise ProtocolError(_WHAT, "prompt logprobs were requested but the reply has none")
    return list(values)


def _array(data: bytes, dtype: type[np.generic], what: str) -> np.ndarray[Any, Any]:
    itemsize = np.dtype(dtype).itemsize
    if len(data) % itemsize:
        raise ProtocolError(_WHAT, f"{what}: {len(data)} bytes is not a multiple of {itemsize}")
    return np.frombuffer(data, dtype=dtype).copy()


def _topk(msg: Any, what: str) -> TopkLogprobs | None:
    n, k = int(msg.length), int(msg.k)
    if n == 0 or k == 0:
        return None
    if len(msg.token_ids) != 4 * n * k or len(msg.logprobs) != 4 * n * k:
        raise ProtocolError(_WHAT, f"{what}: buffers do not hold {n}x{k} entries")
    return TopkLogprobs(
        token_ids=np.frombuffer(msg.token_ids, dtype=np.int32).reshape(n, k).copy(),
        logprobs=np.frombuffer(msg.logprobs, dtype=np.float32).reshape(n, k).copy(),
    )


def _tensor(msg: Any, what: str) -> types.TensorData:
    np_dtype = _PROTO_TO_NUMPY.get(msg.dtype)
    dtype = _PROTO_TO_TENSOR_DTYPE.get(msg.dtype)
    if np_dtype is None or dtype is None:
        raise ProtocolError(_WHAT, f"{what}: unsupported dtype enum {msg.dtype}")
    shape = [int(s) for s in msg.shape]
    try:
        if msg.HasField("sparse_csr"):
            csr = msg.sparse_csr
            return types.TensorData(
                data=_values(csr.values, msg.dtype, np_dtype, what),
                dtype=dtype,
                shape=shape,
                sparse_crow_indices=_array(csr.crow_indices, np.int64, what).tolist(),
                sparse_col_indices=_array(csr.col_indices, np.int64, what).tolist(),
            )
        values = _values(msg.dense, msg.dtype, np_dtype, what)
        return types.TensorData(data=values, dtype=dtype, shape=shape)
    except ValueError as exc:  # a dense buffer that does not fit its shape
        raise ProtocolError(_WHAT, f"{what}: {exc}") from None


def _values(
    data: bytes, proto_dtype: int, np_dtype: np.dtype[Any], what: str
) -> np.ndarray[Any, Any]:
    """Read a tensor's values, widening bfloat16 (bit-exactly) to float32."""
    arr = _array(data, np_dtype.type, what)
    if proto_dtype == pb.DTYPE_BFLOAT16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr
