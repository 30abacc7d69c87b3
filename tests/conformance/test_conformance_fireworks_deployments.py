"""Conformance: the unmodified Fireworks SDK (1.2.30) drives the local deployment.

``DeploymentManager`` (create, get, wait, update, warm-up, hot-load status, scale to zero,
delete), ``WeightSyncer.save_and_hotload`` (a base, then deltas, from the SDK's own training
client) and ``DeploymentSampler`` (SSE completions) against a key-protected ``LocalTrainer``.
The sync SDK parts are plain sync tests; the SDK's async sampler runs under ``asyncio.run``.
Every warning the SDK logs fails the test (it hides failures behind warnings).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fireworks.training import sdk

from firetitan_async import DeploymentSampler
from firetitan_async.local import LocalTrainer
from firetitan_async.local._deployments import weights_digest
from firetitan_async.local._model import MODEL_NAME

pytestmark = pytest.mark.conformance

KEY = "fw_local_deployments_conformance_01"
DEP = "rl-rollouts"
PROMPT = list(b"tiny model ")
TEXTS = [b"hello fireworks, hello world", b"the local trainer is tiny"]


def _datum(text: bytes) -> sdk.Datum:
    tokens = list(text)
    return sdk.Datum(
        model_input=sdk.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": sdk.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
            "weights": sdk.TensorData.from_numpy(np.ones(len(tokens) - 1, np.float32)),
        },
    )


@pytest.fixture
def sdk_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING, logger="fireworks")
    yield
    bad = [r for r in caplog.records
           if r.name.startswith("fireworks") and r.levelno >= logging.WARNING]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


@pytest.fixture
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(api_key=KEY, seed=5, long_poll_s=5.0) as lt:
        httpx.post(
            f"{lt.base_url}/_local/inference/config",
            json={"hotload_s": 0.0},
            headers={"X-Api-Key": KEY},
        )
        yield lt


def _config() -> Any:
    return sdk.DeploymentConfig(deployment_id=DEP, base_model=MODEL_NAME,
                                accept_shapeless_risk=True, min_replica_count=1)


def _served(lt: LocalTrainer) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(
        f"{lt.base_url}/_local/deployments/{DEP}/digest", headers={"X-Api-Key": KEY}
    ).json()
    return reply


def test_deployment_manager_lifecycle(trainer: LocalTrainer, sdk_warnings: None) -> None:
    mgr = sdk.DeploymentManager(api_key=KEY, base_url=trainer.base_url)
    info = mgr.create_or_get(_config())
    assert (info.state, info.inference_model) == ("READY", f"accounts/local/deployments/{DEP}")
    assert mgr.create_or_get(_config()).name == info.name  # the get path
    assert mgr.wait_for_ready(DEP, timeout_s=5, poll_interval_s=0.1).state == "READY"
    assert mgr.update(DEP, {"maxReplicaCount": 2}, ["max_replica_count"]).state == "READY"
    assert mgr.warmup(info.inference_model, max_retries=2, retry_interval_s=0.1)
    status = mgr.hotload_check_status(DEP, MODEL_NAME)
    assert status["replicas"][0]["readiness"] is True
    mgr.scale_to_zero(DEP)
    assert mgr.hotload_check_status(DEP, MODEL_NAME) == {"replicas": []}
    mgr.delete(DEP)
    assert mgr.get(DEP) is None


def test_weight_syncer_save_and_hotload_serves_the_trainers_weights(
    trainer: LocalTrainer, sdk_warnings: None
) -> None:
    mgr = sdk.DeploymentManager(api_key=KEY, base_url=trainer.base_url)
    mgr.create_or_get(_config())
    tc = sdk.FiretitanServiceClient(base_url=trainer.base_url, api_key=KEY) \
        .create_training_client(base_model=MODEL_NAME, lora_rank=0)
    syncer = sdk.WeightSyncer(policy_client=tc, deploy_mgr=mgr, deployment_id=DEP,
                              base_model=MODEL_NAME, hotload_timeout=30, warmup_max_retries=2)
    state: Any = trainer._state
    for step in range(3):  # a base, then two deltas chained on the identity served
        tc.forward_backward([_datum(t) for t in TEXTS], "cross_entropy").result()
        tc.optim_step(sdk.AdamParams(learning_rate=5e-2)).result()
        snapshot = syncer.save_and_hotload(f"step-{step}")
        served = _served(trainer)
        assert served["identity"] == snapshot and syncer.base_identity == snapshot
        model = state.registry.model(tc.model_id).model
        assert served["sha256"] == weights_digest(model.sampler_weights()), step
    assert served["version"] == 3


def test_the_sdk_sampler_and_ours_draw_the_same_tokens(
    trainer: LocalTrainer, sdk_warnings: None
) -> None:
    sdk.DeploymentManager(api_key=KEY, base_url=trainer.base_url).create_or_get(_config())
    model = f"accounts/local/deployments/{DEP}"

    async def both() -> tuple[list[Any], list[Any]]:
        theirs = sdk.DeploymentSampler(
            inference_url=trainer.base_url, model=model, api_key=KEY,
            concurrency_controller=sdk.FixedConcurrencyController(4),
        )
        try:
            got = await theirs.sample_with_prompt_tokens(
                PROMPT, n=2, max_tokens=10, temperature=1.0, logprobs=True, seed=9
            )
        finally:
            theirs.close()
        async with DeploymentSampler(trainer.base_url, model, KEY) as ours:
            mine = await ours.sample(PROMPT, max_tokens=10, logprobs=True, seed=9)
        return got, mine

    theirs, ours = asyncio.run(both())
    assert len(theirs) == 2
    for completion in theirs:
        assert completion.full_tokens == ours[0].full_tokens
        assert completion.prompt_len == len(PROMPT)
        assert completion.finish_reason == ours[0].finish_reason
        assert completion.inference_logprobs == ours[0].logprobs
