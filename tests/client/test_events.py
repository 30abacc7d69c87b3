"""Operation events, the OpenTelemetry exporter, throughput and the session's cleanup, against
the real local trainer (asyncio and trio)."""

from __future__ import annotations

import logging
import sys

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tinker import types

from firetitan_async import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    OperationEvent,
    OtelExporter,
    Pending,
    ServiceSession,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=1e-2)
BATCH = [sft_datum("events, in order"), sft_datum("and their timings")]
TOKENS = sum(d.model_input.length for d in BATCH)
ONE_OP = ["submitted", "accepted", "started", "finished"]


async def test_a_20_step_run_emits_exactly_the_expected_events_in_order(
    local_trainer: LocalTrainer,
) -> None:
    hooked: list[OperationEvent] = []
    streamed: list[OperationEvent] = []
    async with ServiceSession(local_trainer.base_url, on_event=hooked.append) as session:
        stream = session.events(max_buffer=10_000)
        client = await session.create_training_client(MODEL)
        for _ in range(20):
            await client.forward_backward(BATCH, "cross_entropy")
            await client.optim_step(ADAM)
    async for event in stream:  # the stream ends when the session closes
        streamed.append(event)

    expected = [
        (kind, name, seq)
        for seq in range(1, 41)
        for name in ["forward_backward" if seq % 2 else "optim_step"]
        for kind in ONE_OP
    ]
    assert [(e.kind, e.operation, e.seq_id) for e in hooked] == expected
    assert streamed == hooked and stream.dropped == 0
    assert len({e.op_id for e in hooked}) == 40
    for event in hooked:
        if event.kind in ("accepted", "started", "finished"):
            assert event.request_id is not None and event.request_id.startswith("req-")
        assert event.tokens == (TOKENS if event.operation == "forward_backward" else None)
    times = [e.time for e in hooked]
    assert times == sorted(times)
    for done in (e for e in hooked if e.kind == "finished"):
        assert done.phase is None and done.retries == 0
        # the phases start with the operation's first submission, a moment after submitted
        assert 0 < sum(done.phase_s.values()) <= done.elapsed_s
        assert done.phase_s["queue"] == 0.0 and done.phase_s["compute"] > 0


async def test_pipelined_operations_keep_each_ones_events_in_order(
    local_trainer: LocalTrainer,
) -> None:
    events: list[OperationEvent] = []
    async with ServiceSession(
        local_trainer.base_url, on_event=events.append, dialect="tinker"  # trainer sampling
    ) as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        pendings: list[Pending[object]] = [
            client.forward_backward(BATCH, "cross_entropy") for _ in range(6)
        ]
        pendings.append(client.optim_step(ADAM))
        for p in pendings:
            await p
        sampler = await client.save_weights_and_get_sampling_client()
        prompt = types.ModelInput.from_ints(list(b"Say: "))
        await sampler.sample(prompt, 2, types.SamplingParams(max_tokens=4, seed=1))
    by_op: dict[int, list[str]] = {}
    for event in events:
        by_op.setdefault(event.op_id, []).append(event.kind)
    assert list(by_op.values()) == [ONE_OP] * 9
    # Tasks may start in any order (trio shuffles them): compare by sequence id.
    submitted = sorted((e.seq_id or 99, e.operation) for e in events if e.kind == "submitted")
    assert submitted == [
        *((seq, "forward_backward") for seq in range(1, 7)),
        (7, "optim_step"),
        (8, "save_weights_for_sampler"),
        (99, "sample"),
    ]


async def test_under_injected_faults_retries_are_events_and_nothing_else_changes() -> None:
    events: list[OperationEvent] = []
    with LocalTrainer(fault_rate=0.3, seed=3) as lt:
        async with ServiceSession(lt.base_url, on_event=events.append) as session:
            client = await session.create_training_client(MODEL)
            for _ in range(10):
                fb = client.forward_backward(BATCH, "cross_entropy")
                step = client.optim_step(ADAM)
                await fb
                await step
    by_op: dict[int, list[OperationEvent]] = {}
    for event in events:
        by_op.setdefault(event.op_id, []).append(event)
    assert len(by_op) == 20
    for op in by_op.values():
        assert [e.kind for e in op if e.kind != "retried"] == ONE_OP
        assert [e.retries for e in op if e.kind == "retried"] == list(range(1, op[-1].retries + 1))
        assert all(e.detail for e in op if e.kind == "retried")
        assert sum(op[-1].phase_s.values()) <= op[-1].elapsed_s
    assert sum(op[-1].retries for op in by_op.values()) > 0


async def test_a_failed_operation_ends_with_failed_and_the_error(
    local_trainer: LocalTrainer,
) -> None:
    events: list[OperationEvent] = []
    async with ServiceSession(
        local_trainer.base_url, dialect="tinker", on_event=events.append
    ) as session:
        client = await session.create_training_client(MODEL)
        with pytest.raises(APIStatusError):  # refused at submission: never accepted
            await client.load_state(f"tinker://{client.model_id}/weights/missing")
        await client.optim_step(ADAM)  # not wedged
    kinds = [(e.kind, e.operation) for e in events]
    assert kinds[:2] == [("submitted", "load_weights"), ("failed", "load_weights")]
    assert events[1].detail is not None and events[1].detail.startswith("APIStatusError: HTTP 404")
    assert events[1].request_id is None and events[1].phase == "submit"
    assert [k for k, _ in kinds[2:]] == ONE_OP


