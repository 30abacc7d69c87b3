"""Wire fidelity, control plane: ``TrainerJobs`` sends what the Fireworks SDK's
``TrainerJobManager`` sends, request for request.

One script of control-plane calls runs through the unmodified Fireworks SDK (1.2.30, sync)
and through ``firetitan_async`` (asyncio and trio), each against its own local trainer behind
the recording proxy (:class:`~firetitan_async.local.Recorder`). The recordings are compared
step by step: method, path, query, decoded JSON body, and the headers that carry meaning
(``Content-Type``, ``Accept``, ``X-Api-Key`` present, ``Authorization`` present or absent,
idempotency keys present or absent, the ``X-Fireworks-*`` headers). Replies are not compared;
the client-generated job id is random on both sides and compared by its pattern.

Every deliberate difference is in :data:`DELIBERATE`, with its reason; an entry that no
longer matches anything fails the test (stale).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import attrs
import httpx
import pytest
from fireworks.training.sdk import TrainerJobConfig as SdkConfig
from fireworks.training.sdk import TrainerJobManager

from firetitan_async import TrainerJobConfig, TrainerJobFailed, TrainerJobs
from firetitan_async.local import LocalTrainer, Recorder
from firetitan_async.local._recorder import RecordedExchange

KEY = "fw-fidelity-key-0123456789"
MODEL = "local/tiny-byte-lm"
POLL_S = 0.02
FIXED_ID = "fidelity-fixed-job"
SHAPE = "accounts/local/trainingShapes/tiny-byte-lm-lora"
JOB_ID_RE = re.compile(r"training-api-service-[0-9a-f]{8}")
# Both runs carry the optional attribution headers the SDK reads from the environment.
ENV = {
    "FIREWORKS_CLIENT_SOURCE": "fireworks-training-skill/1.0",
    "FIREWORKS_SESSION_ID": "0b2e5c3a-8f4e-4d0e-9a53-1a2b3c4d5e6f",
}
STEPS = (
    "create",
    "create_on_a_shape",
    "create_with_every_field",
    "get",
    "wait_for_ready",
    "list_checkpoints",
    "promote_checkpoint",
    "resolve_training_profile",
    "resume_and_wait",
    "reconnect_and_wait",
    "try_get_missing",
    "create_fixed_id_twice",
    "delete",
    "create_on_a_tombstone",
)

Op = dict[str, Any]
Recording = dict[str, list[Op]]


# Configs whose create requests are compared field for field (same kwargs on both sides).
EVERY_FIELD: dict[str, Any] = {
    "base_model": MODEL,
    "lora_rank": 2,
    "projection_head_dim": 8,
    "max_context_length": 512,
    "learning_rate": 3e-4,
    "gradient_accumulation_steps": 1,
    "node_count": 1,
    "trainer_replica_count": 1,
    "display_name": "every field",
    "hot_load_deployment_id": "dep-1",
    "region": "US_IOWA_1",
    "custom_image_tag": "img:1",
    "extra_args": ["--alpha 1", "--beta"],
    "extra_values": {"k": "v"},
    "accelerator_type": "CPU",
    "accelerator_count": 1,
    "forward_only": True,
    "inactivity_timeout": timedelta(minutes=30),
    "purpose": "fidelity",
    "preemptible": True,
    "managed_by": "tests",
    "reservation_target": "res-1",
}
ON_A_SHAPE: dict[str, Any] = {
    "base_model": MODEL,
    "lora_rank": 4,
    "training_shape_ref": SHAPE,
    "skip_validations": True,
    "max_context_length": 1024,  # dropped on the shape path: the shape sets it
}
CONFIGS: dict[str, dict[str, Any]] = {
    "minimal": {"base_model": MODEL},
    "every_field": EVERY_FIELD,
    "on_a_shape": ON_A_SHAPE,
    "auto_shape": {"base_model": MODEL, "auto_select_training_shape": True, "region": "EU"},
    "reservation_off": {"base_model": MODEL, "use_reservation": False, "display_name": "x"},
    "inactivity_string": {"base_model": MODEL, "inactivity_timeout": "90.5s"},
}


# -- what the scripts need from the local trainer (not recorded) -------------------------------


def _save_snapshot(lt: LocalTrainer, job_id: str) -> None:
    """A promotable sampler snapshot ``snap`` of ``job_id``, saved through its gateway."""
    api = f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/{lt.account_id}/{job_id}/api/v1"
    headers = {"X-Api-Key": KEY}
    with httpx.Client(timeout=10, headers=headers) as http:
        session = http.post(f"{api}/create_session", json={}).json()["session_id"]
        model = http.post(
            f"{api}/create_model",
            json={
                "session_id": session,
                "model_seq_id": 0,
                "base_model": MODEL,
                "lora_config": {"rank": 0},
            },
        ).json()["model_id"]
        fut = http.post(
            f"{api}/save_weights_for_sampler",
            json={"model_id": model, "seq_id": 1, "path": "snap", "checkpoint_type": "base"},
        ).json()
        http.post(f"{api}/retrieve_future", json={"request_id": fut["request_id"]})


def _fail(lt: LocalTrainer, job_id: str) -> None:
    r = httpx.post(
        f"{lt.base_url}/_local/jobs/{job_id}/fail",
        json={"message": "preempted"},
        headers={"X-Api-Key": KEY},
    )
    assert r.status_code == 200, r.text


# -- the script, through the SDK and through ours ----------------------------------------------


def run_sdk(lt: LocalTrainer, rec: Recorder) -> Recording:
    """The script through the unmodified Fireworks SDK (sync)."""
    out: Recording = {}
    mgr = TrainerJobManager(api_key=KEY, base_url=rec.base_url)
    rec.clear()
    created = mgr.create(SdkConfig(base_model=MODEL, lora_rank=0, display_name="fidelity"))
    out["create"] = _take(rec)
    mgr.create(SdkConfig(**ON_A_SHAPE))
    out["create_on_a_shape"] = _take(rec)
    mgr.create(SdkConfig(**EVERY_FIELD))
    out["create_with_every_field"] = _take(rec)
    job = created.job_id
    mgr.get(job)
    out["get"] = _take(rec)
    mgr.wait_for_ready(job, poll_interval_s=POLL_S, timeout_s=20)
    out["wait_for_ready"] = _take(rec)
    _save_snapshot(lt, job)
    rows = mgr.list_checkpoints(job)
    out["list_checkpoints"] = _take(rec)
    mgr.promote_checkpoint(name=rows[0]["name"], output_model_id="fidelity-model", base_model=MODEL)
    out["promote_checkpoint"] = _take(rec)
    mgr.resolve_training_profile(SHAPE)
    mgr.resolve_training_profile(f"{SHAPE}/versions/v1")
    out["resolve_training_profile"] = _take(rec)
    _fail(lt, job)
    mgr.resume_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
    out["resume_and_wait"] = _take(rec)
    _fail(lt, job)
    mgr.reconnect_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
    out["reconnect_and_wait"] = _take(rec)
    assert mgr.try_get("no-such-job") is None
    out["try_get_missing"] = _take(rec)
    fixed = SdkConfig(base_model=MODEL, requested_job_id=FIXED_ID)
    assert mgr.create(fixed).job_id == mgr.create(fixed).job_id == FIXED_ID
    out["create_fixed_id_twice"] = _take(rec)
    mgr.delete(FIXED_ID)
    out["delete"] = _take(rec)
    with pytest.raises(RuntimeError, match="cannot be recreated"):
        mgr.create(fixed)
    out["create_on_a_tombstone"] = _take(rec)
    mgr.close()
    return out


async def run_ours(lt: LocalTrainer, rec: Recorder) -> Recording:
    """The same script through ``TrainerJobs``."""
    out: Recording = {}
    async with TrainerJobs(KEY, base_url=rec.base_url) as jobs:
        rec.clear()
        created = await jobs.create(
            TrainerJobConfig(base_model=MODEL, lora_rank=0, display_name="fidelity")
        )
        out["create"] = _take(rec)
        await jobs.create(TrainerJobConfig(**ON_A_SHAPE))
        out["create_on_a_shape"] = _take(rec)
        await jobs.create(TrainerJobConfig(**EVERY_FIELD))
        out["create_with_every_field"] = _take(rec)
        job = created.job_id
        await jobs.get(job)
        out["get"] = _take(rec)
        await jobs.wait_for_ready(job, poll_interval_s=POLL_S, timeout_s=20)
        out["wait_for_ready"] = _take(rec)
        await _in_thread(_save_snapshot, lt, job)
        rows = await jobs.list_checkpoints(job)
        out["list_checkpoints"] = _take(rec)
        await jobs.promote_checkpoint(
            name=rows[0].name, output_model_id="fidelity-model", base_model=MODEL
        )
        out["promote_checkpoint"] = _take(rec)
        await jobs.resolve_training_profile(SHAPE)
        await jobs.resolve_training_profile(f"{SHAPE}/versions/v1")
        out["resolve_training_profile"] = _take(rec)
        await _in_thread(_fail, lt, job)
        await jobs.resume_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
        out["resume_and_wait"] = _take(rec)
        await _in_thread(_fail, lt, job)
        await jobs.reconnect_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
        out["reconnect_and_wait"] = _take(rec)
        assert await jobs.try_get("no-such-job") is None
        out["try_get_missing"] = _take(rec)
        fixed = TrainerJobConfig(base_model=MODEL, requested_job_id=FIXED_ID)
        assert (await jobs.create(fixed)).job_id == (await jobs.create(fixed)).job_id == FIXED_ID
        out["create_fixed_id_twice"] = _take(rec)
        await jobs.delete(FIXED_ID)
        out["delete"] = _take(rec)
        with pytest.raises(TrainerJobFailed, match="cannot be reused"):
            await jobs.create(fixed)
        out["create_on_a_tombstone"] = _take(rec)
    return out


async def _in_thread(func: Callable[..., None], *args: Any) -> None:
    import anyio.to_thread

    await anyio.to_thread.run_sync(func, *args)


def _take(rec: Recorder) -> list[Op]:
    return [_op(ex) for ex in rec.take()]


def _op(ex: RecordedExchange) -> Op:
    """What is compared of one request (the job id by pattern, the reply not at all)."""
    headers = dict(ex.headers)
    headers.update(
        {name: "<present>" for name in ex.header_names if name.startswith("x-fireworks")}
    )
    headers.setdefault("authorization", "(absent)")
    headers.setdefault("x-idempotency-key", "(absent)")
    return _ids_by_pattern(
        {
            "call": f"{ex.method} {ex.path}",
            "query": [list(pair) for pair in ex.query],
            "body": ex.body,
            "headers": headers,
        }
    )


def _ids_by_pattern(value: Any) -> Any:
    if isinstance(value, str):
        return JOB_ID_RE.sub("training-api-service-<8 hex>", value)
    if isinstance(value, list):
        return [_ids_by_pattern(v) for v in value]
    if isinstance(value, dict):
        return {k: _ids_by_pattern(v) for k, v in value.items()}
    return value


# -- deliberate differences --------------------------------------------------------------------


@attrs.frozen
class Deliberate:
    """A difference we mean: ``rewrite`` maps ``side``'s op to the other side's form (or None
    to drop it) in ``steps`` (all steps when None)."""

    what: str
    why: str
    side: str  # "sdk" or "ours"
    rewrite: Callable[[Op], Op | None]
    steps: frozenset[str] | None = None


DELIBERATE: list[Deliberate] = []
"""Every deliberate difference of the control-plane wire, with its reason. Empty: for this
script our requests are the SDK's, byte for byte after decoding. Where we differ from the SDK
it is in what happens around the wire (see the README's table): retries honour
``Retry-After`` with jitter, ``delete`` raises on a real error instead of logging it, a
``reconnect_and_wait`` on a CREATING/PENDING job waits for it instead of giving up after
``max_wait_for_resumable_s``; none of that shows in a run without faults."""


def apply_deliberate(side: str, recording: Recording, used: set[int]) -> Recording:
    out: Recording = {}
    for step, ops in recording.items():
        kept: list[Op] = []
        for op in ops:
            current: Op | None = op
            for index, entry in enumerate(DELIBERATE):
                if current is None or entry.side != side:
                    continue
                if entry.steps is not None and step not in entry.steps:
                    continue
                rewritten = entry.rewrite(current)
                if rewritten != current:
                    used.add(index)
                current = rewritten
            if current is not None:
                kept.append(current)
        out[step] = kept
    return out


def compare(sdk: Recording, ours: Recording) -> None:
    """Assert both recordings agree step by step, up to :data:`DELIBERATE` (stale entries fail)."""
    assert list(sdk) == list(ours) == list(STEPS), "both runs must record the script's steps"
    used: set[int] = set()
    sdk_steps = apply_deliberate("sdk", sdk, used)
    our_steps = apply_deliberate("ours", ours, used)
    problems: list[str] = []
    for step in STEPS:
        sdk_calls = [op["call"] for op in sdk_steps[step]]
        our_calls = [op["call"] for op in our_steps[step]]
        if sdk_calls != our_calls:
            problems.append(f"{step}: requests: SDK {sdk_calls} | ours {our_calls}")
            continue
        for sdk_op, our_op in zip(sdk_steps[step], our_steps[step], strict=True):
            for key in ("query", "body", "headers"):
                if sdk_op[key] != our_op[key]:
                    where = f"{step}: {sdk_op['call']}: {key}"
                    problems.append(f"{where}: SDK {sdk_op[key]!r} | ours {our_op[key]!r}")
    stale = [
        entry.what
        for i, entry in enumerate(DELIBERATE)
        if i not in used and (entry.steps is None or entry.steps & set(sdk))
    ]
    if stale:
        problems.append(
            "DELIBERATE entries that match nothing (stale):\n    " + "\n    ".join(stale)
        )
    if problems:
        raise AssertionError(
            "our control-plane wire differs from the SDK's:\n" + "\n".join(problems)
        )


# -- fixtures and tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fireworks_env() -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in [*ENV, "FIREWORKS_TRAINER_GATEWAY_URL"]}
    os.environ.update(ENV)
    os.environ.pop("FIREWORKS_TRAINER_GATEWAY_URL", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def sdk_recording(fireworks_env: None) -> Iterator[Recording]:
    with LocalTrainer(api_key=KEY) as lt, Recorder(lt.base_url) as rec:
        yield run_sdk(lt, rec)


def test_the_sdk_recording_is_what_the_study_says(sdk_recording: Recording) -> None:
    """A few anchors from study §2, so a silent change of the SDK shows here first."""
    create = sdk_recording["create"]
    assert [op["call"] for op in create] == [
        "GET /v1/accounts",
        "POST /v1/accounts/local/rlorTrainerJobs",
    ]
    assert create[0]["query"] == [["pageSize", "2"]]
    assert create[1]["query"] == [
        ["skipValidations", "true"],
        ["rlorTrainerJobId", "training-api-service-<8 hex>"],
    ]
    assert all(op["headers"]["x-api-key"] == "<present>" for op in create)
    assert all(op["headers"]["authorization"] == "(absent)" for op in create)
    assert all(op["headers"]["x-fireworks-client-source"] == "<present>" for op in create)
    assert all(op["headers"]["x-fireworks-session-id"] == "<present>" for op in create)
    wait = sdk_recording["wait_for_ready"]
    healthz = [op for op in wait if op["call"].endswith("/api/v1/healthz")]
    assert healthz and all(op["headers"]["authorization"] == "<present>" for op in healthz)
    resume = [op for op in sdk_recording["resume_and_wait"] if op["call"].endswith(":resume")]
    assert len(resume) == 1 and resume[0]["body"] is None
    promote = sdk_recording["promote_checkpoint"][0]
    assert promote["body"]["async_promotion"] is True


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_our_create_body_is_the_sdks(name: str) -> None:
    """The create body, offline, for configs across the three launch paths."""
    kwargs = CONFIGS[name]
    sdk_body = TrainerJobManager._build_trainer_create_payload(SdkConfig(**kwargs))
    assert TrainerJobConfig(**kwargs).to_body() == sdk_body


@pytest.mark.anyio
async def test_our_control_plane_wire_matches_the_sdk(
    sdk_recording: Recording, fireworks_env: None
) -> None:
    async with LocalTrainer(api_key=KEY) as lt, Recorder(lt.base_url) as rec:
        ours = await run_ours(lt, rec)
    compare(sdk_recording, ours)


def test_comparison_finds_a_changed_field_and_a_stale_entry(sdk_recording: Recording) -> None:
    changed = {step: [dict(op) for op in ops] for step, ops in sdk_recording.items()}
    changed["create"][1] = {**changed["create"][1], "body": {"serviceMode": True}}
    with pytest.raises(AssertionError, match=r"create: POST .*: body"):
        compare(sdk_recording, changed)
    DELIBERATE.append(
        Deliberate(what="a rewrite of nothing", why="test", side="ours", rewrite=lambda op: op)
    )
    try:
        with pytest.raises(AssertionError, match="stale"):
            compare(sdk_recording, sdk_recording)
    finally:
        DELIBERATE.pop()
