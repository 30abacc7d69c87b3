"""The event loop keeps ticking while a burst of operations is sent and their replies land.

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
import pytest
from tinker import types

from firetitan_async import Pending, ServiceSession

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
STEPS = 100
BOUND_MS = 20.0


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
