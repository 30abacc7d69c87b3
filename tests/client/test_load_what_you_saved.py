"""A checkpoint you saved loads back as you got it, in both dialects (asyncio and trio).

``save_state`` returns a ``SaveWeightsResponse``; ``load_state`` and
``load_state_with_optimizer`` take it, or its ``path``. In the fireworks dialect the returned
``tinker://<run>/weights/<name>`` goes on the wire as the logical ``<name>`` (what the
Fireworks SDK sends: ``protocol/fireworks-sdk.md`` §3.5), also when the trainer stored the
state under a name of its own (``step-N``, like a dedicated Fireworks trainer).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from tinker import types

from firetitan_async import InvalidInput, ServiceSession, TrainingClient
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum
from firetitan_async.local._recorder import Recorder
from firetitan_async.wire.fireworks import load_ref

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=5e-2)
BATCH = [sft_datum("a save that loads back"), sft_datum("as you got it")]
DIALECTS = ["fireworks", "tinker"]


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=11) as lt:
        yield lt


@pytest.fixture(scope="module")
def step_trainer() -> Iterator[LocalTrainer]:
    """Stores every state as ``step-N`` whatever it was asked to name it."""
    with LocalTrainer(seed=11, checkpoint_step_names=True) as lt:
        yield lt


async def _loss(client: TrainingClient) -> float:
    return float((await client.forward(BATCH, "cross_entropy")).metrics["loss:sum"])


async def _step(client: TrainingClient) -> None:
    client.forward_backward(BATCH, "cross_entropy")
    await client.optim_step(ADAM)


def _loads(rec: Recorder) -> list[dict[str, Any]]:
    return [ex.body for ex in rec.records if ex.endpoint == "load_weights"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_save_then_load_the_result_or_its_path(
    trainer: LocalTrainer, dialect: Any
) -> None:
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect=dialect) as session:
            client = await session.create_training_client(MODEL)
            await _step(client)
            saved = await client.save_state("ckpt-b")
            at_save = await _loss(client)
            after_steps: list[float] = []
            for given in (saved, saved.path):
                await _step(client)
                assert await _loss(client) != at_save  # it moved; the load must move it back
                await client.load_state_with_optimizer(given)
                assert await _loss(client) == at_save
                await _step(client)  # the optimizer state came back too: the same next step
                after_steps.append(await _loss(client))
            await _step(client)
            await client.load_state(saved)  # weights only
            assert await _loss(client) == at_save
    assert after_steps[0] == after_steps[1]
    sent = [body["path"] for body in _loads(rec)]
    if dialect == "fireworks":
        assert saved.path.startswith("tinker://") and saved.path.endswith("/weights/ckpt-b")
        assert sent == ["ckpt-b"] * 3  # the logical name, as the Fireworks SDK sends it
    else:
        assert sent == [saved.path] * 3
    assert [body["optimizer"] for body in _loads(rec)] == [True, True, False]


async def test_fireworks_sends_the_name_the_trainer_stored(step_trainer: LocalTrainer) -> None:
    with Recorder(step_trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect="fireworks") as session:
            client = await session.create_training_client(MODEL)
            await _step(client)
            await _step(client)
            saved = await client.save_state("asked-for")
            at_save = await _loss(client)
            await _step(client)
            await client.load_state_with_optimizer(saved)
            assert await _loss(client) == at_save
    assert saved.path.endswith("/weights/step-2")
    assert [body["path"] for body in _loads(rec)] == ["step-2"]


async def test_a_new_session_resumes_from_what_the_old_one_saved(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, dialect="fireworks") as first:
        client = await first.create_training_client(MODEL)
        await _step(client)
        saved = await client.save_state("resume-me")
        at_save = await _loss(client)
    async with ServiceSession(trainer.base_url, dialect="fireworks") as second:
        resumed = await second.create_training_client(MODEL)
        assert resumed.model_id != client.model_id
        await resumed.load_state_with_optimizer(saved)
        assert await _loss(resumed) == at_save


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_what_cannot_be_loaded_is_refused_before_sending(
    trainer: LocalTrainer, dialect: Any
) -> None:
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect=dialect) as session:
            client = await session.create_training_client(MODEL)
            snapshot = await client.save_weights_for_sampler("snap")
            before = len(rec.records)
            with pytest.raises(InvalidInput, match="path"):
                client.load_state(42)  # type: ignore[arg-type]
            if dialect == "fireworks":
                with pytest.raises(InvalidInput, match="sampler_weights path"):
                    client.load_state(snapshot.path)
                with pytest.raises(InvalidInput, match="DNS label"):
                    client.load_state_with_optimizer("tinker://run/weights/Not_A_Label")
            else:
                with pytest.raises(InvalidInput, match="tinker://"):
                    client.load_state("step-4")
            assert len(rec.records) == before


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("tinker://s:train:0/weights/step-4", "step-4"),
        (types.SaveWeightsResponse(path="tinker://r/weights/ckpt-a"), "ckpt-a"),
        ("step-4", "step-4"),
        ("cross_job://old-job/step-4", "cross_job://old-job/step-4"),
        ("acct/run-0123456789abcdef0123456789abcdef/step-4",
         "acct/run-0123456789abcdef0123456789abcdef/step-4"),
        ("tinker://r/sampler_weights/snap", None),
        ("tinker://r/weights/a_b", None),
        ("tinker://r/weights", None),
        ("gs://bucket/x", None),
    ],
)
def test_fireworks_load_refs(given: Any, sent: str | None) -> None:
    if sent is None:
        with pytest.raises(InvalidInput):
            load_ref(given)
    else:
        assert load_ref(given) == sent
