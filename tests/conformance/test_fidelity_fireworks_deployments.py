"""Wire fidelity, deployments: ``Deployments`` and ``DeploymentSampler`` send what the Fireworks
SDK's ``DeploymentManager`` and ``DeploymentSampler`` send, request for request.

One script runs through the unmodified SDK (1.2.30) and through ``firetitan_async`` (asyncio
and trio), each against its own local trainer behind a recording proxy (``Recorder``). Snapshot
identities carry a per-session suffix, so they are replaced by their role (``<base>``,
``<delta>``) before comparing.

Deliberate differences (asserted below, so the list stays true):

* hot-load status polls: the SDK polls every ``poll_interval`` (5 s by default); we poll at
  50 ms, doubling up to the interval, so a quick hot-load is seen at once. Repeated status
  GETs are collapsed before comparing.
* completions: the SDK sends ``n`` requests of ``n=1`` over SSE (``stream: true``,
  ``perf_metrics_in_response: true``); ``DeploymentSampler.sample`` sends one request with
  ``n`` and reads plain JSON (``stream: false``; ``stream()`` uses SSE): fewer requests and no
  SSE parsing per rollout, the same choices for the same seed. Every other field is the same
  (``top_k: 0``, ``top_p: 1.0``, ``raw_output: true``, ``logprobs``, ``seed``), and both send
  ``Authorization``, ``X-Api-Key`` and an ``x-request-id``.
* the warm-up completion after each hot-load (``WeightSyncer``'s default) is not sent by
  ``WeightPublisher``: ``wait_for_hotload`` already saw the snapshot served and ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from fireworks.training import sdk

from firetitan_async import (
    DeploymentConfig,
    Deployments,
    DeploymentSampler,
    SamplerSnapshot,
    ServiceSession,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME
from firetitan_async.local._recorder import RecordedExchange, Recorder

pytestmark = pytest.mark.anyio

KEY = "fw_local_fidelity_deployments_0001"
DEP = "fidelity"
PROMPT = [104, 105, 32]


@pytest.fixture
def sides() -> Iterator[tuple[LocalTrainer, Recorder]]:
    with LocalTrainer(api_key=KEY, seed=3) as lt, Recorder(lt.base_url) as rec:
        yield lt, rec


async def _snapshots(lt: LocalTrainer) -> tuple[SamplerSnapshot, SamplerSnapshot]:
    async with ServiceSession(lt.base_url, api_key=KEY) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=0)
        base = await client.save_weights_for_sampler_ext("base")
        delta = await client.save_weights_for_sampler_ext("delta", checkpoint_type="delta")
    return base, delta


def _script_sdk(url: str, base: str, delta: str) -> None:
    mgr = sdk.DeploymentManager(api_key=KEY, base_url=url)
    mgr.create_or_get(sdk.DeploymentConfig(deployment_id=DEP, base_model=MODEL_NAME))
    mgr.wait_for_ready(DEP, timeout_s=5, poll_interval_s=0.05)
    mgr.update(DEP, {"maxReplicaCount": 2}, ["max_replica_count"])
    mgr.hotload(DEP, MODEL_NAME, base)
    assert mgr.wait_for_hotload(DEP, MODEL_NAME, base, poll_interval=0.05)
    meta = {"previous_snapshot_identity": base, "compression_format": "arc_v2",
            "checksum_format": "alder32"}
    mgr.hotload(DEP, MODEL_NAME, delta, incremental_snapshot_metadata=meta)
    assert mgr.wait_for_hotload(DEP, MODEL_NAME, delta, poll_interval=0.05)
    assert mgr.warmup(f"accounts/local/deployments/{DEP}", max_retries=1)
    mgr.scale_to_zero(DEP)
    mgr.delete(DEP)
    mgr.close()


async def _script_ours(url: str, base: str, delta: str) -> None:
    async with Deployments(KEY, base_url=url) as deployments:
        await deployments.create_or_get(DeploymentConfig(DEP, MODEL_NAME))
        await deployments.wait_for_ready(DEP, timeout_s=5, poll_interval_s=0.05)
        await deployments.update(DEP, {"maxReplicaCount": 2}, ["max_replica_count"])
        await deployments.hotload(DEP, base_model=MODEL_NAME, snapshot=base)
        await deployments.wait_for_hotload(DEP, base_model=MODEL_NAME, snapshot=base,
                                           poll_interval_s=0.05)
        await deployments.hotload(DEP, base_model=MODEL_NAME, snapshot=delta, previous=base)
        await deployments.wait_for_hotload(DEP, base_model=MODEL_NAME, snapshot=delta,
                                           poll_interval_s=0.05)
        assert await deployments.warmup(DEP, max_retries=1)
        await deployments.scale_to_zero(DEP)
        await deployments.delete(DEP)


def _normal(records: tuple[RecordedExchange, ...], names: dict[str, str]) -> list[tuple[Any, ...]]:
    """(method, path, query, body, credential headers) per request, identities by role,
    consecutive identical status polls collapsed."""

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return names.get(value, value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v) for v in value]
        return value

    out: list[tuple[Any, ...]] = []
    for ex in records:
        creds = tuple(sorted(h for h in ex.header_names if h in ("x-api-key", "authorization")))
        row = (ex.method, ex.path, ex.query, sub(ex.body), creds, ex.headers.get("content-type"))
        if out and row == out[-1] and ex.method == "GET" and "hot_load" in ex.path:
            continue
        out.append(row)
    return out


async def test_deployment_requests_match_the_sdks(sides: tuple[LocalTrainer, Recorder]) -> None:
    lt_ours, rec_ours = sides
    with LocalTrainer(api_key=KEY, seed=3) as lt_sdk, Recorder(lt_sdk.base_url) as rec_sdk:
        base_sdk, delta_sdk = await _snapshots(lt_sdk)
        base_ours, delta_ours = await _snapshots(lt_ours)
        # the sync SDK blocks this loop while it runs: the servers live on their own threads
        _script_sdk(rec_sdk.base_url, base_sdk.snapshot_name, delta_sdk.snapshot_name)
        await _script_ours(rec_ours.base_url, base_ours.snapshot_name, delta_ours.snapshot_name)
        theirs = _normal(rec_sdk.records, {base_sdk.snapshot_name: "<base>",
                                           delta_sdk.snapshot_name: "<delta>"})
    ours = _normal(rec_ours.records, {base_ours.snapshot_name: "<base>",
                                      delta_ours.snapshot_name: "<delta>"})
    assert [r[:2] for r in ours] == [r[:2] for r in theirs]
    for mine, sdks in zip(ours, theirs, strict=True):
        assert mine == sdks, f"{mine[0]} {mine[1]}"
    assert any(r[0] == "POST" and r[1].endswith("hot_load") and "incremental_snapshot_metadata"
               in r[3] for r in ours)


def test_completion_requests_differ_only_as_the_table_says(
    sides: tuple[LocalTrainer, Recorder],
) -> None:
    lt, rec = sides
    mgr = sdk.DeploymentManager(api_key=KEY, base_url=lt.base_url)
    mgr.create_or_get(sdk.DeploymentConfig(deployment_id=DEP, base_model=MODEL_NAME))
    model = f"accounts/local/deployments/{DEP}"

    async def both() -> None:
        theirs = sdk.DeploymentSampler(
            inference_url=rec.base_url, model=model, api_key=KEY,
            concurrency_controller=sdk.FixedConcurrencyController(2),
        )
        await theirs.sample_with_prompt_tokens(PROMPT, n=2, max_tokens=4, logprobs=True, seed=1)
        theirs.close()
        async with DeploymentSampler(rec.base_url, model, KEY) as ours:
            await ours.sample(PROMPT, n=2, max_tokens=4, logprobs=True, seed=1)

    asyncio.run(both())
    records = rec.records
    sdk_bodies = [r.body for r in records[:2]]
    our_body = records[2].body
    assert len(records) == 3  # the SDK: one request per completion; ours: one for both
    assert sdk_bodies[0] == sdk_bodies[1]
    expected_differences = {"n": (1, 2), "stream": (True, False),
                            "perf_metrics_in_response": (True, None)}
    keys = set(sdk_bodies[0]) | set(our_body)
    differences = {k: (sdk_bodies[0].get(k), our_body.get(k)) for k in keys
                   if sdk_bodies[0].get(k) != our_body.get(k)}
    assert differences == expected_differences
    for r in records:
        assert {"authorization", "x-api-key", "x-request-id"} <= r.header_names
