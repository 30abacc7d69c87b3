"""SIGINT and SIGTERM unwind every block and clean up, under asyncio and trio.

In-process: ``cleanup_on_signals()`` turns a signal into cancellation, lets shielded cleanup
finish, raises ``Interrupted`` and puts the previous handlers back. In subprocesses: a signal
to ``firetitan-async demo`` running against an external local trainer leaves no live job,
session or deployment on it (``GET /_local/stats``) and exits non-zero within 5 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest

from firetitan_async import Interrupted, TrainerJobConfig, TrainerJobs, cleanup_on_signals
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"


def _live(lt: LocalTrainer) -> dict[str, int]:
    live: dict[str, int] = httpx.get(f"{lt.base_url}/_local/stats").json()["live"]
    return live


@pytest.fixture
def custom_handlers() -> Iterator[dict[int, Any]]:
    """Non-default handlers for both signals (restored after the test)."""

    def handler(signum: int, frame: object) -> None:
        raise AssertionError("the test's own handler must not run inside the block")

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, handler)
    yield {s: handler for s in saved}
    for s, previous in saved.items():
        signal.signal(s, previous)


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_cancels_the_block_after_cleanup(
    signum: signal.Signals, custom_handlers: dict[int, Any]
) -> None:
    with LocalTrainer(warmup_s=0.0) as lt:
        cleaned = []
        with pytest.raises(Interrupted) as interrupted:
            async with cleanup_on_signals() as guard:
                async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
                    config = TrainerJobConfig(base_model=MODEL)
                    async with jobs.create_and_wait(config, poll_interval_s=0.02):
                        assert _live(lt)["jobs"] == 1
                        try:
                            os.kill(os.getpid(), signum)
                            await anyio.sleep(10)
                        finally:
                            cleaned.append(True)
        assert guard.received == signum and cleaned == [True]
        assert interrupted.value.exit_code == 128 + signum
        assert signal.Signals(signum).name in str(interrupted.value)
        assert _live(lt)["jobs"] == 0
    for s, handler in custom_handlers.items():
        assert signal.getsignal(s) is handler


@pytest.mark.anyio
async def test_without_a_signal_the_block_is_untouched(custom_handlers: dict[int, Any]) -> None:
    async with cleanup_on_signals(signal.SIGTERM) as guard:
        await anyio.lowlevel.checkpoint()
    assert guard.received is None
    with pytest.raises(ZeroDivisionError):  # not wrapped in an ExceptionGroup
        async with cleanup_on_signals():
            _ = 1 / 0
    with anyio.move_on_after(0.05) as outer:  # an outer cancellation passes through
        async with cleanup_on_signals():
            await anyio.sleep(5)
    assert outer.cancelled_caught
    for s, handler in custom_handlers.items():
        assert signal.getsignal(s) is handler


@pytest.fixture(scope="module")
def external_trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=0, warmup_s=0.2) as lt:
        yield lt


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_demo_leaves_nothing_running(
    external_trainer: LocalTrainer, backend: str, signum: signal.Signals
) -> None:
    lt = external_trainer
    demo = subprocess.Popen(
        [sys.executable, "-m", "firetitan_async", "demo", "--backend", backend, "--steps", "500",
         "--control-plane-url", lt.control_plane_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # until its first step is done: job, session, model exist
            if line.lstrip().startswith("1 "):
                break
        live = _live(lt)
        assert live["jobs"] == 1 and live["sessions"] == 1, live
        sent = time.monotonic()
        demo.send_signal(signum)
        returncode = demo.wait(timeout=10)
        elapsed = time.monotonic() - sent
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    stderr = demo.stderr.read() if demo.stderr else ""
    assert returncode == 128 + signum, stderr
    assert elapsed < 5.0
    assert f"interrupted by {signum.name}" in stderr
    assert _live(lt) == {"jobs": 0, "sessions": 0, "deployments": 0}, stderr


_SCRIPT = """
import sys, anyio
from firetitan_async import cleanup_on_signals

async def main():
    async with cleanup_on_signals():
        try:
            print("ready", flush=True)
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                print("cleaning", flush=True)
                await anyio.sleep(float(sys.argv[2]))
                print("cleaned", flush=True)

anyio.run(main, backend=sys.argv[1])
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_uncaught_interrupted_exits_with_the_signal_status(backend: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, backend, "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 143 and out == "cleaning\ncleaned\n"
    assert "Traceback" not in err  # a SystemExit: no traceback, like sys.exit(143)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_second_sigterm_during_cleanup_stops_at_once(backend: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, backend, "30"],  # a cleanup that would take too long
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline() == "cleaning\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # the handler in place before the block: the default
        assert proc.wait(timeout=10) == -signal.SIGTERM
        assert time.monotonic() - sent < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
