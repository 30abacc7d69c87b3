"""Rollouts in 2 Ray actor workers train the demo task (``-m "not ray"`` deselects this)."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tinker import types

from firetitan_async import ServiceSession
from firetitan_async.cli._demo import DemoTask
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import RayRollouts, RLResult, TrainerPolicy, run_rl

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.anyio, pytest.mark.ray]

MODEL = "local/tiny-byte-lm"
STEPS = 14
KEY = "fw-test-key-for-ray-workers"
TASK = DemoTask(target=b"async", prompt=tuple(b"Say: "), group_size=32, temperature=1.0)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    # The workers get the API key from their environment, never from a pickle.
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"FIREWORKS_API_KEY": KEY}},
    )
    yield
    ray.shutdown()


async def test_two_ray_workers_train_the_demo_task(anyio_backend: str, ray_cluster: None) -> None:
    async with LocalTrainer(seed=0, api_key=KEY) as lt:
        async with ServiceSession(lt.base_url, api_key=KEY, dialect="tinker") as session:
            client = await session.create_training_client(MODEL)
            publisher = TrainerPolicy(session, client, prefix="ray")
            handles = publisher.handles()
            assert KEY.encode() not in pickle.dumps(await handles.publish(0))
            with RayRollouts(TASK.rollout, workers=2) as remote:
                result: RLResult[Any, Any, Any] = await run_rl(
                    client,
                    handles,
                    range(4 * STEPS),  # the sampling seeds: STEPS steps of 4 groups
                    remote,
                    TASK.to_datums,
                    adam=types.AdamParams(learning_rate=2e-2, beta1=0.9, beta2=0.99),
                    groups_per_step=4,
                    concurrency=8,
                    max_staleness=1,
                )
                calls = list(remote.calls_per_worker)
            assert publisher.last_snapshot is not None
            sampler = await session.create_sampling_client(model_path=publisher.last_snapshot.path)
            held_out = await TASK.__class__(TASK.target, TASK.prompt, 64, 1.0).rollout(
                sampler, seed=12345
            )
    assert len(result.steps) == STEPS and max(max(s.staleness) for s in result.steps) <= 1
    assert sum(calls) == 4 * STEPS and min(calls) >= STEPS, calls  # both workers did real work
    reward = float(np.mean([c.reward for c in held_out]))
    first = float(np.mean([c.reward for r in result.steps[0].rollouts for c in r.group]))
    print(f"ray: reward {first:.3f} -> {reward:.3f}, {result.steps[-1].elapsed_s:.1f}s of training")
    assert reward >= 0.9, (first, reward)
