"""Billable resources created as context managers are released on every exit path.

``TrainerJobs.create_and_wait`` and ``Deployments.create_or_get`` against the local trainer
(real HTTP on loopback): normal exit, an error, cancellation, ``keep=True``, adoption of what
already existed, the grace period, and the owner tags ``jobs list --orphans`` reads. What is
left running is read from ``GET /_local/stats`` (``live``) and the control plane.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, TypedDict

import anyio
import httpx
import pytest

from firetitan_async import (
    CleanupFailed,
    DeploymentConfig,
    Deployments,
    InvalidInput,
    Provisioning,
    TrainerJobConfig,
    TrainerJobs,
    live_resources,
)
from firetitan_async.cli._cli import main as cli_main
from firetitan_async.local import LocalTrainer
from firetitan_async.platform._lifecycle import OWNER_ANNOTATION, owner_tag, parse_owner_tag

MODEL = "local/tiny-byte-lm"


class _Fast(TypedDict):
    poll_interval_s: float
    timeout_s: float


FAST: _Fast = {"poll_interval_s": 0.02, "timeout_s": 10.0}


def _live(lt: LocalTrainer) -> dict[str, int]:
    live: dict[str, int] = httpx.get(f"{lt.base_url}/_local/stats").json()["live"]
    return live


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


# The shared per-test trainer (conftest's ``local_trainer``) with a short warm-up: these tests
# count the jobs and deployments the server holds, so each needs a fresh one.
LOCAL_TRAINER_OPTIONS = {"warmup_s": 0.05}


@pytest.mark.anyio
async def test_job_deleted_on_normal_exit_error_and_cancellation(
    local_trainer: LocalTrainer,
) -> None:
    async with TrainerJobs(base_url=local_trainer.control_plane_url) as jobs:
        config = TrainerJobConfig(base_model=MODEL)
        async with jobs.create_and_wait(config, **FAST) as endpoint:
            job = await jobs.get(endpoint.job_id)
            assert job.state == "RUNNING" and parse_owner_tag(job.display_name) is not None
            assert _live(local_trainer)["jobs"] == 1
        assert (await jobs.get(endpoint.job_id)).state == "DELETED"

        with pytest.raises(ValueError, match="boom"):  # the body's error, unchanged
            async with jobs.create_and_wait(config, **FAST):
                assert _live(local_trainer)["jobs"] == 1
                raise ValueError("boom")
        assert _live(local_trainer)["jobs"] == 0

        with anyio.move_on_after(0.3) as scope:
            async with jobs.create_and_wait(config, **FAST):
                await anyio.sleep(10)
        assert scope.cancelled_caught
        assert _live(local_trainer)["jobs"] == 0
        states = {j.state for j in await jobs.list_jobs()}
        assert states == {"DELETED"}


@pytest.mark.anyio
async def test_cancelled_while_warming_up_deletes_in_both_forms(
    make_trainer: Callable[..., LocalTrainer],
) -> None:
    lt = make_trainer(warmup_s=30.0)  # never RUNNING within the test
    async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
        config = TrainerJobConfig(base_model=MODEL)
        waiting = jobs.create_and_wait(config, **FAST)
        with anyio.move_on_after(0.5):
            await waiting
        assert len(waiting.created) == 0 and _live(lt)["jobs"] == 0
        with anyio.move_on_after(0.5):
            async with jobs.create_and_wait(config, **FAST):
                pytest.fail("the job cannot be ready")
        assert _live(lt)["jobs"] == 0
        assert [j.state for j in await jobs.list_jobs()] == ["DELETED", "DELETED"]


@pytest.mark.anyio
async def test_plain_await_and_keep_leave_the_job(local_trainer: LocalTrainer) -> None:
    async with TrainerJobs(base_url=local_trainer.control_plane_url) as jobs:
        endpoint = await jobs.create_and_wait(TrainerJobConfig(base_model=MODEL), **FAST)
        job = await jobs.get(endpoint.job_id)
        assert job.state == "RUNNING"  # the caller owns it now
        assert parse_owner_tag(job.display_name) is None  # the SDK's request, untagged
        async with jobs.create_and_wait(
            TrainerJobConfig(base_model=MODEL, display_name="mine"), keep=True, **FAST
        ) as kept:
            pass
        job = await jobs.get(kept.job_id)
        assert job.state == "RUNNING" and job.display_name == "mine"
        assert _live(local_trainer)["jobs"] == 2


@pytest.mark.anyio
async def test_an_adopted_job_is_not_deleted(local_trainer: LocalTrainer) -> None:
    async with TrainerJobs(base_url=local_trainer.control_plane_url) as jobs:
        config = TrainerJobConfig(base_model=MODEL, requested_job_id="shared-job")
        await jobs.create(config)
        adopting = jobs.create_and_wait(config, **FAST)
        async with adopting as endpoint:
            assert endpoint.job_id == "shared-job"
        assert adopting.created == []
        assert (await jobs.get("shared-job")).state == "RUNNING"
        # Deleted inside the block: releasing it is not an error.
        async with jobs.create_and_wait(TrainerJobConfig(base_model=MODEL), **FAST) as mine:
            await jobs.delete(mine.job_id)
        assert _live(local_trainer)["jobs"] == 1


class _SlowDeletes(httpx.AsyncBaseTransport):
    """The real server behind a link that holds every DELETE for 5 s before sending it."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            await anyio.sleep(5.0)
        return await self._real.handle_async_request(request)

    async def aclose(self) -> None:
        await self._real.aclose()


