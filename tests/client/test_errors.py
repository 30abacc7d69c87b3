"""Every error a user sees is a ``FiretitanError``: misuse, bad input and malformed replies.

Malformed replies are fed to the sans-IO parsers as values and bytes; where a server is
involved, the real local trainer over loopback (a server echoing the key through a record),
and ``httpx.MockTransport`` only for reply shapes the local server never produces.
"""

from __future__ import annotations

import json
import os
import threading
import traceback
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import (
    DeploymentConfig,
    Deployments,
    DeploymentSampler,
    FiretitanError,
    InvalidInput,
    Pending,
    ProtocolError,
    SamplingError,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
    UsageError,
    cleanup_on_signals,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum
from firetitan_async.loops import CheckpointManager, RayRollouts, TrainerSamplerHandle
from firetitan_async.platform._config import format_duration
from firetitan_async.platform._deployments import HotloadStatus
from firetitan_async.platform._lifecycle import Owner, parse_owner_tag
from firetitan_async.platform._shapes import TrainingShapeProfile
from firetitan_async.wire.chunking import split_batch
from firetitan_async.wire.completions import SSEDecoder, parse_completion_reply, parse_stream_chunk
from firetitan_async.wire.fireworks import decode_fwdbwd_result
from firetitan_async.wire.futures import Done, decode_json_result
from firetitan_async.wire.tinker import TinkerDialect

MODEL = "local/tiny-byte-lm"
KEY = "fw-secret-key-1234567890"


def _choice(**overrides: Any) -> dict[str, Any]:
    choice = {
        "index": 0,
        "raw_output": {"completion_token_ids": [97, 98]},
        "logprobs": {"content": [{"token_id": 97, "logprob": -0.5},
                                 {"token_id": 98, "logprob": -0.25}]},
        "finish_reason": "length",
    }
    return {**choice, **overrides}


async def _no_rollout(handle: Any, prompt: Any) -> list[Any]:
    return []


def _entries(*logprobs: object) -> dict[str, Any]:
    return {"content": [{"token_id": 97 + i, "logprob": lp} for i, lp in enumerate(logprobs)]}


# -- bad input and misuse: the field named, before anything is sent ----------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: split_batch([], max_len=0), "max_len"),
        (lambda: format_duration(5), "inactivity_timeout"),  # type: ignore[arg-type]
        (lambda: format_duration("30m"), "inactivity_timeout"),
        (lambda: format_duration(timedelta(seconds=-1)), "inactivity_timeout"),
        (lambda: TrainerJobConfig(MODEL, inactivity_timeout=60), "inactivity_timeout"),  # type: ignore[arg-type]
        (lambda: decode_json_result(int, b"{}"), "model_cls"),
        (lambda: RayRollouts(_no_rollout, workers=0), "workers"),
        (lambda: TrainerSamplerHandle.decode(5), "handle"),  # type: ignore[arg-type]
    ],
    ids=["max_len", "duration_type", "duration_text", "duration_sign", "config", "model_cls",
         "workers", "handle"],
)
def test_bad_input_is_invalid_input_naming_the_field(call: Callable[[], Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        call()
    assert info.value.field == field


def test_a_corrupt_checkpoint_record_names_the_run_dir(tmp_path: Path) -> None:
    store: Any = object()  # never reached: the record is read first
    for text in (b"{not json", b'{"other": []}', b'{"saves": [{"name": "x"}]}', b"\xff\xfe"):
        (tmp_path / "checkpoints.json").write_bytes(text)
        with pytest.raises(InvalidInput) as info:
            CheckpointManager(store, tmp_path, config={})
        assert info.value.field == "run_dir" and "checkpoints.json" in str(info.value)


@pytest.mark.anyio
async def test_cleanup_on_signals_entered_twice_is_a_usage_error() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    guard = cleanup_on_signals()
    async with guard:
        with pytest.raises(UsageError, match="only once"):
            await guard.__aenter__()


@pytest.mark.anyio
async def test_a_provisioning_awaited_twice_is_a_usage_error(
    local_trainer: LocalTrainer,
) -> None:
    async with TrainerJobs(base_url=local_trainer.control_plane_url) as jobs:
        once = jobs.create_and_wait(
            TrainerJobConfig(base_model=MODEL), poll_interval_s=0.05, timeout_s=30.0
        )
        endpoint = await once
        with pytest.raises(UsageError, match="only once"):
            await once
        await jobs.delete(endpoint.job_id)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "returned",
    [
        ("low", [np.zeros(3)]),  # not a number
        (0.0, 5),  # not a list
        (0.0, [np.array(["a", "b", "c"])]),  # not numbers
        (0.0, [[0.0, [1.0], 2.0]]),  # ragged
    ],
    ids=["loss_text", "grads_number", "grad_text", "grad_ragged"],
)
async def test_a_custom_loss_returning_garbage_is_invalid_input(
    local_trainer: LocalTrainer, returned: tuple[Any, Any]
) -> None:
    def loss(data: list[types.Datum], logprobs: list[Any]) -> tuple[float, list[Any]]:
        return returned

    async with ServiceSession(local_trainer.base_url) as session:
        client = await session.create_training_client(MODEL)
        with pytest.raises(InvalidInput) as info:
            await client.forward_backward_custom([sft_datum("abcd")], loss)
    assert info.value.field == "CustomLoss"


# -- malformed replies: the sans-IO parsers ---------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        {"choices": [_choice(logprobs=_entries(-0.5, None))]},  # a logprob missing
        {"choices": [_choice(logprobs=_entries(-0.5, [1]))]},  # not a number
        {"choices": [_choice(logprobs=_entries(-0.5, "x"))]},
        {"choices": [_choice(index=None)]},
        {"choices": [_choice(index=[0])]},
        {"choices": [_choice(index=float("nan"))]},
    ],
    ids=["logprob_none", "logprob_list", "logprob_text", "index_none", "index_list", "index_nan"],
)
def test_a_malformed_completion_reply_is_a_sampling_error(reply: dict[str, Any]) -> None:
    with pytest.raises(SamplingError, match="malformed completions reply"):
        parse_completion_reply(reply, want_logprobs=True)


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": 1.5},
        {"choices": [_choice(index="")]},
        {"choices": [_choice(index={})]},
        {"choices": [_choice(logprobs=_entries({}))]},
        {"choices": [_choice(logprobs=_entries(""))]},
        {"choices": [_choice(logprobs={"content": [{"token_id": True, "logprob": 0.0}]})]},
    ],
    ids=["choices_number", "index_text", "index_object", "logprob_object", "logprob_text",
         "token_bool"],
)
def test_a_malformed_stream_event_is_a_sampling_error(chunk: dict[str, Any]) -> None:
    with pytest.raises(SamplingError, match="malformed completions reply"):
        parse_stream_chunk(chunk)


