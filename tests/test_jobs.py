"""TrainerJobs: value types, the REST lifecycle against the local trainer, retries and secrets.

Lifecycle tests talk to the real local trainer over loopback HTTP; ``httpx.MockTransport`` is
used only for fault shapes a real server cannot produce on demand (a lost connection before or
after sending, a scripted 503 then success, a 401 body that echoes the key).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from firetitan_async import (
    APIStatusError,
    CreatedTrainerJob,
    FiretitanError,
    InvalidInput,
    JobState,
    PlatformAPIError,
    RetryPolicy,
    SessionClosed,
    TrainerJob,
    TrainerJobConfig,
    TrainerJobFailed,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.platform._config import format_duration

MODEL = "local/tiny-byte-lm"
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_cap_s=0.01, deadline_s=5)
SECRET = "fw-secret-key-0123456789abcdef"
JOB_ID_RE = re.compile(r"^training-api-service-[0-9a-f]{8}$")
SHAPE = "accounts/fireworks/trainingShapes/qwen3-8b-128k-h200"


# -- value types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_model": ""}, "base_model"),
        ({"base_model": None}, "base_model"),
        ({"lora_rank": -1}, "lora_rank"),
        ({"lora_rank": True}, "lora_rank"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": math.nan}, "learning_rate"),
        ({"learning_rate": "1e-5"}, "learning_rate"),
        ({"projection_head_dim": -1}, "projection_head_dim"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
        ({"display_name": "x" * 64}, "display_name"),
        ({"display_name": 3}, "display_name"),
        ({"inactivity_timeout": "30m"}, "inactivity_timeout"),
        ({"inactivity_timeout": timedelta(hours=3, seconds=1)}, "inactivity_timeout"),
        ({"inactivity_timeout": "-5s"}, "inactivity_timeout"),
        ({"inactivity_timeout": 1800}, "inactivity_timeout"),
        ({"training_shape_ref": "qwen3-8b-128k-h200"}, "training_shape_ref"),
        ({"training_shape_ref": SHAPE, "auto_select_training_shape": True}, "training_shape_ref"),
        ({"training_shape_ref": SHAPE, "node_count": 2}, "node_count"),
        ({"auto_select_training_shape": True, "accelerator_type": "H200"}, "accelerator_type"),
        ({"training_shape_ref": SHAPE, "accelerator_count": 8}, "accelerator_count"),
        ({"extra_args": "--flag"}, "extra_args"),
        ({"extra_values": {"a": 1}}, "extra_values"),
        ({"forward_only": 1}, "forward_only"),
        ({"requested_job_id": 5}, "requested_job_id"),
    ],
)
def test_config_rejects_bad_fields_naming_them(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        TrainerJobConfig(**{"base_model": MODEL, **kwargs})
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_config_manual_path_body_and_query_are_the_sdks() -> None:
    # Study §2.3, observed on the wire: the manual path always skips validations.
    config = TrainerJobConfig(base_model=MODEL, display_name="fw-sdk-probe")
    assert config.path == "manual"
    assert config.to_body() == {
        "serviceMode": True,
        "keepAlive": False,
        "dataset": "",
        "trainingConfig": {"baseModel": MODEL, "loraRank": 0, "learningRate": 1e-05},
        "useReservation": True,
        "nodeCount": 1,
        "displayName": "fw-sdk-probe",
    }
    assert config.query("j1") == [("skipValidations", "true"), ("rlorTrainerJobId", "j1")]


def test_config_shape_and_auto_paths_and_every_optional_field() -> None:
    config = TrainerJobConfig(
        base_model=MODEL,
        lora_rank=8,
        projection_head_dim=16,
        max_context_length=8192,
        training_shape_ref=SHAPE,
        skip_validations=True,
        trainer_replica_count=2,
        hot_load_deployment_id="dep-1",
        region="US",
        custom_image_tag="img:1",
        extra_args=["--a 1", "--b"],
        extra_values={"k": "v"},
        forward_only=True,
        inactivity_timeout=timedelta(minutes=30),
        purpose="rl",
        preemptible=True,
        managed_by="me",
        reservation_target="res-1",
    )
    assert config.path == "shape"
    assert config.query("j1") == [
        ("deploymentId", "dep-1"),
        ("trainingShape", SHAPE),
        ("skipValidations", "true"),
        ("rlorTrainerJobId", "j1"),
    ]
    assert config.to_body() == {
        "serviceMode": True,
        "keepAlive": False,
        "dataset": "",
        "trainingConfig": {
            "baseModel": MODEL,
            "loraRank": 8,
            "learningRate": 1e-05,
            "projectionHeadDim": 16,
            "customImageTag": "img:1",
            "region": "US",
            "extraArgs": ["--a", "1", "--b"],
        },  # no maxContextLength on the shape path: the shape sets it
        "trainerReplicaCount": 2,
        "useReservation": False,  # a reservation target wins
        "reservationTarget": "res-1",
        "hotLoadDeploymentId": "dep-1",
        "extraValues": {"k": "v"},
        "forwardOnly": True,
        "purpose": "rl",
        "preemptible": True,
        "managedBy": "me",
        "inactivityTimeout": "1800s",
    }
    auto = TrainerJobConfig(
        base_model=MODEL, auto_select_training_shape=True, max_context_length=64
    )
    assert auto.path == "auto_shape"
    assert auto.query("j2") == [("rlorTrainerJobId", "j2")]
    assert "nodeCount" not in auto.to_body()
    assert auto.to_body()["trainingConfig"]["maxContextLength"] == 64


def test_config_deprecations_and_durations(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    TrainerJobConfig(base_model=MODEL, gradient_accumulation_steps=1)
    assert any("deprecated" in r.getMessage() for r in caplog.records)
    assert format_duration(timedelta(seconds=1.5)) == "1.5s"
    assert format_duration("90s") == "90s"
    config = TrainerJobConfig(base_model=MODEL)
    with pytest.raises(AttributeError):
        config.lora_rank = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "short", "terminal"),
    [
        ("JOB_STATE_RUNNING", "RUNNING", False),
        ("JOB_STATE_CREATING", "CREATING", False),
        ("JOB_STATE_PENDING", "PENDING", False),
        ("JOB_STATE_PAUSED", "PAUSED", False),
        ("JOB_STATE_FAILED", "FAILED", True),
        ("JOB_STATE_CANCELLED", "CANCELLED", True),
        ("JOB_STATE_COMPLETED", "COMPLETED", True),
        ("JOB_STATE_EXPIRED", "EXPIRED", True),
        ("JOB_STATE_DELETING", "DELETING", True),
        ("JOB_STATE_DELETED", "DELETED", True),
        ("JOB_STATE_ARCHIVED", "ARCHIVED", True),
        ("FAILED", "FAILED", True),
        ("JOB_STATE_SOMETHING_NEW", "SOMETHING_NEW", False),
        (None, "UNSPECIFIED", False),
        ("", "UNSPECIFIED", False),
    ],
)
def test_job_states(raw: str | None, short: str, terminal: bool) -> None:
    assert JobState.normalize(raw) == short
    assert JobState.is_terminal(short) is terminal


def test_job_record_parsing_follows_the_sdk() -> None:
    record = {
        "name": "accounts/acme/rlorTrainerJobs/j-1",
        "displayName": "run",
        "state": "JOB_STATE_RUNNING",
        "status": {"code": "INTERNAL", "message": "from status"},
        "directRouteHandle": "https://ignored.example/",
        "trainingConfig": {"maxContextLength": 8192},
        "someFutureField": {"nested": [1, 2]},
    }
    gateway = "https://gw.example/training/v1/rlorTrainerJobs/acme/j-1"
    job = TrainerJob.from_record(record, gateway_url=gateway)
    assert (job.job_id, job.job_name, job.state) == ("j-1", record["name"], "RUNNING")
    assert job.base_url == gateway  # the gateway, never directRouteHandle
    assert (job.status_message, job.status_code, job.max_context_length) == (
        "from status",
        13,
        8192,
    )
    assert job.raw["someFutureField"] == {"nested": [1, 2]}
    endpoint = job.endpoint()
    assert endpoint is not None and endpoint.max_context_length == 8192
    assert "someFutureField" not in repr(job)
    # statusMessage wins over status.message; a numeric code passes; no URL unless RUNNING.
    other = TrainerJob.from_record(
        {**record, "state": "JOB_STATE_PENDING", "statusMessage": "top", "status": {"code": 5}},
        gateway_url=gateway,
    )
    assert (other.status_message, other.status_code, other.base_url) == ("top", 5, None)
    bad_records: list[Any] = [{}, {"name": "nope"}, [], {"name": "accounts/a/rlorTrainerJobs/"}]
    for bad in bad_records:
        with pytest.raises(FiretitanError):
            TrainerJob.from_record(bad)


def test_constructor_checks_key_url_and_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    monkeypatch.delenv("FIREWORKS_TRAINER_GATEWAY_URL", raising=False)
    with pytest.raises(FiretitanError, match="FIREWORKS_API_KEY"):
        TrainerJobs()
    with pytest.raises(ValueError, match="http://"):
        TrainerJobs(SECRET, base_url="http://api.example.com")
    with pytest.raises(InvalidInput) as info:
        TrainerJobs(SECRET, account_id="a/b")
    assert info.value.field == "account_id"
    with pytest.raises(InvalidInput) as info:
        TrainerJobs(SECRET, trainer_gateway_url="http://gw.example.com")
    assert info.value.field == "trainer_gateway_url"
    # Loopback (the local trainer) needs no key; the gateway defaults to the base URL.
    assert TrainerJobs(base_url="http://127.0.0.1:9").trainer_gateway_url == "http://127.0.0.1:9"
    monkeypatch.setenv("FIREWORKS_API_KEY", SECRET)
    monkeypatch.setenv("FIREWORKS_TRAINER_GATEWAY_URL", "https://gw.example/")
    jobs = TrainerJobs()
    assert jobs.trainer_gateway_url == "https://gw.example"
    assert SECRET not in repr(jobs) and "<redacted>" in repr(jobs)


# -- against the local trainer ----------------------------------------------------------------


@pytest.mark.anyio
async def test_lifecycle_create_get_list_resume_delete() -> None:
    async with (
        LocalTrainer(warmup_s=0.0, api_key=SECRET) as lt,
        TrainerJobs(SECRET, base_url=lt.control_plane_url) as jobs,  # account from the key
    ):
        assert await jobs.account_id() == lt.account_id
        config = TrainerJobConfig(base_model=MODEL, lora_rank=4, display_name="lifecycle")
        created = await jobs.create(config)
        assert isinstance(created, CreatedTrainerJob)
        assert JOB_ID_RE.match(created.job_id)
        assert created.job_name == f"accounts/{lt.account_id}/rlorTrainerJobs/{created.job_id}"
        assert await jobs.job_name(created.job_id) == created.job_name

        job = await jobs.get(created.job_id)
        assert job.job_id == created.job_id and job.job_name == created.job_name
        assert job.display_name == "lifecycle"
        assert job.raw["trainingConfig"]["loraRank"] == 4
        # The full resource name is accepted wherever an id is.
        assert (await jobs.get(created.job_name)).job_id == created.job_id

        other = await jobs.create(TrainerJobConfig(base_model=MODEL))
        listed = [j.job_id for j in await jobs.list_jobs(page_size=1)]  # two pages
        assert listed == [created.job_id, other.job_id]
        assert lt.stats()["requests"]["jobs.list"] == 2

        endpoint = await jobs.wait_for_ready(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert endpoint.job_id == created.job_id
        gateway = f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/{lt.account_id}"
        assert endpoint.base_url == f"{gateway}/{created.job_id}"
        running = await jobs.get(created.job_id)
        assert running.state == "RUNNING" and running.base_url == endpoint.base_url

        lt.fail_job(created.job_id, message="node lost")
        failed = await jobs.get(created.job_id)
        assert failed.state == "FAILED" and failed.is_terminal and failed.status_code == 13
        assert failed.status_message is not None and "node lost" in failed.status_message
        resumed = await jobs.resume(created.job_id)
        assert resumed.job_id == created.job_id and not resumed.is_terminal
        again = await jobs.wait_for_ready(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert again.base_url == endpoint.base_url
        with pytest.raises(PlatformAPIError) as not_resumable:
            await jobs.resume(created.job_id)  # RUNNING: nothing to resume
        assert not_resumable.value.status_code == 400 and not_resumable.value.grpc_code == 9

        await jobs.delete(created.job_id)
        tombstone = await jobs.get(created.job_id)
        assert tombstone.state == "DELETED" and tombstone.is_tombstone
        with pytest.raises(PlatformAPIError) as info:
            await jobs.delete(created.job_id)  # a real 404 on the first attempt raises
        assert info.value.status_code == 404 and info.value.grpc_code == 5
        assert await jobs.try_get("no-such-job") is None
    with pytest.raises(SessionClosed):
        await jobs.get(created.job_id)


@pytest.mark.anyio
async def test_409_adopts_the_existing_job_and_a_tombstone_raises() -> None:
    async with (
        LocalTrainer() as lt,
        TrainerJobs(base_url=lt.control_plane_url) as jobs,
    ):
        config = TrainerJobConfig(base_model=MODEL, requested_job_id="my-job-1")
        first = await jobs.create(config)
        again = await jobs.create(config)  # e.g. a retried script: the job is adopted
        assert first == again and first.job_id == "my-job-1"
        assert [j.job_id for j in await jobs.list_jobs()] == ["my-job-1"]
        await jobs.delete("my-job-1")
        with pytest.raises(TrainerJobFailed, match="cannot be reused") as info:
            await jobs.create(config)
        assert info.value.state == "DELETED"


@pytest.mark.anyio
async def test_bad_ids_and_bad_requests_are_refused() -> None:
    async with (
        LocalTrainer() as lt,
        TrainerJobs(base_url=lt.control_plane_url) as jobs,
    ):
        for bad in ("", "a/b", "x?y", "accounts/other/rlorTrainerJobs/j"):
            with pytest.raises(InvalidInput) as info:
                await jobs.get(bad)
            assert info.value.field == "job_id"
        with pytest.raises(InvalidInput):
            await jobs.create({"base_model": MODEL})  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="fireworks account"):
            await jobs.create(TrainerJobConfig(base_model=MODEL, disable_inactivity_cleanup=True))
        # The server's google.rpc error is parsed, and the refused create changed nothing.
        with pytest.raises(PlatformAPIError) as refused:
            await jobs.create(TrainerJobConfig(base_model="other/model"))
        assert refused.value.status_code == 400 and refused.value.grpc_code == 3
        assert "other/model" in refused.value.message
        assert await jobs.list_jobs() == []


@pytest.mark.anyio
async def test_create_and_wait() -> None:
    async with (
        LocalTrainer(warmup_s=0.2) as lt,
        TrainerJobs(base_url=lt.control_plane_url) as jobs,
    ):
        endpoint = await jobs.create_and_wait(
            TrainerJobConfig(base_model=MODEL), poll_interval_s=0.02, timeout_s=10
        )
        assert (await jobs.get(endpoint.job_id)).state == "RUNNING"
        assert await jobs.probe_trainer(endpoint.base_url)


@pytest.mark.anyio
async def test_wrong_key_is_rejected_and_never_shown() -> None:
    async with LocalTrainer(api_key="the-right-key") as lt:
        async with TrainerJobs(SECRET, account_id="local", base_url=lt.control_plane_url) as jobs:
            with pytest.raises(APIStatusError) as info:
                await jobs.create(TrainerJobConfig(base_model=MODEL))
            assert info.value.status_code == 401
            with pytest.raises(APIStatusError) as info_get:
                await jobs.get("whatever")
            assert info_get.value.status_code == 401
            for text in (str(info.value), repr(info.value), str(info.value.body), repr(jobs)):
                assert SECRET not in text
            for text in (str(info_get.value), repr(info_get.value), str(info_get.value.body)):
                assert SECRET not in text
        async with TrainerJobs("the-right-key", base_url=lt.control_plane_url) as jobs:
            created = await jobs.create(TrainerJobConfig(base_model=MODEL))
            assert (await jobs.get(created.job_id)).job_id == created.job_id


# -- fault shapes (MockTransport) -------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def _record(job_id: str, state: str = "JOB_STATE_PENDING", **more: Any) -> dict[str, Any]:
    return {"name": f"accounts/acme/rlorTrainerJobs/{job_id}", "state": state, **more}


def _jobs(handler: Handler, **kwargs: Any) -> TrainerJobs:
    return TrainerJobs(
        SECRET,
        account_id="acme",
        transport=httpx.MockTransport(handler),
        retry=kwargs.pop("retry", FAST_RETRY),
        **kwargs,
    )


def _script(
    *steps: Callable[[httpx.Request], httpx.Response],
) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    pending: Iterator[Callable[[httpx.Request], httpx.Response]] = iter(steps)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(pending)(request)

    return handler, seen


def _raise(exc_type: type[httpx.TransportError]) -> Handler:
    def step(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return step


def _reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    return lambda _request: httpx.Response(status, json=body, headers=headers)


@pytest.mark.anyio
async def test_get_retries_transient_failures_and_sends_x_api_key() -> None:
    handler, seen = _script(
        _raise(httpx.ConnectError),
        _reply(503, {"error": "busy"}),
        _raise(httpx.ReadTimeout),
        _reply(200, _record("j1", "JOB_STATE_RUNNING")),
    )
    async with _jobs(handler) as jobs:
        job = await jobs.get("j1")
    assert job.state == "RUNNING"
    assert len(seen) == 4
    assert all(r.headers["X-Api-Key"] == SECRET for r in seen)
    assert all(r.headers["Content-Type"] == "application/json" for r in seen)
    assert not any("Authorization" in r.headers for r in seen)
    assert seen[0].url.path == "/v1/accounts/acme/rlorTrainerJobs/j1"
    assert str(seen[0].url).startswith("https://api.fireworks.ai/")


@pytest.mark.anyio
async def test_get_honours_retry_after() -> None:
    handler, seen = _script(
        _reply(429, {"error": "slow down"}, {"Retry-After": "0.2"}),
        _reply(200, _record("j1")),
    )
    # The policy caps a Retry-After at 6 x backoff_cap_s (0.6 s here).
    policy = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.1)
    async with _jobs(handler, retry=policy) as jobs:
        started = anyio.current_time()
        await jobs.get("j1")
        assert anyio.current_time() - started >= 0.19
    assert len(seen) == 2


@pytest.mark.anyio
async def test_get_gives_up_after_max_attempts() -> None:
    handler, seen = _script(*[_reply(503, {"error": "down"})] * 4)
    async with _jobs(handler) as jobs:
        with pytest.raises(APIStatusError) as info:
            await jobs.get("j1")
    assert info.value.status_code == 503 and len(seen) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("exc_type", [httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_a_create_whose_reply_was_lost_is_resent_with_the_same_id_and_adopted(
    exc_type: type[httpx.TransportError],
) -> None:
    # The first POST may have created the job; the resend hits 409 and adopts it via GET.
    handler, seen = _script(
        _raise(exc_type),
        _reply(409, {"code": 6, "message": "exists", "details": []}),
        lambda r: httpx.Response(200, json=_record(r.url.path.rsplit("/", 1)[1])),
    )
    async with _jobs(handler) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
    assert [r.method for r in seen] == ["POST", "POST", "GET"]
    ids = {r.url.params["rlorTrainerJobId"] for r in seen[:2]}
    assert ids == {created.job_id} and JOB_ID_RE.match(created.job_id)
    assert seen[2].url.path.endswith(f"/rlorTrainerJobs/{created.job_id}")
    assert json.loads(seen[0].content) == json.loads(seen[1].content)
    assert "X-Idempotency-Key" not in seen[0].headers  # the id is the idempotency


@pytest.mark.anyio
async def test_create_client_errors_are_not_retried() -> None:
    handler, seen = _script(_reply(400, {"code": 3, "message": "bad base model", "details": []}))
    async with _jobs(handler) as jobs:
        with pytest.raises(PlatformAPIError, match="bad base model") as info:
            await jobs.create(TrainerJobConfig(base_model=MODEL))
    assert info.value.status_code == 400 and len(seen) == 1


@pytest.mark.anyio
async def test_delete_whose_reply_was_lost_counts_as_deleted() -> None:
    handler, seen = _script(_reply(502), _reply(404, {"error": "not found"}))
    async with _jobs(handler) as jobs:
        await jobs.delete("j1")
    assert [r.method for r in seen] == ["DELETE", "DELETE"]
    handler, seen = _script(_reply(404, {"error": "not found"}))
    async with _jobs(handler) as jobs:
        with pytest.raises(APIStatusError):
            await jobs.delete("j1")
    handler, seen = _script(*[_reply(500, {"error": "boom"})] * 4)
    async with _jobs(handler) as jobs:
        with pytest.raises(APIStatusError):  # the SDK only logs this; we raise
            await jobs.delete("j1")


@pytest.mark.anyio
async def test_key_echoed_by_a_server_is_redacted() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        got = request.headers["X-Api-Key"]
        return httpx.Response(401, json={"message": f"invalid credential {got}", "raw": [got]})

    async with _jobs(echo) as jobs:
        with pytest.raises(APIStatusError) as info:
            await jobs.get("j1")
    text = f"{info.value} {info.value!r} {info.value.body}"
    assert SECRET not in text and "<redacted>" in text


# -- checkpoints, promotion, shapes, reconnect (against the local trainer) ----------------------


def _job_with_checkpoints(lt: LocalTrainer, job_id: str, rank: int) -> None:
    """Create a job and save a training state, a base and a delta snapshot through its gateway."""
    with httpx.Client(timeout=10) as http:
        created = http.post(
            f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs",
            params={"rlorTrainerJobId": job_id},
            json={"trainingConfig": {"baseModel": MODEL, "loraRank": rank}},
        )
        assert created.status_code == 200, created.text
        api = f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/{lt.account_id}/{job_id}/api/v1"
        session = http.post(f"{api}/create_session", json={}).json()["session_id"]
        model = http.post(
            f"{api}/create_model",
            json={
                "session_id": session,
                "model_seq_id": 0,
                "base_model": MODEL,
                "lora_config": {"rank": rank},
            },
        ).json()["model_id"]
        for seq, (endpoint, name, kind) in enumerate(
            [
                ("save_weights", "step-1", None),
                ("save_weights_for_sampler", "snap-a", "base"),
                ("save_weights_for_sampler", "snap-b", "delta"),
            ],
            start=1,
        ):
            body: dict[str, Any] = {"model_id": model, "seq_id": seq, "path": name}
            if kind:
                body["checkpoint_type"] = kind
            fut = http.post(f"{api}/{endpoint}", json=body).json()
            http.post(f"{api}/retrieve_future", json={"request_id": fut["request_id"]})


@pytest.mark.anyio
async def test_list_checkpoints_reads_every_page_typed() -> None:
    async with LocalTrainer() as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        await anyio.to_thread.run_sync(_job_with_checkpoints, lt, "ckpt-job", 4)
        rows = await jobs.list_checkpoints("ckpt-job", page_size=1)
        assert [(r.checkpoint_id, r.promotable, r.checkpoint_type) for r in rows] == [
            ("step-1", False, "CHECKPOINT_TYPE_TRAINING_LORA"),
            ("snap-a", True, "CHECKPOINT_TYPE_INFERENCE_LORA"),
            ("snap-b", False, "CHECKPOINT_TYPE_INFERENCE_ARC_V2"),
        ]
        assert all(r.job_id == "ckpt-job" and r.create_time for r in rows)
        assert (
            rows[0].name == f"accounts/{lt.account_id}/rlorTrainerJobs/ckpt-job/checkpoints/step-1"
        )
        assert lt.stats()["requests"]["jobs.checkpoints"] == 3  # one request per page
        assert rows == await jobs.list_checkpoints("ckpt-job")
        with pytest.raises(PlatformAPIError) as info:
            await jobs.list_checkpoints("no-such-job")
        assert info.value.status_code == 404


@pytest.mark.anyio
async def test_list_checkpoints_refuses_a_repeating_page_token() -> None:
    page = {"checkpoints": [], "nextPageToken": "same"}
    async with _jobs(lambda _r: httpx.Response(200, json=page)) as jobs:
        with pytest.raises(FiretitanError, match="repeats"):
            await jobs.list_checkpoints("j1")


@pytest.mark.anyio
async def test_promotion_polls_the_operation_and_falls_back_without_async() -> None:
    async with LocalTrainer() as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        await anyio.to_thread.run_sync(_job_with_checkpoints, lt, "ckpt-job", 0)
        knobs = f"{lt.base_url}/_local/control_plane"
        async with httpx.AsyncClient() as http:
            await http.post(knobs, json={"promote_pending_polls": 2})
        row = [r for r in await jobs.list_checkpoints("ckpt-job") if r.promotable][-1]
        model = await jobs.promote_checkpoint(
            name=row.name, output_model_id="m-one", base_model=MODEL, poll_interval_s=0.01
        )
        assert model.name == f"accounts/{lt.account_id}/models/m-one"
        assert (model.model_id, model.state, model.kind) == ("m-one", "READY", "HF_BASE_MODEL")
        assert "@type" not in model.raw
        assert lt.stats()["requests"]["operations.get"] == 2
        # An older control plane refuses async_promotion: the same body is sent without it.
        async with httpx.AsyncClient() as http:
            await http.post(knobs, json={"reject_async_promotion": True})
        legacy = await jobs.promote_checkpoint(
            job_id="ckpt-job", checkpoint_id="snap-a", output_model_id="m-two", base_model=MODEL
        )
        assert legacy.model_id == "m-two"
        assert lt.stats()["requests"]["checkpoints.promote"] == 3
        with pytest.raises(PlatformAPIError, match="not promotable") as info:
            await jobs.promote_checkpoint(
                job_id="ckpt-job", checkpoint_id="snap-b", output_model_id="m3", base_model=MODEL
            )
        assert info.value.grpc_code == 9  # FAILED_PRECONDITION
        sent = lt.stats()["requests"]["checkpoints.promote"]
        for kwargs, field in (
            ({"name": row.name, "output_model_id": "Bad_Id"}, "output_model_id"),
            ({"name": "ckpt-job/snap-a", "output_model_id": "ok"}, "name"),
            ({"job_id": "ckpt-job", "output_model_id": "ok"}, "name"),
            ({"name": row.name, "checkpoint_id": "x", "output_model_id": "ok"}, "checkpoint_id"),
            ({"name": row.name, "job_id": "other", "output_model_id": "ok"}, "job_id"),
        ):
            with pytest.raises(InvalidInput) as bad:
                await jobs.promote_checkpoint(base_model=MODEL, **kwargs)  # type: ignore[arg-type]
            assert bad.value.field == field
        assert lt.stats()["requests"]["checkpoints.promote"] == sent  # refused before sending


@pytest.mark.anyio
async def test_a_failed_promotion_operation_raises() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"operation": {"name": "accounts/acme/operations/o1"}})
        return httpx.Response(
            200,
            json={
                "name": "accounts/acme/operations/o1",
                "done": True,
                "error": {"code": 9, "message": "bucket gone"},
            },
        )

    async with _jobs(handler) as jobs:
        with pytest.raises(FiretitanError, match="bucket gone"):
            await jobs.promote_checkpoint(
                job_id="j1",
                checkpoint_id="c1",
                output_model_id="m",
                base_model=MODEL,
                poll_interval_s=0.01,
            )


@pytest.mark.anyio
async def test_resolve_training_profile() -> None:
    async with LocalTrainer() as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        shape = f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-lora"
        profile = await jobs.resolve_training_profile(shape)
        assert profile.training_shape_version == f"{shape}/versions/v1"
        assert profile.training_shape == shape and profile.supports_lora
        assert (profile.max_supported_context_length, profile.accelerator_type) == (4096, "CPU")
        assert profile.pipeline_parallelism == 1
        assert profile.deployment_shape == (
            "accounts/fireworks/deploymentShapes/tiny-byte-lm/versions/v1"
        )
        assert await jobs.resolve_training_profile(f"{shape}/versions/v1") == profile
        full = await jobs.resolve_training_profile(shape.replace("lora", "full"))
        assert not full.supports_lora
        with pytest.raises(InvalidInput):
            await jobs.resolve_training_profile("tiny-byte-lm-lora")
        with pytest.raises(PlatformAPIError) as info:
            await jobs.resolve_training_profile(f"accounts/{lt.account_id}/trainingShapes/nope")
        assert info.value.status_code == 404
        # A config on the shape path launches with the shape's context length.
        created = await jobs.create(
            TrainerJobConfig(
                base_model=MODEL, lora_rank=4, training_shape_ref=profile.training_shape
            )
        )
        assert (await jobs.get(created.job_id)).max_context_length == 4096


@pytest.mark.anyio
async def test_reconnect_resumes_a_failed_job_and_waits_for_a_running_one() -> None:
    async with LocalTrainer(warmup_s=0.2) as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        first = await jobs.reconnect_and_wait(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert lt.stats()["requests"].get("jobs.resume", 0) == 0  # it was only warming up
        lt.fail_job(created.job_id, "preempted")
        again = await jobs.reconnect_and_wait(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert again == first and lt.stats()["requests"]["jobs.resume"] == 1
        lt.fail_job(created.job_id, "preempted again")
        assert await jobs.resume_and_wait(created.job_id, poll_interval_s=0.02) == first
        await jobs.delete(created.job_id)
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.reconnect_and_wait(created.job_id, resumable_poll_s=0.01)
        assert info.value.state == "DELETED"


def test_the_trainer_jobs_example_runs() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "FIREWORKS_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "examples/trainer_jobs.py", "--steps", "2", "--backend", "trio"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "RUNNING" in proc.stdout and "promoted" in proc.stdout and "deleted" in proc.stdout


@pytest.mark.anyio
async def test_a_failed_jobs_status_message_never_shows_the_key() -> None:
    """A job whose status message echoes the key: records, waits and errors stay clean."""
    async with (
        LocalTrainer(api_key=SECRET) as lt,
        TrainerJobs(SECRET, base_url=lt.control_plane_url) as jobs,
    ):
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        fail = f"{lt.control_plane_url}/_local/jobs/{created.job_id}/fail"
        async with httpx.AsyncClient(headers={"X-Api-Key": SECRET}) as http:
            reply = await http.post(fail, json={"message": f"bad credential {SECRET}"})
            assert reply.status_code == 200, reply.text
        job = await jobs.get(created.job_id)
        assert job.status_message and SECRET not in f"{job.status_message} {job.raw}"
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.wait_for_ready(created.job_id, poll_interval_s=0.01, timeout_s=5)
        assert "bad credential <redacted>" in str(info.value)
        assert SECRET not in f"{info.value} {info.value!r}"
        await jobs.delete(created.job_id)
