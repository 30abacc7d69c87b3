"""``run_rl`` through a deployment (``DeploymentPolicy``): the Fireworks shape of the loop.

Real local trainer and local deployment over loopback HTTP: every version is saved, hot-loaded
and served; rollouts call ``/inference/v1/completions``; each completion says which snapshot
served it, and that version is within ``max_staleness`` of the step that trains it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import (
    DeploymentConfig,
    Deployments,
    DeploymentSampler,
    HotloadFailed,
    SampledCompletion,
    ServiceSession,
    TrainingClient,
    WeightPublisher,
)
from firetitan_async.cli._demo import Completion, DemoTask
from firetitan_async.errors import InvalidInput
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import DeploymentPolicy, DeploymentPolicySampler, RLResult, run_rl

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
DEP = "rl"
STEPS = 14
GROUPS = 4
TASK = DemoTask(target=b"async", prompt=tuple(b"Say: "), group_size=32, temperature=1.0)


@pytest.fixture
async def policy(
    local_trainer: LocalTrainer,
) -> AsyncIterator[tuple[LocalTrainer, TrainingClient, DeploymentPolicy]]:
    lt = local_trainer
    async with (
        ServiceSession(lt.base_url) as session,
        Deployments(base_url=lt.control_plane_url) as deployments,
    ):
        client = await session.create_training_client(MODEL, lora_rank=0)
        info = await deployments.create_or_get(DeploymentConfig(DEP, MODEL))
        await deployments.wait_for_ready(DEP, poll_interval_s=0.05)
        async with (
            WeightPublisher(client, deployments, DEP, base_model=MODEL, base_every=5,
                            poll_interval_s=0.05) as weights,
            DeploymentSampler(deployments.inference_url, info.inference_model) as sampler,
        ):
            yield lt, client, DeploymentPolicy(weights, sampler, prefix="rl")


async def _stats(lt: LocalTrainer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=lt.base_url) as http:
        reply: dict[str, Any] = (await http.get("/_local/inference/stats")).json()
        return reply


@pytest.mark.parametrize("max_staleness", [1, 2])
async def test_run_rl_through_a_deployment_trains_the_demo_task(
    policy: tuple[LocalTrainer, TrainingClient, DeploymentPolicy], max_staleness: int
) -> None:
    lt, client, deployment = policy
    result: RLResult[int, Completion, Any] = await run_rl(
        client,
        deployment,
        range(GROUPS * STEPS),  # the sampling seeds
        TASK.rollout,
        TASK.to_datums,
        adam=types.AdamParams(learning_rate=2e-2, beta1=0.9, beta2=0.99),
        groups_per_step=GROUPS,
        concurrency=2 * GROUPS,
        max_staleness=max_staleness,
    )
    # Nothing discarded: every ticket trained once, in its own step.
    assert len(result.steps) == STEPS
    tickets = [r.index for s in result.steps for r in s.rollouts]
    assert tickets == list(range(GROUPS * STEPS))
    # Every completion says which version served it: within max_staleness of its step's.
    for step in result.steps:
        for rollout in step.rollouts:
            for c in rollout.group:
                assert c.served is not None
                assert step.version - max_staleness <= c.served <= step.version, (step.step, c)
                assert c.served >= rollout.version  # a deployment only moves forward
    # Every version was published (a base, then deltas; a base again after 5 deltas) and
    # hot-loaded, and the rollouts really came from the deployment.
    assert sorted(deployment.published) == list(range(STEPS + 1))
    kinds = [deployment.published[v].checkpoint_type for v in range(STEPS + 1)]
    assert kinds[:7] == ["base", "delta", "delta", "delta", "delta", "delta", "base"]
    stats = await _stats(lt)
    assert stats["hotloads"] == STEPS + 1
    assert stats["completions"] == GROUPS * STEPS
    # It learned: the last served version says the target.
    last = DeploymentPolicySampler(deployment, STEPS)
    held_out = await TASK.__class__(TASK.target, TASK.prompt, 64, 1.0).rollout(last, seed=12345)
    assert {c.served for c in held_out} == {STEPS}
    first = float(np.mean([c.reward for r in result.steps[0].rollouts for c in r.group]))
    reward = float(np.mean([c.reward for c in held_out]))
    assert reward >= 0.9, (first, reward)


async def test_version_of_reads_the_served_identity(
    policy: tuple[LocalTrainer, TrainingClient, DeploymentPolicy],
) -> None:
    _, _, deployment = policy

    def completion(identity: str | None) -> SampledCompletion:
        return SampledCompletion([1], [2], None, "length", "", identity, "r")

    assert deployment.version_of(completion("rl-000007-1a2b3c4d")) == 7
    assert deployment.version_of(completion(None)) is None  # the base weights, never published
    assert deployment.version_of(completion("other-000007-1a2b3c4d")) is None
    assert deployment.version_of(completion("rl-7-1a2b3c4d")) is None
    sampler = await deployment.publish(0)
    [c] = await sampler.sample(list(b"Say: "), max_tokens=2, seed=1)
    assert c.policy_version == deployment.published[0].snapshot
    assert sampler.version == 0 and sampler.version_of(c) == 0


async def test_a_bad_prefix_is_refused(
    policy: tuple[LocalTrainer, TrainingClient, DeploymentPolicy],
) -> None:
    _, _, deployment = policy
    with pytest.raises(InvalidInput, match="prefix"):
        DeploymentPolicy(deployment.publisher, deployment.sampler, prefix="a/b")


async def test_a_failed_hotload_fails_the_run_with_its_error(
    policy: tuple[LocalTrainer, TrainingClient, DeploymentPolicy],
) -> None:
    lt, client, deployment = policy
    published = 0

    async def rollout(sampler: DeploymentPolicySampler, seed: int) -> list[Completion]:
        nonlocal published
        if published == 0:  # version 0 is served: make the next hot-load fail
            published = 1
            async with httpx.AsyncClient(base_url=lt.base_url) as http:
                reply = await http.post(f"/_local/deployments/{DEP}/fail_next_hotload")
                reply.raise_for_status()
        return await TASK.rollout(sampler, seed)

    with pytest.raises(HotloadFailed):
        await run_rl(
            client, deployment, range(GROUPS * 4), rollout, TASK.to_datums,
            adam=types.AdamParams(learning_rate=2e-2), groups_per_step=GROUPS,
            concurrency=GROUPS, max_staleness=1,
        )
    assert sorted(deployment.published) == [0]