def test_a_stream_that_is_not_utf8_is_a_sampling_error() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"choices": []}\n\n') == ['{"choices": []}']
    with pytest.raises(SamplingError, match="not UTF-8"):
        decoder.feed(b"data: \xff\xfe\n\n")


def test_a_json_forward_backward_result_with_an_impossible_shape_is_a_protocol_error() -> None:
    for output in (
        {"logprobs": {"dtype": "float32", "data": [1.0], "shape": [10**30]}},
        {"logprobs": {"dtype": "int64", "data": [10**30]}},
        {"logprobs": {"dtype": "bfloat16", "data": [1.0]}},
    ):
        payload = json.dumps({"metrics": {}, "loss_fn_outputs": [output]}).encode()
        with pytest.raises(ProtocolError, match="ForwardBackwardOutput"):
            decode_fwdbwd_result(Done(payload=payload, content_type="application/json"))


@pytest.mark.parametrize(
    "config",
    [{"fwdbwd_max_chunk_len": "64"}, {"fwdbwd_max_chunk_len": -1},
     {"fwdbwd_max_chunk_bytes_count": [1]}, {"fwdbwd_max_chunk_len": True}],
    ids=["text", "negative", "list", "bool"],
)
def test_malformed_chunk_limits_from_client_config_are_a_protocol_error(
    config: dict[str, Any],
) -> None:
    datum = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2]),
        loss_fn_inputs={"target_tokens": types.TensorData(data=[2, 3], dtype="int64", shape=[2])},
    )
    with pytest.raises(ProtocolError, match="client/config"):
        TinkerDialect().split([datum], config)
    assert TinkerDialect().split([datum], {}) == [[datum]]  # absent: the SDK's defaults