@pytest.mark.anyio
async def test_grace_period_bounds_cleanup_and_names_what_is_left(
    local_trainer: LocalTrainer,
) -> None:
    url = local_trainer.control_plane_url
    async with TrainerJobs(base_url=url, transport=_SlowDeletes()) as jobs:
        config = TrainerJobConfig(base_model=MODEL)
        with pytest.raises(CleanupFailed) as failed:
            async with jobs.create_and_wait(config, grace_s=0.2, **FAST) as endpoint:
                started = time.monotonic()
        assert 0.2 <= time.monotonic() - started < 0.2 + 0.5
        assert failed.value.resources == [f"trainer job {endpoint.job_id}"]
        assert "grace period" in str(failed.value)
        assert _live(local_trainer)["jobs"] == 1  # it really is left running
        # With an error of its own the block's error wins; the leftover is noted on it.
        with pytest.raises(KeyError) as own:
            async with jobs.create_and_wait(config, grace_s=0.2, **FAST):
                raise KeyError("own")
        assert any("could not release trainer job" in n for n in own.value.__notes__)
        assert _live(local_trainer)["jobs"] == 2


@pytest.mark.anyio
async def test_deployment_delete_scale_to_zero_and_adopt(local_trainer: LocalTrainer) -> None:
    async with Deployments(base_url=local_trainer.control_plane_url) as deployments:
        with pytest.raises(RuntimeError, match="cut"):
            async with deployments.create_or_get(DeploymentConfig("dep-a", MODEL)) as info:
                assert info.raw["annotations"][OWNER_ANNOTATION] == owner_tag()
                assert _live(local_trainer)["deployments"] == 1
                raise RuntimeError("cut")
        assert await deployments.get("dep-a") is None

        async with deployments.create_or_get(
            DeploymentConfig("dep-b", MODEL, min_replica_count=1), cleanup="scale_to_zero"
        ):
            pass
        scaled = await deployments.get("dep-b")
        assert scaled is not None
        assert (scaled.raw["minReplicaCount"], scaled.raw["maxReplicaCount"]) == (0, 0)

        await deployments.create_or_get(DeploymentConfig("dep-c", MODEL))  # plain: kept
        async with deployments.create_or_get(DeploymentConfig("dep-c", MODEL)) as adopted:
            assert adopted.state == "READY"
        assert await deployments.get("dep-c") is not None
        async with deployments.create_or_get(DeploymentConfig("dep-d", MODEL), keep=True):
            pass
        assert {d.deployment_id for d in await deployments.list_deployments()} == {
            "dep-b", "dep-c", "dep-d"
        }


