"""Batch split and chunk-result merge vs the SDK's own rules (training_client and
lib/chunked_fwdbwd_helpers.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tinker import types
from tinker.lib.chunked_fwdbwd_helpers import combine_fwd_bwd_output_results
from tinker.lib.public_interfaces.training_client import (
    TrainingClient,
    _estimate_datum_bytes_count_proto,
)

from firetitan_async.errors import ProtocolError
from firetitan_async.wire.chunking import (
    estimate_datum_bytes,
    merge_outputs,
    plain_values,
    split_batch,
)
from firetitan_async.wire.fireworks import estimate_datum_bytes as fw_estimate
from firetitan_async.wire.validation import validate_forward_backward

RNG = np.random.default_rng(7)


def _datum(n: int, *, sparse: bool = False, image: int = 0) -> types.Datum:
    chunks: list[types.ModelInputChunk] = [types.EncodedTextChunk(tokens=list(range(n)))]
    if image:
        chunks.append(types.ImageChunk(data=b"x" * image, format="png", expected_tokens=2))
        chunks.append(types.ImageAssetPointerChunk(format="png", location="s3://bucket/i.png"))
        chunks.append(types.DmelChunk(dmel=b"d" * 10))
    inputs: dict[str, types.TensorData | np.ndarray] = {
        "target_tokens": np.arange(n, dtype=np.int64),
        "weights": np.ones(n, dtype=np.float32),
    }
    if sparse:
        inputs["target_tokens"] = types.TensorData(
            data=np.array([1, 2], np.int64), dtype="int64", shape=[n, 2],
            sparse_crow_indices=[0, 1, 2] + [2] * (n - 2), sparse_col_indices=[0, 1],
        )  # fmt: skip
    return types.Datum(model_input=types.ModelInput(chunks=chunks), loss_fn_inputs=inputs)  # type: ignore[arg-type]


def _sdk_split(data: list[types.Datum], max_len: int, max_bytes: int) -> list[list[types.Datum]]:
    config = SimpleNamespace(fwdbwd_max_chunk_len=max_len, fwdbwd_max_chunk_bytes_count=max_bytes)
    fake_client = SimpleNamespace(holder=SimpleNamespace(_client_config=config))
    return [c.data for c in TrainingClient._chunked_requests_generator(fake_client, data)]  # type: ignore[arg-type]


BATCH = [_datum(int(n)) for n in RNG.integers(1, 400, 300)] + [
    _datum(5, sparse=True),
    _datum(3, image=5000),
    _datum(20_000),  # alone larger than a small byte budget
    _datum(2),
]


def test_estimate_matches_sdk() -> None:
    for datum in BATCH:
        assert estimate_datum_bytes(datum) == _estimate_datum_bytes_count_proto(datum)


@pytest.mark.parametrize(
    ("max_len", "max_bytes"),
    [(1024, 5_000_000), (1, 5_000_000), (7, 5_000_000), (1024, 10_000), (64, 50_000), (3, 1)],
)
def test_split_matches_sdk(max_len: int, max_bytes: int) -> None:
    ours = split_batch(BATCH, max_len=max_len, max_bytes=max_bytes)
    ref = _sdk_split(BATCH, max_len, max_bytes)
    assert [[id(d) for d in c] for c in ours] == [[id(d) for d in c] for c in ref]
    assert [d for c in ours for d in c] == BATCH


def test_split_shapes() -> None:
    data = [_datum(4) for _ in range(2500)]
    assert [len(c) for c in split_batch(data)] == [1024, 1024, 452]
    assert split_batch([]) == []
    with pytest.raises(ValueError):
        split_batch(data, max_len=0)


def _out(n: int, metrics: dict[str, float], kind: str = "R") -> types.ForwardBackwardOutput:
    outputs = [
        {"logprobs": types.TensorData(data=np.full(3, i, np.float32), dtype="float32", shape=[3])}
        for i in range(n)
    ]
    return types.ForwardBackwardOutput(
        loss_fn_output_type=kind, loss_fn_outputs=outputs, metrics=metrics
    )


MERGE_CASES = {
    "reductions": [
        _out(2, {"loss:sum": 1.0, "ratio:mean": 0.5, "lo:min": 3.0, "hi:max": 1.0,
                 "gap:slack": 2.0, "h:hash2": 2.0**40, "seed:unique": 11.0}),
        _out(6, {"loss:sum": 2.5, "ratio:mean": 1.5, "lo:min": -1.0, "hi:max": 9.0,
                 "gap:slack": 5.0, "h:hash2": 3.0, "seed:unique": 12.0}),
        _out(1, {"loss:sum": -0.5, "ratio:mean": 4.0, "lo:min": 0.0, "hi:max": 2.0,
                 "gap:slack": 1.0, "h:hash2": 5.0, "seed:unique": 13.0}),
    ],
    "single": [_out(3, {"loss:sum": 4.0, "acc:mean": 0.25})],
    "missing-and-unknown": [
        _out(1, {"loss:sum": 1.0, "only_first:sum": 2.0, "odd:median": 1.0}),
        _out(2, {"loss:sum": 2.0}),
    ],
    "no-metrics": [_out(1, {}), _out(1, {})],
    "empty": [],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MERGE_CASES))
def test_merge_matches_sdk(case: str) -> None:
    outputs = MERGE_CASES[case]
    ours = merge_outputs(outputs)
    ref = combine_fwd_bwd_output_results(outputs)
    assert ours.loss_fn_output_type == ref.loss_fn_output_type
    assert ours.metrics == ref.metrics
    assert list(ours.metrics) == list(ref.metrics)
    assert [id(d) for d in ours.loss_fn_outputs] == [id(d) for d in ref.loss_fn_outputs]


def test_merge_values() -> None:
    merged = merge_outputs(MERGE_CASES["reductions"])
    assert merged.metrics["loss:sum"] == pytest.approx(3.0)
    assert merged.metrics["ratio:mean"] == pytest.approx((2 * 0.5 + 6 * 1.5 + 4.0) / 9)
    assert (merged.metrics["lo:min"], merged.metrics["hi:max"]) == (-1.0, 9.0)
    assert merged.metrics["seed:unique"] == 11.0
    assert (merged.metrics["seed:unique_1"], merged.metrics["seed:unique_2"]) == (12.0, 13.0)
    assert len(merged.loss_fn_outputs) == 9


def test_merge_with_no_datums_falls_back_to_unweighted_mean() -> None:
    merged = merge_outputs([_out(0, {"a:mean": 1.0}), _out(0, {"a:mean": 3.0})])
    assert merged.metrics == {"a:mean": 2.0}


@pytest.mark.parametrize("key", ["loss", "a:b:sum"])
def test_merge_rejects_keys_without_a_reduction(key: str) -> None:
    with pytest.raises(ProtocolError, match="name:reduction"):
        merge_outputs([_out(1, {key: 1.0})])


def _reference_split(
    data: list[types.Datum], max_len: int, max_bytes: int, estimate: Callable[[types.Datum], int]
) -> list[list[types.Datum]]:
    """The split rule datum by datum, with no shortcut."""
    chunks: list[list[types.Datum]] = []
    size = 0
    for datum in data:
        full = size + estimate(datum) > max_bytes or len(chunks[-1] if chunks else ()) >= max_len
        if chunks and full:
            chunks.append([])
            size = 0
        if not chunks:
            chunks.append([])
        chunks[-1].append(datum)
        size += estimate(datum)
    return chunks


PLAIN = [_datum(int(n)) for n in RNG.integers(1, 60, 40)]
_VALUES = 3 * sum(d.model_input.length for d in PLAIN)  # tokens and 2 inputs, a value each


@pytest.mark.parametrize(
    "max_bytes",
    [10 * _VALUES, 10 * _VALUES - 1, sum(map(estimate_datum_bytes, PLAIN)),
     sum(map(estimate_datum_bytes, PLAIN)) - 1, sum(map(fw_estimate, PLAIN)) - 1, 100],
)  # fmt: skip
@pytest.mark.parametrize("max_len", [40, 39])
def test_split_of_a_plain_batch_at_the_shortcut_bound(max_len: int, max_bytes: int) -> None:
    """The one-chunk shortcut for plain batches (bounded at 10 bytes a value) gives the chunks
    of the datum-by-datum rule, under both SDKs' estimates, at and beside the bound."""
    ours = split_batch(PLAIN, max_len=max_len, max_bytes=max_bytes)
    assert [[id(d) for d in c] for c in ours] == [
        [id(d) for d in c] for c in _sdk_split(PLAIN, max_len, max_bytes)
    ]
    for_fw = split_batch(PLAIN, max_len=max_len, max_bytes=max_bytes, estimate=fw_estimate)
    ref = _reference_split(PLAIN, max_len, max_bytes, fw_estimate)
    assert [[id(d) for d in c] for c in for_fw] == [[id(d) for d in c] for c in ref]