@pytest.mark.parametrize(
    ("parse", "reply"),
    [
        (TrainingShapeProfile.from_version, {"snapshot": ["x"]}),
        (TrainingShapeProfile.from_version, {"snapshot": {"trainerShardingScheme": True}}),
        (HotloadStatus.parse, {"replicas": [{"loading_state": ["loading"]}]}),
    ],
    ids=["shape_snapshot", "shape_sharding", "hotload_loading_state"],
)
def test_malformed_control_plane_records_are_firetitan_errors(
    parse: Callable[[Any], Any], reply: Any
) -> None:
    with pytest.raises(FiretitanError, match=r"malformed|hot-load status"):
        parse(reply)


def test_an_owner_tag_with_an_impossible_pid_is_not_an_error() -> None:
    assert parse_owner_tag("firetitan-async:host:" + "9" * 5000) is None
    owner = parse_owner_tag(f"firetitan-async:{Owner('', 0).host}:9999999999")
    assert owner is not None and owner.pid == 9999999999
    assert Owner(owner.host, owner.pid).alive() in (None, False)


# -- the Deployments client: records redacted where they enter, malformed ones refused -------


@pytest.mark.anyio
async def test_a_deployment_record_echoing_the_key_is_redacted_on_entry() -> None:
    with LocalTrainer(seed=0, api_key=KEY) as lt:
        async with Deployments(KEY, base_url=lt.control_plane_url) as deployments:
            config = DeploymentConfig("echo", MODEL, description=f"made with {KEY}")
            info = await deployments.create_or_get(config)
            listed = await deployments.list_deployments()
            again = await deployments.get("echo")
            assert again is not None
            for record in (info.raw, again.raw, *(d.raw for d in listed)):
                assert KEY not in json.dumps(record)
                assert record["description"] == "made with <redacted>"
            await deployments.delete("echo")


def _replying(body: Any) -> httpx.MockTransport:
    return httpx.MockTransport(lambda request: httpx.Response(200, json=body))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "call"),
    [
        ([KEY], lambda d: d.get("d")),
        (7, lambda d: d.get("d")),
        ([KEY], lambda d: d.update("d", {"maxReplicaCount": 1}, "max_replica_count")),
        ([KEY], lambda d: d.create_or_get(DeploymentConfig("d", MODEL))),
        ({"deployments": 7}, lambda d: d.list_deployments()),
        ({"deployments": [[KEY]]}, lambda d: d.list_deployments()),
        ({"deployments": [], "nextPageToken": {"t": KEY}}, lambda d: d.list_deployments()),
    ],
    ids=["get_list", "get_number", "update_list", "create_list", "listing_number",
         "listing_row", "listing_token"],
)
async def test_malformed_deployment_records_are_firetitan_errors_without_the_key(
    body: Any, call: Callable[[Deployments], Awaitable[Any]]
) -> None:
    async with Deployments(
        KEY, base_url="https://control.test", account_id="a", transport=_replying(body)
    ) as deployments:
        with pytest.raises(FiretitanError) as info:
            await call(deployments)
    assert KEY not in str(info.value)


@pytest.mark.anyio
async def test_a_listing_whose_page_is_not_a_list_is_a_firetitan_error() -> None:
    async with TrainerJobs(
        KEY, base_url="https://control.test", account_id="a",
        transport=_replying({"rlorTrainerJobs": 7}),
    ) as jobs:
        with pytest.raises(FiretitanError, match="trainer job listing"):
            await jobs.list_jobs()
    async with TrainerJobs(
        KEY, base_url="https://control.test", account_id="a",
        transport=_replying({"rlorTrainerJobs": [], "nextPageToken": ["t"]}),
    ) as jobs:
        with pytest.raises(FiretitanError, match="page token"):
            await jobs.list_jobs()


