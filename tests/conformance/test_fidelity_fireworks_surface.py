"""Wire fidelity, the rest of the Fireworks service surface: ours vs the unmodified SDK (1.2.30),
request by request, each against its own local trainer behind a recording proxy (asyncio and
trio on our side).

* **managed hot-load**: ``from_firetitan_config`` (a full-parameter policy with a deployment),
  two sampler saves, ``hotload_sampler_snapshot(path)`` of the first and
  ``create_deployment_sampler(path)`` of the second (a delta, chained on the first) vs
  ``ServiceSession.managed`` and ``ManagedSetup.hotload_sampler_snapshot`` /
  ``create_deployment_sampler``: the hot-load requests are the same (identities by role).
  Then ``create_sampling_client(model_path=third)`` and one ``sample`` vs
  ``setup.session.create_sampling_client`` and ``sample``: the third path hot-loaded the same
  way, then one completions request to the deployment with the same body but the SDK's
  streaming fields (``stream``, ``perf_metrics_in_response``; see
  ``test_fidelity_fireworks_sampler.py``), and no trainer sampling session.
* **platform calls**: ``DeploymentManager.reattach_trainer`` (attached already, then to another
  trainer with a new transition type), ``hotload(path=..., cmek_resource=...)`` (the source-URL
  header), ``FireworksClient.model_is_moe`` and ``FiretitanServiceClient.
  get_server_capabilities`` vs ``Deployments.reattach_trainer``, ``Deployments.hotload(
  source_url=..., cmek_resource=...)``, ``TrainerJobs.model_is_moe`` and
  ``ServiceSession.get_server_capabilities``: the same requests. In the tinker dialect
  ``get_server_capabilities`` is the tinker SDK's ``RestClient`` request.

Deliberate differences (asserted below, so the list stays true):

* hot-load status polls: collapsed when repeated (we poll at 50 ms doubling, the SDK every 5 s);
  the SDK's managed path also GETs the status once before its first hot-load (its RDMA
  weight-sync probe, a transport we do not have), so only the POSTs are compared there.
* the account is looked up once per control-plane client on both sides; which clients exist
  differs (the SDK builds a ``FireworksClient`` for ``model_is_moe``, we ask ``TrainerJobs``),
  so the ``GET /v1/accounts`` rows are compared by count.
* the trainer sessions' data planes are held to the SDK's in ``test_wire_fidelity_fireworks.py``
  and ``test_fidelity_fireworks_managed.py``; here only ``get_server_capabilities`` is compared.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import tinker
from fireworks.training import sdk

from firetitan_async import (
    DeploymentConfig,
    Deployments,
    ManagedConfig,
    ServiceSession,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME
from firetitan_async.local._recorder import RecordedExchange, Recorder

pytestmark = pytest.mark.anyio

KEY = "fw_local_fidelity_surface_0001"
MOE = "accounts/fireworks/models/qwen3-30b-a3b"
OPTIONS: dict[str, Any] = {"api_key": KEY, "seed": 3, "models": [f"{MOE},moe=true"]}
DEP = "surface"
TINKER_KEY = "tml-local-fidelity-surface-0001"
SOURCE = "gs://bucket/run/base/"
_DEPLOYMENT = re.compile(r"tiny-byte-lm-[0-9]{10}")
_HEADERS = ("fireworks-model", "fireworks-deployment", "x-fireworks-hot-load-source-url",
            "x-fireworks-hot-load-cmek-resource", "content-type")


@contextlib.contextmanager
def _trainer(**options: Any) -> Iterator[LocalTrainer]:
    """A local trainer whose hot-loads complete at once (the SDK polls their status every 5 s)."""
    with LocalTrainer(**{**OPTIONS, **options}) as lt:
        key = options.get("api_key", KEY)
        httpx.post(f"{lt.base_url}/_local/inference/config", json={"hotload_s": 0.0},
                   headers={"X-Api-Key": key} if key else {}).raise_for_status()
        yield lt


def _shape(lt: LocalTrainer) -> str:
    return f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-full"


def _job(lt: LocalTrainer, name: str) -> str:
    return f"accounts/{lt.account_id}/rlorTrainerJobs/{name}"


def _rows(records: tuple[RecordedExchange, ...], names: dict[str, str]) -> list[tuple[Any, ...]]:
    """(method, path, query, body, credentials, hot-load headers) per request, identities and
    deployment ids by role, repeated GETs of one path collapsed."""

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            return _DEPLOYMENT.sub("<deployment>", names.get(value, value))
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [sub(v) for v in value]
        return value

    out: list[tuple[Any, ...]] = []
    for ex in records:
        creds = tuple(sorted(h for h in ex.header_names if h in ("x-api-key", "authorization")))
        headers = {h: sub(ex.headers[h]) for h in _HEADERS if h in ex.headers}
        row = (ex.method, sub(ex.path), sub(ex.query), sub(ex.body), creds, headers)
        if out and row == out[-1] and ex.method == "GET":
            continue
        out.append(row)
    return out


def _identities(records: tuple[RecordedExchange, ...]) -> dict[str, str]:
    """Each hot-loaded identity by the order it was first hot-loaded: <s1>, <s2>, ..."""
    names: dict[str, str] = {}
    for ex in records:
        if ex.method == "POST" and ex.path.endswith("/hot_load") and isinstance(ex.body, dict):
            names.setdefault(ex.body["identity"], f"<s{len(names) + 1}>")
    return names


# -- the SDK's side (synchronous; recorded once per module) -----------------------------------


def _sdk_managed(lt: LocalTrainer, url: str) -> None:
    config = sdk.FiretitanProvisioningConfig(
        base_model=MODEL_NAME, training_shape_id=_shape(lt), cleanup_trainer_on_close=True,
        cleanup_deployment_on_close="delete",
    )
    service = sdk.FiretitanServiceClient.from_firetitan_config(
        api_key=KEY, base_url=url, managed_config=config
    )
    client = service.create_training_client(MODEL_NAME, lora_rank=0)
    first = client.save_weights_for_sampler("s1").result().path
    service.hotload_sampler_snapshot(first)
    second = client.save_weights_for_sampler("s2").result().path
    sampler = service.create_deployment_sampler(second)
    sampler.close()
    third = client.save_weights_for_sampler("s3").result().path
    sampling = service.create_sampling_client(model_path=third)
    sampling.sample(sdk.ModelInput.from_ints([104, 105]), num_samples=1,
                    sampling_params=sdk.SamplingParams(max_tokens=2, seed=1)).result()
    service.close()


def _sdk_platform(lt: LocalTrainer, url: str, snapshot: str) -> None:
    manager = sdk.DeploymentManager(api_key=KEY, base_url=url)
    manager.reattach_trainer(DEP, base_model=MODEL_NAME, trainer_job_name=_job(lt, "job-a"),
                             timeout_s=5, poll_interval_s=0.02)
    info = manager.reattach_trainer(
        DEP, base_model=MODEL_NAME, trainer_job_name=_job(lt, "job-b"), timeout_s=5,
        poll_interval_s=0.02, hot_load_transition_type="SYNC",
    )
    assert info.hot_load_trainer_job == _job(lt, "job-b")
    manager.hotload(DEP, MODEL_NAME, snapshot, path=SOURCE, cmek_resource="cmek-1")
    assert manager.wait_for_hotload(DEP, MODEL_NAME, snapshot, poll_interval=0.05)
    manager.close()
    assert sdk.FireworksClient(api_key=KEY, base_url=url).model_is_moe(MOE) is True
    service = sdk.FiretitanServiceClient(base_url=url, api_key=KEY)
    caps = service.get_server_capabilities()
    assert MOE in [m.model_name for m in caps.supported_models]
    service.close()


def _prepare_platform(lt: LocalTrainer) -> str:
    """Outside the recording: a deployment attached to job-a and one saved snapshot (its
    path: the deployment is re-attached to a trainer that has no snapshot of that name)."""
    manager = sdk.DeploymentManager(api_key=KEY, base_url=lt.base_url)
    manager.create_or_get(sdk.DeploymentConfig(
        deployment_id=DEP, base_model=MODEL_NAME, hot_load_trainer_job=_job(lt, "job-a")))
    manager.close()
    service = sdk.FiretitanServiceClient(base_url=lt.base_url, api_key=KEY)
    client = service.create_training_client(MODEL_NAME, lora_rank=0)
    name = str(client.save_weights_for_sampler_ext("base").path)
    service.close()
    return name


@pytest.fixture(scope="module")
def sdk_runs() -> dict[str, list[tuple[Any, ...]]]:
    runs = {}
    with _trainer() as lt, Recorder(lt.base_url) as rec:
        _sdk_managed(lt, rec.base_url)
        runs["managed"] = _rows(rec.records, _identities(rec.records))
    with _trainer(api_key=None) as lt:  # any key: the tinker SDK's too
        snapshot = _prepare_platform(lt)
        with Recorder(lt.base_url) as rec:
            _sdk_platform(lt, rec.base_url, snapshot)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rest = tinker.RestClient(base_url=rec.base_url, api_key=TINKER_KEY)
                rest.get_server_capabilities().result()
            runs["platform"] = _rows(rec.records, {snapshot: "<base>"})
    return runs


# -- ours ---------------------------------------------------------------------------------------


# What the SDK's completions body adds because it streams (SSE), and ours does not.
_STREAMING = ("stream", "perf_metrics_in_response")


def _hotload_posts(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [r for r in rows if r[0] == "POST" and r[1].endswith("/hot_load")]


async def test_managed_hotload_sampler_snapshot_and_create_deployment_sampler_match_the_sdk(
    sdk_runs: dict[str, list[tuple[Any, ...]]],
) -> None:
    with _trainer() as lt, Recorder(lt.base_url) as rec:
        config = ManagedConfig(base_model=MODEL_NAME, training_shape=_shape(lt),
                               poll_interval_s=0.05)
        async with ServiceSession.managed(config, api_key=KEY, base_url=rec.base_url) as setup:
            client = await setup.training_client()
            first = (await client.save_weights_for_sampler("s1")).path
            await setup.hotload_sampler_snapshot(first)
            second = (await client.save_weights_for_sampler("s2")).path
            sampler = await setup.create_deployment_sampler(second)
            await sampler.aclose()
            third = (await client.save_weights_for_sampler("s3")).path
            sampling = await setup.session.create_sampling_client(model_path=third)
            await sampling.sample(tinker.types.ModelInput.from_ints([104, 105]), 1,
                                  tinker.types.SamplingParams(max_tokens=2, seed=1))
        ours = _rows(rec.records, _identities(rec.records))
    theirs = sdk_runs["managed"]
    assert _hotload_posts(ours) == _hotload_posts(theirs)
    (base, delta, hotloaded) = _hotload_posts(ours)
    # create_sampling_client(model_path=...): the path hot-loaded (a delta on <s2>), then one
    # completions request to the deployment, the same body but the SDK's streaming fields
    assert hotloaded[3]["incremental_snapshot_metadata"]["previous_snapshot_identity"] == "<s2>"
    completions = {
        side: [{k: v for k, v in r[3].items() if k not in _STREAMING}
               for r in rows if r[1].endswith("/inference/v1/completions")]
        for side, rows in (("ours", ours), ("sdk", theirs))
    }
    assert completions["ours"] == completions["sdk"] != []
    assert not [r for r in ours if "sampling_session" in r[1] or r[1].endswith("/asample")]
    assert base[3] == {"identity": "<s1>", "reset_prompt_cache": True}
    assert delta[3]["incremental_snapshot_metadata"]["previous_snapshot_identity"] == "<s1>"
    assert delta[5]["fireworks-deployment"].endswith("/deployments/<deployment>")
    # the SDK's extra status GET before its first hot-load (the RDMA probe)
    status = [r for r in theirs if r[1].endswith("/hot_load")]
    assert status[0][0] == "GET"
    assert next(r for r in ours if r[1].endswith("/hot_load"))[0] == "POST"


async def test_reattach_source_url_moe_and_capabilities_match_the_sdk(
    sdk_runs: dict[str, list[tuple[Any, ...]]],
) -> None:
    with _trainer(api_key=None) as lt:
        async with ServiceSession(lt.base_url, api_key=KEY) as session:
            client = await session.create_training_client(MODEL_NAME)
            snapshot = (await client.save_weights_for_sampler_ext("base")).path
        async with Deployments(KEY, base_url=lt.base_url) as deployments:
            await deployments.create_or_get(
                DeploymentConfig(DEP, MODEL_NAME, hot_load_trainer_job=_job(lt, "job-a")))
        with Recorder(lt.base_url) as rec:
            async with Deployments(KEY, base_url=rec.base_url) as deployments:
                await deployments.reattach_trainer(
                    DEP, base_model=MODEL_NAME, trainer_job_name=_job(lt, "job-a"),
                    timeout_s=5, poll_interval_s=0.02)
                info = await deployments.reattach_trainer(
                    DEP, base_model=MODEL_NAME, trainer_job_name=_job(lt, "job-b"),
                    timeout_s=5, poll_interval_s=0.02, hot_load_transition_type="SYNC")
                assert info.hot_load_trainer_job == _job(lt, "job-b")
                await deployments.hotload(DEP, base_model=MODEL_NAME, snapshot=snapshot,
                                          source_url=SOURCE, cmek_resource="cmek-1")
                await deployments.wait_for_hotload(DEP, base_model=MODEL_NAME,
                                                   snapshot=snapshot, poll_interval_s=0.05)
            async with TrainerJobs(KEY, base_url=rec.base_url) as jobs:
                assert await jobs.model_is_moe(MOE) is True
            for key in (KEY, TINKER_KEY):  # the fireworks dialect, then the tinker one
                async with ServiceSession(rec.base_url, api_key=key) as session:
                    caps = await session.get_server_capabilities()
                assert MOE in [m.model_name for m in caps.supported_models]
            ours = _rows(rec.records, {snapshot: "<base>"})
    theirs = sdk_runs["platform"]

    def compared(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        return [r for r in rows if r[1] != "/v1/accounts"
                and (not r[1].startswith("/api/v1/") or r[1].endswith("get_server_capabilities"))]

    assert [r[:2] for r in compared(ours)] == [r[:2] for r in compared(theirs)]
    for mine, sdks in zip(compared(ours), compared(theirs), strict=True):
        assert mine == sdks, f"{mine[0]} {mine[1]}"
    assert [r[1] for r in ours].count("/v1/accounts") == [r[1] for r in theirs].count(
        "/v1/accounts")
    (patch,) = [r for r in ours if r[0] == "PATCH"]
    assert patch[2] == [["updateMask", "hot_load_trainer_job,hot_load_transition_type"]]
    (post,) = _hotload_posts(ours)
    assert post[5]["x-fireworks-hot-load-source-url"] == SOURCE
    capabilities = [r for r in ours if r[1].endswith("get_server_capabilities")]
    assert len(capabilities) == 2 and all(r[0] == "GET" and r[3] is None for r in capabilities)
