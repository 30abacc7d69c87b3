"""The event loop keeps ticking while a burst of operations is sent and their replies land.

Three bursts, each under asyncio and trio: 200 operations awaited at once, 200 calls made in
one loop turn while the ticker runs, and 2,000 rollouts started at once
(``DeploymentSampler.sample_many``). The bound of the last two is the issue's: no more than
50 ms of CPU between two ticks of a 1 ms ticker.

A 1 ms ticker runs in the caller's loop while 200 operations (100 pipelined steps) are awaited,
and records the CPU time the loop's thread spent between two of its wake-ups: that is the work
done in the loop iterations between them, and unlike wall time it does not count the moments
the OS gave the CPU to another process (the machine running the suite is shared and busy).
Before CPU turns (``_cpu_turns.py``) every ready operation ran its encode / HTTP / decode step
in the same loop iteration: 37-61 ms of CPU between two ticks (measured on this machine).
With turns an iteration runs a couple of such steps: 2-6 ms. The bound sits between the two.
The trainer runs in its own process (sharing no GIL with the client), and the garbage
collector is paused during the measurement: a full collection's pause is the interpreter's,
proportional to the whole heap, and the benchmarks report it.
"""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import anyio
import httpx
import pytest
from tinker import types

from firetitan_async import DeploymentSampler, Pending, ServiceSession
from firetitan_async.wire.validation import validate_adam_params, validate_forward_backward

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
STEPS = 100
BOUND_MS = 20.0
BURST_BOUND_MS = 50.0
DEPLOYMENT = "accounts/local/deployments/rollouts"


@pytest.fixture(scope="module")
def trainer_url() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = ["-m", "firetitan_async", "serve", "--port", str(port), "--latency-ms", "50"]
    proc = subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v1/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the local trainer did not start") from None
                time.sleep(0.1)
        httpx.post(
            f"{url}/v1/accounts/local/deployments?deploymentId=rollouts",
            json={"baseModel": MODEL},
        ).raise_for_status()
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _batch() -> list[types.Datum]:
    tokens = list(b"async pipelines keep the trainer busy")
    return [
        types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData(
                    data=tokens[1:], dtype="int64", shape=[len(tokens) - 1]
                ),
                "weights": types.TensorData(
                    data=[1.0] * (len(tokens) - 1), dtype="float32", shape=[len(tokens) - 1]
                ),
            },
        )
        for _ in range(8)
    ]


async def test_a_burst_of_operations_does_not_stall_the_loop(trainer_url: str) -> None:
    batch = _batch()
    adam = types.AdamParams(learning_rate=1e-3)
    gaps: list[float] = []
    running = True

    async def ticker() -> None:
        last = time.thread_time()
        while running:
            await anyio.sleep(0.001)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    async with ServiceSession(trainer_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        await client.forward(batch[:1], "cross_entropy")  # warm: connection, lazy imports
        pendings: list[Pending[object]] = []
        for _ in range(STEPS):
            pendings.append(client.forward_backward(batch, "cross_entropy"))
            pendings.append(client.optim_step(adam))
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0.005)
                with anyio.fail_after(120):
                    for pending in pendings:
                        await pending
                running = False
        finally:
            gc.enable()
    worst_ms = max(gaps) * 1e3
    assert len(gaps) > 50, len(gaps)
    assert worst_ms < BOUND_MS, f"{worst_ms:.0f} ms of CPU between two ticks (bound {BOUND_MS:.0f})"


def _checks_cpu_s(batch: list[types.Datum], adam: types.AdamParams) -> float:
    """The thread CPU of the input checks of ``STEPS`` steps (best of three rounds)."""
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for _ in range(STEPS):
            validate_forward_backward(batch, "cross_entropy", None)
            validate_adam_params(adam)
        best = min(best, time.thread_time() - started)
    return best


