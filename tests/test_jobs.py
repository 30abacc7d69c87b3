"""TrainerJobs: value types, the REST lifecycle against the local trainer, retries and secrets.

Lifecycle tests talk to the real local trainer over loopback HTTP; ``httpx.MockTransport`` is
used only for fault shapes a real server cannot produce on demand (a lost connection before or
after sending, a scripted 503 then success, a 401 body that echoes the key, pagination).
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable, Iterator
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
    RetryPolicy,
    SessionClosed,
    TrainerJob,
    TrainerJobConfig,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_cap_s=0.01, deadline_s=5)
SECRET = "fw-secret-key-0123456789abcdef"


# -- value types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"base_model": ""}, "base_model"),
        ({"base_model": "   "}, "base_model"),
        ({"base_model": None}, "base_model"),
        ({"base_model": MODEL, "lora_rank": -1}, "lora_rank"),
        ({"base_model": MODEL, "lora_rank": 1.5}, "lora_rank"),
        ({"base_model": MODEL, "lora_rank": True}, "lora_rank"),
        ({"base_model": MODEL, "learning_rate": 0.0}, "learning_rate"),
        ({"base_model": MODEL, "learning_rate": -1e-4}, "learning_rate"),
        ({"base_model": MODEL, "learning_rate": math.nan}, "learning_rate"),
        ({"base_model": MODEL, "learning_rate": math.inf}, "learning_rate"),
        ({"base_model": MODEL, "learning_rate": "1e-5"}, "learning_rate"),
        ({"base_model": MODEL, "training_shape_ref": ""}, "training_shape_ref"),
        ({"base_model": MODEL, "display_name": 3}, "display_name"),
        ({"base_model": MODEL, "extra": [("a", 1)]}, "extra"),
        ({"base_model": MODEL, "extra": {"x": object()}}, "extra"),
        ({"base_model": MODEL, "extra": {"serviceMode": False}}, "extra.serviceMode"),
        ({"base_model": MODEL, "extra": {"trainingConfig": 3}}, "extra.trainingConfig"),
        (
            {"base_model": MODEL, "extra": {"trainingConfig": {"loraRank": 4}}},
            "extra.trainingConfig.loraRank",
        ),
    ],
)
def test_config_rejects_bad_fields_naming_them(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        TrainerJobConfig(**kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_config_body_has_the_rest_shape() -> None:
    config = TrainerJobConfig(
        base_model="accounts/fireworks/models/qwen3-8b",
        lora_rank=16,
        learning_rate=2e-5,
        training_shape_ref="accounts/fireworks/trainingShapes/qwen3-8b-128k-h200",
        display_name="my run",
        extra={"trainingConfig": {"maxContextLength": 8192}, "annotations": {"team": "rl"}},
    )
    assert config.to_body() == {
        "serviceMode": True,
        "displayName": "my run",
        "trainingShapeRef": "accounts/fireworks/trainingShapes/qwen3-8b-128k-h200",
        "trainingConfig": {
            "maxContextLength": 8192,
            "baseModel": "accounts/fireworks/models/qwen3-8b",
            "loraRank": 16,
            "learningRate": 2e-5,
        },
        "annotations": {"team": "rl"},
    }
    minimal = TrainerJobConfig(base_model=MODEL).to_body()
    assert minimal == {
        "serviceMode": True,
        "trainingConfig": {"baseModel": MODEL, "loraRank": 0, "learningRate": 1e-5},
    }


def test_config_is_frozen_and_extra_is_a_copy() -> None:
    extra = {"a": 1}
    config = TrainerJobConfig(base_model=MODEL, extra=extra)
    extra["a"] = 2
    assert config.extra["a"] == 1
    with pytest.raises(AttributeError):
        config.lora_rank = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.extra["b"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("raw", "short", "terminal"),
    [
        ("JOB_STATE_RUNNING", "RUNNING", False),
        ("JOB_STATE_CREATING", "CREATING", False),
        ("JOB_STATE_PENDING", "PENDING", False),
        ("JOB_STATE_FAILED", "FAILED", True),
        ("JOB_STATE_CANCELLED", "CANCELLED", True),
        ("JOB_STATE_COMPLETED", "COMPLETED", True),
        ("JOB_STATE_EXPIRED", "EXPIRED", True),
        ("JOB_STATE_DELETING", "DELETING", True),
        ("FAILED", "FAILED", True),
        ("JOB_STATE_SOMETHING_NEW", "SOMETHING_NEW", False),
        (None, "UNSPECIFIED", False),
        ("", "UNSPECIFIED", False),
    ],
)
def test_job_states(raw: str | None, short: str, terminal: bool) -> None:
    assert JobState.normalize(raw) == short
    assert JobState.is_terminal(short) is terminal


def test_job_record_keeps_unknown_fields() -> None:
    record = {
        "name": "accounts/acme/rlorTrainerJobs/j-1",
        "displayName": "run",
        "state": "JOB_STATE_RUNNING",
        "status": {"code": "OK", "message": "ready"},
        "directRouteHandle": "https://trainer.example/",
        "someFutureField": {"nested": [1, 2]},
    }
    job = TrainerJob.from_record(record)
    assert (job.job_id, job.job_name, job.state) == ("j-1", record["name"], "RUNNING")
    assert job.base_url == "https://trainer.example"
    assert job.status_message == "ready"
    assert job.raw["someFutureField"] == {"nested": [1, 2]}
    endpoint = job.endpoint()
    assert endpoint is not None and endpoint.base_url == "https://trainer.example"
    assert "someFutureField" not in repr(job)
    bad_records: list[Any] = [{}, {"name": "nope"}, [], {"name": "accounts/a/rlorTrainerJobs/"}]
    for bad in bad_records:
        with pytest.raises(FiretitanError):
            TrainerJob.from_record(bad)


def test_constructor_checks_key_url_and_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    with pytest.raises(FiretitanError, match="FIREWORKS_API_KEY"):
        TrainerJobs(account_id="acme")
    with pytest.raises(ValueError, match="http://"):
        TrainerJobs(SECRET, account_id="acme", base_url="http://api.example.com")
    with pytest.raises(InvalidInput) as info:
        TrainerJobs(SECRET, account_id="a/b")
    assert info.value.field == "account_id"
    # Loopback (the local trainer) needs no key.
    TrainerJobs(account_id="acme", base_url="http://127.0.0.1:9")
    monkeypatch.setenv("FIREWORKS_API_KEY", SECRET)
    jobs = TrainerJobs(account_id="acme")
    assert SECRET not in repr(jobs) and "<redacted>" in repr(jobs)


# -- against the local trainer ----------------------------------------------------------------


@pytest.mark.anyio
async def test_lifecycle_create_get_list_resume_delete() -> None:
    async with (
        LocalTrainer(warmup_s=0.0) as lt,
        TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url) as jobs,
    ):
        config = TrainerJobConfig(base_model=MODEL, lora_rank=4, display_name="lifecycle")
        created = await jobs.create(config)
        assert isinstance(created, CreatedTrainerJob)
        assert created.job_name == f"accounts/{lt.account_id}/rlorTrainerJobs/{created.job_id}"
        assert jobs.job_name(created.job_id) == created.job_name

        job = await jobs.get(created.job_id)
        assert job.job_id == created.job_id and job.job_name == created.job_name
        assert job.display_name == "lifecycle"
        assert job.raw["trainingConfig"]["loraRank"] == 4
        # The full resource name is accepted wherever an id is.
        assert (await jobs.get(created.job_name)).job_id == created.job_id

        other = await jobs.create(TrainerJobConfig(base_model=MODEL))
        listed = {j.job_id for j in await jobs.list_jobs()}
        assert {created.job_id, other.job_id} <= listed

        endpoint = await jobs.wait_for_ready(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert endpoint.job_id == created.job_id
        running = await jobs.get(created.job_id)
        assert running.state == "RUNNING" and running.base_url == endpoint.base_url

        lt.fail_job(created.job_id, message="node lost")
        failed = await jobs.get(created.job_id)
        assert failed.state == "FAILED" and failed.is_terminal
        assert failed.status_message is not None and "node lost" in failed.status_message
        resumed = await jobs.resume(created.job_id)
        assert resumed.job_id == created.job_id and not resumed.is_terminal
        again = await jobs.wait_for_ready(created.job_id, poll_interval_s=0.02, timeout_s=10)
        assert again.base_url

        await jobs.delete(created.job_id)
        with pytest.raises(APIStatusError) as info:
            await jobs.get(created.job_id)
        assert info.value.status_code == 404
        assert created.job_id not in {j.job_id for j in await jobs.list_jobs()}
    with pytest.raises(SessionClosed):
        await jobs.get(created.job_id)


@pytest.mark.anyio
async def test_create_with_chosen_id_and_bad_ids() -> None:
    async with (
        LocalTrainer() as lt,
        TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url) as jobs,
    ):
        created = await jobs.create(TrainerJobConfig(base_model=MODEL), job_id="my-job-1")
        assert created.job_id == "my-job-1"
        for bad in ("", "a/b", "x?y", "accounts/other/rlorTrainerJobs/j"):
            with pytest.raises(InvalidInput) as info:
                await jobs.get(bad)
            assert info.value.field == "job_id"
        with pytest.raises(InvalidInput):
            await jobs.create({"base_model": MODEL})  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_create_and_wait() -> None:
    async with (
        LocalTrainer(warmup_s=0.2) as lt,
        TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url) as jobs,
    ):
        endpoint = await jobs.create_and_wait(
            TrainerJobConfig(base_model=MODEL), poll_interval_s=0.02, timeout_s=10
        )
        assert (await jobs.get(endpoint.job_id)).state == "RUNNING"
        assert await jobs.probe_trainer(endpoint.base_url)


@pytest.mark.anyio
async def test_wrong_key_is_rejected_and_never_shown() -> None:
    async with LocalTrainer(api_key="the-right-key") as lt:
        async with TrainerJobs(
            SECRET, account_id=lt.account_id, base_url=lt.control_plane_url
        ) as jobs:
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
        async with TrainerJobs(
            "the-right-key", account_id=lt.account_id, base_url=lt.control_plane_url
        ) as jobs:
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
async def test_get_retries_transient_failures_and_sends_bearer() -> None:
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
    assert all(r.headers["Authorization"] == f"Bearer {SECRET}" for r in seen)
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
async def test_create_retries_only_when_not_applied_with_one_idempotency_key() -> None:
    handler, seen = _script(
        _raise(httpx.ConnectError),
        _reply(503, {"error": "busy"}),
        _reply(429, {"error": "slow"}, {"Retry-After": "0"}),
        _reply(200, _record("new-1")),
    )
    async with _jobs(handler) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL), job_id="new-1")
    assert created.job_id == "new-1"
    keys = {r.headers["X-Idempotency-Key"] for r in seen}
    assert len(seen) == 4 and len(keys) == 1
    assert seen[0].url.params["rlorTrainerJobId"] == "new-1"
    assert json.loads(seen[-1].content)["trainingConfig"]["baseModel"] == MODEL


@pytest.mark.anyio
@pytest.mark.parametrize("exc_type", [httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_create_is_not_resent_after_a_possibly_applied_request(
    exc_type: type[httpx.TransportError],
) -> None:
    handler, seen = _script(_raise(exc_type), _reply(200, _record("dup")))
    async with _jobs(handler) as jobs:
        with pytest.raises(FiretitanError, match="may have been applied"):
            await jobs.create(TrainerJobConfig(base_model=MODEL))
    assert len(seen) == 1


@pytest.mark.anyio
async def test_create_client_errors_are_not_retried() -> None:
    handler, seen = _script(_reply(400, {"error": "bad base model"}))
    async with _jobs(handler) as jobs:
        with pytest.raises(APIStatusError, match="bad base model") as info:
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


@pytest.mark.anyio
async def test_key_echoed_by_a_server_is_redacted() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        got = request.headers["Authorization"]
        return httpx.Response(401, json={"error": f"invalid credential {got}", "raw": [got]})

    async with _jobs(echo) as jobs:
        with pytest.raises(APIStatusError) as info:
            await jobs.get("j1")
    text = f"{info.value} {info.value!r} {info.value.body}"
    assert SECRET not in text and "<redacted>" in text

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect with {SECRET}", request=request)

    async with _jobs(refuse) as jobs:
        with pytest.raises(FiretitanError) as err:
            await jobs.get("j1")
    assert SECRET not in str(err.value) and "after 4 attempt" in str(err.value)
    printed = "".join(traceback.format_exception(err.value))
    assert SECRET not in printed and "ConnectError" in printed


@pytest.mark.anyio
async def test_list_follows_pages() -> None:
    pages = {
        None: {"rlorTrainerJobs": [_record("a"), _record("b")], "nextPageToken": "p2"},
        "p2": {"rlorTrainerJobs": [_record("c")], "nextPageToken": ""},
    }
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("pageToken")
        seen.append(token)
        return httpx.Response(200, json=pages[token])

    async with _jobs(handler) as jobs:
        listed = await jobs.list_jobs(page_size=2)
    assert [j.job_id for j in listed] == ["a", "b", "c"]
    assert seen == [None, "p2"]


@pytest.mark.anyio
async def test_empty_success_body_and_non_json() -> None:
    handler, _ = _script(lambda _r: httpx.Response(200), lambda _r: httpx.Response(200, text="<h"))
    async with _jobs(handler) as jobs:
        await jobs.delete("j1")
        with pytest.raises(FiretitanError, match="expected JSON"):
            await jobs.get("j1")
