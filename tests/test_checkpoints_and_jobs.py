"""Issue 4 end to end: the readiness gate, snapshots, TTLs and cross-job resume."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from tinker import types

from firetitan_async import (
    FiretitanError,
    ReadinessTimeout,
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
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            elapsed = time.monotonic() - started
            assert (await jobs.get(created.job_id)).state == "RUNNING"
            out = await client.forward_backward(batch(0), "cross_entropy")
            assert out.metrics["loss:sum"] > 0
            assert session.base_url is not None and created.job_id in session.base_url
    assert elapsed >= 0.5, elapsed


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
