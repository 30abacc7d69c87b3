"""Input validation: every rejected input names its field (and datum index)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from tinker import types

from firetitan_async.errors import InvalidInput
from firetitan_async.wire.validation import (
    MAX_LEARNING_RATE,
    MAX_SAMPLE_TOKENS,
    MAX_SAMPLES,
    ParsedPath,
    validate_adam_params,
    validate_checkpoint_name,
    validate_forward_backward,
    validate_sample_args,
    validate_tinker_path,
    validate_ttl,
)


def _as_inputs(inputs: dict[str, Any]) -> dict[str, types.TensorData]:
    """Lists and arrays, which ``Datum`` converts at runtime (its hint says TensorData)."""
    return inputs


def ce(n: int = 4, **inputs: Any) -> types.Datum:
    base: dict[str, Any] = {
        "target_tokens": np.arange(n, dtype=np.int64),
        "weights": np.ones(n, dtype=np.float32),
    }
    base.update(inputs)
    return types.Datum(model_input=types.ModelInput.from_ints(list(range(n))), loss_fn_inputs=base)


def rl(n: int = 4, **inputs: Any) -> types.Datum:
    base: dict[str, Any] = {
        "target_tokens": np.arange(n, dtype=np.int64),
        "logprobs": -np.ones(n, dtype=np.float32),
        "advantages": np.ones(n, dtype=np.float32),
    }
    base.update(inputs)
    return types.Datum(model_input=types.ModelInput.from_ints(list(range(n))), loss_fn_inputs=base)


def with_input(model_input: types.ModelInput, n: int = 4) -> types.Datum:
    return types.Datum(
        model_input=model_input,
        loss_fn_inputs=_as_inputs(
            {
                "target_tokens": np.arange(n, dtype=np.int64),
                "weights": np.ones(n, dtype=np.float32),
            }
        ),
    )


def without(datum: types.Datum, key: str) -> types.Datum:
    inputs = {k: v for k, v in datum.loss_fn_inputs.items() if k != key}
    return types.Datum(model_input=datum.model_input, loss_fn_inputs=inputs)


NAN = np.array([0.0, np.nan, 0.0, 0.0], np.float32)
INF = np.array([0.0, 0.0, np.inf, 0.0], np.float32)
POINTER = types.ModelInput(
    chunks=[
        types.EncodedTextChunk(tokens=[1, 2]),
        types.ImageAssetPointerChunk(format="png", location="s3://x", expected_tokens=2),
    ]
)
BAD_SPARSE = types.TensorData(
    data=np.array([1, 2], np.int64), dtype="int64", shape=[4, 2],
    sparse_crow_indices=[0, 1, 2], sparse_col_indices=[0, 1],
)  # fmt: skip

SHAPELESS_3 = types.TensorData(data=[1.0, 1.0, 1.0], dtype="float32", shape=None)
# the array is reshaped to (4,), but the wire would carry the shape [-1]
MINUS_ONE_SHAPE = types.TensorData(data=[1.0] * 4, dtype="float32", shape=[-1])
SPARSE_1D = types.TensorData(
    data=np.arange(4, dtype=np.int64), dtype="int64", shape=[4],
    sparse_crow_indices=[0, 4], sparse_col_indices=[0, 1, 2, 3],
)  # fmt: skip

# (id, data, loss_fn, config, expected field, expected index, words in the message)
FB_CASES: list[tuple[str, Any, Any, Any, str, int | None, str]] = [
    ("empty-batch", [], "cross_entropy", None, "data", None, "empty"),
    ("not-a-list", ce(), "cross_entropy", None, "data", None, "list of Datum"),
    ("not-a-datum", [ce(), {"x": 1}], "cross_entropy", None, "datum", 1, "not a tinker.types"),
    ("unknown-loss", [ce()], "mse", None, "loss_fn", None, "unknown loss function"),
    ("custom-loss", [ce()], "custom", None, "loss_fn", None, "forward_backward_custom"),
    ("non-str-loss", [ce()], 3, None, "loss_fn", None, "unknown"),
    ("ce-missing-weights", [ce(), without(ce(), "weights")], "cross_entropy", None,
     "loss_fn_inputs.weights", 1, "required by loss_fn 'cross_entropy'"),
    ("ce-missing-targets", [without(ce(), "target_tokens")], "cross_entropy", None,
     "loss_fn_inputs.target_tokens", 0, "required"),
    ("is-missing-advantages", [rl(), rl(), without(rl(), "advantages")], "importance_sampling",
     None, "loss_fn_inputs.advantages", 2, "required"),
    ("ppo-missing-logprobs", [without(rl(), "logprobs")], "ppo", None,
     "loss_fn_inputs.logprobs", 0, "required"),
    ("cispo-on-ce-datum", [ce()], "cispo", None, "loss_fn_inputs.logprobs", 0, "required"),
    ("dro-missing", [without(rl(), "target_tokens")], "dro", None,
     "loss_fn_inputs.target_tokens", 0, "required"),
    ("weights-too-short", [ce(), ce(weights=np.ones(3, np.float32))], "cross_entropy", None,
     "loss_fn_inputs.weights", 1, "3 elements, model_input has 4 tokens"),
    ("targets-too-long", [ce(target_tokens=np.arange(5, dtype=np.int64))], "cross_entropy", None,
     "loss_fn_inputs.target_tokens", 0, "5 elements"),
    ("targets-float", [ce(target_tokens=np.arange(4, dtype=np.float32))], "cross_entropy", None,
     "loss_fn_inputs.target_tokens", 0, "must be int64"),
    ("advantages-int", [rl(advantages=np.ones(4, np.int64))], "ppo", None,
     "loss_fn_inputs.advantages", 0, "must be float32"),
    ("nan-advantages", [rl(), rl(advantages=NAN)], "ppo", None,
     "loss_fn_inputs.advantages", 1, "non-finite"),
    ("inf-logprobs", [rl(logprobs=INF)], "importance_sampling", None,
     "loss_fn_inputs.logprobs", 0, "non-finite"),
    ("nan-weights", [ce(weights=NAN)], "cross_entropy", None,
     "loss_fn_inputs.weights", 0, "non-finite"),
    ("negative-target", [ce(target_tokens=np.array([0, -100, 1, 2], np.int64))], "cross_entropy",
     None, "loss_fn_inputs.target_tokens", 0, "negative"),
    ("empty-model-input", [ce(), with_input(types.ModelInput.empty())], "cross_entropy", None,
     "model_input", 1, "empty"),
    ("no-tokens", [with_input(types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[])]))],
     "cross_entropy", None, "model_input", 0, "no tokens"),
    ("negative-token", [with_input(types.ModelInput.from_ints([1, -2, 3, 4]))], "cross_entropy",
     None, "model_input.chunks[0].tokens", 0, "negative token id"),
    ("int32-overflow", [with_input(types.ModelInput.from_ints([1, 2, 3, 2**31]))],
     "cross_entropy", None, "model_input.chunks[0].tokens", 0, "int32"),
    # one-chunk inputs are range-checked with the batch: the datum is still named
    ("negative-token-third", [ce(), ce(), with_input(types.ModelInput.from_ints([1, 2, -3, 4]))],
     "cross_entropy", None, "model_input.chunks[0].tokens", 2, "negative token id"),
    ("int32-overflow-second", [ce(), with_input(types.ModelInput.from_ints([2**31, 1, 2, 3]))],
     "cross_entropy", None, "model_input.chunks[0].tokens", 1, "int32"),
    ("asset-pointer", [ce(), ce(), with_input(POINTER)], "cross_entropy", None,
     "model_input.chunks[1]", 2, "image_asset_pointer"),
    ("bad-sparse", [ce(target_tokens=BAD_SPARSE)], "cross_entropy", None,
     "loss_fn_inputs.target_tokens", 0, "crow indices"),
    # the inline common-case check must not pass what the exact one refuses
    ("shapeless-too-short", [ce(), ce(weights=SHAPELESS_3)], "cross_entropy", None,
     "loss_fn_inputs.weights", 1, "3 elements, model_input has 4 tokens"),
    ("shape-minus-one", [ce(), ce(weights=MINUS_ONE_SHAPE)], "cross_entropy", None,
     "loss_fn_inputs.weights", 1, "-1 elements"),
    ("sparse-1d", [ce(target_tokens=SPARSE_1D)], "cross_entropy", None,
     "loss_fn_inputs.target_tokens", 0, "2-D shape"),
    ("config-list", [rl()], "ppo", {"clip_low_threshold": [0.8]},
     "loss_fn_config.clip_low_threshold", None, "float or a str"),
    ("config-bool", [rl()], "dro", {"beta": True}, "loss_fn_config.beta", None, "float or a str"),
    ("config-none", [rl()], "dro", {"beta": None}, "loss_fn_config.beta", None, "float or a str"),
    ("config-nan", [rl()], "dro", {"beta": math.nan}, "loss_fn_config.beta", None, "finite"),
    ("clip-inverted", [rl()], "ppo", {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2},
     "loss_fn_config.clip_low_threshold", None, "greater than"),
    ("clip-zero", [rl()], "cispo", {"clip_low_threshold": 0.0},
     "loss_fn_config.clip_low_threshold", None, "> 0"),
    ("clip-negative-high", [rl()], "ppo", {"clip_high_threshold": -1},
     "loss_fn_config.clip_high_threshold", None, "> 0"),
    ("clip-str", [rl()], "ppo", {"clip_high_threshold": "1.2"},
     "loss_fn_config.clip_high_threshold", None, "number"),
    ("config-not-dict", [rl()], "ppo", [("beta", 1.0)], "loss_fn_config", None, "dict"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "loss_fn", "config", "field", "index", "words"),
    [case[1:] for case in FB_CASES],
    ids=[case[0] for case in FB_CASES],
)
def test_forward_backward_rejects(
    data: Any, loss_fn: Any, config: Any, field: str, index: int | None, words: str
) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_forward_backward(data, loss_fn, config)
    err = info.value
    assert (err.field, err.index) == (field, index), str(err)
    assert words in str(err)
    assert isinstance(err, ValueError)
    if index is not None:
        assert str(err).startswith(f"data[{index}].{field}: ")


OK_SPARSE = types.TensorData(
    data=np.array([1, 2], np.int64), dtype="int64", shape=[4, 2],
    sparse_crow_indices=[0, 1, 2, 2, 2], sparse_col_indices=[0, 1],
)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "loss_fn", "config"),
    [
        ([ce(), ce(7)], "cross_entropy", None),
        ([ce(weights=[0.0, 0.0, 1.0, 1.0])], "cross_entropy", {}),  # plain lists are converted
        ([rl()], "importance_sampling", None),
        ([rl()], "ppo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}),
        ([rl()], "cispo", {"clip_low_threshold": 1, "clip_high_threshold": 1}),
        ([rl()], "dro", {"beta": 0.05, "note": "text values are allowed"}),
        ([rl(sequence_ratio_mask=np.ones(4, np.float32))], "gspo", None),
        ([ce(target_tokens=OK_SPARSE)], "cross_entropy", None),
        ([ce(weights=np.ones((4, 2), np.float32))], "cross_entropy", None),  # 2-D: no length check
        (
            [with_input(types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]),
              types.ImageChunk(data=b"png", format="png")]), n=9)],
            "cross_entropy", None,
        ),  # an image without expected_tokens hides the length: not checked
        ((ce(),), "cross_entropy", None),  # a tuple is a sequence too
        # finite values whose float32 sum overflows: the batched check falls back, not fails
        ([rl(advantages=np.full(4, 3e38, np.float32)), rl()], "ppo", None),
        ([ce(weights=np.array([1, 0, 1, 1], np.int64))], "cross_entropy", None),  # int mask
    ],
)  # fmt: skip
def test_forward_backward_accepts(data: Any, loss_fn: str, config: Any) -> None:
    validate_forward_backward(data, loss_fn, config)


# -- Adam ------------------------------------------------------------------------------------

ADAM_CASES = [
    ({"learning_rate": -1e-4}, "adam_params.learning_rate"),
    ({"learning_rate": math.nan}, "adam_params.learning_rate"),
    ({"learning_rate": 0.0}, "adam_params.learning_rate"),
    ({"learning_rate": 1e30}, "adam_params.learning_rate"),
    ({"learning_rate": MAX_LEARNING_RATE * 1.001}, "adam_params.learning_rate"),
    ({"beta1": 1.0}, "adam_params.beta1"),
    ({"beta1": -0.1}, "adam_params.beta1"),
    ({"beta2": 1.5}, "adam_params.beta2"),
    ({"eps": 0.0}, "adam_params.eps"),
    ({"eps": math.inf}, "adam_params.eps"),
    ({"weight_decay": -0.01}, "adam_params.weight_decay"),
    ({"grad_clip_norm": -1.0}, "adam_params.grad_clip_norm"),
]


@pytest.mark.parametrize(("kwargs", "field"), ADAM_CASES)
def test_adam_rejects(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_adam_params(types.AdamParams(**kwargs))
    assert info.value.field == field and info.value.index is None


def test_adam_accepts_and_type_checks() -> None:
    validate_adam_params(types.AdamParams())
    validate_adam_params(types.AdamParams(learning_rate=MAX_LEARNING_RATE))
    validate_adam_params(types.AdamParams(learning_rate=1e-12, beta1=0, beta2=0.999, eps=1e-8,
                                          weight_decay=0.1, grad_clip_norm=1.0))  # fmt: skip
    with pytest.raises(InvalidInput) as info:
        validate_adam_params({"learning_rate": 1e-4})  # type: ignore[arg-type]
    assert info.value.field == "adam_params"


# -- names, TTLs, paths ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "empty"),
        ("a/b", "'/'"),
        ("step 1", "whitespace"),
        ("tab\there", "whitespace"),
        ("bell\x07", "control"),
        ("x" * 129, "129 characters"),
        ("ünïcode", "letters, digits"),
        ("semi;colon", "letters, digits"),
        ("..", "not a valid name"),
        (5, "must be a str"),
    ],
)
def test_checkpoint_name_rejects(name: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_checkpoint_name(name, field="save_state.name")
    assert info.value.field == "save_state.name" and words in str(info.value)


@pytest.mark.parametrize("name", ["step-0001", "a", "final_v2.1", "x" * 128, "A.b-C_d"])
def test_checkpoint_name_accepts(name: str) -> None:
    validate_checkpoint_name(name)


@pytest.mark.parametrize("ttl", [0, -5, True, 1.5, "60"])
def test_ttl_rejects(ttl: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_ttl(ttl)
    assert info.value.field == "ttl_seconds"


@pytest.mark.parametrize("ttl", [None, 1, 86_400])
def test_ttl_accepts(ttl: int | None) -> None:
    validate_ttl(ttl)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("tinker://s:train:0/weights/step-1", ParsedPath("s:train:0", "weights", "step-1")),
        ("tinker://abc/sampler_weights/snap", ParsedPath("abc", "sampler_weights", "snap")),
        ("tinker://r/external_weights/e.x", ParsedPath("r", "external_weights", "e.x")),
    ],
)
def test_tinker_path_parses(path: str, expected: ParsedPath) -> None:
    parsed = validate_tinker_path(path)
    assert parsed == expected
    assert parsed.checkpoint_id == f"{expected.kind}/{expected.name}"
    sdk = types.ParsedCheckpointTinkerPath.from_tinker_path(path)
    assert sdk.training_run_id == parsed.training_run_id
    assert sdk.checkpoint_id == parsed.checkpoint_id


@pytest.mark.parametrize(
    "path",
    [
        "",
        "s3://bucket/weights/a",
        "tinker://run/weights",
        "tinker://run/weights/a/b",
        "tinker:///weights/a",
        "tinker://run/checkpoints/a",
        "tinker://run/weights/",
        "tinker://run/weights/a b",
        None,
    ],
)
def test_tinker_path_rejects(path: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_tinker_path(path, field="model_path")
    assert info.value.field == "model_path"


# -- sampling --------------------------------------------------------------------------------

PROMPT = types.ModelInput.from_ints([1, 2, 3])
NO_TOKENS = types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[])])
SAMPLE_CASES: list[tuple[Any, Any, Any, str]] = [
    (types.ModelInput.empty(), 1, types.SamplingParams(), "prompt"),
    (NO_TOKENS, 1, types.SamplingParams(), "prompt"),
    (types.ModelInput.from_ints([-1]), 1, types.SamplingParams(), "prompt.chunks[0].tokens"),
    ([1, 2, 3], 1, types.SamplingParams(), "prompt"),
    (PROMPT, 0, types.SamplingParams(), "num_samples"),
    (PROMPT, True, types.SamplingParams(), "num_samples"),
    (PROMPT, 2.0, types.SamplingParams(), "num_samples"),
    (PROMPT, 1, {"max_tokens": 3}, "sampling_params"),
    (PROMPT, 1, types.SamplingParams(max_tokens=0), "sampling_params.max_tokens"),
    (
        PROMPT, 1, types.SamplingParams(max_tokens=MAX_SAMPLE_TOKENS + 1),
        "sampling_params.max_tokens",
    ),
    (PROMPT, 10**9, types.SamplingParams(), "num_samples"),
    (PROMPT, MAX_SAMPLES + 1, types.SamplingParams(), "num_samples"),
    (PROMPT, 1, types.SamplingParams(temperature=-0.1), "sampling_params.temperature"),
    (PROMPT, 1, types.SamplingParams(temperature=math.inf), "sampling_params.temperature"),
    (PROMPT, 1, types.SamplingParams(top_p=0.0), "sampling_params.top_p"),
    (PROMPT, 1, types.SamplingParams(top_p=1.01), "sampling_params.top_p"),
    (PROMPT, 1, types.SamplingParams(top_k=0), "sampling_params.top_k"),
    (PROMPT, 1, types.SamplingParams(top_k=-2), "sampling_params.top_k"),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "n", "params", "field"), SAMPLE_CASES)
def test_sample_rejects(prompt: Any, n: Any, params: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_sample_args(prompt, n, params)
    assert info.value.field == field and info.value.index is None


def test_sample_accepts() -> None:
    validate_sample_args(PROMPT, 1, types.SamplingParams())
    validate_sample_args(PROMPT, 8, types.SamplingParams(max_tokens=1, temperature=0, top_k=1,
                                                         top_p=1.0, seed=3, stop=[]))  # fmt: skip
    pointer = types.ModelInput(
        chunks=[types.ImageAssetPointerChunk(format="png", location="https://x", expected_tokens=4)]
    )
    validate_sample_args(pointer, 1, types.SamplingParams(max_tokens=2))  # JSON can carry it


def test_validation_leaves_input_untouched() -> None:
    datum = rl()
    before = {k: v.to_numpy().copy() for k, v in datum.loss_fn_inputs.items()}
    validate_forward_backward([datum], "ppo", {"clip_low_threshold": 0.9})
    for key, value in before.items():
        assert np.array_equal(datum.loss_fn_inputs[key].to_numpy(), value)