# -- the DeploymentSampler: a malformed reply is a SamplingError with its request id ---------


def _sampler(reply: httpx.Response) -> DeploymentSampler:
    return DeploymentSampler(
        "http://127.0.0.1:1", "accounts/a/deployments/d", KEY,
        transport=httpx.MockTransport(lambda request: reply),
    )


@pytest.mark.anyio
async def test_a_completion_reply_with_a_missing_logprob_is_a_sampling_error() -> None:
    body = {"choices": [_choice(logprobs=_entries(-0.5, None))]}
    async with _sampler(httpx.Response(200, json=body)) as sampler:
        with pytest.raises(SamplingError) as info:
            await sampler.sample([1, 2], max_tokens=2, logprobs=True)
    assert info.value.request_id and info.value.status_code == 200
    assert info.value.message.startswith("malformed completions reply")
    assert str(info.value).count("request_id=") == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "events",
    [
        f'data: {{"error": "no such key {KEY}"}}\n\n'.encode(),
        b'data: {"choices": [{"index": "first"}]}\n\n',
        b"data: \xff\n\n",
        b"data: {not json\n\n",
    ],
    ids=["error_echoing_the_key", "index_text", "not_utf8", "not_json"],
)
async def test_a_malformed_stream_is_a_sampling_error_with_redacted_text(events: bytes) -> None:
    reply = httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
    async with _sampler(reply) as sampler:
        with pytest.raises(SamplingError) as info:
            async for _ in sampler.stream([1, 2], max_tokens=2):
                pass
    assert info.value.request_id and info.value.message.startswith("malformed completions")
    assert KEY not in str(info.value)


# -- tracebacks: the user's frames, not the library's (issue 27) ------------------------------


def _library_frames(error: BaseException) -> list[str]:
    frames = traceback.extract_tb(error.__traceback__)
    return [f.name for f in frames if f"{os.sep}firetitan_async{os.sep}" in f.filename]


@pytest.mark.anyio
async def test_a_failed_operation_raises_without_the_librarys_internal_frames(
    local_trainer: LocalTrainer,
) -> None:
    bad = types.Datum(
        model_input=types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.array([2, 3, 999])),
            "weights": types.TensorData.from_numpy(np.ones(3, np.float32)),
        },
    )
    async with ServiceSession(local_trainer.base_url) as session:
        client = await session.create_training_client("local/tiny-byte-lm")
        pending = client.forward_backward([bad], "cross_entropy")
        with pytest.raises(FiretitanError, match="out of range") as awaited:
            await pending
        # Built deep in a background task (transport, retry loop, ordered submission: a dozen
        # frames); shown from the one line that raised it to the user.
        assert _library_frames(awaited.value) == ["wait"], traceback.format_exception(
            awaited.value
        )
        with pytest.raises(FiretitanError) as again:
            pending.result()
        assert _library_frames(again.value) == ["result"]
        printed = "".join(traceback.format_exception(again.value))
        assert printed.count("\n") < 12, printed


@pytest.mark.anyio
async def test_trimming_keeps_the_cause_and_leaves_other_exceptions_whole() -> None:
    def deep() -> None:
        raise KeyError("a bug somewhere")

    failed: Pending[int] = Pending("op")
    try:
        try:
            deep()
        except KeyError as cause:
            raise FiretitanError("the reply did not parse") from cause
    except FiretitanError as exc:
        failed._set_exception(exc)
    with pytest.raises(FiretitanError) as info:
        await failed
    assert isinstance(info.value.__cause__, KeyError)  # the cause, with its own frames
    assert [f.name for f in traceback.extract_tb(info.value.__cause__.__traceback__)][-1] == "deep"

    bug: Pending[int] = Pending("op")
    try:
        deep()
    except KeyError as exc:
        bug._set_exception(exc)
    with pytest.raises(KeyError) as whole:  # not a FiretitanError: every frame kept
        await bug
    assert "deep" in [f.name for f in traceback.extract_tb(whole.value.__traceback__)]
