"""Billable resources are released however a block is left: ``async with
jobs.create_and_wait(...)`` deletes its trainer job, and under ``terminate_on_signals()`` a
SIGTERM cancels the block so that cleanup runs (asyncio and trio, the local trainer's control
plane)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from firetitan_async import ReadinessTimeout, TrainerJobConfig, TrainerJobs
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

CONFIG = TrainerJobConfig(base_model="local/tiny-byte-lm")
FAST = {"poll_interval_s": 0.05, "timeout_s": 10.0}


async def state_of(jobs: TrainerJobs, job_id: str) -> str:
    job = await jobs.try_get(job_id)
    if job is None or job.is_tombstone:
        return "deleted"
    return str(job.state)


async def test_an_error_in_the_block_deletes_the_job() -> None:
    with LocalTrainer() as lt:
        async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
            lease = jobs.create_and_wait(CONFIG, **FAST)
            with pytest.raises(ZeroDivisionError):
                async with lease as endpoint:
                    assert await state_of(jobs, endpoint.job_id) == "RUNNING"
                    1 / 0  # noqa: B018
            assert lease.job_id == endpoint.job_id
            assert await state_of(jobs, endpoint.job_id) == "deleted"


async def test_cancelling_the_block_deletes_the_job() -> None:
    with LocalTrainer() as lt:
        async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
            lease = jobs.create_and_wait(CONFIG, **FAST)
            with anyio.CancelScope() as scope:
                async with lease:
                    scope.cancel()
                    await anyio.sleep(5)
            assert scope.cancelled_caught and lease.job_id is not None
            assert await state_of(jobs, lease.job_id) == "deleted"


async def test_keep_leaves_it_running_and_awaiting_keeps_it_too() -> None:
    with LocalTrainer() as lt:
        async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
            async with jobs.create_and_wait(CONFIG, keep=True, **FAST) as kept:
                pass
            awaited = await jobs.create_and_wait(CONFIG, **FAST)
            assert await state_of(jobs, kept.job_id) == "RUNNING"
            assert await state_of(jobs, awaited.job_id) == "RUNNING"


async def test_a_job_that_never_gets_ready_is_deleted_even_when_awaited() -> None:
    with LocalTrainer(warmup_s=60.0) as lt:
        async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
            lease = jobs.create_and_wait(CONFIG, poll_interval_s=0.05, timeout_s=0.3)
            with pytest.raises(ReadinessTimeout):
                await lease
            assert lease.job_id is not None
            assert await state_of(jobs, lease.job_id) == "deleted"


SCRIPT = """
import sys, anyio
from tinker import types
from firetitan_async import ServiceSession, TrainerJobConfig, TrainerJobs, terminate_on_signals
from firetitan_async.local._datums import sft_datum

async def main(url: str) -> None:
    async with terminate_on_signals():
        async with TrainerJobs(base_url=url) as jobs:
            config = TrainerJobConfig(base_model="local/tiny-byte-lm")
            async with jobs.create_and_wait(config, poll_interval_s=0.05) as endpoint:
                async with ServiceSession(endpoint.base_url) as session:
                    client = await session.create_training_client("local/tiny-byte-lm")
                    print(endpoint.job_id, flush=True)
                    while True:
                        await client.forward_backward([sft_datum("hello")], "cross_entropy")
                        await client.optim_step(types.AdamParams(learning_rate=1e-3))

anyio.run(main, sys.argv[1], backend=sys.argv[2])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_deletes_the_job_unloads_the_model_and_exits_non_zero(
    backend: str, tmp_path: Path
) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with LocalTrainer() as lt:
        proc = subprocess.Popen(
            [sys.executable, str(script), lt.control_plane_url, backend],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            assert proc.stdout is not None
            job_id = proc.stdout.readline().strip()
            assert job_id, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.3)  # a few steps in flight
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert took < 5
        requests = lt.stats()["requests"]
        assert requests.get("unload_model") == 1
        assert requests.get("jobs.delete") == 1

        async def job_state() -> str:
            async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
                return await state_of(jobs, job_id)

        assert anyio.run(job_state) == "deleted"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigterm_to_the_demo_leaves_nothing_running_on_the_server(backend: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with LocalTrainer() as lt:
        proc = subprocess.Popen(
            [sys.executable, "-m", "firetitan_async", "demo", "--server", lt.control_plane_url,
             "--steps", "1000", "--warmup-s", "0", "--backend", backend],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("training client"):
                    break
            else:
                raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
            time.sleep(0.5)  # training steps in flight
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=10)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert took < 5

        async def running_jobs() -> list[str]:
            async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
                return [j.job_id for j in await jobs.list_jobs() if not j.is_tombstone]

        assert anyio.run(running_jobs) == []
        requests = lt.stats()["requests"]
        assert requests.get("jobs.delete") == 1
        assert requests.get("unload_model") == 1  # the fireworks dialect's end of a session
