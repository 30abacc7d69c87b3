"""The rest of the Fireworks SDK's service surface, against the local trainer over real HTTP on
loopback: ``ManagedSetup.hotload_sampler_snapshot`` / ``create_deployment_sampler`` /
``Deployments.reattach_trainer``,
``TrainerJobs.model_is_moe`` and ``ServiceSession.get_server_capabilities`` (both
dialects). Request-for-request fidelity with the SDK is in
``tests/conformance/test_fidelity_fireworks_surface.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

import httpx
import pytest
from tinker import types

from firetitan_async import (
    DeploymentConfig,
    DeploymentFailed,
    Deployments,
    InvalidInput,
    ManagedConfig,
    PlatformAPIError,
    ProtocolError,
    ServiceSession,
    TrainerJobs,
    UsageError,
)
from firetitan_async.local import LocalTrainer, sft_datum, write_byte_tokenizer
from firetitan_async.local._recorder import Recorder

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
MOE = "accounts/fireworks/models/qwen3-30b-a3b"
TRAINER_OPTIONS = {"seed": 0, "models": [f"{MOE},moe=true", "accounts/fireworks/models/qwen3-8b"]}


class _Fast(TypedDict):
    poll_interval_s: float
    trainer_timeout_s: float
    deployment_timeout_s: float


FAST: _Fast = {"poll_interval_s": 0.02, "trainer_timeout_s": 20.0, "deployment_timeout_s": 20.0}
PROMPT = [104, 105, 32]


def _shape(lt: LocalTrainer, name: str) -> str:
    return f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-{name}"


class _GivenTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("latin-1")


async def test_hotload_sampler_snapshot_and_create_deployment_sampler_chain_deltas(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    """A full-parameter policy: the first saved path loads as a base, the next (a delta, as
    the client saved it) is chained on it; the samplers serve what was hot-loaded. Their
    token-id stops are decoded with ``tokenizer_model``, loaded on the first need."""
    tokenizer_model = str(write_byte_tokenizer(tmp_path / "byte-tokenizer"))
    config = ManagedConfig(base_model=MODEL, training_shape=_shape(trainer, "full"),
                           tokenizer_model=tokenizer_model, **FAST)
    datum = sft_datum("hot load me")
    async with ServiceSession.managed(config, base_url=trainer.control_plane_url) as setup:
        assert not setup.requires_initial_sampler_sync()  # a fresh deployment
        policy = await setup.training_client()
        first = await policy.save_weights_for_sampler("s1")
        assert policy.saved_snapshot_type(first.path) == "base"
        base = await setup.hotload_sampler_snapshot(first.path)
        assert (base.snapshot, base.checkpoint_type, base.previous) == (first.path, "base", None)
        await policy.forward_backward([datum], "cross_entropy")
        await policy.optim_step(types.AdamParams(learning_rate=1e-2))
        second = await policy.save_weights_for_sampler_ext("s2")
        assert second.checkpoint_type == "delta"
        sampler = await setup.create_deployment_sampler(second, concurrency=2)
        assert sampler is not setup.sampler and sampler.concurrency.window == 2
        out = await sampler.sample(PROMPT, n=2, max_tokens=3, seed=1)
        assert {c.policy_version for c in out} == {second.path}
        # the same deployment, another sampler: no hot-load without a path
        plain = await setup.create_deployment_sampler()
        assert {c.policy_version for c in await plain.sample(PROMPT, n=1, max_tokens=2)} == {
            second.path
        }
        # token-id stops: tokenizer_model, loaded when first needed through the policy client
        # (its get_tokenizer: one load in a worker thread, shared by every sampler)
        assert setup.sampler is not None
        assert plain.tokenizer is None and setup.sampler.tokenizer is None
        [free] = await plain.sample(PROMPT, max_tokens=8, seed=3)
        stop = [next(t for t in free.tokens[1:] if 33 <= t < 127)]  # an ASCII token it drew
        [stopped] = await plain.sample(PROMPT, max_tokens=8, seed=3, stop=stop)
        assert stopped.finish_reason == "stop"
        assert stopped.tokens == free.tokens[: free.tokens.index(stop[0]) + 1]
        loaded = await policy.get_tokenizer(tokenizer_model)
        assert plain.tokenizer is loaded and sampler.tokenizer is None
        streamed = [d.token async for d in setup.sampler.stream(PROMPT, max_tokens=8, seed=3,
                                                                stop=stop)]
        assert streamed[-2:] == [stop[0], None] and setup.sampler.tokenizer is loaded
        given = _GivenTokenizer()  # a tokenizer given wins
        explicit = await setup.create_deployment_sampler(tokenizer=given)
        assert (await explicit.sample(PROMPT, max_tokens=8, seed=3, stop=stop))[0].tokens == (
            stopped.tokens
        )
        assert explicit.tokenizer is given
        with pytest.raises(InvalidInput, match="model_path"):
            await setup.hotload_sampler_snapshot("")
        # The SDK's create_sampling_client on a managed service: hot-load the path onto the
        # deployment, then sample through the deployment (never a trainer sampling session).
        sessions_before = trainer.stats()["requests"].get("create_sampling_session", 0)
        await policy.forward_backward([datum], "cross_entropy")
        await policy.optim_step(types.AdamParams(learning_rate=1e-2))
        third = await policy.save_weights_for_sampler("s3")
        client = await setup.session.create_sampling_client(model_path=third.path)
        assert setup.sampler is not None and client.deployment_sampler is setup.sampler
        got = await client.sample(types.ModelInput.from_ints(PROMPT), 2,
                                  types.SamplingParams(max_tokens=3, seed=1))
        assert [len(s.tokens) for s in got.sequences] == [3, 3]
        assert {c.policy_version for c in await setup.sampler.sample(PROMPT, max_tokens=1)} == {
            third.path
        }
        on_base = await setup.session.create_sampling_client(base_model=MODEL)  # no hot-load
        assert len((await on_base.sample(types.ModelInput.from_ints(PROMPT), 1,
                                      types.SamplingParams(max_tokens=2))).sequences) == 1
        assert trainer.stats()["requests"].get("create_sampling_session", 0) == sessions_before


async def test_reattach_trainer_patches_only_what_differs_and_waits_for_the_roll(
    trainer: LocalTrainer,
) -> None:
    with Recorder(trainer.base_url) as rec:
        async with TrainerJobs(base_url=rec.base_url) as jobs, Deployments(
            base_url=rec.base_url
        ) as deployments:
            first = f"accounts/{await jobs.account_id()}/rlorTrainerJobs/job-a"
            second = first.replace("job-a", "job-b")
            await deployments.create_or_get(
                DeploymentConfig("reattach", MODEL, hot_load_trainer_job=first)
            )
            try:
                info = await deployments.reattach_trainer(
                    "reattach", base_model=MODEL, trainer_job_name=first, timeout_s=5,
                    poll_interval_s=0.02,
                )
                assert info.hot_load_trainer_job == first
                assert not [r for r in rec.records if r.method == "PATCH"]  # attached: no PATCH
                info = await deployments.reattach_trainer(
                    info, base_model=MODEL, trainer_job_name=second, timeout_s=5,
                    poll_interval_s=0.02, hot_load_transition_type="sync",
                )
                assert (info.state, info.hot_load_trainer_job, info.hot_load_transition_type) == (
                    "READY", second, "SYNC")
                (patch,) = [r for r in rec.records if r.method == "PATCH"]  # one PATCH, one roll
                assert patch.body == {"hotLoadTrainerJob": second, "hotLoadTransitionType": "SYNC"}
                assert dict(patch.query) == {
                    "updateMask": "hot_load_trainer_job,hot_load_transition_type"}
                with pytest.raises(InvalidInput, match="hot_load_transition_type"):
                    await deployments.reattach_trainer(
                        "reattach", base_model=MODEL, trainer_job_name=second, timeout_s=1,
                        hot_load_transition_type="later",
                    )
                with pytest.raises(InvalidInput, match="source_url"):  # a header value
                    await deployments.hotload("reattach", base_model=MODEL, snapshot="s",
                                              source_url="gs://b/x\n")
                with pytest.raises(DeploymentFailed, match="NOT_FOUND"):
                    await deployments.reattach_trainer(
                        "missing", base_model=MODEL, trainer_job_name=second, timeout_s=1
                    )
            finally:
                await deployments.delete("reattach")


async def test_a_reattached_deployment_needs_an_initial_sync_until_a_hotload(
    trainer: LocalTrainer,
) -> None:
    async with Deployments(base_url=trainer.control_plane_url) as deployments:
        other = f"accounts/{trainer.account_id}/rlorTrainerJobs/gone"
        await deployments.create_or_get(
            DeploymentConfig("kept", MODEL, hot_load_trainer_job=other))
        config = ManagedConfig(base_model=MODEL, lora_rank=4, deployment_id="kept",
                               training_shape=_shape(trainer, "lora"), **FAST)
        try:
            async with ServiceSession.managed(config, base_url=trainer.control_plane_url) as setup:
                assert setup.reattached_deployment and setup.requires_initial_sampler_sync()
                assert setup.sampler is not None  # no tokenizer_model: token-id stops refused
                with pytest.raises(InvalidInput, match="tokenizer_model") as info:
                    await setup.sampler.sample(PROMPT, stop=[46])
                assert info.value.field == "stop"
                saved = await (await setup.training_client()).save_weights_for_sampler("first")
                version = await setup.hotload_sampler_snapshot(saved.path)
                assert version.checkpoint_type == "base"  # LoRA snapshots are all bases
                assert not setup.requires_initial_sampler_sync()
        finally:
            await deployments.delete("kept")


async def test_model_is_moe_reads_base_model_details(trainer: LocalTrainer) -> None:
    async with TrainerJobs(base_url=trainer.control_plane_url) as jobs:
        assert await jobs.model_is_moe(MOE) is True
        assert await jobs.model_is_moe("accounts/fireworks/models/qwen3-8b") is False
        with pytest.raises(PlatformAPIError) as missing:
            await jobs.model_is_moe("accounts/fireworks/models/no-such-model")
        assert missing.value.status_code == 404
        with pytest.raises(InvalidInput, match="model"):
            await jobs.model_is_moe("")


async def test_model_is_moe_refuses_a_record_that_does_not_say() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/accounts":
            return httpx.Response(200, json={"accounts": [{"name": "accounts/a"}]})
        return httpx.Response(200, json={"name": "accounts/a/models/m", "baseModelDetails": {}})

    async with TrainerJobs("fw_test_key_0001", base_url="https://api.example",
                           account_id="a", transport=httpx.MockTransport(reply)) as jobs:
        with pytest.raises(ProtocolError, match=r"baseModelDetails\.moe"):
            await jobs.model_is_moe("accounts/a/models/m")


@pytest.mark.parametrize("dialect", ["fireworks", "tinker"])
async def test_get_server_capabilities_in_both_dialects(
    trainer: LocalTrainer, dialect: str
) -> None:
    async with ServiceSession(trainer.base_url, api_key="", dialect=dialect) as session:  # type: ignore[arg-type]
        caps = await session.get_server_capabilities()
    names = [m.model_name for m in caps.supported_models]
    assert MODEL in names and MOE in names
    assert all(m.max_context_length == 4096 for m in caps.supported_models)


async def test_get_server_capabilities_is_refused_on_a_serverless_endpoint() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/create_session"):
            return httpx.Response(200, json={"session_id": "ts-1"})
        return httpx.Response(200, json={})

    session = ServiceSession(
        "https://api.example/training/v1/serverless", api_key="fw_test_key_0001",
        dialect="fireworks", transport=httpx.MockTransport(reply),
    )
    async with session:
        with pytest.raises(UsageError, match="serverless"):
            await session.get_server_capabilities()
