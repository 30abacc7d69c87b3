"""The fireworks dialect's sans-IO codec: bodies, result decoding, listing, enum values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinker import types

from firetitan_async.errors import InvalidInput, ProtocolError
from firetitan_async.wire import ModelSpec, dialect_named
from firetitan_async.wire import fireworks as fw
from firetitan_async.wire.futures import Done


def test_create_model_bodies() -> None:
    full = fw.create_model_body(session_id="s", model_seq_id=0, base_model="m")
    assert full == {
        "session_id": "s",
        "model_seq_id": 0,
        "base_model": "m",
        "lora_config": {"rank": 0, "train_unembed": True, "train_mlp": True, "train_attn": True},
        "type": "create_model",
    }
    lora = fw.create_model_body(
        session_id="s",
        model_seq_id=1,
        base_model="m",
        lora_rank=8,
        seed=3,
        train_mlp=False,
        user_metadata={"k": "v"},
    )
    assert lora["lora_config"] == {
        "alpha": 32,
        "rank": 8,
        "seed": 3,
        "train_unembed": True,
        "train_mlp": False,
        "train_attn": True,
    }
    assert lora["user_metadata"] == {"k": "v"} and "optimizer_config" not in lora
    base = fw.create_model_body(session_id="s", model_seq_id=2, base_model="m", base_only=True)
    assert base["base_only"] is True and "lora_config" not in base


def test_tinker_dialect_create_model_is_unchanged_by_default() -> None:
    body = dialect_named("tinker").create_model_body(
        ModelSpec(base_model="m", lora_rank=4), session_id="s", model_seq_id=0, user_metadata=None
    )
    assert json.dumps(body) == json.dumps(
        {
            "session_id": "s",
            "model_seq_id": 0,
            "base_model": "m",
            "lora_config": {
                "rank": 4,
                "train_unembed": True,
                "train_mlp": True,
                "train_attn": True,
            },
            "optimizer_config": {"type": "adamw"},
            "type": "create_model",
        }
    )


def test_optim_step_body_extras_only_when_given() -> None:
    adam = types.AdamParams(learning_rate=1e-3)
    plain = fw.optim_step_body(model_id="m", seq_id=2, adam_params=adam)
    assert "grad_accumulation_normalization" not in plain
    assert "emit_grad_norm_metrics" not in plain["adam_params"]
    extra = fw.optim_step_body(
        model_id="m",
        seq_id=2,
        adam_params=adam,
        grad_accumulation_normalization="num_sequences",
        emit_grad_norm_metrics=True,
    )
    assert extra["grad_accumulation_normalization"] == "num_sequences"
    assert extra["adam_params"]["emit_grad_norm_metrics"] is True


@pytest.mark.parametrize(
    ("value", "allow_bool", "expected"),
    [("NUM_LOSS_TOKENS", False, "num_loss_tokens"), (None, False, None), (True, True, True)],
)
def test_normalize_choice(value: object, allow_bool: bool, expected: object) -> None:
    choices = fw.GRAD_ACC_NORMALIZATIONS if not allow_bool else fw.GRAD_NORM_METRICS_MODES
    assert fw.normalize_choice(value, choices, "f", allow_bool=allow_bool) == expected


@pytest.mark.parametrize("value", ["per_token", True, 3])
def test_normalize_choice_refuses(value: object) -> None:
    with pytest.raises(InvalidInput, match="grad_accumulation_normalization"):
        fw.normalize_choice(value, fw.GRAD_ACC_NORMALIZATIONS, "grad_accumulation_normalization")


def test_json_result_decoding_and_its_errors() -> None:
    payload = {
        "loss_fn_output_type": "ArrayRecord",
        "loss_fn_outputs": [
            {"logprobs": {"data": [-1.5, -0.25], "dtype": "float32", "shape": [2]}}
        ],
        "metrics": {"loss:sum": 1.75},
    }
    out = fw.decode_fwdbwd_result(Done(json.dumps(payload).encode(), "application/json"))
    assert out.metrics == {"loss:sum": 1.75}
    np.testing.assert_array_equal(out.loss_fn_outputs[0]["logprobs"].to_numpy(), [-1.5, -0.25])
    for bad in (b"not json", b"[1]", b'{"metrics": [1]}', b'{"loss_fn_outputs": [{"x": 1}]}'):
        with pytest.raises(ProtocolError):
            fw.decode_fwdbwd_result(Done(bad, "application/json"))


def test_checkpoint_list_rows() -> None:
    assert fw.parse_checkpoint_list({"checkpoints": ["step-2"]}) == [{"name": "step-2"}]
    rows = fw.parse_checkpoint_list({"checkpoints": [{"name": "a", "path": "p"}]})
    assert rows == [{"name": "a", "path": "p"}]
    for bad in ({}, {"checkpoints": "a"}, {"checkpoints": [3]}, []):
        with pytest.raises(ProtocolError):
            fw.parse_checkpoint_list(bad)


def test_sampler_body_has_no_kind_and_the_type_always() -> None:
    body = fw.FIREWORKS.sampler_body(
        model_id="m", seq_id=3, name="s-0011aabb", ttl_seconds=None, checkpoint_type=None
    )
    assert body == {
        "model_id": "m",
        "path": "s-0011aabb",
        "seq_id": 3,
        "type": "save_weights_for_sampler",
        "checkpoint_type": "base",
    }
    with pytest.raises(InvalidInput, match="TTL"):
        fw.FIREWORKS.sampler_body(
            model_id="m", seq_id=3, name="s", ttl_seconds=5, checkpoint_type=None
        )


def test_fwdbwd_requests_are_json_on_their_own_paths() -> None:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]},
    )
    for op, path, key in (
        ("forward", "/api/v1/forward", "forward_input"),
        ("forward_backward", "/api/v1/forward_backward", "forward_backward_input"),
    ):
        req = fw.FIREWORKS.fwdbwd_request(
            op,  # type: ignore[arg-type]
            model_id="m",
            seq_id=1,
            data=[datum],
            loss_fn="cross_entropy",
            loss_fn_config={"weighting": "tis", "report_policy_diagnostics": True},
            client_config={"proto_compress_fwdbwd": True},  # never consulted
        )
        assert (req.path, req.content_type, req.headers) == (path, "application/json", None)
        body = json.loads(req.content)
        assert body[key]["loss_fn_config"] == {
            "weighting": "tis",
            "report_policy_diagnostics": True,
        }
