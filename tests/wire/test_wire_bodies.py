"""JSON bodies vs the tinker SDK's own request types (the referee).

Each builder must equal ``SdkRequest(...).model_dump(exclude_none=True, mode="json")`` for the
same inputs, key order included (so the JSON text is byte-identical).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import tinker
from tinker import types

from firetitan_async.wire import tinker as wb


def _same(mine: dict[str, Any], sdk_request: Any) -> None:
    ref = sdk_request.model_dump(exclude_none=True, mode="json")
    assert json.dumps(mine) == json.dumps(ref)


def test_protocol_version_is_installed_sdk_minor() -> None:
    assert wb.PROTOCOL_SDK_VERSION == "0.38.0"
    assert tinker.__version__.startswith("0.38.")


def test_client_config() -> None:
    _same(wb.client_config_body(), types.ClientConfigRequest(sdk_version="0.38.0"))


@pytest.mark.parametrize(
    ("meta", "tags", "project"),
    [(None, (), None), ({"run": "a", "x": "y"}, ("t1", "t2"), "proj-1"), ({}, ("t",), None)],
)
def test_create_session(
    meta: dict[str, str] | None, tags: tuple[str, ...], project: str | None
) -> None:
    ref = types.CreateSessionRequest(
        tags=list(tags), user_metadata=meta or {}, sdk_version="0.38.0", project_id=project
    )
    _same(wb.create_session_body(user_metadata=meta, tags=tags, project_id=project), ref)


def test_session_heartbeat_and_get_info() -> None:
    _same(wb.session_heartbeat_body("sess-1"), types.SessionHeartbeatRequest(session_id="sess-1"))
    _same(wb.get_info_body("sess-1:train:0"), types.GetInfoRequest(model_id="sess-1:train:0"))


def test_finish_session_matches_sdk_raw_body() -> None:
    # service_client.close posts {"reason": {"type": status}, "detail": detail} verbatim.
    assert wb.finish_session_body("s") == {"reason": {"type": "success"}, "detail": None}
    assert wb.finish_session_body("s", "errored", "boom") == {
        "reason": {"type": "errored"},
        "detail": "boom",
    }


@pytest.mark.parametrize("rank", [1, 8, 64])
@pytest.mark.parametrize("meta", [None, {"k": "v"}])
def test_create_model_lora(rank: int, meta: dict[str, str] | None) -> None:
    ref = types.CreateModelRequest(
        session_id="s",
        model_seq_id=3,
        base_model="Qwen/Qwen3-8B",
        user_metadata=meta,
        lora_config=types.LoraConfig(rank=rank),
    )
    body = wb.create_model_body(
        session_id="s", model_seq_id=3, base_model="Qwen/Qwen3-8B", lora_rank=rank,
        user_metadata=meta,
    )  # fmt: skip
    _same(body, ref)


def test_create_model_full_parameter_sends_rank_zero() -> None:
    body = wb.create_model_body(
        session_id="s", model_seq_id=0, base_model="m", lora_rank=0, user_metadata=None
    )
    assert body["lora_config"]["rank"] == 0
    _same(
        body,
        types.CreateModelRequest(
            session_id="s", model_seq_id=0, base_model="m", lora_config=types.LoraConfig(rank=0)
        ),
    )


@pytest.mark.parametrize(
    "params",
    [
        types.AdamParams(),
        types.AdamParams(learning_rate=3e-4, beta1=0.8, beta2=0.99, eps=1e-8),
        types.AdamParams(learning_rate=1, weight_decay=0.1, grad_clip_norm=1),  # ints → floats
    ],
)
def test_optim_step(params: types.AdamParams) -> None:
    ref = types.OptimStepRequest(optim_params=params, model_id="m", seq_id=7)
    _same(wb.optim_step_body(model_id="m", seq_id=7, adam_params=params), ref)


@pytest.mark.parametrize("ttl", [None, 3600])
def test_save_weights(ttl: int | None) -> None:
    ref = types.SaveWeightsRequest(model_id="m", path="step-1", seq_id=2, ttl_seconds=ttl)
    _same(wb.save_weights_body(model_id="m", seq_id=2, name="step-1", ttl_seconds=ttl), ref)


@pytest.mark.parametrize("optimizer", [True, False])
def test_load_weights(optimizer: bool) -> None:
    path = "tinker://s:train:0/weights/step-1"
    ref = types.LoadWeightsRequest(model_id="m", path=path, seq_id=4, optimizer=optimizer)
    _same(wb.load_weights_body(model_id="m", seq_id=4, path=path, optimizer=optimizer), ref)


@pytest.mark.parametrize("ttl", [None, 60])
def test_save_weights_for_sampler_named(ttl: int | None) -> None:
    ref = types.SaveWeightsForSamplerRequest(model_id="m", path="snap", seq_id=5, ttl_seconds=ttl)
    _same(
        wb.save_weights_for_sampler_body(model_id="m", seq_id=5, name="snap", ttl_seconds=ttl), ref
    )


def test_save_weights_for_sampler_checkpoint_type_is_an_extra_trailing_key() -> None:
    body = wb.save_weights_for_sampler_body(
        model_id="m", seq_id=5, name="snap", ttl_seconds=None, checkpoint_type="delta"
    )
    assert body.pop("checkpoint_type") == "delta"
    _same(body, types.SaveWeightsForSamplerRequest(model_id="m", path="snap", seq_id=5))


def test_ephemeral_sampler() -> None:
    ref = types.SaveWeightsForSamplerRequest(
        model_id="m", seq_id=9, sampling_session_seq_id=2, kind="snapshot"
    )
    _same(wb.ephemeral_sampler_body(model_id="m", seq_id=9, sampling_session_seq_id=2), ref)


@pytest.mark.parametrize(
    ("path", "base"),
    [("tinker://s:train:0/sampler_weights/a", None), (None, "local/tiny-byte-lm"), ("p", "b")],
)
def test_create_sampling_session(path: str | None, base: str | None) -> None:
    ref = types.CreateSamplingSessionRequest(
        session_id="s", sampling_session_seq_id=1, model_path=path, base_model=base
    )
    body = wb.create_sampling_session_body(
        session_id="s", sampling_session_seq_id=1, model_path=path, base_model=base
    )
    _same(body, ref)


@pytest.mark.parametrize("allow", [True, False])
def test_retrieve_future(allow: bool) -> None:
    ref = types.FutureRetrieveRequest(request_id="req-1", allow_metadata_only=allow)
    _same(wb.retrieve_future_body("req-1", allow_metadata_only=allow), ref)


def test_request_types_are_the_ones_the_sdk_sends() -> None:
    root = Path(tinker.__file__).parent / "lib"
    sent: set[str] = set()
    for source in root.rglob("*.py"):
        sent.update(re.findall(r'request_type\s*=\s*"(\w+)"', source.read_text()))
    sent |= {"Forward", "ForwardBackward"}  # chosen by forward_only in training_client
    assert set(wb.REQUEST_TYPE.values()) <= sent
    assert wb.REQUEST_TYPE["forward"] == "Forward"
    assert wb.REQUEST_TYPE["forward_backward"] == "ForwardBackward"
    assert wb.REQUEST_TYPE["optim_step"] == "OptimStep"
    assert wb.REQUEST_TYPE["save_weights_for_sampler"] == "SaveWeightsForSampler"
    assert wb.REQUEST_TYPE["sample"] == "Sample"
    with pytest.raises(TypeError):
        wb.REQUEST_TYPE["x"] = "y"  # type: ignore[index]
