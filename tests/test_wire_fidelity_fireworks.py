"""Wire fidelity, fireworks dialect: for the same calls we send what the Fireworks SDK sends.

One script of data-plane calls runs twice: through the unmodified Fireworks Training SDK
(``FiretitanServiceClient``, sync, on its own thread, as its users write it) and through
``firetitan_async`` with ``dialect="fireworks"``, each against its own ``LocalTrainer`` (same
seed) behind a ``Recorder``. The recordings are cut into the script's steps, normalised
(session, model and request ids, the random snapshot suffix, timing headers, the number of
long-poll rounds) and compared step by step: method, path, query, decoded JSON body, the
meaningful header values (content type, accept, ``x-tinker-*``) and the reply status. The
losses of both runs must be bit-identical (same server, same seed, same order).

Every difference we mean to have is in ``DELIBERATE`` with its reason; an entry that no longer
matches anything fails the test, so an SDK upgrade shows what changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import pytest
from fireworks.training.sdk import FiretitanServiceClient
from fireworks.training.sdk import types as ft
from tinker import types

from firetitan_async import ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.local._recorder import RecordedExchange, Recorder

pytestmark = pytest.mark.anyio

PINNED_SDK = "1.2.30"
MODEL = "local/tiny-byte-lm"
API_KEY = "fw-local-key"  # not tml-: the Fireworks bootstrap
SEED = 4321


def _tokens(text: str) -> list[int]:
    return list(text.encode())


TEXTS = ["hello, fireworks", "the quick brown fox", "ab"]
# Exactly representable weights: the SDK sends the user's Python floats, we send float32s.
WEIGHTS = [[1.0 if i % 3 else 0.5 for i in range(len(t) - 1)] for t in TEXTS]


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


ADAM = {"learning_rate": 1e-2, "weight_decay": 0.01, "grad_clip_norm": 1.0}
STEPS = [
    "create_client",
    "create_lora_client",
    "create_base_client",
    "forward_backward",
    "optim_step",
    "forward",
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
]


class SdkScript:
    """The script through the unmodified Fireworks SDK (sync)."""

    def __init__(self, base_url: str) -> None:
        self.svc = FiretitanServiceClient(base_url=base_url, api_key=API_KEY)
        self.losses: list[float] = []

    def create_client(self) -> None:
        self.tc = self.svc.create_training_client(MODEL, lora_rank=0, seed=7)

    def create_lora_client(self) -> None:
        self.lora = self.svc.create_training_client(MODEL, lora_rank=4)

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
        self.lora2 = self.svc.create_training_client(MODEL, lora_rank=4, seed=1)
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


class OurScript:
    """The same script through firetitan_async, dialect fireworks."""

    def __init__(self, session: ServiceSession) -> None:
        self.session = session
        self.losses: list[float] = []

    async def create_client(self) -> None:
        self.tc = await self.session.create_training_client(MODEL, lora_rank=0, seed=7)

    async def create_lora_client(self) -> None:
        self.lora = await self.session.create_training_client(MODEL, lora_rank=4)

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
        self.lora2 = await self.session.create_training_client(MODEL, lora_rank=4, seed=1)
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


Recording = dict[str, tuple[RecordedExchange, ...]]


def run_sdk(trainer_url: str) -> tuple[Recording, list[float]]:
    steps: Recording = {}
    with Recorder(trainer_url) as rec:
        script = SdkScript(rec.base_url)
        steps["bootstrap"] = rec.take()
        for name in STEPS:
            getattr(script, name)()
            steps[name] = rec.take()
        script.close()
        steps["close"] = rec.take()
    return steps, script.losses


async def run_ours(trainer_url: str) -> tuple[Recording, list[float]]:
    steps: Recording = {}
    async with Recorder(trainer_url) as rec:
        async with ServiceSession(rec.base_url, api_key=API_KEY, dialect="fireworks") as session:
            steps["bootstrap"] = rec.take()
            script = OurScript(session)
            for name in STEPS:
                await getattr(script, name)()
                steps[name] = rec.take()
        steps["close"] = rec.take()
    return steps, script.losses


# -- normalisation ----------------------------------------------------------------------------

TIMER_DRIVEN = frozenset({"session_heartbeat"})
_HEX8 = re.compile(r"-[0-9a-f]{8}\b")
_REQ = re.compile(r"req-[0-9a-f]+-\d+")


def _replace(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in ids.items():
            value = value.replace(old, new)
        value = _REQ.sub("<request>", value)
        snapshot = any(k in value for k in ("step-", "lora-", "merged-"))
        return _HEX8.sub("-<suffix>", value) if snapshot else value
    if isinstance(value, dict):
        return {k: _replace(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, ids) for v in value]
    return value


def _exchange(ex: RecordedExchange, ids: Mapping[str, str]) -> dict[str, Any]:
    headers = {
        k: ("<seconds>" if k == "x-tinker-create-promise-roundtrip-time" else v)
        for k, v in ex.headers.items()
        if k not in ("x-api-key",)
    }
    return {
        "call": f"{ex.method} {_replace(ex.path, ids)}",
        "query": list(ex.query),
        "headers": headers,
        "body": _replace(ex.body, ids),
        "status": ex.status,
    }


def normalise(recording: Recording) -> dict[str, list[dict[str, Any]]]:
    session_id = next(
        str(ex.reply["session_id"])
        for ex in recording["bootstrap"]
        if ex.endpoint == "create_session"
    )
    ids = {session_id: "<session>"}
    steps: dict[str, list[dict[str, Any]]] = {}
    for step, exchanges in recording.items():
        ops: list[dict[str, Any]] = []
        for ex in exchanges:
            if ex.endpoint in TIMER_DRIVEN:
                continue
            if ex.endpoint == "retrieve_future":
                # Long-poll rounds depend on timing: keep the first poll of each request.
                req = ex.body.get("request_id") if isinstance(ex.body, dict) else None
                if any(o.get("_req") == req for o in ops if o["kind"] == "poll"):
                    continue
                ops.append({"kind": "poll", "_req": req, **_exchange(ex, ids)})
                continue
            ops.append({"kind": "request", **_exchange(ex, ids)})
        for op in ops:
            op.pop("_req", None)
        # Chunks of one batch are uploaded concurrently (by both clients): order by seq_id.
        steps[step] = sorted(ops, key=_op_order)
    return steps


def _op_order(op: dict[str, Any]) -> tuple[str, int, str]:
    body = op["body"] if isinstance(op["body"], dict) else {}
    kind = str(op["headers"].get("x-tinker-request-type", ""))
    return (op["kind"], int(body.get("seq_id", 0)), kind)


# -- deliberate differences -------------------------------------------------------------------


@attrs.frozen
class Deliberate:
    """One difference we mean to have: what it changes and why."""

    what: str
    reason: str
    applies: Callable[[str, dict[str, Any]], bool]  # (side, op) -> is this op affected
    fix: Callable[[dict[str, Any]], dict[str, Any] | None]  # the op as it would be without it


def _drop(op: dict[str, Any]) -> None:
    return None


def _without_header(name: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fix(op: dict[str, Any]) -> dict[str, Any]:
        return {**op, "headers": {k: v for k, v in op["headers"].items() if k != name}}

    return fix


DELIBERATE = [
    Deliberate(
        "the SDK posts telemetry (events with exception texts) to /api/v1/telemetry; we do not",
        "a library must not ship usage events or server error texts anywhere by default",
        lambda side, op: side == "sdk" and op["call"] == "POST /api/v1/telemetry",
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
            side == "sdk" and op["kind"] == "poll" and "x-idempotency-key" in op["headers"]
        ),
        _without_header("x-idempotency-key"),
    ),
]


def apply_deliberate(
    side: str, steps: dict[str, list[dict[str, Any]]], used: set[int]
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for step, ops in steps.items():
        kept = []
        for op in ops:
            current: dict[str, Any] | None = op
            for i, entry in enumerate(DELIBERATE):
                if current is not None and entry.applies(side, current):
                    used.add(i)
                    current = entry.fix(current)
            if current is not None:
                kept.append(current)
        out[step] = kept
    return out


# -- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk_run() -> Iterator[tuple[Recording, list[float]]]:
    import fireworks

    assert fireworks.__version__ == PINNED_SDK, "install the pinned Fireworks SDK"
    with LocalTrainer(seed=SEED) as lt:
        yield run_sdk(lt.base_url)


async def test_we_send_what_the_fireworks_sdk_sends(
    sdk_run: tuple[Recording, list[float]],
) -> None:
    sdk_rec, sdk_losses = sdk_run
    async with LocalTrainer(seed=SEED) as lt:
        ours_rec, our_losses = await run_ours(lt.base_url)
    used: set[int] = set()
    theirs = apply_deliberate("sdk", normalise(sdk_rec), used)
    ours = apply_deliberate("ours", normalise(ours_rec), used)
    for step in ["bootstrap", *STEPS, "close"]:
        assert ours[step] == theirs[step], f"step {step!r} differs"
    stale = [DELIBERATE[i].what for i in range(len(DELIBERATE)) if i not in used]
    assert not stale, f"stale DELIBERATE entries: {stale}"
    # Same server, same seed, same order: bit-identical losses.
    assert our_losses == sdk_losses and len(our_losses) == 5


def test_every_step_did_something(sdk_run: tuple[Recording, list[float]]) -> None:
    sdk_rec, _ = sdk_run
    for step in STEPS:
        assert sdk_rec[step], f"the SDK sent nothing in step {step!r}"
        assert all(200 <= ex.status < 300 for ex in sdk_rec[step]), step
