"""Wire fidelity, the managed setup: ``ServiceSession.managed`` sends what the Fireworks SDK's
``FiretitanServiceClient.from_firetitan_config`` sends, resource by resource.

Two flows (a full-parameter policy on a training shape with a separate reference trainer on a
``FORWARD_ONLY`` shape; a LoRA policy whose reference is a ``base_only`` model on the same
trainer; each with a deployment from the shape's deployment shape, everything deleted on
close) run through the unmodified SDK (1.2.30) and through ``firetitan_async`` (asyncio and
trio), each against its own local trainer behind a recording proxy. The SDK provisions on
threads and we in a task group, so requests are compared per resource (the policy trainer,
the reference trainer, the deployment: control plane and readiness probes), in order, with
the random ids replaced by their role and consecutive identical polls collapsed.

Deliberate differences (asserted below, so the list stays true):

* the reference shape is read once, not twice: the SDK resolves it to validate the shape
  before creating the policy and again inside the reference's own provisioning.
* the account is looked up once per control-plane client (``TrainerJobs``, ``Deployments``:
  2), not once per manager (the SDK builds a third for the reference trainer).
* no ``GET /hot_load/v1/models/hot_load``: the SDK probes the deployment for RDMA weight sync
  (a transport we do not have); hot-loads go through the REST hot-load API.
* the trainer sessions' data planes: both send ``create_session``, ``create_model`` and
  ``retrieve_future`` with the same bodies; at close the SDK posts a ``telemetry`` event and
  we ``unload_model`` (our fireworks sessions unload their models when they end). The session
  wire is held to the SDK's in ``test_wire_fidelity_fireworks.py``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import pytest
from fireworks.training import sdk

from firetitan_async import ManagedConfig, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME
from firetitan_async.local._recorder import RecordedExchange, Recorder

pytestmark = pytest.mark.anyio

KEY = "fw_local_fidelity_managed_0001"
_JOB = re.compile(r"training-api-service-[0-9a-f]{8}")
_DEPLOYMENT = re.compile(r"tiny-byte-lm-[0-9]{10}")
_VOLATILE = frozenset({"session_id", "request_id", "model_id", "event_id", "timestamp"})


def _shape(lt: LocalTrainer, name: str) -> str:
    return f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-{name}"


def _run_sdk(lt: LocalTrainer, url: str, scenario: str) -> None:
    shapes: dict[str, Any]
    if scenario == "separate":
        shapes = {"training_shape_id": _shape(lt, "full"),
                  "reference_training_shape_id": _shape(lt, "forward")}
    else:
        shapes = {"training_shape_id": _shape(lt, "lora"), "lora_rank": 4}
    config = sdk.FiretitanProvisioningConfig(
        base_model=MODEL_NAME, reference_required=True, cleanup_trainer_on_close=True,
        cleanup_deployment_on_close="delete", **shapes,
    )
    service = sdk.FiretitanServiceClient.from_firetitan_config(
        api_key=KEY, base_url=url, managed_config=config
    )
    service.create_training_client(MODEL_NAME, lora_rank=int(shapes.get("lora_rank", 0)))
    service.create_reference_client()
    service.close()


async def _run_ours(lt: LocalTrainer, url: str, scenario: str) -> None:
    if scenario == "separate":
        config = ManagedConfig(
            base_model=MODEL_NAME, training_shape=_shape(lt, "full"), reference=True,
            reference_training_shape=_shape(lt, "forward"), poll_interval_s=0.05,
        )
    else:
        config = ManagedConfig(
            base_model=MODEL_NAME, training_shape=_shape(lt, "lora"), lora_rank=4,
            reference=True, poll_interval_s=0.05,
        )
    async with ServiceSession.managed(config, api_key=KEY, base_url=url) as setup:
        assert await setup.training_client() is not None
        assert await setup.reference_client() is not None


def _roles(records: tuple[RecordedExchange, ...]) -> dict[str, str]:
    """Each random id by its role: the forward-only job is the reference."""
    names: dict[str, str] = {}
    for ex in records:
        if ex.method == "POST" and ex.path.endswith("/rlorTrainerJobs"):
            job_id = dict(ex.query)["rlorTrainerJobId"]
            names[job_id] = "<reference>" if ex.body.get("forwardOnly") else "<policy>"
        if ex.method == "POST" and ex.path.endswith("/deployments"):
            names[dict(ex.query)["deploymentId"]] = "<deployment>"
    return names


def _sub(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        value = _JOB.sub(lambda m: names.get(m.group(0), m.group(0)), value)
        return _DEPLOYMENT.sub(lambda m: names.get(m.group(0), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _sub(v, names) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list | tuple):
        return [_sub(v, names) for v in value]
    return value


def _group(path: str) -> str:
    if path == "/v1/accounts":
        return "account"
    if "/trainingShapes/" in path:
        return "shape " + path.split("/trainingShapes/")[1].split("/")[0]
    if path.startswith("/hot_load/"):
        return "rdma probe"
    for role in ("<policy>", "<reference>"):
        if role in path:
            plane = "data" if "/api/v1/" in path and not path.endswith("/healthz") else "control"
            return f"{role} {plane}"
    if "/deployments" in path:
        return "<deployment> control"
    return "other"


def _by_resource(records: tuple[RecordedExchange, ...]) -> dict[str, list[tuple[Any, ...]]]:
    names = _roles(records)
    groups: dict[str, list[tuple[Any, ...]]] = {}
    for ex in records:
        path = _sub(ex.path, names)
        if ex.method == "POST" and path.endswith("/rlorTrainerJobs"):  # the create names its job
            path += "/" + names[dict(ex.query)["rlorTrainerJobId"]]
        if ex.method == "POST" and path.endswith("/deployments"):
            path += "/<deployment>"
        creds = tuple(sorted(h for h in ex.header_names if h in ("x-api-key", "authorization")))
        row = (ex.method, path, _sub(ex.query, names), _sub(ex.body, names), creds)
        group = _group(path)
        rows = groups.setdefault(group, [])
        if rows and rows[-1] == row and ex.method == "GET" and group.endswith("control"):
            continue  # a repeated readiness poll
        rows.append(row)
    return groups


@pytest.fixture(scope="module")
def sdk_runs() -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """The SDK's requests per scenario, recorded once (outside any event loop: the SDK is
    synchronous)."""
    runs = {}
    for scenario in ("separate", "same-trainer"):
        with LocalTrainer(api_key=KEY, seed=3) as lt, Recorder(lt.base_url) as rec:
            _run_sdk(lt, rec.base_url, scenario)
            runs[scenario] = _by_resource(rec.records)
    return runs


async def _ours(scenario: str) -> dict[str, list[tuple[Any, ...]]]:
    with LocalTrainer(api_key=KEY, seed=3) as lt, Recorder(lt.base_url) as rec:
        await _run_ours(lt, rec.base_url, scenario)
        return _by_resource(rec.records)


def _assert_same_per_resource(
    ours: dict[str, list[tuple[Any, ...]]], theirs: dict[str, list[tuple[Any, ...]]],
    resources: tuple[str, ...],
) -> None:
    for resource in resources:
        assert [r[:2] for r in ours[resource]] == [r[:2] for r in theirs[resource]], resource
        for mine, sdks in zip(ours[resource], theirs[resource], strict=True):
            assert mine == sdks, f"{resource}: {mine[0]} {mine[1]}"


async def test_lora_policy_with_a_same_trainer_reference_matches_the_sdk(
    sdk_runs: dict[str, dict[str, list[tuple[Any, ...]]]],
) -> None:
    """A LoRA policy's reference is a base_only model on the policy trainer: no second
    trainer, and the same create_model body as the SDK's create_base_training_client."""
    theirs, ours = sdk_runs["same-trainer"], await _ours("same-trainer")
    assert "<reference> control" not in ours and "<reference> control" not in theirs
    _assert_same_per_resource(ours, theirs, ("<policy> control", "<deployment> control"))
    kinds = ("create_session", "create_model", "retrieve_future")
    our_data = [r for r in ours["<policy> data"] if r[1].endswith(kinds)]
    assert our_data == [r for r in theirs["<policy> data"] if r[1].endswith(kinds)]
    models = [r[3] for r in our_data if r[1].endswith("create_model")]
    assert [m.get("base_only", False) for m in models] == [False, True]
    assert models[0]["lora_config"]["rank"] == 4