def test_validation_counts_the_values_the_splitter_would() -> None:
    """forward_backward hands validation's count to the splitter instead of counting again:
    the two must agree (``inf`` for a batch that is not plain)."""
    plain = validate_forward_backward(PLAIN, "cross_entropy", None)
    assert plain == plain_values(PLAIN) == _VALUES
    two_chunks = types.ModelInput(
        chunks=[types.EncodedTextChunk(tokens=[1, 2]), types.EncodedTextChunk(tokens=[3])]
    )
    targets = np.arange(3, dtype=np.int64)
    flat: Any = {"target_tokens": targets, "weights": np.ones(3, np.float32)}
    split_input = types.Datum(model_input=two_chunks, loss_fn_inputs=flat)
    wide: Any = {"target_tokens": targets, "weights": np.ones((3, 2), dtype=np.float32)}
    two_d = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs=wide)
    for odd in ([_datum(5, sparse=True)], [*PLAIN, split_input], [two_d, *PLAIN]):
        assert validate_forward_backward(odd, "cross_entropy", None) == math.inf
    assert plain_values([_datum(5, sparse=True)]) == plain_values([split_input]) == math.inf
    budget = 10 * _VALUES  # at the shortcut's bound: one chunk either way
    assert split_batch(PLAIN, max_bytes=budget, values=plain) == [PLAIN]
    assert split_batch(PLAIN, max_bytes=budget - 1, values=plain) == split_batch(
        PLAIN, max_bytes=budget - 1
    )
