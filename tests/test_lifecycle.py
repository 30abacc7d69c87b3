"""Billable resources are released however a block is left: ``async with
jobs.create_and_wait(...)`` deletes its trainer job (asyncio and trio, the local trainer's
control plane)."""

from __future__ import annotations

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
