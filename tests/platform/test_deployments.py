"""Deployments and WeightPublisher against the local server (real HTTP on loopback).

The deployment's served weights are compared with the trainer model's bit for bit through the
``/_local/deployments/{id}/digest`` hook (SHA-256 of the float32 bytes).
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
    FiretitanError,
    HotloadFailed,
    ServiceSession,
    TrainingClient,
    WeightPublisher,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum
from firetitan_async.local._deployments import weights_digest
from firetitan_async.platform import PlatformAPIError

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
DEP = "rollouts"
ADAM = types.AdamParams(learning_rate=5e-2)
TEXTS = ["the quick brown fox", "jumps over the lazy dog", "pack my box with jugs"]
PROMPT = list(b"hello ")


async def _step(client: TrainingClient, i: int) -> None:
    batch = [sft_datum(TEXTS[i % 3]), sft_datum(TEXTS[(i + 1) % 3])]
    fb = client.forward_backward(batch, "cross_entropy")
    step = client.optim_step(ADAM)
    await fb
    await step


def _scoring_datum(completion: list[int]) -> types.Datum:
    """A datum whose ``forward`` logprobs score ``completion`` after ``PROMPT``."""
    full = [*PROMPT, *completion]
    return types.Datum(
        model_input=types.ModelInput.from_ints(full[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(full[1:], np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(full) - 1, np.float32)),
        },
    )


def _trainer_digest(lt: LocalTrainer, client: TrainingClient) -> str:
    state: Any = lt._state  # the trainer model's weights, for the bit-exact comparison
    return weights_digest(state.registry.model(client.model_id).model.sampler_weights())


async def _served(lt: LocalTrainer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=lt.base_url) as http:
        reply: dict[str, Any] = (await http.get(f"/_local/deployments/{DEP}/digest")).json()
        return reply


@pytest.fixture
async def world(
    local_trainer: LocalTrainer,
) -> AsyncIterator[tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession]]:
    lt = local_trainer
    async with (
        ServiceSession(lt.base_url) as session,
        Deployments(base_url=lt.control_plane_url, account_id=lt.account_id) as deployments,
    ):
        client = await session.create_training_client(MODEL, lora_rank=0)
        await deployments.create_or_get(DeploymentConfig(DEP, MODEL))
        await deployments.wait_for_ready(DEP, poll_interval_s=0.05)
        yield lt, client, deployments, session


async def test_deployment_samples_score_as_the_trainers_weights(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    """What the deployment samples after a publication, the trainer's model scores alike: each
    sampled token's logprob is the training client's ``forward`` logprob of it (a Fireworks
    trainer has no sampler of its own to compare with)."""
    _, client, deployments, _ = world
    async with (
        WeightPublisher(client, deployments, DEP, base_model=MODEL) as publisher,
        DeploymentSampler(deployments.inference_url, await deployments.model(DEP)) as sampler,
    ):
        for i in range(2):  # a base, then a delta
            await _step(client, i)
            version = await publisher.publish(f"step-{i}")
            ours = await sampler.sample(PROMPT, n=3, max_tokens=12, logprobs=True, seed=11)
            scored = await client.forward([_scoring_datum(c.tokens) for c in ours],
                                          "cross_entropy")
            for c, out in zip(ours, scored.loss_fn_outputs, strict=True):
                trainer_lps = out["logprobs"].to_numpy()[len(PROMPT) - 1:]
                np.testing.assert_allclose(c.logprobs or [], trainer_lps, rtol=1e-5, atol=1e-5)
            assert {c.policy_version for c in ours} == {version.snapshot}
            assert version.checkpoint_type == ("base" if i == 0 else "delta")


async def test_a_delta_chain_of_ten_publications_serves_the_trainers_weights_bit_for_bit(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    lt, client, deployments, _ = world
    kinds = []
    previous: str | None = None
    async with WeightPublisher(client, deployments, DEP, base_model=MODEL) as publisher:
        for i in range(10):
            await _step(client, i)
            version = await publisher.publish(f"step-{i}")
            kinds.append(version.checkpoint_type)
            served = await _served(lt)
            assert served["identity"] == version.snapshot
            assert served["sha256"] == _trainer_digest(lt, client), f"publication {i}"
            assert version.number == i + 1
            assert version.previous == previous
            previous = version.snapshot
    assert kinds == ["base"] + ["delta"] * 9


async def test_a_failed_hotload_mid_chain_recovers_with_a_base(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    lt, client, deployments, _ = world
    async with WeightPublisher(client, deployments, DEP, base_model=MODEL) as publisher:
        await _step(client, 0)
        assert (await publisher.publish("a")).checkpoint_type == "base"
        await _step(client, 1)
        assert (await publisher.publish("b")).checkpoint_type == "delta"
        async with httpx.AsyncClient(base_url=lt.base_url) as http:
            await http.post(f"/_local/deployments/{DEP}/fail_next_hotload")
        await _step(client, 2)
        with pytest.raises(HotloadFailed) as info:
            await publisher.publish("c")
        assert "injected failure" in info.value.detail
        await _step(client, 3)
        recovered = await publisher.publish("d")
        assert recovered.checkpoint_type == "base"
        assert (await _served(lt))["sha256"] == _trainer_digest(lt, client)
        await _step(client, 4)
        assert (await publisher.publish("e")).checkpoint_type == "delta"
        assert (await _served(lt))["sha256"] == _trainer_digest(lt, client)


async def test_base_every_and_an_explicit_base(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    _, client, deployments, _ = world
    kinds = []
    async with WeightPublisher(client, deployments, DEP, base_model=MODEL,
                               base_every=2) as publisher:
        for i in range(6):
            kinds.append((await publisher.publish(f"s{i}", base=i == 4)).checkpoint_type)
    assert kinds == ["base", "delta", "delta", "base", "base", "delta"]


async def test_the_save_takes_its_place_in_order_and_the_hotload_does_not_block_training(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    lt, client, deployments, _ = world
    async with WeightPublisher(client, deployments, DEP, base_model=MODEL) as publisher:
        await _step(client, 0)
        before = _trainer_digest(lt, client)
        pending = publisher.publish("x")      # submitted now, before the next step
        await _step(client, 1)                 # training goes on while it hot-loads
        version = await pending
        assert (await _served(lt))["sha256"] == before != _trainer_digest(lt, client)
        assert version.total_s >= version.hotload_s


async def test_deployment_records_update_scale_to_zero_and_delete(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    _, _, deployments, _ = world
    again = await deployments.create_or_get(DeploymentConfig(DEP, MODEL))
    assert again.state == "READY" and again.inference_model == f"accounts/local/deployments/{DEP}"
    updated = await deployments.update(DEP, {"maxReplicaCount": 2}, ["max_replica_count"])
    assert updated.raw["maxReplicaCount"] == 2
    await deployments.scale_to_zero(DEP)
    assert (await deployments.hotload_status(DEP, base_model=MODEL)).replicas == 0
    assert (await deployments.get(DEP)) is not None
    await deployments.delete(DEP)
    assert await deployments.get(DEP) is None
    await deployments.delete(DEP)  # a missing deployment is not an error
    with pytest.raises(PlatformAPIError) as info:
        await deployments.update(DEP, {"maxReplicaCount": 1}, "max_replica_count")
    assert info.value.status_code == 404


async def test_a_delta_not_chained_on_the_current_snapshot_is_refused(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    lt, client, deployments, _ = world
    base = await client.save_weights_for_sampler_ext("b0")
    await deployments.hotload(DEP, base_model=MODEL, snapshot=base.snapshot_name)
    await deployments.wait_for_hotload(DEP, base_model=MODEL, snapshot=base.snapshot_name,
                                       poll_interval_s=0.02)
    await _step(client, 0)
    delta = await client.save_weights_for_sampler_ext("d1", checkpoint_type="delta")
    with pytest.raises(PlatformAPIError) as info:
        await deployments.hotload(DEP, base_model=MODEL, snapshot=delta.snapshot_name,
                                  previous="some-other-snapshot")
    assert info.value.status_code == 400 and "previous_snapshot_identity" in str(info.value)
    with pytest.raises(PlatformAPIError):  # a delta without its metadata is refused too
        await deployments.hotload(DEP, base_model=MODEL, snapshot=delta.snapshot_name)
    status = await deployments.hotload_status(DEP, base_model=MODEL)
    assert status.current_snapshot == base.snapshot_name and status.ready
    await deployments.hotload(DEP, base_model=MODEL, snapshot=delta.snapshot_name,
                              previous=base.snapshot_name)
    await deployments.wait_for_hotload(DEP, base_model=MODEL, snapshot=delta.snapshot_name,
                                       poll_interval_s=0.02)
    assert (await _served(lt))["sha256"] == _trainer_digest(lt, client)
    assert await deployments.warmup(DEP, max_retries=2, retry_interval_s=0.01)


async def test_deltas_queued_behind_a_failed_hotload_fail_fast_and_the_next_is_a_base(
    world: tuple[LocalTrainer, TrainingClient, Deployments, ServiceSession],
) -> None:
    lt, client, deployments, _ = world
    async with WeightPublisher(client, deployments, DEP, base_model=MODEL) as publisher:
        await publisher.publish("a")
        async with httpx.AsyncClient(base_url=lt.base_url) as http:
            await http.post(f"/_local/deployments/{DEP}/fail_next_hotload")
        failing = publisher.publish("b")   # a delta whose hot-load fails
        queued = publisher.publish("c")    # a delta submitted before that failure was known
        with pytest.raises(HotloadFailed):
            await failing
        with pytest.raises(FiretitanError, match="the next publication will be a base"):
            await queued
        await _step(client, 0)
        recovered = await publisher.publish("d")
        assert recovered.checkpoint_type == "base" and publisher.serving == recovered.snapshot
        assert (await _served(lt))["sha256"] == _trainer_digest(lt, client)
