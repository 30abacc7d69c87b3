"""The fireworks dialect against the real local trainer (asyncio and trio): every new call,
every refusal before sending, and the dedicated-trainer knobs of TINKER_COMPATIBILITY.md."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fireworks.training.sdk import types as ft
from tinker import types

from firetitan_async import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ServiceSession,
    SessionClosed,
    UsageError,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum
from firetitan_async.local._recorder import Recorder
from firetitan_async.loops import TrainerPolicy
from firetitan_async.wire import resolve_dialect

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=1e-2)
BATCH = [sft_datum("hello fireworks"), sft_datum("dialects")]


TRAINER_OPTIONS = {"seed": 3}  # the module's `trainer` (conftest.py)


@pytest.fixture
def rec(trainer: LocalTrainer) -> Iterator[Recorder]:
    with Recorder(trainer.base_url) as recorder:
        yield recorder


def sent(rec: Recorder, endpoint: str) -> list[Any]:
    return [ex for ex in rec.records if ex.endpoint == endpoint]


# -- which dialect --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key", "expected"),
    [
        ("http://127.0.0.1:8080", None, "fireworks"),
        ("http://127.0.0.1:8080", "fw-abc", "fireworks"),
        ("http://127.0.0.1:8080", "tml-abc", "tinker"),
        ("https://tinker.thinkingmachines.dev/services/tinker-prod", None, "tinker"),
        ("https://api.fireworks.ai/training/v1/rlorTrainerJobs/a/j", "fw", "fireworks"),
        ("https://evilthinkingmachines.dev", None, "fireworks"),
    ],
)
def test_auto_dialect_rule(url: str, key: str | None, expected: str) -> None:
    assert resolve_dialect("auto", url, key) == expected
    assert ServiceSession(url, api_key=key).dialect == expected


def test_explicit_dialect_wins_and_a_bad_one_is_refused() -> None:
    assert ServiceSession("http://127.0.0.1:1", api_key="tml-x", dialect="fireworks").dialect == (
        "fireworks"
    )
    with pytest.raises(InvalidInput, match="dialect"):
        ServiceSession("http://127.0.0.1:1", dialect="grpc")  # type: ignore[arg-type]


def test_from_job_is_always_fireworks() -> None:
    from firetitan_async import TrainerJobs

    jobs = TrainerJobs(api_key="k", account_id="a", base_url="http://127.0.0.1:1")
    assert ServiceSession.from_job(jobs, "job", api_key="tml-x").dialect == "fireworks"
    with pytest.raises(InvalidInput, match="fireworks dialect only"):
        ServiceSession.from_job(jobs, "job", dialect="tinker")


# -- bootstrap, create_model, forward/backward ---------------------------------------------


async def test_bootstrap_and_session_end_as_the_sdk(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        assert session.dialect == "fireworks" and session._client_config == {}
        client = await session.create_training_client(MODEL, lora_rank=4, seed=9, lora_alpha=16)
    endpoints = [ex.endpoint for ex in rec.records]
    assert endpoints[:3] == ["create_session", "create_model", "retrieve_future"]
    assert "client/config" not in endpoints and "get_info" not in endpoints
    assert not any("finish" in e for e in endpoints)  # the SDK never ends its session
    assert sent(rec, "create_session")[0].body == {
        "tags": [],
        "user_metadata": {},
        "sdk_version": "0.23.0",
        "type": "create_session",
    }
    body = sent(rec, "create_model")[0].body
    assert "optimizer_config" not in body
    assert body["lora_config"] == {
        "alpha": 16,
        "rank": 4,
        "seed": 9,
        "train_unembed": True,
        "train_mlp": True,
        "train_attn": True,
    }
    # The trainer's capability fields are on the client, as advertised (no invention).
    assert client.comms == "v1" and client.capabilities["supports_reinforce"] is False
    assert client.supports_reinforce is False and client.info is None


async def test_json_forward_backward_forward_and_response_tokens(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        fb = await client.forward_backward(BATCH, "cross_entropy")
        fwd = await client.forward(BATCH, "cross_entropy")
    weights = sum(int(np.count_nonzero(d.loss_fn_inputs["weights"].to_numpy())) for d in BATCH)
    assert fb.metrics["response_tokens"] == weights
    assert fwd.metrics["response_tokens"] == weights
    assert fb.loss_fn_outputs[0]["logprobs"].to_numpy().shape == (len("hello fireworks") - 1,)
    (fb_req,) = sent(rec, "forward_backward")
    assert fb_req.headers["content-type"] == "application/json"
    assert set(fb_req.body) == {"forward_backward_input", "model_id", "seq_id"}
    datum = fb_req.body["forward_backward_input"]["data"][0]
    assert datum["model_input"]["chunks"][0]["type"] == "encoded_text"
    assert datum["loss_fn_inputs"]["target_tokens"]["dtype"] == "int64"
    (fwd_req,) = sent(rec, "forward")
    assert set(fwd_req.body) == {"forward_input", "model_id", "seq_id"}
    polls = [ex for ex in sent(rec, "retrieve_future") if "Forward" in str(ex.headers)]
    assert polls and all(
        ex.headers["accept"] == "application/x-protobuf, application/json" for ex in polls
    )


async def test_results_decode_from_json_too(trainer: LocalTrainer) -> None:
    """The trainer answers in the form our Accept prefers (protobuf); a JSON-only Accept
    would get JSON: decode both the same."""
    from firetitan_async.wire import fireworks as fw
    from firetitan_async.wire.futures import Done

    async with ServiceSession(trainer.base_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=1)
        out = await client.forward(BATCH, "cross_entropy")
    as_json = {
        "loss_fn_output_type": out.loss_fn_output_type,
        "metrics": dict(out.metrics),
        "loss_fn_outputs": [
            {
                k: {"data": v.to_numpy().tolist(), "dtype": v.dtype, "shape": list(v.shape or [])}
                for k, v in o.items()
            }
            for o in out.loss_fn_outputs
        ],
    }
    import json

    decoded = fw.decode_fwdbwd_result(Done(json.dumps(as_json).encode(), "application/json"))
    assert decoded.metrics == {k: float(v) for k, v in out.metrics.items()}
    for a, b in zip(decoded.loss_fn_outputs, out.loss_fn_outputs, strict=True):
        assert a["logprobs"].to_numpy().tobytes() == b["logprobs"].to_numpy().tobytes()


async def test_chunking_uses_the_sdks_fixed_limits(rec: Recorder) -> None:
    big = [sft_datum(f"d{i:04d}") for i in range(1030)]
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        out = await client.forward_backward(big, "cross_entropy")
    assert len(out.loss_fn_outputs) == 1030
    sizes = sorted(
        len(ex.body["forward_backward_input"]["data"]) for ex in sent(rec, "forward_backward")
    )
    assert sizes == [6, 1024]


# -- optim_step extras ---------------------------------------------------------------------


async def test_optim_step_extras_on_the_wire_and_in_the_reply(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        await client.forward_backward(BATCH, "cross_entropy")
        reply = await client.optim_step(
            ADAM, grad_accumulation_normalization="NUM_LOSS_TOKENS", emit_grad_norm_metrics="basic"
        )
        with pytest.raises(InvalidInput, match="grad_accumulation_normalization"):
            client.optim_step(ADAM, grad_accumulation_normalization="per_token")
        with pytest.raises(InvalidInput, match="emit_grad_norm_metrics"):
            client.optim_step(ADAM, emit_grad_norm_metrics="loud")
    body = sent(rec, "optim_step")[0].body
    assert body["grad_accumulation_normalization"] == "num_loss_tokens"
    assert body["adam_params"]["emit_grad_norm_metrics"] == "basic"
    assert len(sent(rec, "optim_step")) == 1
    assert any("grad_norm" in key for key in reply.metrics)


# -- sampler snapshots ---------------------------------------------------------------------


async def test_snapshot_types_follow_the_sdks_rule(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        full = await session.create_training_client(MODEL)
        lora = await session.create_training_client(MODEL, lora_rank=2)
        s0 = await full.save_weights_for_sampler_ext("step-0")
        full.forward_backward(BATCH, "cross_entropy")
        full.optim_step(ADAM)
        s1 = await full.save_weights_for_sampler_ext("step-1")
        s2 = await full.save_weights_for_sampler("step-2")  # the tinker-shaped call: automatic
        l0 = await lora.save_weights_for_sampler_ext("step-0")
        l1 = await lora.save_weights_for_sampler_ext("step-1")
        lora.forward_backward(BATCH, "cross_entropy")
        lora.optim_step(ADAM)
        await lora.save_weights_for_sampler_ext("merged", checkpoint_type="merged_base")
    assert (s0.checkpoint_type, s1.checkpoint_type) == ("base", "delta")
    assert (l0.checkpoint_type, l1.checkpoint_type) == ("base", "base")
    bodies = sent(rec, "save_weights_for_sampler")
    assert [b.body["checkpoint_type"] for b in bodies] == [
        "base",
        "delta",
        "delta",
        "base",
        "base",
        "merged_base",
    ]
    assert all("kind" not in b.body and "ttl_seconds" not in b.body for b in bodies)
    assert bodies[-1].body["export_precision"] == "source"
    # A random 8-hex suffix per client: the same within one client, not derived from the session.
    suffix = s0.snapshot_name.rsplit("-", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{8}", suffix) and s1.snapshot_name == f"step-1-{suffix}"
    assert l0.snapshot_name.rsplit("-", 1)[1] != suffix
    assert s2.path.endswith(f"step-2-{suffix}")


# -- refusals before anything is sent -------------------------------------------------------


async def test_refusals_name_the_dialect_and_send_nothing(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        before = len(rec.records)
        with pytest.raises(InvalidInput, match="Fireworks does not support checkpoint TTLs"):
            client.save_state("a", ttl_seconds=60)
        with pytest.raises(InvalidInput, match="retention is managed by the platform"):
            client.save_weights_for_sampler_ext("a", ttl_seconds=60)
        with pytest.raises(InvalidInput, match="fireworks dialect"):
            client.load_state("gs://bucket/a")
        with pytest.raises(InvalidInput, match="sampler_weights path"):
            client.load_state("tinker://run/sampler_weights/a")
        with pytest.raises(InvalidInput, match="DNS label"):
            client.load_state_with_optimizer("Step_4")
        with pytest.raises(InvalidInput, match="path"):
            client.load_state("a/b")
        with pytest.raises(InvalidInput, match="export_precision"):
            client.save_weights_for_sampler_ext("a", export_precision="fp64")
        with pytest.raises(InvalidInput, match="checkpoint_type"):
            client.save_weights_for_sampler_ext("a", checkpoint_type="full")  # type: ignore[arg-type]
        with pytest.raises(InvalidInput, match="loss_fn"):
            client.forward_backward(BATCH, "stable_reinforce")
        assert await client.resolve_checkpoint_path("step-4") == "step-4"
        assert await client.resolve_checkpoint_path("step-4", source_job_id="old-job") == (
            "cross_job://old-job/step-4"
        )
        with pytest.raises(InvalidInput, match="DNS label"):
            await client.resolve_checkpoint_path("step-4", source_job_id="Old_Job")
        assert len(rec.records) == before


async def test_tinker_dialect_refuses_fireworks_only_calls(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url, dialect="tinker") as session:
        with pytest.raises(InvalidInput, match="tinker dialect"):
            await session.create_base_training_client(MODEL)
        with pytest.raises(InvalidInput, match="lora_alpha"):
            await session.create_training_client(MODEL, lora_rank=2, lora_alpha=8)
        client = await session.create_training_client(MODEL)
        before = len(rec.records)
        with pytest.raises(InvalidInput, match="merged_base"):
            client.save_weights_for_sampler_ext("a", checkpoint_type="merged_base")
        with pytest.raises(InvalidInput, match="cross_job"):
            client.load_state("cross_job://job/a")
        with pytest.raises(InvalidInput, match="Fireworks-only"):
            client.optim_step(ADAM, grad_accumulation_normalization="none")
        with pytest.raises(InvalidInput, match="Fireworks-only"):
            client.unload_model()
        with pytest.raises(InvalidInput, match="Fireworks-only"):
            client.load_adapter("x")
        with pytest.raises(InvalidInput, match="Fireworks-only"):
            await client.resolve_checkpoint_path("cross_job://job/a")
        with pytest.raises(InvalidInput, match="loss_fn"):
            client.forward_backward(BATCH, "dapo")
        assert len(rec.records) == before


# -- checkpoints, reference model, unload, adapters -----------------------------------------


async def test_state_round_trip_by_logical_name_and_listing(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        client.forward_backward(BATCH, "cross_entropy")
        client.optim_step(ADAM)
        saved = await client.save_state("ckpt-a")
        expected = (await client.forward(BATCH, "cross_entropy")).metrics["loss:sum"]
        client.forward_backward(BATCH, "cross_entropy")
        await client.optim_step(ADAM)
        await client.load_state_with_optimizer(await client.resolve_checkpoint_path("ckpt-a"))
        again = (await client.forward(BATCH, "cross_entropy")).metrics["loss:sum"]
        listed = await client.list_checkpoints()
    assert saved.path.endswith("ckpt-a") and again == expected
    assert [c.name for c in listed] == ["ckpt-a"]
    assert sent(rec, "load_weights")[0].body == {
        "model_id": client.model_id,
        "path": "ckpt-a",
        "optimizer": True,
        "seq_id": sent(rec, "load_weights")[0].body["seq_id"],
        "type": "load_weights",
    }
    assert sent(rec, "save_weights")[0].body["overwrite"] is False
    assert [ex.method for ex in sent(rec, "list_checkpoints")] == ["GET"]


async def test_list_checkpoints_errors_raise_never_an_empty_list() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/list_checkpoints"):
            return httpx.Response(404, json={"detail": "no such endpoint"})
        if request.url.path.endswith("/create_session"):
            return httpx.Response(200, json={"session_id": "s"})
        if request.url.path.endswith("/create_model"):
            return httpx.Response(200, json={"request_id": "r"})
        return httpx.Response(200, json={"model_id": "s:train:0"})

    async with ServiceSession(
        "http://127.0.0.1:9", transport=httpx.MockTransport(reply)
    ) as session:
        client = await session.create_training_client(MODEL)
        with pytest.raises(APIStatusError) as info:
            await client.list_checkpoints()
    assert info.value.status_code == 404


async def test_base_only_reference_client(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        ref = await session.create_base_training_client(MODEL)
        policy = await session.create_training_client(MODEL)
        a = await ref.forward(BATCH, "cross_entropy")
        b = await policy.forward(BATCH, "cross_entropy")
    assert ref.base_only and a.metrics["loss:sum"] == b.metrics["loss:sum"]
    body = sent(rec, "create_model")[0].body
    assert body["base_only"] is True and "lora_config" not in body


async def test_unload_drains_then_refuses_later_work(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL)
        steps = [client.forward_backward(BATCH, "cross_entropy"), client.optim_step(ADAM)]
        unloaded = await client.unload_model()
        assert all(p.done() for p in steps) and unloaded.model_id == client.model_id
        with pytest.raises(FiretitanError, match="unloaded"):
            client.forward(BATCH, "cross_entropy")
    endpoints = [ex.endpoint for ex in rec.records if ex.endpoint != "retrieve_future"]
    assert endpoints.index("unload_model") > endpoints.index("optim_step")
    assert sent(rec, "unload_model")[0].body == {
        "model_id": client.model_id,
        "type": "unload_model",
    }


async def test_load_adapter_into_a_lora_model(rec: Recorder) -> None:
    async with ServiceSession(rec.base_url) as session:
        source = await session.create_training_client(MODEL, lora_rank=2)
        source.forward_backward(BATCH, "cross_entropy")
        source.optim_step(ADAM)
        await source.save_state("adapter-a")
        a = (await source.forward(BATCH, "cross_entropy")).metrics["loss:sum"]
    async with ServiceSession(rec.base_url) as session:
        target = await session.create_training_client(MODEL, lora_rank=2)
        before = (await target.forward(BATCH, "cross_entropy")).metrics["loss:sum"]
        loaded = await target.load_adapter("adapter-a")
        b = (await target.forward(BATCH, "cross_entropy")).metrics["loss:sum"]
    assert loaded["model_id"] == target.model_id and a == b != before
    body = sent(rec, "load_adapter")[0].body
    assert body["adapter_path"] == "adapter-a" and body["model_id"] == target.model_id


# -- what a real Fireworks trainer may do (the local trainer's knobs) -----------------------


async def test_no_logprobs_reply_custom_loss_takes_them_from_forward() -> None:
    def loss(data: list[types.Datum], logprobs: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        return -float(sum(lp.sum() for lp in logprobs)), [-np.ones_like(lp) for lp in logprobs]

    async with (
        LocalTrainer(seed=5, forward_backward_logprobs=False) as lt,
        ServiceSession(lt.base_url) as session,
    ):
        client = await session.create_training_client(MODEL)
        fb = await client.forward_backward(BATCH, "cross_entropy")
        assert [dict(o) for o in fb.loss_fn_outputs] == [{}, {}]  # nothing invented
        assert fb.metrics["loss:sum"] > 0 and fb.metrics["response_tokens"] > 0
        custom = await client.forward_backward_custom(BATCH, loss)
        assert custom.metrics["loss:sum"] > 0


async def test_save_state_under_a_server_chosen_step_name() -> None:
    async with (
        LocalTrainer(seed=5, checkpoint_step_names=True, checkpoint_list_details=False) as lt,
        ServiceSession(lt.base_url) as session,
    ):
        client = await session.create_training_client(MODEL)
        client.forward_backward(BATCH, "cross_entropy")
        client.optim_step(ADAM)
        saved = await client.save_state("my-name")
        listed = await client.list_checkpoints()
        name = saved.path.rsplit("/", 1)[-1]
        await client.load_state(name)
    assert name == "step-1"  # the returned path counts, not the requested name
    assert [(c.name, c.path, c.time) for c in listed] == [("step-1", None, None)]


# -- the Fireworks SDK's own types ----------------------------------------------------------


async def test_fireworks_sdk_types_are_accepted(trainer: LocalTrainer) -> None:
    tokens = list(b"hello fireworks")
    fw_datum = ft.Datum(
        model_input=ft.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )
    async with ServiceSession(trainer.base_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=3)
        theirs = await client.forward([fw_datum], "cross_entropy")
        ours = await client.forward([BATCH[0]], "cross_entropy")
        await client.forward_backward([fw_datum], "cross_entropy")
        step = await client.optim_step(
            ft.AdamParams(learning_rate=1e-2, emit_grad_norm_metrics=True)  # type: ignore[arg-type]
        )
    assert theirs.metrics["loss:sum"] == ours.metrics["loss:sum"]
    assert any("grad_norm" in key for key in step.metrics)


async def test_closed_session_refuses(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=5)
    with pytest.raises(SessionClosed):
        client.unload_model()


# -- offline rules, held to the SDK's own functions -----------------------------------------

REFS = [
    "step-4",
    " step-4 ",
    "Step-4",
    "step_4",
    "a" * 63,
    "a" * 64,
    "-bad",
    "acct/run-0123456789abcdef0123456789abcdef/step-4",
    "acct/run-0123456789abcdef0123456789abcdef/step-4/extra",
    "acct/run-0123/step-4",
    "a/b",
    "/abs",
    "tinker://run/weights/a",
    "gs://bucket/x",
    "cross_job://old-job/step-4",
    "cross_job://old-job/",
    "cross_job://old-job/a/b",
    "cross_job://Old/step",
    "a//b",
    "a/../b",
    "",
    "back\\slash",
]


@pytest.mark.parametrize("ref", REFS)
def test_checkpoint_refs_follow_the_sdks_rules(ref: str) -> None:
    from fireworks.training.sdk.client import _validate_checkpoint_ref

    from firetitan_async.wire.fireworks import validate_checkpoint_ref

    try:
        expected: str | None = _validate_checkpoint_ref(ref)
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(InvalidInput):
            validate_checkpoint_ref(ref)
    else:
        assert validate_checkpoint_ref(ref) == expected


@pytest.mark.parametrize(("job", "name"), [("old-job", "step-4"), ("Old", "x"), ("a/b", "c")])
def test_cross_job_refs_follow_the_sdk(job: str, name: str) -> None:
    from fireworks.training.sdk.client import make_cross_job_checkpoint_ref

    from firetitan_async.wire.fireworks import cross_job_ref

    try:
        expected: str | None = make_cross_job_checkpoint_ref(
            source_job_id=job, checkpoint_name=name
        )
    except ValueError:
        expected = None
    if expected is None:
        with pytest.raises(InvalidInput):
            cross_job_ref(job, name)
    else:
        assert cross_job_ref(job, name) == expected


@pytest.mark.parametrize(
    ("job", "name", "field"),
    [
        ("a/b", "step-4", "source_job_id"),
        ("", "step-4", "source_job_id"),
        ("accounts/a/rlorTrainerJobs/j", "step-4", "source_job_id"),
        ("Old", "step-4", "source_job_id"),
        ("old-job", "Step 4", "checkpoint_name"),
        ("old-job", "a/b", "checkpoint_name"),
    ],
)
def test_a_bad_cross_job_part_is_named(job: str, name: str, field: str) -> None:
    from firetitan_async.wire.fireworks import cross_job_ref

    with pytest.raises(InvalidInput) as caught:
        cross_job_ref(job, name)
    assert caught.value.field == field


def test_datum_json_is_the_sdks_json() -> None:
    """The datum JSON the Fireworks SDK sent in the recorded run (see the fidelity test)."""

    from firetitan_async.wire.fireworks import datum_json, estimate_datum_bytes, split

    tokens = list(b"estimate me")
    ours = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [0.5] * (len(tokens) - 1)},
    )
    assert estimate_datum_bytes(ours) == 10 * 3 * (len(tokens) - 1)
    assert datum_json(ours) == {
        "loss_fn_inputs": {
            "target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [len(tokens) - 1]},
            "weights": {
                "data": [0.5] * (len(tokens) - 1),
                "dtype": "float32",
                "shape": [len(tokens) - 1],
            },
        },
        "model_input": {"chunks": [{"tokens": tokens[:-1], "type": "encoded_text"}]},
    }
    assert [len(c) for c in split([ours] * 2050)] == [1024, 1024, 2]


async def test_a_dedicated_fireworks_session_refuses_trainer_sampling_before_sending(
    rec: Recorder,
) -> None:
    """A Fireworks trainer has no sampling sessions (the SDK samples through a deployment or
    the serverless gateway): with neither, ``create_sampling_client`` and
    ``save_weights_and_get_sampling_client`` raise ``UsageError`` and send nothing (the
    SDK's ``NotImplementedError``; its training client has no such method). The same calls
    in the tinker dialect sample from the trainer."""
    async with ServiceSession(rec.base_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=6)
        snap = await client.save_weights_for_sampler_ext("for-sampling")
        before = len(rec.records)
        for call in (
            session.create_sampling_client(model_path=snap.path),
            session.create_sampling_client(base_model=MODEL),
            client.save_weights_and_get_sampling_client(),
        ):
            with pytest.raises(UsageError, match="serverless") as refused:
                await call
            assert isinstance(refused.value, FiretitanError)
        assert "DeploymentSampler" in str(refused.value) or "managed" in str(refused.value)
        with pytest.raises(InvalidInput) as bad:
            await session.create_sampling_client(deployment_sampler="rollouts")  # type: ignore[arg-type]
        assert bad.value.field == "deployment_sampler"
        # An RL loop's publisher is refused when made, not at its first publish (after a
        # snapshot was saved and billed): it publishes through create_sampling_client.
        with pytest.raises(UsageError, match="serverless"):
            TrainerPolicy(session, client)
        assert len(rec.records) == before
    assert sent(rec, "create_sampling_session") == [] and sent(rec, "asample") == []
    async with ServiceSession(rec.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, lora_rank=6)
        quick = await client.save_weights_and_get_sampling_client()
        out = await quick.sample(types.ModelInput.from_ints(list(b"once")), 1,
                                 types.SamplingParams(max_tokens=2, seed=1))
    assert len(out.sequences[0].tokens) == 2
    assert len(sent(rec, "asample")) == 1


def test_custom_loss_never_invents_missing_logprobs() -> None:
    from firetitan_async._clients._custom_loss import forward_logprobs
    from firetitan_async.errors import ProtocolError

    no_logprobs = types.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{}, {}], metrics={"loss:sum": 1.0}
    )
    with pytest.raises(ProtocolError, match="no per-token logprobs"):
        forward_logprobs(no_logprobs, len(BATCH))


async def test_a_listing_without_times_or_paths_invents_none_in_the_tinker_dialect() -> None:
    async with (
        LocalTrainer(seed=5, checkpoint_list_details=False) as lt,
        ServiceSession(lt.base_url, dialect="tinker") as session,
    ):
        client = await session.create_training_client(MODEL)
        saved = await client.save_state("bare")
        listed = await client.list_checkpoints()
        with pytest.raises(InvalidInput, match="without its path"):
            await client.resolve_checkpoint_path("bare")
        await client.load_state(saved.path)  # the returned path is what counts
    assert [(c.name, c.path, c.time, c.expires_at) for c in listed] == [("bare", None, None, None)]
    assert listed[0].checkpoint_type == "training"