class _CpuTicker:
    """A 1 ms ticker recording the loop thread's CPU time between two of its wake-ups."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self.running = True

    async def run(self) -> None:
        last = time.thread_time()
        while self.running:
            await anyio.sleep(0.001)
            now = time.thread_time()
            self.gaps.append(now - last)
            last = now

    @property
    def worst_ms(self) -> float:
        return max(self.gaps) * 1e3


async def test_200_calls_in_one_turn_do_not_block_the_loop(trainer_url: str) -> None:
    """The caller's turn pays for the checks that must precede a sequence id and nothing
    else: the operations' tasks are started a few per turn (``_launcher.py``), encoding runs
    in them. 8-9 ms of CPU for the 200 calls on the loaded 2-core machine, their input checks
    alone 4-4.5 ms (15 ms for the calls when each started its task; 28-34 ms when each also
    encoded its request)."""
    batch = _batch()
    adam = types.AdamParams(learning_rate=1e-3)
    ticker = _CpuTicker()
    async with ServiceSession(trainer_url) as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        await client.forward(batch[:1], "cross_entropy")  # warm: connection, lazy imports
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker.run)
                await anyio.sleep(0.005)
                calls_s = float("inf")
                for _ in range(3):  # the best of three rounds, as the checks below
                    pendings: list[Pending[object]] = []
                    started = time.thread_time()
                    for _ in range(STEPS):  # one loop turn: no await between the calls
                        pendings.append(client.forward_backward(batch, "cross_entropy"))
                        pendings.append(client.optim_step(adam))
                    calls_s = min(calls_s, time.thread_time() - started)
                    with anyio.fail_after(120):
                        for pending in pendings:
                            await pending
                ticker.running = False
        finally:
            gc.enable()
    assert [p.seq_id for p in pendings] == sorted(p.seq_id or 0 for p in pendings)
    assert len(ticker.gaps) > 50, len(ticker.gaps)
    # What the calls must do (the checks before a sequence id is reserved), timed alone on
    # the same machine a moment later: the calls may cost a little more, not a multiple.
    checks_s = _checks_cpu_s(batch, adam)
    print(f"200 calls: {calls_s * 1e3:.1f} ms CPU, their checks alone {checks_s * 1e3:.1f} ms")
    assert calls_s < 3.0 * checks_s, (
        f"200 calls took {calls_s * 1e3:.1f} ms of CPU, their input checks "
        f"{checks_s * 1e3:.1f} ms: the calls do more than check and queue"
    )
    assert ticker.worst_ms < BURST_BOUND_MS, (
        f"{ticker.worst_ms:.0f} ms of CPU between two ticks (bound {BURST_BOUND_MS:.0f})"
    )


async def test_2000_rollouts_started_at_once_do_not_block_the_loop(trainer_url: str) -> None:
    """``sample_many`` admits prompts as the window frees slots (a task per prompt in
    flight only) and each request parses its reply holding a CPU turn, so a loop turn runs
    a couple of replies however many land together. 2,000 ``sample`` tasks started by the
    caller cost ~25-35 ms for the caller's own ``start_soon`` loop alone (anyio's, measured
    with empty tasks); ``sample_many`` is the way to start such a batch."""
    prompt = list(b"Once upon a time, ")
    ticker = _CpuTicker()
    async with DeploymentSampler(trainer_url, DEPLOYMENT, "local-key", concurrency=256) as s:
        for _ in range(4):  # warm: connections, lazy imports
            await s.sample(prompt, max_tokens=1)
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker.run)
                await anyio.sleep(0.005)
                with anyio.fail_after(120):
                    results = await s.sample_many([prompt] * 2000, max_tokens=1)
                ticker.running = False
        finally:
            gc.enable()
    assert len(results) == 2000 and all(len(r) == 1 for r in results)
    assert s.concurrency.window == 256
    assert len(ticker.gaps) > 20, len(ticker.gaps)
    assert ticker.worst_ms < BURST_BOUND_MS, (
        f"{ticker.worst_ms:.0f} ms of CPU between two ticks (bound {BURST_BOUND_MS:.0f})"
    )
