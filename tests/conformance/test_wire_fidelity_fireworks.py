"""Wire fidelity, fireworks dialect, control plane included: for the same calls we send what the
Fireworks SDK sends.

One script runs twice, each time against its own key-protected ``LocalTrainer`` (same seed)
behind a recording proxy (``firetitan_async.local._recorder.Recorder``): through the unmodified
Fireworks Training SDK (1.2.30, sync: ``TrainerJobManager`` and ``FiretitanServiceClient``) and
through ``firetitan_async`` (``TrainerJobs`` and ``ServiceSession``, dialect fireworks; asyncio and
trio). The jobs (a full-parameter one, and a LoRA one on a training shape: a trainer serves
clients of its job's LoRA rank) are created and waited for through the control plane, the
data-plane script runs through their trainer gateway URLs, then the control plane lists and
promotes the checkpoints the script saved, resumes, reconnects, deletes.

The recordings are cut into the script's steps, normalised (job, session and request ids, the
random snapshot suffix, timing headers, the number of long-poll rounds, the timer-driven
heartbeat) and compared step by step: method, path, query, decoded JSON body, the meaningful
headers (content type, accept, ``x-tinker-*`` values; credentials, idempotency keys and
``x-fireworks-*`` present or absent) and the reply status. The losses of both runs must be
bit-identical (same server, same seed, same order).

Every difference we mean to have is in :data:`DELIBERATE` with its reason; an entry that no
longer matches anything fails the test, so an SDK upgrade shows what changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import anyio.to_thread
import attrs
import httpx
import pytest
import torch
from fireworks.training.sdk import FiretitanServiceClient, TrainerJobManager
from fireworks.training.sdk import TrainerJobConfig as SdkConfig
from fireworks.training.sdk import types as ft
from tinker import types

from firetitan_async import (
    ServiceSession,
    TorchLoss,
    TrainerJobConfig,
    TrainerJobFailed,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._recorder import RecordedExchange, Recorder

PINNED_SDK = "1.2.30"
MODEL = "local/tiny-byte-lm"
KEY = "fw-fidelity-key-0123456789"  # not tml-: the Fireworks bootstrap
SEED = 4321
POLL_S = 0.02
FIXED_ID = "fidelity-fixed-job"
SHAPE = "accounts/local/trainingShapes/tiny-byte-lm-lora"
JOB_ID_RE = re.compile(r"training-api-service-[0-9a-f]{8}")
# Both runs carry the optional attribution headers the SDK reads from the environment.
ENV = {
    "FIREWORKS_CLIENT_SOURCE": "fireworks-training-skill/1.0",
    "FIREWORKS_SESSION_ID": "0b2e5c3a-8f4e-4d0e-9a53-1a2b3c4d5e6f",
}

JOB_STEPS = (
    "create",
    "create_on_a_shape",
    "create_with_every_field",
    "get",
    "wait_for_ready",
    "wait_for_the_lora_job",
)
DATA_STEPS = (
    "bootstrap",
    "create_client",
    "create_lora_client",
    "create_base_client",
    "forward_backward",
    "optim_step",
    "forward",
    "custom_loss",
    "chunked",
    "optim_extras",
    "snapshot_base",
    "snapshot_auto_delta",
    "snapshot_lora",
    "lora_train",
    "snapshot_merged",
    "lora_save_state",
    "load_adapter",
    "save_state",
    "list_checkpoints",
    "load_state_with_optimizer",
    "next_step",
    "unload_model",
    "close",
)
AFTER_STEPS = (
    "list_job_checkpoints",
    "promote_checkpoint",
    "resolve_training_profile",
    "resume_and_wait",
    "reconnect_and_wait",
    "try_get_missing",
    "create_fixed_id_twice",
    "delete",
    "create_on_a_tombstone",
)
STEPS = (*JOB_STEPS, *DATA_STEPS, *AFTER_STEPS)

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


def _tokens(text: str) -> list[int]:
    return list(text.encode())


TEXTS = ["hello, fireworks", "the quick brown fox", "ab"]
# Exactly representable weights: the SDK sends the user's Python floats, we send float32s.
WEIGHTS = [[1.0 if i % 3 else 0.5 for i in range(len(t) - 1)] for t in TEXTS]
ADAM = {"learning_rate": 1e-2, "weight_decay": 0.01, "grad_clip_norm": 1.0}


def tinker_batch() -> list[types.Datum]:
    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(_tokens(t)[:-1]),
            loss_fn_inputs={"target_tokens": _tokens(t)[1:], "weights": w},
        )
        for t, w in zip(TEXTS, WEIGHTS, strict=True)
    ]


def sdk_batch() -> list[Any]:
    return [
        ft.Datum(
            model_input=ft.ModelInput.from_ints(_tokens(t)[:-1]),
            loss_fn_inputs={"target_tokens": _tokens(t)[1:], "weights": w},
        )
        for t, w in zip(TEXTS, WEIGHTS, strict=True)
    ]


def half_nll(
    data: list[Any], logprobs: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """A torch custom loss (forward_backward_custom): half the weighted negative logprob."""
    weights = [torch.tensor(d.loss_fn_inputs["weights"].data) for d in data]
    loss = -0.5 * sum((lp * w).sum() for lp, w in zip(logprobs, weights, strict=True))
    return loss, {"half_nll": float(loss.item())}


def _fail(lt: LocalTrainer, job_id: str) -> None:
    """Fail the job (a local-trainer hook, not recorded: it bypasses the recorder)."""
    r = httpx.post(
        f"{lt.base_url}/_local/jobs/{job_id}/fail",
        json={"message": "preempted"},
        headers={"X-Api-Key": KEY},
    )
    assert r.status_code == 200, r.text


# -- the data-plane script, through the SDK and through ours ----------------------------------


class SdkScript:
    """The data-plane script through the unmodified Fireworks SDK (sync)."""

    def __init__(self, base_url: str, lora_url: str) -> None:
        self.svc = FiretitanServiceClient(base_url=base_url, api_key=KEY)
        self.lora_svc = FiretitanServiceClient(base_url=lora_url, api_key=KEY)
        self.losses: list[float] = []

    def create_client(self) -> None:
        self.tc = self.svc.create_training_client(MODEL, lora_rank=0, seed=7)

    def create_lora_client(self) -> None:
        self.lora = self.lora_svc.create_training_client(MODEL, lora_rank=4)

    def create_base_client(self) -> None:
        self.ref = self.svc.create_base_training_client(MODEL)

    def forward_backward(self) -> None:
        out = self.tc.forward_backward(sdk_batch(), "cross_entropy").result()
        self.losses.append(out.metrics["loss:sum"])

    def optim_step(self) -> None:
        self.tc.optim_step(ft.AdamParams(**ADAM)).result()

    def forward(self) -> None:
        self.losses.append(
            self.tc.forward(sdk_batch(), "cross_entropy").result().metrics["loss:sum"]
        )

    def custom_loss(self) -> None:
        out = self.tc.forward_backward_custom(sdk_batch(), half_nll).result()
        self.losses.extend([out.metrics["loss:sum"], out.metrics["half_nll"]])

    def chunked(self) -> None:
        out = self.tc.forward_backward(sdk_batch() * 350, "cross_entropy").result()
        self.losses.append(out.metrics["loss:sum"])

    def optim_extras(self) -> None:
        self.tc.forward_backward(sdk_batch(), "cross_entropy").result()
        self.tc.optim_step(
            ft.AdamParams(**ADAM),
            grad_accumulation_normalization="num_loss_tokens",
            emit_grad_norm_metrics="basic",
        ).result()

    def snapshot_base(self) -> None:
        self.tc.save_weights_for_sampler_ext("step-0")

    def snapshot_auto_delta(self) -> None:
        self.tc.save_weights_for_sampler_ext("step-1")

    def snapshot_lora(self) -> None:
        self.lora.save_weights_for_sampler_ext("lora-0")

    def lora_train(self) -> None:
        self.lora.forward_backward(sdk_batch(), "cross_entropy").result()
        self.lora.optim_step(ft.AdamParams(**ADAM)).result()

    def snapshot_merged(self) -> None:
        self.lora.save_weights_for_sampler_ext("merged", checkpoint_type="merged_base")

    def lora_save_state(self) -> None:
        self.lora.save_state("lora-state").result()

    def load_adapter(self) -> None:
        self.lora2 = self.lora_svc.create_training_client(MODEL, lora_rank=4, seed=1)
        self.lora2.load_adapter("lora-state").result()
        out = self.lora2.forward(sdk_batch(), "cross_entropy").result()
        self.losses.append(out.metrics["loss:sum"])

    def save_state(self) -> None:
        self.tc.save_state("state-a").result()

    def list_checkpoints(self) -> None:
        self.tc.list_checkpoints()

    def load_state_with_optimizer(self) -> None:
        self.tc.load_state_with_optimizer(self.tc.resolve_checkpoint_path("state-a")).result()

    def next_step(self) -> None:
        out = self.tc.forward_backward(sdk_batch(), "cross_entropy").result()
        self.losses.append(out.metrics["loss:sum"])
        self.tc.optim_step(ft.AdamParams(**ADAM)).result()

    def unload_model(self) -> None:
        self.lora.unload_model().result()

    def close(self) -> None:
        self.svc.close()
        self.lora_svc.close()


class OurScript:
    """The same data-plane script through firetitan_async, dialect fireworks."""

    def __init__(self, session: ServiceSession, lora_session: ServiceSession) -> None:
        self.session = session
        self.lora_session = lora_session
        self.losses: list[float] = []

    async def create_client(self) -> None:
        self.tc = await self.session.create_training_client(MODEL, lora_rank=0, seed=7)

    async def create_lora_client(self) -> None:
        self.lora = await self.lora_session.create_training_client(MODEL, lora_rank=4)

    async def create_base_client(self) -> None:
        self.ref = await self.session.create_base_training_client(MODEL)

    async def forward_backward(self) -> None:
        out = await self.tc.forward_backward(tinker_batch(), "cross_entropy")
        self.losses.append(out.metrics["loss:sum"])

    async def optim_step(self) -> None:
        await self.tc.optim_step(types.AdamParams(**ADAM))

    async def forward(self) -> None:
        self.losses.append(
            (await self.tc.forward(tinker_batch(), "cross_entropy")).metrics["loss:sum"]
        )

    async def custom_loss(self) -> None:
        out = await self.tc.forward_backward_custom(tinker_batch(), TorchLoss(half_nll))
        self.losses.extend([out.metrics["loss:sum"], out.metrics["half_nll"]])

    async def chunked(self) -> None:
        out = await self.tc.forward_backward(tinker_batch() * 350, "cross_entropy")
        self.losses.append(out.metrics["loss:sum"])

    async def optim_extras(self) -> None:
        await self.tc.forward_backward(tinker_batch(), "cross_entropy")
        await self.tc.optim_step(
            types.AdamParams(**ADAM),
            grad_accumulation_normalization="num_loss_tokens",
            emit_grad_norm_metrics="basic",
        )

    async def snapshot_base(self) -> None:
        await self.tc.save_weights_for_sampler_ext("step-0")

    async def snapshot_auto_delta(self) -> None:
        await self.tc.save_weights_for_sampler_ext("step-1")

    async def snapshot_lora(self) -> None:
        await self.lora.save_weights_for_sampler_ext("lora-0")

    async def lora_train(self) -> None:
        fb = self.lora.forward_backward(tinker_batch(), "cross_entropy")  # pipelined
        await self.lora.optim_step(types.AdamParams(**ADAM))
        await fb  # (its result poll may still be under way: keep it inside this step)

    async def snapshot_merged(self) -> None:
        await self.lora.save_weights_for_sampler_ext("merged", checkpoint_type="merged_base")

    async def lora_save_state(self) -> None:
        await self.lora.save_state("lora-state")

    async def load_adapter(self) -> None:
        self.lora2 = await self.lora_session.create_training_client(MODEL, lora_rank=4, seed=1)
        await self.lora2.load_adapter("lora-state")
        out = await self.lora2.forward(tinker_batch(), "cross_entropy")
        self.losses.append(out.metrics["loss:sum"])

    async def save_state(self) -> None:
        await self.tc.save_state("state-a")

    async def list_checkpoints(self) -> None:
        await self.tc.list_checkpoints()

    async def load_state_with_optimizer(self) -> None:
        await self.tc.load_state_with_optimizer(await self.tc.resolve_checkpoint_path("state-a"))

    async def next_step(self) -> None:
        out = await self.tc.forward_backward(tinker_batch(), "cross_entropy")
        self.losses.append(out.metrics["loss:sum"])
        await self.tc.optim_step(types.AdamParams(**ADAM))

    async def unload_model(self) -> None:
        await self.lora.unload_model()


# -- the whole script: control plane, data plane through the gateway, control plane -----------

Recording = dict[str, tuple[RecordedExchange, ...]]


def run_sdk(lt: LocalTrainer, rec: Recorder) -> tuple[Recording, list[float]]:
    """The script through the unmodified Fireworks SDK (sync)."""
    out: Recording = {}
    mgr = TrainerJobManager(api_key=KEY, base_url=rec.base_url)
    rec.clear()
    created = mgr.create(SdkConfig(base_model=MODEL, lora_rank=0, display_name="fidelity"))
    out["create"] = rec.take()
    lora_job = mgr.create(SdkConfig(**ON_A_SHAPE)).job_id
    out["create_on_a_shape"] = rec.take()
    mgr.create(SdkConfig(**EVERY_FIELD))
    out["create_with_every_field"] = rec.take()
    job = created.job_id
    mgr.get(job)
    out["get"] = rec.take()
    endpoint = mgr.wait_for_ready(job, poll_interval_s=POLL_S, timeout_s=20)
    out["wait_for_ready"] = rec.take()
    lora_endpoint = mgr.wait_for_ready(lora_job, poll_interval_s=POLL_S, timeout_s=20)
    out["wait_for_the_lora_job"] = rec.take()

    script = SdkScript(endpoint.base_url, lora_endpoint.base_url)
    out["bootstrap"] = rec.take()
    for name in DATA_STEPS[1:]:
        getattr(script, name)()
        out[name] = rec.take()

    rows = mgr.list_checkpoints(job)
    out["list_job_checkpoints"] = rec.take()
    promotable = next(row["name"] for row in rows if row["promotable"])
    mgr.promote_checkpoint(name=promotable, output_model_id="fidelity-model", base_model=MODEL)
    out["promote_checkpoint"] = rec.take()
    mgr.resolve_training_profile(SHAPE)
    mgr.resolve_training_profile(f"{SHAPE}/versions/v1")
    out["resolve_training_profile"] = rec.take()
    _fail(lt, job)
    mgr.resume_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
    out["resume_and_wait"] = rec.take()
    _fail(lt, job)
    mgr.reconnect_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
    out["reconnect_and_wait"] = rec.take()
    assert mgr.try_get("no-such-job") is None
    out["try_get_missing"] = rec.take()
    fixed = SdkConfig(base_model=MODEL, requested_job_id=FIXED_ID)
    assert mgr.create(fixed).job_id == mgr.create(fixed).job_id == FIXED_ID
    out["create_fixed_id_twice"] = rec.take()
    mgr.delete(FIXED_ID)
    out["delete"] = rec.take()
    with pytest.raises(RuntimeError, match="cannot be recreated"):
        mgr.create(fixed)
    out["create_on_a_tombstone"] = rec.take()
    mgr.close()
    return out, script.losses


async def run_ours(lt: LocalTrainer, rec: Recorder) -> tuple[Recording, list[float]]:
    """The same script through ``TrainerJobs`` and ``ServiceSession``."""
    out: Recording = {}
    async with TrainerJobs(KEY, base_url=rec.base_url) as jobs:
        rec.clear()
        created = await jobs.create(
            TrainerJobConfig(base_model=MODEL, lora_rank=0, display_name="fidelity")
        )
        out["create"] = rec.take()
        lora_job = (await jobs.create(TrainerJobConfig(**ON_A_SHAPE))).job_id
        out["create_on_a_shape"] = rec.take()
        await jobs.create(TrainerJobConfig(**EVERY_FIELD))
        out["create_with_every_field"] = rec.take()
        job = created.job_id
        await jobs.get(job)
        out["get"] = rec.take()
        endpoint = await jobs.wait_for_ready(job, poll_interval_s=POLL_S, timeout_s=20)
        out["wait_for_ready"] = rec.take()
        lora_endpoint = await jobs.wait_for_ready(lora_job, poll_interval_s=POLL_S, timeout_s=20)
        out["wait_for_the_lora_job"] = rec.take()

        async with (
            ServiceSession(endpoint.base_url, api_key=KEY, dialect="fireworks") as session,
            ServiceSession(lora_endpoint.base_url, api_key=KEY, dialect="fireworks") as lora,
        ):
            out["bootstrap"] = rec.take()
            script = OurScript(session, lora)
            for name in DATA_STEPS[1:-1]:
                await getattr(script, name)()
                out[name] = rec.take()
        out["close"] = rec.take()

        rows = await jobs.list_checkpoints(job)
        out["list_job_checkpoints"] = rec.take()
        promotable = next(row.name for row in rows if row.promotable)
        await jobs.promote_checkpoint(
            name=promotable, output_model_id="fidelity-model", base_model=MODEL
        )
        out["promote_checkpoint"] = rec.take()
        await jobs.resolve_training_profile(SHAPE)
        await jobs.resolve_training_profile(f"{SHAPE}/versions/v1")
        out["resolve_training_profile"] = rec.take()
        await anyio.to_thread.run_sync(_fail, lt, job)
        await jobs.resume_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
        out["resume_and_wait"] = rec.take()
        await anyio.to_thread.run_sync(_fail, lt, job)
        await jobs.reconnect_and_wait(job, poll_interval_s=POLL_S, timeout_s=20)
        out["reconnect_and_wait"] = rec.take()
        assert await jobs.try_get("no-such-job") is None
        out["try_get_missing"] = rec.take()
        fixed = TrainerJobConfig(base_model=MODEL, requested_job_id=FIXED_ID)
        assert (await jobs.create(fixed)).job_id == (await jobs.create(fixed)).job_id == FIXED_ID
        out["create_fixed_id_twice"] = rec.take()
        await jobs.delete(FIXED_ID)
        out["delete"] = rec.take()
        with pytest.raises(TrainerJobFailed, match="cannot be reused"):
            await jobs.create(fixed)
        out["create_on_a_tombstone"] = rec.take()
    return out, script.losses


# -- normalisation ----------------------------------------------------------------------------

Op = dict[str, Any]
Steps = dict[str, list[Op]]

TIMER_DRIVEN = frozenset({"session_heartbeat"})
_HEX8 = re.compile(r"-[0-9a-f]{8}\b")
_REQ = re.compile(r"req-[0-9a-f]+-\d+")
_API = "/api/v1/"


def _endpoint(ex: RecordedExchange) -> str:
    """The data-plane endpoint (the path after ``/api/v1/``, also through the gateway)."""
    return ex.path.split(_API, 1)[1] if _API in ex.path else ex.path


def _replace(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in ids.items():
            value = value.replace(old, new)
        value = JOB_ID_RE.sub("training-api-service-<8 hex>", value)
        value = _REQ.sub("<request>", value)
        snapshot = any(k in value for k in ("step-", "lora-", "merged-"))
        return _HEX8.sub("-<suffix>", value) if snapshot else value
    if isinstance(value, dict):
        return {k: _replace(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, ids) for v in value]
    return value


def _op(kind: str, ex: RecordedExchange, ids: Mapping[str, str]) -> Op:
    """What is compared of one exchange (the reply only by its status)."""
    headers = {
        k: ("<seconds>" if k == "x-tinker-create-promise-roundtrip-time" else v)
        for k, v in ex.headers.items()
    }
    headers.update(
        {name: "<present>" for name in ex.header_names if name.startswith("x-fireworks")}
    )
    headers.setdefault("authorization", "(absent)")
    headers.setdefault("x-api-key", "(absent)")
    headers.setdefault("x-idempotency-key", "(absent)")
    return {
        "kind": kind,
        "call": f"{ex.method} {_replace(ex.path, ids)}",
        "query": _replace([list(pair) for pair in ex.query], ids),
        "headers": headers,
        "body": _replace(ex.body, ids),
        "status": ex.status,
    }


def normalise(recording: Recording) -> Steps:
    session_ids = [
        str(ex.reply["session_id"])
        for ex in recording["bootstrap"]
        if _endpoint(ex) == "create_session" and isinstance(ex.reply, dict)
    ]
    ids = {sid: f"<session {i}>" for i, sid in enumerate(session_ids)}
    steps: Steps = {}
    for step, exchanges in recording.items():
        ops: list[Op] = []
        polled: set[Any] = set()
        for ex in exchanges:
            endpoint = _endpoint(ex)
            if endpoint in TIMER_DRIVEN:
                continue
            if endpoint == "retrieve_future":
                # Long-poll rounds depend on timing: keep the first poll of each request.
                req = ex.body.get("request_id") if isinstance(ex.body, dict) else None
                if req in polled:
                    continue
                polled.add(req)
                ops.append(_op("poll", ex, ids))
                continue
            ops.append(_op("request", ex, ids))
        # Chunks of one batch are uploaded concurrently (by both clients): order by seq_id.
        steps[step] = sorted(ops, key=_op_order)
    return steps


def _op_order(op: Op) -> tuple[str, int, str]:
    body = op["body"] if isinstance(op["body"], dict) else {}
    kind = str(op["headers"].get("x-tinker-request-type", ""))
    seq = body.get("seq_id", 0)
    return (op["kind"], seq if isinstance(seq, int) else 0, kind)


# -- deliberate differences -------------------------------------------------------------------


@attrs.frozen
class Deliberate:
    """One difference we mean to have: what it changes and why."""

    what: str
    reason: str
    applies: Callable[[str, Op], bool]  # (side, op) -> is this op affected
    fix: Callable[[Op], Op | None]  # the op as it would be without it (None: no such op)
    step: str | None = None  # only in this step of the script (None: in every step)


def _drop(op: Op) -> None:
    return None


def _without_header(name: str) -> Callable[[Op], Op]:
    def fix(op: Op) -> Op:
        return {**op, "headers": {k: v for k, v in op["headers"].items() if k != name}}

    return fix


def _header_absent(name: str) -> Callable[[Op], Op]:
    def fix(op: Op) -> Op:
        return {**op, "headers": {**op["headers"], name: "(absent)"}}

    return fix


DELIBERATE: list[Deliberate] = [
    Deliberate(
        "the SDK posts telemetry (events with exception texts) to /api/v1/telemetry; we do not",
        "a library must not ship usage events or server error texts anywhere by default",
        lambda side, op: side == "sdk" and op["call"].endswith("/api/v1/telemetry"),
        _drop,
    ),
    Deliberate(
        "the SDK's first poll carries X-Tinker-Create-Promise-Roundtrip-Time; ours does not",
        "client-side timing telemetry; the trainer needs none of it to answer",
        lambda side, op: (
            side == "sdk" and "x-tinker-create-promise-roundtrip-time" in op["headers"]
        ),
        _without_header("x-tinker-create-promise-roundtrip-time"),
    ),
    Deliberate(
        "the SDK puts an X-Idempotency-Key on every retrieve_future poll; ours carry none",
        "a poll reads a result and changes nothing: there is nothing to deduplicate (our keys "
        "are on submissions, one per submission across its retries)",
        lambda side, op: (
            side == "sdk"
            and op["kind"] == "poll"
            and op["headers"]["x-idempotency-key"] != "(absent)"
        ),
        _header_absent("x-idempotency-key"),
    ),
    Deliberate(
        "leaving the session unloads the models it created (unload_model and its polls); the "
        "SDK's close() leaves them loaded",
        "a session that ends, however it ends, releases what bills (issue: nothing left billing "
        "after an error, a cancellation or SIGTERM); the trainer then frees the GPU at once",
        lambda side, op: side == "ours" and op["call"].endswith(
            ("/api/v1/unload_model", "/api/v1/retrieve_future")
        ),
        _drop,
        step="close",
    ),
]
"""Every deliberate difference of the wire, control plane and data plane, with its reason.

