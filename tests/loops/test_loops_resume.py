"""Kill a training process after step 7 of 12 (SIGKILL), resume it: steps 8-12 match bit for bit.

The trainer (a local trainer in this process) outlives the killed client, as a real one does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from firetitan_async.local import LocalTrainer

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys

import anyio
import numpy as np
from tinker import types

from firetitan_async import ServiceSession
from firetitan_async.loops import CheckpointManager, TrainerCheckpoints, sft_steps

base_url, run_dir, backend = sys.argv[1:4]
TEXTS = ["resume restores weights,", "the optimizer state,", "and the data cursor."]


def batch(i):
    data = []
    for text in (TEXTS[i % 3], TEXTS[(i * 7 + 1) % 3]):
        tokens = list(text.encode())
        data.append(types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
                "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, np.float32)),
            },
        ))
    return data


async def main():
    config = {"model": "local/tiny-byte-lm", "lr": 0.02, "data": "TEXTS v1"}
    async with ServiceSession(base_url) as session:
        client = await session.create_training_client("local/tiny-byte-lm")
        store = TrainerCheckpoints(session, client)
        async with CheckpointManager(store, run_dir, config=config, every_steps=2) as ckpt:
            start = await ckpt.resume()
            print("resumed from", start.step if start else 0, flush=True)
            adam = types.AdamParams(learning_rate=0.02)
            steps = sft_steps(client, (batch(i) for i in range(12)), adam=adam, depth=3,
                              checkpoints=ckpt, start=start)
            async for step in steps:
                print("step", step.step, repr(step.metrics["loss:sum"]), flush=True)


anyio.run(main, backend=backend)
"""


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, PYTHONUNBUFFERED="1")


def _losses(lines: list[str]) -> dict[int, str]:
    return {int(ln.split()[1]): ln.split()[2] for ln in lines if ln.startswith("step ")}


def _run(script: Path, *args: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_sigkill_after_step_7_then_resume_matches_bit_for_bit(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    with LocalTrainer(seed=0, latency_s=0.02) as lt:
        # The uninterrupted reference runs beside the run that is killed (its own session and
        # model on the same trainer; a model's start depends on the seed only).
        uninterrupted = subprocess.Popen(
            [sys.executable, str(script), lt.base_url, str(tmp_path / "reference"), "asyncio"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        run_dir = tmp_path / "run"
        child = subprocess.Popen(
            [sys.executable, str(script), lt.base_url, str(run_dir), "asyncio"],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert child.stdout is not None
        seen: list[str] = []
        for line in child.stdout:
            seen.append(line)
            if line.startswith("step 7 "):
                child.send_signal(signal.SIGKILL)
                break
        child.wait(timeout=30)
        assert child.returncode == -signal.SIGKILL
        assert 12 not in _losses(seen)  # it really died mid-run
        out, err = uninterrupted.communicate(timeout=60)
        assert uninterrupted.returncode == 0, err
        reference = _losses(out.splitlines())
        assert sorted(reference) == list(range(1, 13))

        resumed = _run(script, lt.base_url, str(run_dir), "trio")
    start = int(resumed[0].split()[-1])
    assert 1 <= start <= 7, resumed[0]  # a recorded save from before the kill
    after = _losses(resumed)
    assert sorted(after) == list(range(start + 1, 13))
    assert {s: after[s] for s in range(8, 13)} == {s: reference[s] for s in range(8, 13)}
