"""The managed setup (``ServiceSession.managed``) against the local trainer's control plane,
over real HTTP on loopback: provisioning a policy trainer, a reference (on the same trainer or
a separate forward-only one) and a deployment concurrently; training, reference forwards,
publishing and sampling through what it returns; the cleanup policy on a normal exit, an
error and a cancellation; re-attaching by id; ``release_references``; refusals before
anything is sent. What is left running is read from ``GET /_local/stats`` (``live``).
"""

from __future__ import annotations

from typing import TypedDict

import anyio
import httpx
import pytest
from tinker import types

from firetitan_async import (
    Cleanup,
    Deployments,
    InvalidInput,
    ManagedConfig,
    ServiceSession,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer, sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
TRAINER_OPTIONS = {"seed": 0}


class _Fast(TypedDict):
    poll_interval_s: float
    trainer_timeout_s: float
    deployment_timeout_s: float


FAST: _Fast = {"poll_interval_s": 0.02, "trainer_timeout_s": 20.0, "deployment_timeout_s": 20.0}


def _shape(lt: LocalTrainer, name: str) -> str:
    return f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-{name}"


def _live(lt: LocalTrainer) -> dict[str, int]:
    live: dict[str, int] = httpx.get(f"{lt.base_url}/_local/stats").json()["live"]
    return {k: live[k] for k in ("jobs", "deployments")}


def _job(lt: LocalTrainer, job_id: str) -> dict[str, object] | None:
    r = httpx.get(f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs/{job_id}")
    return None if r.status_code == 404 else dict(r.json())


def _gone(lt: LocalTrainer, job_id: str) -> bool:
    job = _job(lt, job_id)
    return job is None or job["state"] == "JOB_STATE_DELETED"


def _deployment(lt: LocalTrainer, deployment_id: str) -> dict[str, object] | None:
    r = httpx.get(f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/deployments/"
                  f"{deployment_id}")
    return None if r.status_code == 404 else dict(r.json())


async def test_lora_policy_same_trainer_reference_and_deployment_end_to_end(
    trainer: LocalTrainer,
) -> None:
    before = _live(trainer)
    config = ManagedConfig(base_model=MODEL, lora_rank=4, training_shape=_shape(trainer, "lora"),
                           reference=True, **FAST)
    assert config.reference_mode == "same-trainer"  # the SDK's rule for a LoRA policy
    datum = sft_datum("the quick brown fox")
    async with ServiceSession.managed(config, base_url=trainer.control_plane_url) as setup:
        assert setup.reference_job_id is None
        job = _job(trainer, setup.trainer_job_id)
        assert job is not None and job["state"] == "JOB_STATE_RUNNING"
        assert setup.deployment is not None and setup.deployment.state == "READY"
        assert setup.deployment.hot_load_trainer_job == job["name"]
        assert setup.deployment_shape and setup.max_context_length == 4096
        assert sorted(setup.created) == sorted(
            [f"trainer job {setup.trainer_job_id}", f"deployment {setup.deployment_id}"]
        )
        policy = await setup.training_client()
        reference = await setup.reference_client()
        assert reference is not None and reference is await setup.reference_client()
        ref_before = await reference.forward([datum], "cross_entropy")
        for _ in range(3):
            await policy.forward_backward([datum], "cross_entropy")
            await policy.optim_step(types.AdamParams(learning_rate=1e-2))
        ref_after = await reference.forward([datum], "cross_entropy")
        trained = await policy.forward([datum], "cross_entropy")
        assert ref_after.metrics["loss:sum"] == ref_before.metrics["loss:sum"]  # frozen base
        assert trained.metrics["loss:sum"] < ref_after.metrics["loss:sum"]
        version = await setup.publish("step-3")
        assert version.checkpoint_type == "base"
        assert setup.sampler is not None
        out = await setup.sampler.sample([104, 105], n=2, max_tokens=3, seed=1)
        assert len(out) == 2
        assert _live(trainer) == {"jobs": before["jobs"] + 1,
                                  "deployments": before["deployments"] + 1}
    assert _live(trainer) == before  # the default policy deletes what it created
    assert _gone(trainer, setup.trainer_job_id)


async def test_separate_forward_only_reference_released_early_and_kept_resources_reattached(
    trainer: LocalTrainer,
) -> None:
    before = _live(trainer)
    datum = sft_datum("pack my box")
    config = ManagedConfig(
        base_model=MODEL, training_shape=_shape(trainer, "full"), reference=True,
        reference_training_shape=_shape(trainer, "forward"),
        cleanup=Cleanup(trainer="keep", deployment="scale_to_zero"), **FAST,
    )
    assert config.reference_mode == "separate"
    url = trainer.control_plane_url
    async with ServiceSession.managed(config, base_url=url) as setup:
        ref_id = setup.reference_job_id
        assert ref_id is not None and ref_id != setup.trainer_job_id
        ref_job = _job(trainer, ref_id)
        assert ref_job is not None and ref_job["forwardOnly"] is True
        reference = await setup.reference_client()
        policy = await setup.training_client()
        assert reference is not None
        ref_out = await reference.forward([datum], "cross_entropy")
        pol_out = await policy.forward([datum], "cross_entropy")
        assert ref_out.metrics["loss:sum"] == pytest.approx(pol_out.metrics["loss:sum"])
        await setup.publish("base")  # a scope entered after the reference session's
        await setup.release_references()
        assert _gone(trainer, ref_id)  # released at once; the policy trains on
        await policy.forward_backward([datum], "cross_entropy")
        trainer_id, deployment_id = setup.trainer_job_id, setup.deployment_id
        assert setup.created == [f"deployment {deployment_id}"]  # the trainer is kept
    assert deployment_id is not None
    kept = _job(trainer, trainer_id)
    assert kept is not None and kept["state"] == "JOB_STATE_RUNNING"
    scaled = _deployment(trainer, deployment_id)
    assert scaled is not None and scaled["maxReplicaCount"] == 0
    # a new policy trainer re-attaches the existing deployment (PATCH hotLoadTrainerJob), which
    # it did not create and so leaves in place
    moved = ManagedConfig(MODEL, training_shape=_shape(trainer, "full"),
                          deployment_id=deployment_id, **FAST)
    async with ServiceSession.managed(moved, base_url=url) as setup:
        assert setup.created == [f"trainer job {setup.trainer_job_id}"]
        assert setup.reattached_deployment and setup.deployment is not None
        assert setup.deployment.hot_load_trainer_job is not None
        assert setup.deployment.hot_load_trainer_job.endswith(setup.trainer_job_id)
        assert setup.requires_initial_sampler_sync()  # it serves the old trainer's snapshot
        new_trainer = setup.trainer_job_id
    assert _gone(trainer, new_trainer) and _deployment(trainer, deployment_id) is not None
    # re-attach both by id: nothing is created, so nothing is released
    again = ManagedConfig(base_model=MODEL, training_shape=_shape(trainer, "full"),
                          trainer_job_id=trainer_id, deployment_id=deployment_id, **FAST)
    async with ServiceSession.managed(again, base_url=url) as setup:
        assert setup.created == [] and setup.trainer_job_id == trainer_id
        assert setup.deployment is not None and setup.deployment.deployment_id == deployment_id
        await (await setup.training_client()).forward([datum], "cross_entropy")
        assert setup.requires_initial_sampler_sync()
    assert _job(trainer, trainer_id) is not None
    async with TrainerJobs(base_url=url) as jobs, Deployments(base_url=url) as deployments:
        await jobs.delete(trainer_id)
        await deployments.delete(deployment_id)
    assert _live(trainer) == before


async def test_an_error_or_a_cancellation_releases_what_was_created() -> None:
    with LocalTrainer(seed=0, warmup_s=0.4) as lt:
        config = ManagedConfig(base_model=MODEL, lora_rank=2, training_shape=_shape(lt, "lora"),
                               **FAST)
        everything = ManagedConfig(MODEL, training_shape=_shape(lt, "full"),
                                   reference="separate",
                                   reference_training_shape=_shape(lt, "forward"), **FAST)
        with pytest.raises(RuntimeError, match="boom"):
            async with ServiceSession.managed(everything, base_url=lt.control_plane_url) as setup:
                assert len(setup.created) == 3
                await setup.publish("base")  # the publisher and the reference's session open
                raise RuntimeError("boom")
        assert _live(lt) == {"jobs": 0, "deployments": 0}
        with anyio.move_on_after(0.15) as scope:  # cancelled while the trainer warms up
            async with ServiceSession.managed(config, base_url=lt.control_plane_url):
                pytest.fail("provisioning should still be waiting")
        assert scope.cancelled_caught
        assert _live(lt) == {"jobs": 0, "deployments": 0}


async def test_refusals_come_before_anything_is_sent(trainer: LocalTrainer) -> None:
    with pytest.raises(InvalidInput, match="reference"):
        ManagedConfig(base_model=MODEL, reference="same-trainer")  # full-parameter policy
    with pytest.raises(InvalidInput, match=r"cleanup\.deployment"):
        Cleanup(deployment="archive")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="replica_count"):
        ManagedConfig(base_model=MODEL, replica_count=0)
    before = _live(trainer)
    wrong = ManagedConfig(base_model=MODEL, reference="separate",
                          reference_training_shape=_shape(trainer, "full"), **FAST)
    with pytest.raises(InvalidInput, match="FULL_PARAMETER_TRAINER"):
        async with ServiceSession.managed(wrong, base_url=trainer.control_plane_url):
            pytest.fail("a policy trainer was provisioned")
    assert _live(trainer) == before  # refused before the policy trainer was created
    shapeless = ManagedConfig(base_model=MODEL, **FAST)
    with pytest.raises(InvalidInput, match="deployment_shape"):
        async with ServiceSession.managed(shapeless, base_url=trainer.control_plane_url):
            pytest.fail("a deployment without a shape")
    assert _live(trainer) == before
