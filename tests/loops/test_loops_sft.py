"""Pipelined SFT (sft_steps) and the checkpoint manager, against the real local trainer."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from tinker import types

from firetitan_async import ServiceSession, TrainingClient
from firetitan_async.errors import InvalidInput
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import CheckpointManager, SFTStep, TrainerCheckpoints, sft_steps

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=1e-2)
TEXTS = ["pipelined steps keep the trainer busy.", "await only what you need.", "trio too!"]


def _datum(text: str) -> types.Datum:
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


def _batches(n: int) -> list[list[types.Datum]]:
    return [[_datum(TEXTS[i % 3]), _datum(TEXTS[(i + 1) % 3])] for i in range(n)]


async def _probe(client: TrainingClient) -> list[list[float]]:
    """Per-token logprobs of the probe texts under the client's current weights."""
    out = await client.forward([_datum(t) for t in TEXTS], "cross_entropy")
    return [list(o["logprobs"].data) for o in out.loss_fn_outputs]


async def test_pipelined_sft_is_3x_faster_with_the_same_weights(anyio_backend: str) -> None:
    steps = 12
    async with LocalTrainer(seed=0, latency_s=0.05) as lt:
        async with ServiceSession(lt.base_url) as session:
            one_at_a_time = await session.create_training_client(MODEL)
            started = time.monotonic()
            losses_sequential = []
            for batch in _batches(steps):
                out = await one_at_a_time.forward_backward(batch, "cross_entropy")
                await one_at_a_time.optim_step(ADAM)
                losses_sequential.append(out.metrics["loss:sum"])
            sequential_s = time.monotonic() - started
            weights_sequential = await _probe(one_at_a_time)
        async with ServiceSession(lt.base_url) as session:
            pipelined = await session.create_training_client(MODEL)
            started = time.monotonic()
            reported: list[SFTStep] = [
                s async for s in sft_steps(pipelined, _batches(steps), adam=ADAM, depth=8)
            ]
            pipelined_s = time.monotonic() - started
            weights_pipelined = await _probe(pipelined)
    assert [s.step for s in reported] == list(range(1, steps + 1))
    assert [s.metrics["loss:sum"] for s in reported] == losses_sequential  # bit for bit
    assert weights_pipelined == weights_sequential
    assert all(s.tokens > 0 and s.tokens_per_s > 0 and s.wall_s >= 0.05 for s in reported)
    assert max(s.in_flight for s in reported) >= 4
    speedup = sequential_s / pipelined_s
    print(f"pipelined SFT speedup {speedup:.1f}x")
    assert speedup >= 3.0, (sequential_s, pipelined_s)


async def test_checkpoints_drain_roll_and_record(anyio_backend: str, tmp_path: Path) -> None:
    config = {"model": MODEL, "lr": 1e-2}
    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url) as session:
        client = await session.create_training_client(MODEL)
        async with CheckpointManager(
            TrainerCheckpoints(session, client),
            tmp_path,
            config=config,
            every_steps=4,
            keep_last=2,
        ) as ckpt:
            reported = [
                s
                async for s in sft_steps(client, _batches(10), adam=ADAM, depth=3, checkpoints=ckpt)
            ]
        # Drained before each save: the step a save follows was the last one in flight.
        assert [s.in_flight for s in reported if s.step in (4, 8, 10)] == [0, 0, 0]
        names = [c.checkpoint_id for c in await client.list_checkpoints()]
    record = json.loads((tmp_path / "checkpoints.json").read_text())["saves"]
    assert [(r["step"], r["cursor"], r["final"]) for r in record] == [
        (4, 4, False),
        (8, 8, False),
        (10, 10, True),
    ]
    assert all(r["optimizer_state"] and r["config"] == config for r in record)
    assert all(r["tokens"] > 0 for r in record)
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == [
        "ckpt-0000004",
        "ckpt-0000008",
        "ckpt-0000010-final",
    ]

    # Rolling: keep_last=1 drops the older periodic save from the record on the next save;
    # the tinker dialect deletes it on the trainer, the fireworks one cannot (retention is the
    # platform's) and keeps it listed.
    rolls: tuple[tuple[Literal["tinker", "fireworks"], list[str]], ...] = (
        ("tinker", ["ckpt-0000002"]),
        ("fireworks", ["ckpt-0000001", "ckpt-0000002"]),
    )
    for dialect, listed in rolls:
        async with (
            LocalTrainer(seed=0) as lt,
            ServiceSession(lt.base_url, dialect=dialect) as session,
        ):
            client = await session.create_training_client(MODEL)
            ckpt = CheckpointManager(
                TrainerCheckpoints(session, client),
                tmp_path / f"b-{dialect}",
                config=config,
                keep_last=1,
            )
            await ckpt.save(1, cursor=1)
            await ckpt.save(2, cursor=2)
            await ckpt.wait()
            assert [r.step for r in ckpt.records] == [2]
            names = [c.checkpoint_id.rsplit("/", 1)[-1] for c in await client.list_checkpoints()]
            assert sorted(names) == listed, dialect


async def test_resume_refuses_another_config(anyio_backend: str, tmp_path: Path) -> None:
    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url) as session:
        client = await session.create_training_client(MODEL)
        store = TrainerCheckpoints(session, client)
        async with CheckpointManager(store, tmp_path, config={"lr": 0.01, "data": "a"}) as ckpt:
            assert await ckpt.resume() is None  # a fresh run
            await ckpt.save(3, cursor=3)
        other = CheckpointManager(store, tmp_path, config={"lr": 0.02, "data": "a"})
        with pytest.raises(InvalidInput, match=r"config.*keys: lr"):
            await other.resume()
        same = CheckpointManager(store, tmp_path, config={"data": "a", "lr": 0.01})
        resumed = await same.resume()
        assert resumed is not None and resumed.step == 3 and resumed.cursor == 3
    with pytest.raises(InvalidInput, match="every_steps"):
        CheckpointManager(store, tmp_path, config={}, every_steps=0)


async def test_saves_are_due_by_steps_tokens_or_seconds(anyio_backend: str, tmp_path: Path) -> None:
    import anyio

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url) as session:
        store = TrainerCheckpoints(session, await session.create_training_client(MODEL))
        by_tokens = CheckpointManager(
            store, tmp_path / "t", config={}, every_tokens=100, prefix="t"
        )
        assert not by_tokens.due(1, tokens=99) and by_tokens.due(1, tokens=100)
        await by_tokens.save(1, cursor=1, tokens=100)
        assert not by_tokens.due(2, tokens=199) and by_tokens.due(2, tokens=200)
        by_time = CheckpointManager(store, tmp_path / "s", config={}, every_seconds=0.2, prefix="s")
        assert not by_time.due(1)
        await anyio.sleep(0.25)
        assert by_time.due(1)
        await by_time.save(1, cursor=1)
        assert not by_time.due(2)
        by_steps = CheckpointManager(store, tmp_path / "n", config={}, every_steps=5)
        assert not by_steps.due(4) and by_steps.due(5)
        await by_tokens.wait()
        await by_time.wait()
        # A fresh manager on a run directory counts from its latest save.
        assert not CheckpointManager(store, tmp_path / "t", config={}, every_tokens=100).due(
            2, tokens=150
        )