@pytest.mark.anyio
async def test_bad_arguments_are_refused_before_sending(local_trainer: LocalTrainer) -> None:
    async with (
        TrainerJobs(base_url=local_trainer.control_plane_url) as jobs,
        Deployments(base_url=local_trainer.control_plane_url) as deployments,
    ):
        config = TrainerJobConfig(base_model=MODEL)
        for kwargs, field in (({"grace_s": 0}, "grace_s"), ({"keep": "yes"}, "keep")):
            with pytest.raises(InvalidInput, match=field):
                jobs.create_and_wait(config, **kwargs)
        with pytest.raises(InvalidInput, match="cleanup"):
            deployments.create_or_get(
                DeploymentConfig("d", MODEL), cleanup="drop"  # type: ignore[arg-type]
            )
        once: Provisioning[Any] = jobs.create_and_wait(config, **FAST)
        await once
        with pytest.raises(RuntimeError, match="only once"):
            await once
    assert _live(local_trainer)["jobs"] == 1


def _make(lt: LocalTrainer, dead: int, jobs_to_make: list[tuple[str, str | None]]) -> None:
    async def make() -> None:
        async with (
            TrainerJobs(base_url=lt.control_plane_url) as jobs,
            Deployments(base_url=lt.control_plane_url) as deployments,
        ):
            for job_id, tag in jobs_to_make:
                await jobs.create(
                    TrainerJobConfig(base_model=MODEL, requested_job_id=job_id, display_name=tag)
                )
            async with deployments.create_or_get(DeploymentConfig("dep-mine", MODEL), keep=True):
                pass
            await deployments.create_or_get(DeploymentConfig("dep-plain", MODEL))  # untagged
            # A deployment whose owner died: tagged by hand (create_or_get tags with our pid).
            body = DeploymentConfig("dep-dead", MODEL).body()
            await deployments._rest.call(
                "POST", f"/v1/accounts/{lt.account_id}/deployments",
                params={"deploymentId": "dep-dead"},
                json_body={**body, "annotations": {OWNER_ANNOTATION: owner_tag(pid=dead)}},
            )

    anyio.run(make)


def test_orphans_listed_and_deleted_by_the_cli(
    make_trainer: Callable[..., LocalTrainer], capsys: pytest.CaptureFixture[str]
) -> None:
    dead = _dead_pid()
    lt = make_trainer(seed=0)
    _make(lt, dead, [
        ("orphan-job", owner_tag(pid=dead)),
        ("owned-job", owner_tag()),
        ("remote-job", owner_tag(host="elsewhere.example", pid=dead)),
        ("plain-job", None),
    ])

    async def classify() -> dict[str, str]:
        async with (
            TrainerJobs(base_url=lt.control_plane_url) as jobs,
            Deployments(base_url=lt.control_plane_url) as deployments,
        ):
            found = await live_resources(jobs, deployments)
        return {r.resource_id: r.owner_status for r in found}

    assert anyio.run(classify) == {
        "orphan-job": "orphan",
        "owned-job": "owned",
        "remote-job": "unknown",
        "plain-job": "unmanaged",
        "dep-mine": "owned",
        "dep-plain": "unmanaged",
        "dep-dead": "orphan",
    }
    url = ["--control-plane-url", lt.control_plane_url]
    assert cli_main(["jobs", "list", "--orphans", *url]) == 3
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["KIND", "ID", "STATE", "OWNER", "STATUS", "OWNER"]
    assert sorted(line.split()[1] for line in rows) == ["dep-dead", "orphan-job"]
    assert cli_main(["jobs", "list", *url]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 7
    assert cli_main(["jobs", "list", "--delete", *url]) == 0
    assert "deleted job orphan-job" in capsys.readouterr().err
    assert cli_main(["jobs", "list", "--orphans", *url]) == 0
    assert capsys.readouterr().out == ""
    assert _live(lt) == {"jobs": 3, "sessions": 0, "deployments": 2}
    assert os.getpid() != dead


def test_example_owned_resources_leaves_nothing(local_trainer: LocalTrainer) -> None:
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "owned_resources.py")
    proc = subprocess.run(
        [sys.executable, example, "--steps", "2", "--backend", "trio",
         "--control-plane-url", local_trainer.control_plane_url],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "step 2: loss" in proc.stdout and "released" in proc.stdout
    assert _live(local_trainer) == {"jobs": 0, "sessions": 0, "deployments": 0}
