"""forward_backward protobuf: our encoder/decoder vs the SDK's request_conv/response_conv."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from tinker import types
from tinker.proto import request_conv, response_conv
from tinker.proto import tinker_public_pb2 as pb

from firetitan_async.errors import InvalidInput, ProtocolError
from firetitan_async.wire.fwdbwd import (
    decode_forward_backward_output,
    encode_forward_backward_request,
)

RNG = np.random.default_rng(1234)


def _as_inputs(inputs: dict[str, Any]) -> dict[str, types.TensorData]:
    """Lists and arrays, which ``Datum`` converts at runtime (its hint says TensorData)."""
    return inputs


def _ce(n: int) -> types.Datum:
    tokens = RNG.integers(0, 50_000, n).tolist()
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens),
        loss_fn_inputs=_as_inputs(
            {
                "target_tokens": np.asarray([*tokens[1:], 0], dtype=np.int64),
                "weights": RNG.random(n, dtype=np.float32),
            }
        ),
    )


def _rl(n: int) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput(
            chunks=[
                types.EncodedTextChunk(tokens=list(range(n // 2))),
                types.EncodedTextChunk(tokens=list(range(n - n // 2))),
            ]
        ),
        loss_fn_inputs=_as_inputs(
            {
                "target_tokens": list(range(n)),  # plain list → int64 via the SDK's key defaults
                "logprobs": (-RNG.random(n)).tolist(),
                "advantages": RNG.standard_normal(n).astype(np.float32),
            }
        ),
    )


def _sparse() -> types.Datum:
    n = 4
    target = types.TensorData(
        data=np.array([5, 6, 7], dtype=np.int64),
        dtype="int64",
        shape=[n, 3],
        sparse_crow_indices=[0, 1, 1, 3, 3],
        sparse_col_indices=[0, 1, 2],
    )
    weights = types.TensorData(
        data=np.array([0.5, 1.0, 2.0], dtype=np.float32),
        dtype="float32",
        shape=[n, 3],
        sparse_crow_indices=[0, 1, 1, 3, 3],
        sparse_col_indices=[0, 1, 2],
    )
    return types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
        loss_fn_inputs=_as_inputs({"target_tokens": target, "weights": weights}),
    )


def _multimodal() -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput(
            chunks=[
                types.EncodedTextChunk(tokens=[1, 2]),
                types.ImageChunk(data=b"\x89PNG fake", format="png", expected_tokens=3),
                types.ImageChunk(data=b"\xff\xd8 jpeg", format="jpeg"),
                types.DmelChunk(dmel=b"\x01\x02\x03"),
                types.EncodedTextChunk(tokens=[]),
            ]
        ),
        loss_fn_inputs=_as_inputs(
            {
                "target_tokens": np.arange(6, dtype=np.int64),
                "weights": np.ones((2, 3), dtype=np.float32),  # a 2-D dense tensor
            }
        ),
    )


def _with_provenance() -> types.Datum:
    datum = _ce(5)
    return datum.with_provenance(
        model_input=[
            types.PromptProvenanceSpan(sequence_id="seq-a", offset=0, length=2),
            types.SampledProvenanceSpan(sequence_id="seq-b", offset=1, length=3),
        ],
        loss_fn_inputs=[types.SampledProvenanceSpan(sequence_id="seq-b", length=5)],
    )


BATCHES: dict[str, list[types.Datum]] = {
    "ce-dense": [_ce(n) for n in (1, 7, 64, 300)],
    "rl-two-chunks": [_rl(n) for n in (2, 9, 64)],
    "sparse-csr": [_sparse(), _ce(4)],
    "multimodal": [_multimodal()],
    "provenance": [_with_provenance(), _ce(3)],
}
CONFIGS: list[dict[str, Any] | None] = [
    None,
    {},
    {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    {"beta": 1, "mode": "token"},  # an int and a string
]


def _sdk_bytes(data: list[types.Datum], loss_fn: Any, config: Any, forward_only: bool) -> bytes:
    request = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(
            data=data, loss_fn=loss_fn, loss_fn_config=config
        ),
        model_id="sess:train:0",
        seq_id=17,
    )
    msg = request_conv.forward_backward_request_to_proto(request)
    msg.forward_only = forward_only  # what resources/training.py does
    out: bytes = msg.SerializeToString()
    return out


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("config", CONFIGS, ids=["none", "empty", "clip", "mixed"])
@pytest.mark.parametrize("forward_only", [False, True])
def test_encode_matches_sdk(batch: str, config: Any, forward_only: bool) -> None:
    data = BATCHES[batch]
    ours = encode_forward_backward_request(
        model_id="sess:train:0",
        seq_id=17,
        data=data,
        loss_fn="ppo",
        loss_fn_config=config,
        forward_only=forward_only,
    )
    ref = _sdk_bytes(data, "ppo", config, forward_only)
    assert pb.ForwardBackwardRequest.FromString(ours) == pb.ForwardBackwardRequest.FromString(ref)
    assert ours == ref


def test_encode_fields_round_trip() -> None:
    data = BATCHES["rl-two-chunks"]
    msg = pb.ForwardBackwardRequest.FromString(
        encode_forward_backward_request(
            model_id="m", seq_id=3, data=data, loss_fn="ppo",
            loss_fn_config={"clip_low_threshold": 0.8, "mode": "x"}, forward_only=True,
        )
    )  # fmt: skip
    assert (msg.model_id, msg.seq_id, msg.loss_fn, msg.forward_only) == ("m", 3, "ppo", True)
    assert dict(msg.loss_fn_config) == {"clip_low_threshold": pytest.approx(0.8)}
    assert msg.loss_fn_config_v2["mode"].text == "x"
    assert msg.loss_fn_config_v2["clip_low_threshold"].number == pytest.approx(0.8)
    first = msg.data[0]
    tokens = np.concatenate(
        [np.frombuffer(c.encoded_text.tokens, np.int32) for c in first.model_input]
    )
    assert tokens.tolist() == data[0].model_input.to_ints()
    adv = first.loss_fn_inputs["advantages"]
    assert adv.dtype == pb.DTYPE_FLOAT32 and list(adv.shape) == [2]
    sent = np.frombuffer(adv.dense, np.float32)
    assert np.array_equal(sent, data[0].loss_fn_inputs["advantages"].to_numpy())


def test_encode_rejects_what_the_wire_cannot_carry() -> None:
    pointer = types.Datum(
        model_input=types.ModelInput(
            chunks=[
                types.EncodedTextChunk(tokens=[1]),
                types.ImageAssetPointerChunk(format="png", location="s3://x/y.png"),
            ]
        ),
        loss_fn_inputs=_as_inputs({"target_tokens": [1], "weights": [1.0]}),
    )
    with pytest.raises(InvalidInput) as info:
        encode_forward_backward_request(
            model_id="m", seq_id=1, data=[_ce(2), pointer], loss_fn="cross_entropy",
            loss_fn_config=None, forward_only=False,
        )  # fmt: skip
    assert (info.value.index, info.value.field) == (1, "model_input.chunks[1]")
    huge = types.Datum(
        model_input=types.ModelInput.from_ints([2**31]),
        loss_fn_inputs=_as_inputs({"target_tokens": [1], "weights": [1.0]}),
    )
    with pytest.raises(InvalidInput) as info:
        encode_forward_backward_request(
            model_id="m", seq_id=1, data=[huge], loss_fn="cross_entropy",
            loss_fn_config=None, forward_only=False,
        )  # fmt: skip
    assert info.value.field == "model_input.chunks[0].tokens"


# -- decode ----------------------------------------------------------------------------------


def _record(out: Any, fields: dict[str, tuple[int, list[np.ndarray], list[int]]]) -> Any:
    """Add an ArrayRecord: name → (dtype enum, per-datum flat arrays, trailing shape)."""
    rec = out.loss_fn_outputs.add()
    for name, (dtype, arrays, trailing) in fields.items():
        bt = rec.fields[name]
        bt.dtype = dtype
        bt.trailing_shape.extend(trailing)
        bt.data = b"".join(a.tobytes() for a in arrays)
        bt.offsets = np.cumsum([0] + [a.nbytes for a in arrays]).astype(np.int64).tobytes()
        rec.num_datums = len(arrays)
    return rec


def _bf16(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _outputs() -> dict[str, bytes]:
    cases: dict[str, bytes] = {}
    out = pb.ForwardBackwardOutput(loss_fn_output_type="tinker.train:ArrayRecord")
    lens = [3, 0, 5]
    _record(
        out,
        {
            "logprobs": (pb.DTYPE_FLOAT32, [-RNG.random(n, dtype=np.float32) for n in lens], []),
            "loss": (pb.DTYPE_FLOAT32, [RNG.random(n, dtype=np.float32) for n in lens], []),
        },
    )  # fmt: skip
    out.metrics["loss:sum"] = 12.5
    out.metrics["ratio:mean"] = 0.9
    cases["single-record"] = out.SerializeToString()

    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    int32 = [np.arange(6, dtype=np.int32), np.arange(4, dtype=np.int32)]
    _record(out, {"topk": (pb.DTYPE_INT32, int32, [2])})
    _record(out, {"topk": (pb.DTYPE_INT64, [np.arange(9, dtype=np.int64)], [3])})
    _record(out, {"topk": (pb.DTYPE_BFLOAT16, [_bf16(np.array([1.5, -2.0, 0.25, 3.0]))], [4])})
    cases["ragged-widening"] = out.SerializeToString()

    out = pb.ForwardBackwardOutput()
    out.metrics["loss:sum"] = 1.0
    cases["no-outputs"] = out.SerializeToString()

    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    rec = out.loss_fn_outputs.add()
    rec.num_datums = 3  # fields stripped server-side, datum count still authoritative
    cases["num-datums-only"] = out.SerializeToString()

    out = pb.ForwardBackwardOutput(loss_fn_output_type="X")
    rec = _record(out, {"logprobs": (pb.DTYPE_FLOAT32, [np.ones(2, np.float32)] * 2, [])})
    rec.num_datums = 0  # an encoder predating num_datums
    cases["legacy-no-num-datums"] = out.SerializeToString()
    return cases


OUTPUTS = _outputs()


def _assert_same_output(a: types.ForwardBackwardOutput, b: types.ForwardBackwardOutput) -> None:
    assert a.loss_fn_output_type == b.loss_fn_output_type
    assert a.metrics == b.metrics
    assert len(a.loss_fn_outputs) == len(b.loss_fn_outputs)
    for da, db in zip(a.loss_fn_outputs, b.loss_fn_outputs, strict=True):
        assert da.keys() == db.keys()
        for key in da:
            ta, tb = da[key], db[key]
            assert (ta.dtype, ta.shape) == (tb.dtype, tb.shape)
            assert ta.to_numpy().dtype == tb.to_numpy().dtype
            assert np.array_equal(ta.to_numpy(), tb.to_numpy(), equal_nan=True)


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_decode_matches_sdk(case: str) -> None:
    payload = OUTPUTS[case]
    ours = decode_forward_backward_output(payload)
    _assert_same_output(ours, response_conv.deserialize_forward_backward_output(payload))


def test_decode_values() -> None:
    out = decode_forward_backward_output(OUTPUTS["ragged-widening"])
    assert [d["topk"].shape for d in out.loss_fn_outputs] == [[3, 2], [2, 2], [3, 3], [1, 4]]
    assert out.loss_fn_outputs[0]["topk"].to_numpy().dtype == np.int64
    bf = out.loss_fn_outputs[3]["topk"].to_numpy()
    assert bf.dtype == np.float32 and bf.tolist() == [[1.5, -2.0, 0.25, 3.0]]
    single = decode_forward_backward_output(OUTPUTS["single-record"])
    assert single.loss_fn_output_type == "ArrayRecord"
    assert single.metrics == {"loss:sum": 12.5, "ratio:mean": pytest.approx(0.9)}
    assert [d["logprobs"].shape for d in single.loss_fn_outputs] == [[3], [0], [5]]
    assert decode_forward_backward_output(OUTPUTS["num-datums-only"]).loss_fn_outputs == [{}] * 3


def _bad_offsets() -> bytes:
    out = pb.ForwardBackwardOutput()
    rec = out.loss_fn_outputs.add()
    rec.num_datums = 1
    bt = rec.fields["logprobs"]
    bt.dtype = pb.DTYPE_FLOAT32
    bt.data = np.ones(2, np.float32).tobytes()
    bt.offsets = np.array([0, 12], np.int64).tobytes()  # past the end of data
    payload: bytes = out.SerializeToString()
    return payload


def _count_mismatch() -> bytes:
    out = pb.ForwardBackwardOutput()
    _record(out, {"logprobs": (pb.DTYPE_FLOAT32, [np.ones(2, np.float32)], [])})
    out.loss_fn_outputs[0].num_datums = 2
    payload: bytes = out.SerializeToString()
    return payload


def _bad_dtype() -> bytes:
    out = pb.ForwardBackwardOutput()
    _record(out, {"logprobs": (pb.DTYPE_FLOAT32, [np.ones(2, np.float32)], [])})
    out.loss_fn_outputs[0].fields["logprobs"].dtype = pb.DTYPE_UNSPECIFIED
    payload: bytes = out.SerializeToString()
    return payload


def _bad_trailing() -> bytes:
    out = pb.ForwardBackwardOutput()
    _record(out, {"x": (pb.DTYPE_FLOAT32, [np.ones(5, np.float32)], [2])})
    payload: bytes = out.SerializeToString()
    return payload


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b'{"metrics": {}}', _bad_offsets(), _count_mismatch(), _bad_dtype(),
     _bad_trailing()],
    ids=["garbage", "json", "offsets", "count", "dtype", "trailing"],
)  # fmt: skip
def test_decode_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_forward_backward_output(payload)


# -- throughput -------------------------------------------------------------------------------


def test_encode_throughput_64_token_datums() -> None:
    data = [_ce(64) for _ in range(2000)]
    encode_forward_backward_request(
        model_id="m", seq_id=1, data=data[:10], loss_fn="cross_entropy", loss_fn_config=None,
        forward_only=False,
    )  # fmt: skip
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        encode_forward_backward_request(
            model_id="m", seq_id=1, data=data, loss_fn="cross_entropy", loss_fn_config=None,
            forward_only=False,
        )  # fmt: skip
        best = min(best, time.perf_counter() - start)
    rate = len(data) / best
    print(f"\nencode: {rate:,.0f} datums/s (64-token cross_entropy datums)")
    assert rate > 5_000
