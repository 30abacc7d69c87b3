"""asample body vs the SDK's SampleRequest dump; SampleResponse decode vs response_conv."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tinker import types
from tinker.proto import response_conv
from tinker.proto import tinker_public_pb2 as pb

from firetitan_async.errors import ProtocolError
from firetitan_async.wire.sample import (
    decode_sample_response,
    prompt_logprobs_of,
    sample_request_body,
)

PROMPTS = {
    "ints": types.ModelInput.from_ints([1, 2, 3]),
    "chunks": types.ModelInput(
        chunks=[
            types.EncodedTextChunk(tokens=[5, 6]),
            types.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=4),
            types.ImageAssetPointerChunk(format="jpeg", location="https://x/y.jpg"),
        ]
    ),
}
PARAMS = {
    "default": types.SamplingParams(),
    "full": types.SamplingParams(max_tokens=16, seed=7, stop=["\n\n"], temperature=0.7,
                                 top_k=40, top_p=0.9),
    "stop-str": types.SamplingParams(max_tokens=1, stop="END"),
    "stop-ids": types.SamplingParams(max_tokens=4, stop=[0, 13]),
    "no-eos": types.SamplingParams(max_tokens=4, stop=[]),
}  # fmt: skip


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
@pytest.mark.parametrize("params", sorted(PARAMS))
@pytest.mark.parametrize(
    ("logprobs", "topk", "last_n"), [(False, 0, None), (True, 0, None), (True, 3, 2)]
)
def test_body_matches_sdk(
    prompt: str, params: str, logprobs: bool, topk: int, last_n: int | None
) -> None:
    ref = types.SampleRequest(
        sampling_session_id="sess:sample:0",
        seq_id=12,
        num_samples=3,
        prompt=PROMPTS[prompt],
        sampling_params=PARAMS[params],
        prompt_logprobs=logprobs,
        topk_prompt_logprobs=topk,
        topk_sample_logprobs=0,
        target_prompt_logprobs=None,
        prompt_alt_tokens_k=0,
        prompt_logprobs_last_n=last_n,
        record_stability_info=False,
    ).model_dump(exclude_none=True, mode="json")
    ours = sample_request_body(
        sampling_session_id="sess:sample:0",
        seq_id=12,
        prompt=PROMPTS[prompt],
        num_samples=3,
        sampling_params=PARAMS[params],
        include_prompt_logprobs=logprobs,
        topk_prompt_logprobs=topk,
        prompt_logprobs_last_n=last_n,
    )
    assert json.dumps(ours) == json.dumps(ref)


# -- decode ----------------------------------------------------------------------------------


def _topk(msg: Any, ids: np.ndarray, lps: np.ndarray) -> None:
    msg.length, msg.k = ids.shape
    msg.token_ids = ids.astype(np.int32).tobytes()
    msg.logprobs = lps.astype(np.float32).tobytes()


def _responses() -> dict[str, tuple[bytes, int]]:
    cases: dict[str, tuple[bytes, int]] = {}
    resp = pb.SampleResponse()
    stop, length = pb.STOP_REASON_STOP, pb.STOP_REASON_LENGTH
    for n, reason in ((3, length), (5, stop), (0, stop)):
        seq = resp.sequences.add()
        seq.stop_reason = reason
        seq.tokens = np.arange(n, dtype=np.int32).tobytes()
        seq.logprobs = (-np.linspace(0.1, 1, n, dtype=np.float32)).tobytes()
    resp.prompt_cache_hit_tokens = 2
    cases["ragged-sequences"] = (resp.SerializeToString(), 3)

    resp = pb.SampleResponse()
    seq = resp.sequences.add()
    seq.tokens = np.array([9], np.int32).tobytes()
    resp.prompt_logprobs = np.array([np.nan, -1.5, np.nan, -0.25], np.float32).tobytes()
    cases["prompt-logprobs-nan"] = (resp.SerializeToString(), 1)

    resp = pb.SampleResponse()
    seq = resp.sequences.add()
    seq.tokens = np.array([1, 2], np.int32).tobytes()
    seq.logprobs = np.array([-0.5, -0.7], np.float32).tobytes()
    m = -99999.0
    _topk(seq.topk_sampled_logprobs, np.array([[1, 4], [2, 0]]), np.array([[-0.5, -1], [-0.7, m]]))
    _topk(resp.topk_prompt_logprobs, np.array([[0, 0], [3, 1]]), np.array([[m, m], [-0.1, -2]]))
    resp.prompt_logprobs = np.array([np.nan, -0.1], np.float32).tobytes()
    cases["topk"] = (resp.SerializeToString(), 1)

    resp = pb.SampleResponse()
    resp.sequences.add().tokens = b""
    tpl = resp.target_prompt_logprobs
    tpl.dtype = pb.DTYPE_FLOAT32
    tpl.shape.extend([2, 2])
    tpl.dense = np.array([-1, 0, -2, -3], np.float32).tobytes()
    alt = resp.prompt_alt_tokens
    alt.tokens.dtype = pb.DTYPE_INT64
    alt.tokens.shape.extend([2, 3])
    alt.tokens.sparse_csr.values = np.array([4, 5, 6], np.int64).tobytes()
    alt.tokens.sparse_csr.crow_indices = np.array([0, 1, 3], np.int64).tobytes()
    alt.tokens.sparse_csr.col_indices = np.array([0, 1, 2], np.int64).tobytes()
    alt.logprobs.dtype = pb.DTYPE_FLOAT32
    alt.logprobs.shape.extend([2, 3])
    alt.logprobs.dense = np.zeros(6, np.float32).tobytes()
    cases["tensors"] = (resp.SerializeToString(), 1)

    cases["empty"] = (pb.SampleResponse().SerializeToString(), 0)
    return cases  # fmt: skip


RESPONSES = _responses()


def _td_equal(a: types.TensorData | None, b: types.TensorData | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.dtype, a.shape, a.sparse_crow_indices, a.sparse_col_indices) == (
        b.dtype,
        b.shape,
        b.sparse_crow_indices,
        b.sparse_col_indices,
    ) and np.array_equal(a._numpy, b._numpy)


@pytest.mark.parametrize("case", sorted(RESPONSES))
def test_decode_matches_sdk(case: str) -> None:
    payload, n = RESPONSES[case]
    ids = [f"seq-{i}" for i in range(n)]
    ours = decode_sample_response(payload, ids)
    ref = response_conv.deserialize_sample_response(payload)
    assert [s.sequence_id for s in ours.sequences] == ids
    assert len(ours.sequences) == len(ref.sequences)
    for a, b in zip(ours.sequences, ref.sequences, strict=True):
        assert a.stop_reason == b.stop_reason
        assert a.tokens == b.tokens and a.logprobs == b.logprobs
        assert a.tokens_np is not None and a.tokens_np.dtype == np.int32
        assert a.topk_logprobs == b.topk_logprobs
    assert ours.prompt_logprobs == ref.prompt_logprobs
    assert ours.topk_prompt_logprobs == ref.topk_prompt_logprobs
    assert ours.prompt_cache_hit_tokens == ref.prompt_cache_hit_tokens
    assert _td_equal(ours.target_prompt_logprobs, ref.target_prompt_logprobs)
    if ref.prompt_alt_tokens is None:
        assert ours.prompt_alt_tokens is None
    else:
        assert ours.prompt_alt_tokens is not None
        assert _td_equal(ours.prompt_alt_tokens.tokens, ref.prompt_alt_tokens.tokens)
        assert _td_equal(ours.prompt_alt_tokens.logprobs, ref.prompt_alt_tokens.logprobs)


def test_prompt_logprobs_nan_become_none() -> None:
    payload, _ = RESPONSES["prompt-logprobs-nan"]
    response = decode_sample_response(payload, ["only"])
    assert prompt_logprobs_of(response) == [None, -1.5, None, -0.25]


def test_prompt_logprobs_missing_is_a_protocol_error() -> None:
    payload, n = RESPONSES["ragged-sequences"]
    with pytest.raises(ProtocolError):
        prompt_logprobs_of(decode_sample_response(payload, [str(i) for i in range(n)]))


def test_sequence_ids_must_match_sequences() -> None:
    payload, _ = RESPONSES["ragged-sequences"]
    with pytest.raises(ProtocolError, match="3 sequences"):
        decode_sample_response(payload, ["a", "b"])
    with pytest.raises(ProtocolError):
        decode_sample_response(payload, ())


def _broken() -> dict[str, bytes]:
    out = {"garbage": b"\xff\xff\xff"}
    resp = pb.SampleResponse()
    resp.sequences.add().tokens = b"\x01\x02\x03"  # not a multiple of 4
    out["tokens"] = resp.SerializeToString()
    resp = pb.SampleResponse()
    seq = resp.sequences.add()
    seq.tokens = np.arange(3, dtype=np.int32).tobytes()
    seq.logprobs = np.zeros(2, np.float32).tobytes()
    out["logprob-count"] = resp.SerializeToString()
    resp = pb.SampleResponse()
    seq = resp.sequences.add()
    seq.stop_reason = 7
    out["stop-reason"] = resp.SerializeToString()
    resp = pb.SampleResponse()
    resp.sequences.add()
    resp.topk_prompt_logprobs.length, resp.topk_prompt_logprobs.k = 2, 2
    resp.topk_prompt_logprobs.token_ids = b"\x00" * 4
    out["topk-size"] = resp.SerializeToString()
    return out


@pytest.mark.parametrize("case", sorted(_broken()))
def test_decode_rejects_malformed(case: str) -> None:
    with pytest.raises(ProtocolError):
        decode_sample_response(_broken()[case], ["a"])
