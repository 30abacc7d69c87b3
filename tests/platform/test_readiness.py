"""The readiness poller and ``firetitan-async wait``, against the local trainer over loopback.

``httpx.MockTransport`` stands in only where a real server cannot be made to misbehave on cue
(a data plane that stays 503 while its job says RUNNING, control-plane outages mid-wait).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from conftest import free_port

from firetitan_async import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ReadinessPoller,
    ReadinessProgress,
    ReadinessTimeout,
    RetryPolicy,
    TrainerJobConfig,
    TrainerJobFailed,
    TrainerJobs,
)
from firetitan_async.cli._cli import main
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"
POLL = 0.05
FAST_RETRY = RetryPolicy(max_attempts=2, backoff_base_s=0.001, backoff_cap_s=0.01, deadline_s=5)
PRE_RUNNING = ("CREATING", "PENDING", "UNSPECIFIED")


def _jobs_for(lt: LocalTrainer, **kwargs: Any) -> TrainerJobs:
    return TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url, **kwargs)


def _collapse(states: list[str]) -> list[str]:
    out: list[str] = []
    for state in states:
        if not out or out[-1] != state:
            out.append(state)
    return out


# -- against the local trainer ----------------------------------------------------------------


@pytest.mark.anyio
async def test_ready_once_running_and_not_before() -> None:
    warmup = 0.5
    async with LocalTrainer(warmup_s=warmup) as lt, _jobs_for(lt) as jobs:
        started = anyio.current_time()
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        seen: list[ReadinessProgress] = []
        poller = ReadinessPoller(
            jobs, created.job_id, poll_interval_s=POLL, timeout_s=10, on_progress=seen.append
        )
        assert poller.endpoint is None and not poller.done()
        await poller.run()
        endpoint = await poller.wait()
        elapsed = anyio.current_time() - started
        assert elapsed >= warmup
        assert elapsed < warmup + 2.0
        assert poller.endpoint == endpoint and poller.done()
        assert endpoint.job_id == created.job_id and endpoint.job_name == created.job_name
        assert (await jobs.get(created.job_id)).base_url == endpoint.base_url
        # States in order: some pre-RUNNING polls, then RUNNING, nothing else.
        states = _collapse([p.state for p in seen])
        assert states[-1] == "RUNNING"
        assert states[:-1] and all(s in PRE_RUNNING for s in states[:-1])
        assert [p.attempt for p in seen] == list(range(1, len(seen) + 1))
        assert all(p.job_id == created.job_id for p in seen)
        assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(seen))
        # Polls were paced by the interval (±20% jitter), not a busy loop.
        assert len(seen) <= warmup / (POLL * 0.8) + 3
        # And the trainer answers now.
        async with httpx.AsyncClient() as client:
            health = await client.get(f"{endpoint.base_url}/api/v1/healthz")
        assert health.status_code == 200


@pytest.mark.anyio
async def test_failed_job_stops_the_wait_at_once() -> None:
    async with LocalTrainer(warmup_s=60.0) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        failed_at: list[float] = []

        async def fail_soon() -> None:
            await anyio.sleep(0.3)
            lt.fail_job(created.job_id, message="out of GPUs")
            failed_at.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            tg.start_soon(fail_soon)
            with pytest.raises(TrainerJobFailed) as info:
                await jobs.wait_for_ready(created.job_id, poll_interval_s=POLL, timeout_s=30)
            stopped = anyio.current_time()
        assert info.value.state == "FAILED" and info.value.job_id == created.job_id
        assert "out of GPUs" in str(info.value)
        assert stopped - failed_at[0] < 1.0  # a poll or two, far from the 30 s timeout


@pytest.mark.anyio
async def test_readiness_timeout() -> None:
    async with LocalTrainer(warmup_s=60.0) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        started = anyio.current_time()
        with pytest.raises(ReadinessTimeout) as info:
            await jobs.wait_for_ready(created.job_id, poll_interval_s=POLL, timeout_s=0.4)
        elapsed = anyio.current_time() - started
        assert 0.4 <= elapsed < 1.5
        assert info.value.job_id == created.job_id and info.value.timeout_s == 0.4
        assert info.value.last_state in PRE_RUNNING
        assert isinstance(info.value, TimeoutError)


@pytest.mark.anyio
async def test_deleted_job_fails_fast() -> None:
    async with LocalTrainer(warmup_s=60.0) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        await jobs.delete(created.job_id)
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.wait_for_ready(created.job_id, poll_interval_s=POLL, timeout_s=30)
        assert info.value.state in ("DELETED", "DELETING")


@pytest.mark.anyio
async def test_a_job_that_never_existed_is_no_such_job_not_deleted() -> None:
    async with LocalTrainer() as lt, _jobs_for(lt) as jobs:
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.wait_for_ready("mistyped-job-id", poll_interval_s=POLL, timeout_s=30)
    assert info.value.state == "NOT_FOUND"
    assert str(info.value).startswith("no such job: trainer job 'mistyped-job-id'"), info.value
    assert "DELETED" not in str(info.value)


@pytest.mark.anyio
async def test_a_job_seen_then_gone_is_deleted() -> None:
    # A real control plane keeps a tombstone; a job that vanishes outright needs a mock.
    replies = iter([(200, _job("JOB_STATE_PENDING"))])

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = next(replies, (404, {"error": "not found"}))
        return httpx.Response(status, json=body)

    async with _mock_jobs(handler) as jobs:
        poller = ReadinessPoller(jobs, "j1", poll_interval_s=0.01, timeout_s=5)
        await poller.run()
        with pytest.raises(TrainerJobFailed, match="is DELETED: the job vanished") as info:
            await poller.wait()
    assert info.value.state == "DELETED"


@pytest.mark.anyio
async def test_poller_in_a_task_group_and_progress_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="firetitan_async.readiness")
    async with LocalTrainer(warmup_s=0.3) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        poller = ReadinessPoller(jobs, created.job_id, poll_interval_s=POLL, timeout_s=10)
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            first = await poller.wait()  # may start waiting before run() has begun
            second = await poller.wait()  # waiting again gives the same outcome
        assert first == second
        with pytest.raises(RuntimeError):
            await poller.run()
    messages = [r.getMessage() for r in caplog.records if r.name == "firetitan_async.readiness"]
    # One INFO line per state change, not per poll.
    assert any("RUNNING" in m for m in messages)
    assert len(messages) <= 4


@pytest.mark.anyio
async def test_cancelled_poller_makes_wait_raise() -> None:
    async with LocalTrainer(warmup_s=60.0) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        poller = ReadinessPoller(jobs, created.job_id, poll_interval_s=POLL, timeout_s=30)
        with anyio.move_on_after(0.2):
            await poller.run()
        with anyio.fail_after(1):
            with pytest.raises(FiretitanError, match="stopped before an outcome"):
                await poller.wait()


@pytest.mark.anyio
async def test_broken_progress_callback_does_not_break_the_wait() -> None:
    def explode(_progress: ReadinessProgress) -> None:
        raise RuntimeError("display broke")

    async with LocalTrainer(warmup_s=0.1) as lt, _jobs_for(lt) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        poller = ReadinessPoller(
            jobs, created.job_id, poll_interval_s=POLL, timeout_s=10, on_progress=explode
        )
        await poller.run()
        assert (await poller.wait()).job_id == created.job_id


@pytest.mark.anyio
async def test_wrong_key_ends_the_wait_with_the_status_error() -> None:
    async with (
        LocalTrainer(api_key="right-key") as lt,
        _jobs_for(lt, api_key="wrong-key-xyz") as jobs,
    ):
        with anyio.fail_after(5), pytest.raises(APIStatusError) as info:
            await jobs.wait_for_ready("some-job", poll_interval_s=POLL, timeout_s=30)
        assert info.value.status_code == 401
        assert "wrong-key-xyz" not in f"{info.value} {info.value!r} {info.value.body}"


@pytest.mark.parametrize("field", ["poll_interval_s", "timeout_s", "pending_timeout_s"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf")])
def test_poller_rejects_bad_timing(field: str, value: float) -> None:
    jobs = TrainerJobs(account_id="acme", base_url="http://127.0.0.1:9")
    with pytest.raises(InvalidInput) as info:
        kwargs: dict[str, Any] = {field: value}
        ReadinessPoller(jobs, "j1", **kwargs)
    assert info.value.field == field


# -- fault shapes (MockTransport) -------------------------------------------------------------

GATEWAY = "https://trainer.example"
HANDLE = f"{GATEWAY}/training/v1/rlorTrainerJobs/acme/j1"


def _mock_jobs(handler: Callable[[httpx.Request], httpx.Response]) -> TrainerJobs:
    return TrainerJobs(
        "k-secret",
        account_id="acme",
        trainer_gateway_url=GATEWAY,
        transport=httpx.MockTransport(handler),
        retry=FAST_RETRY,
    )


def _job(state: str, message: str | None = None) -> dict[str, Any]:
    record: dict[str, Any] = {"name": "accounts/acme/rlorTrainerJobs/j1", "state": state}
    if message:
        record["statusMessage"] = message
    return record


@pytest.mark.anyio
@pytest.mark.parametrize("probe", [True, False])
async def test_running_job_is_ready_only_on_healthz_200(probe: bool) -> None:
    health: list[int] = []
    replies = iter([503, 404, 204, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "trainer.example":
            assert str(request.url) == f"{HANDLE}/api/v1/healthz"
            assert request.headers["X-Api-Key"] == "k-secret"
            assert request.headers["Authorization"] == "Bearer k-secret"
            health.append(status := next(replies))
            return httpx.Response(status)
        assert "Authorization" not in request.headers
        return httpx.Response(200, json=_job("JOB_STATE_RUNNING"))

    seen: list[ReadinessProgress] = []
    async with _mock_jobs(handler) as jobs:
        poller = ReadinessPoller(
            jobs,
            "j1",
            poll_interval_s=0.01,
            timeout_s=5,
            on_progress=seen.append,
            probe_data_plane=probe,
        )
        await poller.run()
        assert (await poller.wait()).base_url == HANDLE
    if probe:
        assert health == [503, 404, 204, 200]  # a 404 or 204 is not ready: 200 only
        waiting = "waiting for the trainer's health check (HTTP 200)"
        assert [p.message for p in seen] == [waiting] * 3 + [None]
    else:
        assert health == [] and len(seen) == 1


@pytest.mark.anyio
async def test_control_plane_outage_mid_wait_is_tolerated() -> None:
    # PENDING, then an outage longer than one get()'s retries, then RUNNING.
    script = iter(
        [(200, _job("JOB_STATE_PENDING"))]
        + [(503, {"error": "down"})] * 5
        + [(200, _job("JOB_STATE_RUNNING"))]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "trainer.example":
            return httpx.Response(200, json={})
        status, body = next(script)
        return httpx.Response(status, json=body)

    seen: list[str] = []
    async with _mock_jobs(handler) as jobs:
        poller = ReadinessPoller(
            jobs,
            "j1",
            poll_interval_s=0.01,
            timeout_s=5,
            on_progress=lambda p: seen.append(p.state),
        )
        await poller.run()
        await poller.wait()
    assert _collapse(seen) == ["PENDING", "RUNNING"]


def _states(*states: str) -> Callable[[httpx.Request], httpx.Response]:
    """The job reads as each state in turn, then stays in the last one."""
    queue = list(states)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "trainer.example":
            return httpx.Response(200)
        state = queue.pop(0) if len(queue) > 1 else queue[0]
        return httpx.Response(200, json=_job(state, "detail from the control plane"))

    return handler


@pytest.mark.anyio
async def test_pending_has_its_own_budget_apart_from_the_readiness_budget() -> None:
    # PENDING far longer than timeout_s is fine: only pending_timeout_s bounds it.
    handler = _states(*["JOB_STATE_PENDING"] * 30, "JOB_STATE_RUNNING")
    async with _mock_jobs(handler) as jobs:
        endpoint = await jobs.wait_for_ready(
            "j1", poll_interval_s=0.01, timeout_s=0.05, pending_timeout_s=10
        )
    assert endpoint.base_url == HANDLE
    # ...and pending_timeout_s does end a wait that stays PENDING.
    async with _mock_jobs(_states("JOB_STATE_PENDING")) as jobs:
        with pytest.raises(ReadinessTimeout) as info:
            await jobs.wait_for_ready(
                "j1", poll_interval_s=0.01, timeout_s=10, pending_timeout_s=0.1
            )
    assert info.value.timeout_s == 0.1 and info.value.last_state == "PENDING"
    # The readiness budget starts at the first poll that is not PENDING.
    handler = _states(*["JOB_STATE_PENDING"] * 10, "JOB_STATE_CREATING")
    async with _mock_jobs(handler) as jobs:
        started = anyio.current_time()
        with pytest.raises(ReadinessTimeout) as info:
            await jobs.wait_for_ready("j1", poll_interval_s=0.02, timeout_s=0.2)
    assert info.value.timeout_s == 0.2 and info.value.last_state == "CREATING"
    assert anyio.current_time() - started >= 0.2 + 10 * 0.02 * 0.8


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["CANCELLED", "COMPLETED", "EARLY_STOPPED", "DELETING"])
async def test_stopped_states_fail_only_after_the_settle_window(state: str) -> None:
    # Right after a resume the job may still read as stopped: that is waited out...
    handler = _states(f"JOB_STATE_{state}", f"JOB_STATE_{state}", "JOB_STATE_RUNNING")
    async with _mock_jobs(handler) as jobs:
        assert (await jobs.wait_for_ready("j1", poll_interval_s=0.01)).base_url == HANDLE
    # ...but a job that stays stopped past stopped_settle_s fails with its detail.
    async with _mock_jobs(_states(f"JOB_STATE_{state}")) as jobs:
        started = anyio.current_time()
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.wait_for_ready("j1", poll_interval_s=0.01, stopped_settle_s=0.2)
    assert anyio.current_time() - started >= 0.2
    assert info.value.state == state and "detail from the control plane" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("state", ["FAILED", "DELETED", "ARCHIVED"])
async def test_failed_and_tombstones_fail_at_once(state: str) -> None:
    async with _mock_jobs(_states(f"JOB_STATE_{state}")) as jobs:
        started = anyio.current_time()
        with pytest.raises(TrainerJobFailed) as info:
            await jobs.wait_for_ready("j1", poll_interval_s=1.0, stopped_settle_s=30)
    assert anyio.current_time() - started < 0.5  # the first poll decides
    assert info.value.state == state


# -- the `wait` command -----------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FIREWORKS_API_KEY", "FIREWORKS_ACCOUNT_ID", "FIREWORKS_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def _create(lt: LocalTrainer) -> str:
    async def create() -> str:
        async with _jobs_for(lt) as jobs:
            return (await jobs.create(TrainerJobConfig(base_model=MODEL))).job_id

    return anyio.run(create)


def _wait_argv(lt: LocalTrainer, job_id: str, *more: str) -> list[str]:
    return [
        "wait",
        job_id,
        "--account-id",
        lt.account_id,
        "--control-plane-url",
        lt.control_plane_url,
        "--poll-interval",
        str(POLL),
        *more,
    ]



@pytest.mark.usefixtures("clean_env")
def test_cli_wait_prints_progress_then_the_url(capsys: pytest.CaptureFixture[str]) -> None:
    lt = LocalTrainer(warmup_s=1.0)  # the first poll must land inside the warm-up, even under load
    lt.start()
    try:
        job_id = _create(lt)
        code = main(_wait_argv(lt, job_id, "--timeout", "10"))
        out, err = capsys.readouterr()
        assert code == 0, err
        url = out.strip().splitlines()[-1]
        assert url.startswith("http://127.0.0.1:")
        lines = err.strip().splitlines()
        assert lines[-1].startswith("RUNNING") and "after" in lines[-1]
        assert len(lines) >= 2 and lines[0].split()[0] in PRE_RUNNING

        lt.fail_job(job_id, message="preempted")
        code = main(_wait_argv(lt, job_id))
        _, err = capsys.readouterr()
        assert code == 1 and "FAILED" in err and "preempted" in err and "Traceback" not in err

        slow = LocalTrainer(warmup_s=60.0)
        slow.start()
        try:
            code = main(_wait_argv(slow, _create(slow), "--timeout", "0.3"))
        finally:
            slow.stop()
        _, err = capsys.readouterr()
        assert code == 1 and "not ready after" in err
    finally:
        lt.stop()


@pytest.mark.usefixtures("clean_env")
def test_cli_wait_helpful_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["wait", "j1"]) == 2
    assert "FIREWORKS_API_KEY" in capsys.readouterr().err

    dead = f"http://127.0.0.1:{free_port()}"
    assert main(["wait", "j1", "--account-id", "acme", "--control-plane-url", dead]) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and dead in err and "Traceback" not in err

    insecure = "http://example.com"
    assert main(["wait", "j1", "--account-id", "a", "--control-plane-url", insecure]) == 2
    assert "http://" in capsys.readouterr().err

    assert main(["wait", "j1", "--account-id", "a", "--poll-interval", "0"]) == 2
    assert "--poll-interval" in capsys.readouterr().err
    assert main(["wait", "j1", "--pending-timeout", "-1"]) == 2
    assert "--pending-timeout" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main(["wait"])
    assert exit_info.value.code == 2
    capsys.readouterr()

    lt = LocalTrainer(api_key="right-key")
    lt.start()
    try:
        monkeypatch.setenv("FIREWORKS_API_KEY", "wrong-key-123")
        code = main(_wait_argv(lt, "j1"))
        err = capsys.readouterr().err
        assert code == 1 and "refused the API key" in err and "wrong-key-123" not in err
        monkeypatch.setenv("FIREWORKS_API_KEY", "right-key")
        code = main(_wait_argv(lt, "no-such-job"))
        err = capsys.readouterr().err
        assert code == 1 and "404" in err
    finally:
        lt.stop()