async def test_managed_setup_requests_match_the_sdks(
    sdk_runs: dict[str, dict[str, list[tuple[Any, ...]]]],
) -> None:
    theirs = sdk_runs["separate"]
    with LocalTrainer(api_key=KEY, seed=3) as lt_ours, Recorder(lt_ours.base_url) as rec_ours:
        await _run_ours(lt_ours, rec_ours.base_url, "separate")
        ours = _by_resource(rec_ours.records)

    _assert_same_per_resource(
        ours, theirs, ("<policy> control", "<reference> control", "<deployment> control")
    )
    # the rows that matter are there: both trainers created, the deployment on the policy
    created = {r[1]: r[3] for r in ours["<policy> control"] + ours["<reference> control"]
               if r[0] == "POST"}
    assert created[f"/v1/accounts/{lt_ours.account_id}/rlorTrainerJobs/<reference>"][
        "forwardOnly"] is True
    deployment = next(r for r in ours["<deployment> control"] if r[0] == "POST")
    assert deployment[3]["hotLoadTrainerJob"].endswith("/<policy>")
    assert any(r[0] == "DELETE" for r in ours["<deployment> control"])

    # the differences the module docstring lists
    shape_reads = {side: Counter(r[1] for rows in groups.values() for r in rows
                                 if "/trainingShapes/" in r[1])
                   for side, groups in (("sdk", theirs), ("ours", ours))}
    forward = f"/v1/accounts/{lt_ours.account_id}/trainingShapes/tiny-byte-lm-forward/versions"
    full = forward.replace("forward", "full")
    assert shape_reads["sdk"] == {full: 1, forward: 2}
    assert shape_reads["ours"] == {full: 1, forward: 1}
    assert (len(theirs["account"]), len(ours["account"])) == (3, 2)
    assert len(theirs["rdma probe"]) == 1 and "rdma probe" not in ours
    for role in ("<policy>", "<reference>"):
        our_data, sdk_data = ours[f"{role} data"], theirs[f"{role} data"]
        kinds = ("create_session", "create_model", "retrieve_future")
        assert [r for r in our_data if r[1].endswith(kinds)] == [
            r for r in sdk_data if r[1].endswith(kinds)
        ], role
        assert [r[1].rsplit("/", 1)[1] for r in our_data if not r[1].endswith(kinds)] == [
            "unload_model"
        ]
        assert [r[1].rsplit("/", 1)[1] for r in sdk_data if not r[1].endswith(kinds)] == [
            "telemetry"
        ]
    assert "other" not in ours and "other" not in theirs