async def test_a_full_stream_drops_its_oldest_events(local_trainer: LocalTrainer) -> None:
    async with ServiceSession(local_trainer.base_url) as session:
        async with session.events(max_buffer=5) as stream:
            client = await session.create_training_client(MODEL)
            for _ in range(3):  # 24 events, nobody reading
                await client.forward_backward(BATCH, "cross_entropy")
                await client.optim_step(ADAM)
            assert stream.dropped == 24 - 5
        # closed by `async with`: the 5 newest are still readable, then iteration ends
        kept = [e async for e in stream]
    assert [(e.kind, e.seq_id) for e in kept] == [
        ("finished", 5), ("submitted", 6), ("accepted", 6), ("started", 6), ("finished", 6)
    ]
    with pytest.raises(InvalidInput, match="max_buffer"):
        session.events(max_buffer=0)


async def test_a_hook_that_raises_is_logged_once_and_harms_nothing(
    local_trainer: LocalTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(event: OperationEvent) -> None:
        calls.append(event.kind)
        raise RuntimeError("hook bug")

    async with ServiceSession(local_trainer.base_url) as session:
        remove = session.add_event_hook(broken)
        client = await session.create_training_client(MODEL)
        await client.forward_backward(BATCH, "cross_entropy")
        remove()
        await client.optim_step(ADAM)
    assert calls == ONE_OP
    assert sum("hook bug" in r.getMessage() or r.exc_info is not None for r in caplog.records) == 1


async def test_the_otel_exporter_makes_one_span_per_operation(
    local_trainer: LocalTrainer,
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    async with ServiceSession(
        local_trainer.base_url, dialect="tinker", on_event=OtelExporter(provider)
    ) as session:
        client = await session.create_training_client(MODEL)
        for _ in range(5):
            await client.forward_backward(BATCH, "cross_entropy")
            await client.optim_step(ADAM)
        with pytest.raises(APIStatusError):
            await client.load_state(f"tinker://{client.model_id}/weights/missing")
    spans = memory.get_finished_spans()
    assert [s.name for s in spans] == [
        *["firetitan_async.forward_backward", "firetitan_async.optim_step"] * 5,
        "firetitan_async.load_weights",
    ]
    for seq, span in enumerate(spans[:-1], start=1):
        attrs = dict(span.attributes or {})
        assert attrs["firetitan.seq_id"] == seq
        assert str(attrs["firetitan.request_id"]).startswith("req-")
        assert {"firetitan.phase.submit_s", "firetitan.phase.compute_s"} <= set(attrs)
        assert [e.name for e in span.events] == ["accepted", "started"]
        assert span.start_time is not None and span.end_time is not None
        assert span.end_time > span.start_time
    assert spans[-1].status.status_code is StatusCode.ERROR
    assert "HTTP 404" in str(spans[-1].status.description)
    assert dict(spans[-1].attributes or {})["firetitan.seq_id"] == 11
    assert spans[0].status.status_code is StatusCode.UNSET


async def test_throughput_counts_steps_and_tokens(local_trainer: LocalTrainer) -> None:
    async with ServiceSession(local_trainer.base_url) as session:
        meter = session.throughput()
        client = await session.create_training_client(MODEL)
        for _ in range(4):
            fb = client.forward_backward(BATCH, "cross_entropy")
            step = client.optim_step(ADAM)
            await fb
            await step
        snap = meter.snapshot()
    assert (snap.steps, snap.tokens, snap.samples) == (4, 4 * TOKENS, 0)
    assert snap.steps_per_s == pytest.approx(4 / snap.window_s)
    assert snap.tokens_per_s == pytest.approx(4 * TOKENS / snap.window_s)


# -- the session cleans up on every exit path -------------------------------------------------
# tinker dialect: the server-side session is finished (the tinker SDK's way); fireworks
# dialect: every model the session created is unloaded (the Fireworks SDK never finishes).

DIALECTS = pytest.mark.parametrize("dialect", ["tinker", "fireworks"])


def cleanup_counts(trainer: LocalTrainer) -> tuple[int, int]:
    requests = trainer.stats()["requests"]
    return requests.get("sessions/finish", 0), requests.get("unload_model", 0)


def expected(dialect: str, models: int) -> tuple[int, int]:
    return (1, 0) if dialect == "tinker" else (0, models)


@DIALECTS
async def test_an_error_exit_cleans_up(
    local_trainer: LocalTrainer, dialect: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="firetitan_async.session")
    with pytest.raises(ZeroDivisionError):
        async with ServiceSession(local_trainer.base_url, dialect=dialect) as session:  # type: ignore[arg-type]
            await session.create_training_client(MODEL)
            await session.create_training_client(MODEL, lora_rank=2)
            1 / 0  # noqa: B018
    assert cleanup_counts(local_trainer) == expected(dialect, 2)
    assert "could not" not in caplog.text  # the unloads and the finish were accepted


@DIALECTS
async def test_a_cancelled_session_cleans_up(local_trainer: LocalTrainer, dialect: str) -> None:
    with anyio.CancelScope() as scope:
        async with ServiceSession(local_trainer.base_url, dialect=dialect) as session:  # type: ignore[arg-type]
            client = await session.create_training_client(MODEL)
            client.forward_backward(BATCH, "cross_entropy")  # in flight when cancelled
            scope.cancel()
            await anyio.sleep(5)
    assert scope.cancelled_caught
    assert cleanup_counts(local_trainer) == expected(dialect, 1)


@DIALECTS
async def test_a_normal_exit_cleans_up(local_trainer: LocalTrainer, dialect: str) -> None:
    async with ServiceSession(local_trainer.base_url, dialect=dialect) as session:  # type: ignore[arg-type]
        client = await session.create_training_client(MODEL)
        await client.optim_step(ADAM)
    assert cleanup_counts(local_trainer) == expected(dialect, 1)


def test_the_otel_exporter_without_opentelemetry_says_which_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes the import fail
    with pytest.raises(FiretitanError, match=r"firetitan_async\[otel\]"):
        OtelExporter()
