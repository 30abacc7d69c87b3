"""Issue 4 end to end: the readiness gate, snapshots, TTLs and cross-job resume."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import (
    FiretitanError,
    ReadinessTimeout,
    RetryPolicy,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobFailed,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=1e-2)
CONFIG = TrainerJobConfig(base_model=MODEL, lora_rank=4)


def batch(step: int) -> list[types.Datum]:
    return [sft_datum(f"checkpoint step {step}"), sft_datum("resume me bit for bit")]


def jobs_for(lt: LocalTrainer) -> TrainerJobs:
    return TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url)


async def test_training_client_waits_until_the_job_is_running() -> None:
    async with LocalTrainer(warmup_s=0.6) as lt, jobs_for(lt) as jobs:
        created = await jobs.create(CONFIG)
        started = time.monotonic()
        # No data-plane retries: were readiness skipped, the warming trainer's 503s would fail
        # the first call instead of being retried until the warm-up ends (hiding the skip).
        async with ServiceSession.from_job(
            jobs, created.job_id, poll_interval_s=0.05, retry=RetryPolicy(max_attempts=1)
        ) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            elapsed = time.monotonic() - started
            assert (await jobs.get(created.job_id)).state == "RUNNING"
            out = await client.forward_backward(batch(0), "cross_entropy")
            assert out.metrics["loss:sum"] > 0
            assert session.base_url is not None and created.job_id in session.base_url
    assert elapsed >= 0.5, elapsed


async def test_a_job_that_fails_while_its_session_is_open_fails_calls_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "fw-secret-job-key-0123456789"
    async with (
        LocalTrainer(api_key=key) as lt,
        TrainerJobs(api_key=key, account_id=lt.account_id, base_url=lt.control_plane_url) as jobs,
    ):
        created = await jobs.create(CONFIG)
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            await client.forward_backward(batch(0), "cross_entropy")
            async with httpx.AsyncClient(headers={"X-Api-Key": key}) as http:
                failed = await http.post(
                    f"{lt.base_url}/_local/jobs/{created.job_id}/fail",
                    json={"message": f"GPU fell off the bus (key {key})"},
                )
                failed.raise_for_status()
            started = time.monotonic()
            # The default policy retries the gateway's 503 "not running" 10 times (~30 s).
            with pytest.raises(TrainerJobFailed) as info:
                await client.forward_backward(batch(1), "cross_entropy")
            assert time.monotonic() - started < 5.0
            assert info.value.state == "FAILED" and "GPU fell off the bus" in str(info.value)
            assert key not in str(info.value)
            assert not [r for r in caplog.records if key in r.getMessage()]
            with pytest.raises(TrainerJobFailed):  # later calls: at call time, nothing sent
                client.optim_step(ADAM)
            with pytest.raises(TrainerJobFailed):
                await session.create_sampling_client(base_model=MODEL)
        await jobs.resume_and_wait(created.job_id, poll_interval_s=0.05)
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            out = await client.forward_backward(batch(2), "cross_entropy")
            assert out.metrics["loss:sum"] > 0


async def test_operations_in_flight_when_the_job_fails_fail_with_trainer_job_failed() -> None:
    async with LocalTrainer(latency_s=0.2) as lt, jobs_for(lt) as jobs:
        created = await jobs.create(CONFIG)
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            fb = client.forward_backward(batch(0), "cross_entropy")
            in_flight = [fb, client.optim_step(ADAM)]
            await anyio.sleep(0.05)  # submitted; the trainer holds every reply back 0.2 s
            # failed in-process, at once: an HTTP client opened here could take the 0.15 s
            # left on a loaded machine, and the replies would win the race
            lt.fail_job(created.job_id, message="failed by test hook")
            started = time.monotonic()
            for pending in in_flight:
                with pytest.raises(TrainerJobFailed):  # not SubmissionLost, not a 503
                    await pending
            assert time.monotonic() - started < 5.0


async def test_a_failed_job_stops_the_wait_at_once() -> None:
    async with LocalTrainer(warmup_s=30) as lt, jobs_for(lt) as jobs:
        created = await jobs.create(CONFIG)
        async with ServiceSession.from_job(
            jobs, created.job_id, poll_interval_s=0.05, timeout_s=60
        ) as session:

            async def fail_soon() -> None:
                await anyio.sleep(0.3)
                lt.fail_job(created.job_id, message="out of GPUs")

            started = time.monotonic()
            async with anyio.create_task_group() as tg:
                tg.start_soon(fail_soon)
                with pytest.raises(TrainerJobFailed) as info:
                    await session.create_training_client(MODEL, lora_rank=4)
            assert time.monotonic() - started < 5
            assert info.value.state == "FAILED"


async def test_readiness_timeout() -> None:
    async with LocalTrainer(warmup_s=30) as lt, jobs_for(lt) as jobs:
        created = await jobs.create(CONFIG)
        async with ServiceSession.from_job(
            jobs, created.job_id, poll_interval_s=0.05, timeout_s=0.4
        ) as session:
            with pytest.raises(ReadinessTimeout):
                await session.create_training_client(MODEL, lora_rank=4)


async def test_base_and_delta_snapshots(tmp_path: Path) -> None:
    async with (
        LocalTrainer(checkpoint_dir=str(tmp_path)) as lt,
        ServiceSession(lt.base_url, dialect="tinker") as session,
    ):
        client = await session.create_training_client(MODEL, lora_rank=0)
        with pytest.raises(ValueError, match="base"):
            client.save_weights_for_sampler_ext("too-early", checkpoint_type="delta")
        base0 = client.save_weights_for_sampler_ext("step-0000")
        client.forward_backward(batch(0), "cross_entropy")
        client.optim_step(ADAM)
        delta1 = client.save_weights_for_sampler_ext("step-0001", checkpoint_type="delta")
        base1 = client.save_weights_for_sampler_ext("step-0001b", checkpoint_type="base")
        b0, d1, b1 = await base0, await delta1, await base1
        other_session_suffix = None
        async with ServiceSession(lt.base_url, dialect="tinker") as other:
            other_client = await other.create_training_client(MODEL, lora_rank=0)
            snap = await other_client.save_weights_for_sampler_ext("step-0000")
            other_session_suffix = snap.snapshot_name.rsplit("-", 1)[1]

        # Session-scoped names: one suffix per session, another in another session.
        suffix = b0.snapshot_name.rsplit("-", 1)[1]
        assert b0.snapshot_name == f"step-0000-{suffix}" and len(suffix) == 8
        assert d1.snapshot_name == f"step-0001-{suffix}"
        assert other_session_suffix != suffix
        assert (b0.checkpoint_type, d1.checkpoint_type) == ("base", "delta")
        assert d1.path.endswith(d1.snapshot_name)

        # The delta's file is the XOR of the weights' bits against the base.
        def arrays(path: str) -> dict[str, np.ndarray]:
            run, kind, name = path.removeprefix("tinker://").split("/")
            with np.load(tmp_path / run / kind / f"{name}.npz") as npz:
                return {key: npz[key] for key in npz.files}

        base, delta, truth = arrays(b0.path), arrays(d1.path), arrays(b1.path)
        assert set(base) == set(delta) == set(truth)
        changed = 0
        for key in truth:
            rebuilt = base[key].view(np.uint32) ^ delta[key].view(np.uint32)
            assert rebuilt.tobytes() == truth[key].view(np.uint32).tobytes(), key
            changed += int(np.count_nonzero(delta[key].view(np.uint32)))
        assert changed > 0

        # And sampling from the delta path sees the rebuilt weights.
        prompt = types.ModelInput.from_ints(list(b"checkpoint step"))
        from_delta = await (await session.create_sampling_client(d1.path)).compute_logprobs(prompt)
        from_base = await (await session.create_sampling_client(b1.path)).compute_logprobs(prompt)
        assert from_delta == from_base
        listed = {c.checkpoint_id: c for c in await client.list_checkpoints()}
        delta_size = listed[f"sampler_weights/{d1.snapshot_name}"].size_bytes
        base_size = listed[f"sampler_weights/{b1.snapshot_name}"].size_bytes
        assert delta_size is not None and base_size is not None
        print(f"delta snapshot {delta_size} bytes, base {base_size} bytes after one step")
        assert delta_size < base_size


async def test_state_checkpoints_expire_after_their_ttl() -> None:
    async with LocalTrainer() as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        short = await client.save_state("short-lived", ttl_seconds=1)
        kept = await client.save_state("kept")
        listed = {c.tinker_path: c for c in await client.list_checkpoints()}
        assert listed[short.path].expires_at is not None
        assert listed[kept.path].expires_at is None
        await anyio.sleep(1.3)
        listed_after = {c.tinker_path for c in await client.list_checkpoints()}
        assert short.path not in listed_after and kept.path in listed_after
        with pytest.raises(FiretitanError):
            await client.load_state(short.path)
        await client.load_state(kept.path)
        assert await client.resolve_checkpoint_path("kept") == kept.path
        with pytest.raises(ValueError, match="short-lived"):
            await client.resolve_checkpoint_path("short-lived")


async def test_cross_job_resume_reproduces_the_next_step() -> None:
    async with LocalTrainer(warmup_s=0.2) as lt, jobs_for(lt) as jobs:
        first = await jobs.create(CONFIG)
        async with ServiceSession.from_job(jobs, first.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            for step in range(3):
                client.forward_backward(batch(step), "cross_entropy")
                client.optim_step(ADAM)
            await client.save_state("resume-here")
            expected_loss = (await client.forward_backward(batch(3), "cross_entropy")).metrics
            await client.optim_step(ADAM)
            probe = await client.forward(batch(9), "cross_entropy")

        second = await jobs.create(CONFIG)
        async with ServiceSession.from_job(jobs, second.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            path = await client.resolve_checkpoint_path("resume-here", source_job_id=first.job_id)
            # from_job speaks the fireworks dialect: an offline cross_job:// reference.
            assert path == f"cross_job://{first.job_id}/resume-here"
            await client.load_state_with_optimizer(path)
            resumed_loss = (await client.forward_backward(batch(3), "cross_entropy")).metrics
            await client.optim_step(ADAM)
            resumed_probe = await client.forward(batch(9), "cross_entropy")

    assert resumed_loss["loss:sum"] == expected_loss["loss:sum"]
    for ours, theirs in zip(resumed_probe.loss_fn_outputs, probe.loss_fn_outputs, strict=True):
        assert ours["logprobs"].to_numpy().tobytes() == theirs["logprobs"].to_numpy().tobytes()


async def test_from_job_sends_the_control_planes_key_to_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The session defaults to the key of its ``TrainerJobs`` (not to the environment's)."""
    monkeypatch.setenv("FIREWORKS_API_KEY", "fw-some-other-key-000")
    key = "fw-the-jobs-key-0123456789"
    async with (
        LocalTrainer(api_key=key) as lt,
        TrainerJobs(key, base_url=lt.control_plane_url) as jobs,
    ):
        created = await jobs.create(CONFIG)
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            assert (await client.forward(batch(0), "cross_entropy")).metrics["loss:sum"] > 0