The control plane has none: for this script our requests are the SDK's. Where we differ from
the SDK there it is in what happens around the wire (see the README's table): retries honour
``Retry-After`` with jitter, ``delete`` raises on a real error instead of logging it, a
``reconnect_and_wait`` on a CREATING/PENDING job waits for it instead of giving up after
``max_wait_for_resumable_s``; none of that shows in a run without faults."""


def apply_deliberate(side: str, steps: Steps, used: set[int]) -> Steps:
    out: Steps = {}
    for step, ops in steps.items():
        kept = []
        for op in ops:
            current: Op | None = op
            for i, entry in enumerate(DELIBERATE):
                if entry.step not in (None, step):
                    continue
                if current is not None and entry.applies(side, current):
                    used.add(i)
                    current = entry.fix(current)
            if current is not None:
                kept.append(current)
        out[step] = kept
    return out


def compare(sdk: Recording, ours: Recording) -> None:
    """Assert both recordings agree step by step, up to :data:`DELIBERATE` (stale entries fail)."""
    assert list(sdk) == list(ours) == list(STEPS), "both runs must record the script's steps"
    used: set[int] = set()
    theirs = apply_deliberate("sdk", normalise(sdk), used)
    mine = apply_deliberate("ours", normalise(ours), used)
    problems: list[str] = []
    for step in STEPS:
        sdk_calls = [op["call"] for op in theirs[step]]
        our_calls = [op["call"] for op in mine[step]]
        if sdk_calls != our_calls:
            problems.append(f"{step}: requests: SDK {sdk_calls} | ours {our_calls}")
            continue
        for sdk_op, our_op in zip(theirs[step], mine[step], strict=True):
            for key in ("kind", "query", "body", "headers", "status"):
                if sdk_op[key] != our_op[key]:
                    where = f"{step}: {sdk_op['call']}: {key}"
                    problems.append(f"{where}: SDK {sdk_op[key]!r} | ours {our_op[key]!r}")
    stale = [entry.what for i, entry in enumerate(DELIBERATE) if i not in used]
    if stale:
        problems.append(
            "DELIBERATE entries that match nothing (stale):\n    " + "\n    ".join(stale)
        )
    if problems:
        raise AssertionError("our wire differs from the Fireworks SDK's:\n" + "\n".join(problems))


# -- fixtures and tests -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fireworks_env() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
        mp.delenv("FIREWORKS_TRAINER_GATEWAY_URL", raising=False)
        yield


@pytest.fixture(scope="module")
def sdk_run(fireworks_env: None) -> Iterator[tuple[Recording, list[float]]]:
    import fireworks

    assert fireworks.__version__ == PINNED_SDK, "install the pinned Fireworks SDK"
    with LocalTrainer(api_key=KEY, seed=SEED) as lt, Recorder(lt.base_url) as rec:
        yield run_sdk(lt, rec)


@pytest.mark.anyio
async def test_we_send_what_the_fireworks_sdk_sends(
    sdk_run: tuple[Recording, list[float]], fireworks_env: None
) -> None:
    sdk_rec, sdk_losses = sdk_run
    async with LocalTrainer(api_key=KEY, seed=SEED) as lt, Recorder(lt.base_url) as rec:
        ours_rec, our_losses = await run_ours(lt, rec)
    compare(sdk_rec, ours_rec)
    # Same server, same seed, same order: bit-identical losses.
    assert our_losses == sdk_losses and len(our_losses) == 7


def test_every_step_did_something(sdk_run: tuple[Recording, list[float]]) -> None:
    sdk_rec, _ = sdk_run
    for step in STEPS:
        assert sdk_rec[step], f"the SDK sent nothing in step {step!r}"
    for step in DATA_STEPS[1:]:
        assert all(200 <= ex.status < 300 for ex in sdk_rec[step]), step


def test_the_sdk_recording_is_what_the_study_says(
    sdk_run: tuple[Recording, list[float]],
) -> None:
    """A few anchors from study §2 and §3, so a silent change of the SDK shows here first."""
    steps = normalise(sdk_run[0])
    create = steps["create"]
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
    healthz = [op for op in steps["wait_for_ready"] if op["call"].endswith("/api/v1/healthz")]
    assert healthz and all(op["headers"]["authorization"] == "<present>" for op in healthz)
    gateway = "/training/v1/rlorTrainerJobs/local/training-api-service-<8 hex>/api/v1/"
    assert all(op["call"].split(" ", 1)[1].startswith(gateway) for op in steps["forward"])
    fwd = [op for op in steps["forward"] if op["kind"] == "request"]
    assert [op["call"].rsplit("/", 1)[1] for op in fwd] == ["forward"]
    assert fwd[0]["headers"]["content-type"] == "application/json"
    resume = [op for op in steps["resume_and_wait"] if op["call"].endswith(":resume")]
    assert len(resume) == 1 and resume[0]["body"] is None
    assert steps["promote_checkpoint"][0]["body"]["async_promotion"] is True


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_our_create_body_is_the_sdks(name: str) -> None:
    """The create body, offline, for configs across the three launch paths."""
    kwargs = CONFIGS[name]
    sdk_body = TrainerJobManager._build_trainer_create_payload(SdkConfig(**kwargs))
    assert TrainerJobConfig(**kwargs).to_body() == sdk_body


def test_comparison_finds_a_changed_field_and_a_stale_entry(
    sdk_run: tuple[Recording, list[float]],
) -> None:
    sdk_rec = sdk_run[0]
    changed = dict(sdk_rec)
    create = changed["create"][1]
    changed["create"] = (changed["create"][0], attrs.evolve(create, body={"serviceMode": True}))
    with pytest.raises(AssertionError, match=r"create: POST .*: body"):
        compare(sdk_rec, changed)
    fwd = changed["forward"]
    changed["forward"] = tuple(attrs.evolve(ex, status=400) for ex in fwd)
    with pytest.raises(AssertionError, match=r"forward: POST .*: status"):
        compare(sdk_rec, changed)
    DELIBERATE.append(Deliberate("a fix of nothing", "test", lambda side, op: False, _drop))
    try:
        with pytest.raises(AssertionError, match="stale"):
            compare(sdk_rec, sdk_rec)
    finally:
        DELIBERATE.pop()
