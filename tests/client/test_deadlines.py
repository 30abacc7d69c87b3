"""Deadlines and stall reports against the real local trainer (asyncio and trio).

The local trainer's stall knobs make an operation that is accepted and never finishes
(``stall_s``) and a result body that stops half-way (``body_stall_s``). Two fault shapes a
server cannot produce on cue — a capacity pause and a submission that never gets a reply —
come from a proxy transport that forwards everything else to the real trainer.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from tinker import types

from firetitan_async import (
    Deadlines,
    InvalidInput,
    OperationEvent,
    OperationTimeout,
    Pending,
    SamplingClient,
    ServiceSession,
    SubmissionLost,
    TrainingClient,
)
from firetitan_async._http._http11_transport import Http11Transport
from firetitan_async._session._deadlines import DeadlinePolicy, call_deadlines
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=1e-2)
BATCH = [sft_datum("deadlines and stalls")]
KEY = "sk-deadline-test-key-0123456789"


async def run_ten_more(client: object) -> list[float]:
    """Five forward_backward + optim_step pairs, pipelined; their losses."""
    pendings = []
    for _ in range(5):
        pendings.append(client.forward_backward(BATCH, "cross_entropy"))  # type: ignore[attr-defined]
        pendings.append(client.optim_step(ADAM))  # type: ignore[attr-defined]
    results = [await p for p in pendings]
    return [r.metrics["loss:sum"] for r in results[::2]]


async def test_a_stalled_forward_backward_times_out_after_a_stall_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="firetitan_async")
    events: list[OperationEvent] = []
    deadlines = Deadlines(compute_s=2.0, stall_warning_s=0.5)
    with LocalTrainer(
        stall_s=math.inf, stall_endpoint="forward_backward", long_poll_s=0.2, api_key=KEY
    ) as lt:
        async with ServiceSession(
            lt.base_url, KEY, deadlines=deadlines, on_event=events.append
        ) as session:
            client = await session.create_training_client(MODEL)
            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                await client.forward_backward(BATCH, "cross_entropy")
            took = time.monotonic() - started
            losses = await run_ten_more(client)
        assert lt.stats()["optim_steps_applied"] == {client.model_id: 5}

    exc = caught.value
    assert 2.0 <= took <= 2.0 * 1.1, took
    assert (exc.operation, exc.seq_id, exc.phase) == ("forward_backward", 1, "compute")
    assert exc.budget_s == 2.0
    assert exc.request_id is not None and exc.request_id.startswith("req-")
    assert set(exc.phase_s) == {"submit", "queue", "compute", "transfer"}
    assert exc.phase_s["compute"] == pytest.approx(2.0, abs=0.2)
    assert isinstance(exc, TimeoutError)
    assert losses[-1] < losses[0]  # the later steps really trained

    first = [e for e in events if e.seq_id == 1]
    kinds = [e.kind for e in first]
    assert kinds[:3] == ["submitted", "accepted", "started"]
    assert kinds[-1] == "failed" and "stalled" in kinds
    stalled = next(e for e in first if e.kind == "stalled")
    assert stalled.elapsed_s < 1.5  # long before the 2 s deadline
    assert stalled.detail is not None
    for said in ("forward_backward", exc.request_id, "queue_state=active", "ForwardBackward"):
        assert said in stalled.detail
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "stalled" in r.msg]
    assert warnings and exc.request_id in warnings[0].getMessage()
    assert KEY not in caplog.text


async def test_a_reply_body_that_stalls_half_way_times_out_in_transfer() -> None:
    with LocalTrainer(body_stall_s=math.inf, stall_endpoint="forward_backward") as lt:
        async with ServiceSession(
            lt.base_url, deadlines=Deadlines(transfer_s=1.0, stall_warning_s=None)
        ) as session:
            client = await session.create_training_client(MODEL)
            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                await client.forward_backward(BATCH, "cross_entropy")
            took = time.monotonic() - started
            assert len(await run_ten_more(client)) == 5
    exc = caught.value
    assert exc.phase == "transfer"
    assert 1.0 <= exc.phase_s["transfer"] <= 1.1
    assert took < 1.5


async def test_a_slow_stall_that_ends_within_the_deadline_completes() -> None:
    with LocalTrainer(stall_s=0.6, stall_endpoint="optim_step", long_poll_s=0.2) as lt:
        async with ServiceSession(lt.base_url, deadlines=Deadlines(compute_s=3.0)) as session:
            client = await session.create_training_client(MODEL)
            await client.forward_backward(BATCH, "cross_entropy")
            started = time.monotonic()
            await client.optim_step(ADAM)
            assert time.monotonic() - started >= 0.6


# -- fault shapes the local trainer cannot produce: a proxy in front of it ---------------------


class Proxy(httpx.AsyncBaseTransport):
    """Forwards to the real trainer unless ``intercept`` answers the request itself."""

    def __init__(self, intercept: Callable[[httpx.Request], Awaitable[httpx.Response | None]]):
        self._intercept = intercept
        self._inner = Http11Transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        reply = await self._intercept(request)
        if reply is not None:
            return reply
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_capacity_pause_counts_against_the_queue_budget() -> None:
    events: list[OperationEvent] = []
    fb_ids: set[str] = set()

    async def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/api/v1/retrieve_future":
            body = request.read().decode()
            if any(rid in body for rid in fb_ids):
                await anyio.sleep(0.05)
                paused = {"queue_state": "paused_capacity", "queue_state_reason": "no free GPUs"}
                return httpx.Response(200, json={"type": "try_again", **paused})
        return None

    def note(event: OperationEvent) -> None:
        events.append(event)
        if event.kind == "accepted" and event.seq_id == 1:
            assert event.request_id is not None
            fb_ids.add(event.request_id)

    with LocalTrainer() as lt:
        async with ServiceSession(
            lt.base_url,
            transport=Proxy(intercept),
            deadlines=Deadlines(queue_s=0.8, compute_s=30, stall_warning_s=None),
            on_event=note,
        ) as session:
            client = await session.create_training_client(MODEL)
            with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                await client.forward_backward(BATCH, "cross_entropy")
            assert len(await run_ten_more(client)) == 5
    assert caught.value.phase == "queue"
    assert caught.value.phase_s["queue"] == pytest.approx(0.8, abs=0.1)
    queued = [e for e in events if e.kind == "queued"]
    assert len(queued) == 1 and queued[0].queue_state == "paused_capacity"
    assert queued[0].detail == "no free GPUs"


async def test_a_submission_without_reply_fails_later_operations_at_once() -> None:
    async def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/api/v1/forward_backward":
            await anyio.sleep_forever()
        return None

    with LocalTrainer() as lt:
        async with ServiceSession(
            lt.base_url, transport=Proxy(intercept), deadlines=Deadlines(submit_s=0.5)
        ) as session:
            client = await session.create_training_client(MODEL)
            fb = client.forward_backward(BATCH, "cross_entropy")
            step = client.optim_step(ADAM)
            with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                await fb
            assert caught.value.phase == "submit" and caught.value.request_id is None
            with anyio.fail_after(1):
                with pytest.raises(SubmissionLost):
                    await step
                with pytest.raises(SubmissionLost):
                    await client.optim_step(ADAM)


# -- the policy ------------------------------------------------------------------------------


def test_the_policy_picks_per_call_then_per_kind_then_default() -> None:
    default, slow, call = Deadlines(compute_s=10), Deadlines(compute_s=99), Deadlines(submit_s=1)
    policy = DeadlinePolicy({"default": default, "save_state": slow})
    assert policy.for_operation("forward_backward") is default
    assert policy.for_operation("save_weights") is slow  # save_state's wire name
    assert policy.for_operation("save_weights", call) is call
    builtin = DeadlinePolicy()
    assert builtin.for_operation("save_weights").compute_s == 7200
    assert builtin.for_operation("optim_step") == Deadlines()
    assert DeadlinePolicy(default).for_operation("save_weights") is default


def test_call_deadlines_are_checked_before_sending() -> None:
    assert call_deadlines(None) is None
    assert call_deadlines(Deadlines()) == Deadlines()
    with pytest.raises(InvalidInput, match="deadlines"):
        call_deadlines(30)


def test_bad_deadlines_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidInput, match="compute_s"):
        Deadlines(compute_s=0)
    with pytest.raises(InvalidInput, match="stall_warning_s"):
        Deadlines(stall_warning_s=-1)
    with pytest.raises(InvalidInput, match="save_sate"):
        ServiceSession("http://127.0.0.1:1", deadlines={"save_sate": Deadlines()})
    with pytest.raises(InvalidInput, match=r"deadlines\['optim_step'\]"):
        DeadlinePolicy({"optim_step": 5})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("endpoint", "cancel"), [("asample", True), ("asample", False), ("forward_backward", True)]
)
async def test_cancel_on_timeout_cancels_only_a_sample(endpoint: str, cancel: bool) -> None:
    cancelled: list[str] = []

    async def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/api/v1/cancel_future":
            cancelled.append(request.read().decode())
            return httpx.Response(200, json={})
        return None

    deadlines = Deadlines(compute_s=0.5, stall_warning_s=None, cancel_on_timeout=cancel)
    with LocalTrainer(stall_s=math.inf, stall_endpoint=endpoint, long_poll_s=0.2) as lt:
        async with ServiceSession(
            lt.base_url, dialect="tinker", transport=Proxy(intercept), deadlines=deadlines
        ) as session:
            sampler = await session.create_sampling_client(base_model=MODEL)
            client = await session.create_training_client(MODEL)
            prompt = types.ModelInput.from_ints(list(b"Say: "))
            params = types.SamplingParams(max_tokens=4, seed=1)
            pending: Pending[object]
            if endpoint == "asample":
                pending = sampler.sample(prompt, 1, params)
            else:
                pending = client.forward_backward(BATCH, "cross_entropy")
            with anyio.fail_after(10), pytest.raises(OperationTimeout):
                await pending
            assert len((await sampler.sample(prompt, 1, params)).sequences) == 1
            await client.optim_step(ADAM)
    sample_cancel = endpoint == "asample" and cancel
    assert cancelled == ([f'{{"request_id":"{pending.request_id}"}}'] if sample_cancel else [])


async def test_time_spent_waiting_for_earlier_operations_is_not_a_phase() -> None:
    # unload_model first drains the model's earlier operations: that wait must not count
    # against its own submit budget (its phases start with its own submission).
    deadlines = {"unload_model": Deadlines(submit_s=0.5)}
    with LocalTrainer(stall_s=1.0, stall_endpoint="forward_backward", long_poll_s=0.2) as lt:
        async with ServiceSession(lt.base_url, dialect="fireworks", deadlines=deadlines) as session:
            client = await session.create_training_client(MODEL)
            fb = client.forward_backward(BATCH, "cross_entropy")
            unload = client.unload_model()
            with anyio.fail_after(10):
                await unload
            assert fb.done()


async def test_a_composite_operation_whose_inner_submission_times_out_fails_cleanly() -> None:
    # fireworks save_weights_for_sampler awaits an inner save_weights_for_sampler_ext; the
    # inner submission never gets a reply.
    async def intercept(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == "/api/v1/save_weights_for_sampler":
            await anyio.sleep_forever()
        return None

    with LocalTrainer() as lt:
        async with ServiceSession(
            lt.base_url,
            dialect="fireworks",
            transport=Proxy(intercept),
            deadlines=Deadlines(submit_s=0.3),
        ) as session:
            client = await session.create_training_client(MODEL)
            with anyio.fail_after(5):
                with pytest.raises(OperationTimeout) as caught:
                    await client.save_weights_for_sampler("snap")
                with pytest.raises(SubmissionLost):
                    await client.optim_step(ADAM)
    assert caught.value.phase == "submit"
    assert caught.value.operation == "save_weights_for_sampler_ext"


def test_serve_flags_make_a_stalling_trainer() -> None:
    # PYTHONPATH kept: it carries the suite's no-torch stand-in (tests/conftest.py), ~1.4 s
    # of CPU a process.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((root, os.environ["PYTHONPATH"]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firetitan_async", "serve", "--port", "0", "--long-poll-s", "0.2",
         "--stall-s", "inf", "--stall-endpoint", "optim_step", "--stall-count", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]

        async def main() -> OperationTimeout:
            async with ServiceSession(url, deadlines=Deadlines(compute_s=0.5)) as session:
                client = await session.create_training_client(MODEL)
                await client.forward_backward(BATCH, "cross_entropy")
                with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                    await client.optim_step(ADAM)
                await client.optim_step(ADAM)  # only the first one stalls
                return caught.value

        assert anyio.run(main).operation == "optim_step"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)
    assert proc.returncode == 0


# -- per call --------------------------------------------------------------------------------

OPERATIONS = {
    TrainingClient: [
        "forward", "forward_backward", "forward_backward_custom", "optim_step", "save_state",
        "load_state", "load_state_with_optimizer", "save_weights_for_sampler",
        "save_weights_for_sampler_ext", "save_weights_and_get_sampling_client", "unload_model",
        "load_adapter",
    ],
    SamplingClient: ["sample", "compute_logprobs"],
}


def test_every_operation_method_takes_deadlines() -> None:
    for cls, names in OPERATIONS.items():
        for name in names:
            parameter = inspect.signature(getattr(cls, name)).parameters.get("deadlines")
            assert parameter is not None, f"{cls.__name__}.{name}"
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None


async def test_a_per_call_deadline_replaces_the_sessions() -> None:
    with LocalTrainer(stall_s=math.inf, stall_endpoint="optim_step", long_poll_s=0.2) as lt:
        # tinker: the sampling client below samples from the trainer (a Fireworks trainer has
        # no sampling sessions)
        async with ServiceSession(lt.base_url, dialect="tinker") as session:  # default deadlines
            client = await session.create_training_client(MODEL)
            with pytest.raises(InvalidInput, match="deadlines"):
                client.forward_backward(BATCH, "cross_entropy", deadlines=0.5)  # type: ignore[arg-type]
            with anyio.fail_after(5):
                await client.forward_backward(BATCH, "cross_entropy")  # no seq id was lost
            started = time.monotonic()
            with anyio.fail_after(10), pytest.raises(OperationTimeout) as caught:
                await client.optim_step(ADAM, deadlines=Deadlines(compute_s=0.5))
            assert time.monotonic() - started < 0.5 * 1.1 + 0.2
            assert caught.value.budget_s == 0.5
            sampler = await session.create_sampling_client(base_model=MODEL)
            prompt = types.ModelInput.from_ints(list(b"Say: "))
            lps = await sampler.compute_logprobs(prompt, deadlines=Deadlines(compute_s=5))
            assert len(lps) == len(b"Say: ")
