"""tinker 0.38 calls, served by the local trainer (issue 25 item 6), asyncio and trio.

What each call sends is held to the SDK's bytes by ``tests/conformance/test_wire_fidelity.py``;
here: that each does what it says (a client made from a checkpoint resumes it, metadata and
TTLs land on the checkpoint, a deleted checkpoint is gone, top-k logprobs are the model's), and
that the fireworks dialect refuses what it cannot express before anything is sent.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import APIStatusError, InvalidInput, ServiceSession, TrainingClient
from firetitan_async.local import LocalTrainer, sft_datum
from firetitan_async.local._recorder import Recorder

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=5e-2)
BATCH = [sft_datum("resume where it stopped"), sft_datum("from the saved state")]
PROMPT = types.ModelInput.from_ints(list(b"top-k, please"))


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=5) as lt:
        yield lt


async def _loss(client: TrainingClient) -> float:
    return float((await client.forward(BATCH, "cross_entropy")).metrics["loss:sum"])


async def _step(client: TrainingClient) -> float:
    out = client.forward_backward(BATCH, "cross_entropy")
    await client.optim_step(ADAM)
    return float((await out).metrics["loss:sum"])


async def test_a_client_from_state_resumes_the_checkpoint(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        original = await session.create_training_client(MODEL, lora_rank=4)
        await _step(original)
        saved = await original.save_state("resume-me")
        with_opt = await session.create_training_client_from_state_with_optimizer(
            saved, user_metadata={"from": "resume-me"}
        )
        weights_only = await session.create_training_client_from_state(saved.path)
        assert (with_opt.base_model, with_opt.lora_rank) == (MODEL, 4)
        assert weights_only.lora_rank == 4 and weights_only.model_id != with_opt.model_id
        assert await _loss(with_opt) == await _loss(weights_only) == await _loss(original)
        # One more step: the Adam moments came back with the optimizer, not without it.
        assert await _step(with_opt) == await _step(original)
        assert await _loss(with_opt) == await _loss(original)
        await _step(weights_only)
        assert await _loss(weights_only) != await _loss(original)
        listing = await session.list_checkpoints(original.model_id)
        assert {c.checkpoint_id for c in listing.checkpoints} == {"weights/resume-me"}


async def test_metadata_ttl_listing_and_delete(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        before = datetime.now(UTC)
        saved = await client.save_state("kept", ttl_seconds=7200, user_metadata={"stage": "sft"})
        other = await client.save_state("dropped")

        def row(listing: types.CheckpointsListResponse, path: str) -> types.Checkpoint:
            return next(c for c in listing.checkpoints if c.tinker_path == path)

        mine = await session.list_checkpoints(client.model_id)
        kept = row(mine, saved.path)
        assert kept.user_metadata == {"stage": "sft"}
        assert row(mine, other.path).user_metadata is None
        assert kept.expires_at is not None
        assert timedelta(seconds=7100) < kept.expires_at - before < timedelta(seconds=7300)

        await session.set_checkpoint_ttl_from_tinker_path(saved.path, 30 * 86400)  # extend
        expires = row(await session.list_checkpoints(client.model_id), saved.path).expires_at
        assert expires is not None and expires - before > timedelta(days=29)
        await session.set_checkpoint_ttl_from_tinker_path(saved.path, None)  # never expires
        assert row(await session.list_checkpoints(client.model_id), saved.path).expires_at is None

        everything = await session.list_user_checkpoints(limit=1000)
        assert {saved.path, other.path} <= {c.tinker_path for c in everything.checkpoints}
        assert everything.cursor is not None
        assert everything.cursor.total_count == len(everything.checkpoints)
        second = await session.list_user_checkpoints(limit=1, offset=1)
        assert [c.tinker_path for c in second.checkpoints] == [
            everything.checkpoints[1].tinker_path
        ]

        await session.delete_checkpoint_from_tinker_path(other.path)
        left = await session.list_checkpoints(client.model_id)
        assert {c.tinker_path for c in left.checkpoints} == {saved.path}
        with pytest.raises(APIStatusError) as gone:
            await client.load_state(other.path)
        assert gone.value.status_code == 404
        with pytest.raises(APIStatusError) as again:
            await session.delete_checkpoint_from_tinker_path(other.path)
        assert again.value.status_code == 404


async def test_bad_arguments_raise_before_sending(trainer: LocalTrainer) -> None:
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, lora_rank=2)
            sampler = await session.create_sampling_client(base_model=MODEL)
            sent = len(rec.records)
            with pytest.raises(InvalidInput, match="user_metadata"):
                client.save_state("x", user_metadata={"step": 3})  # type: ignore[dict-item]
            with pytest.raises(InvalidInput, match="ttl_seconds"):
                await session.set_checkpoint_ttl_from_tinker_path("tinker://r/weights/a", 0)
            with pytest.raises(InvalidInput, match="tinker_path"):
                await session.delete_checkpoint_from_tinker_path("weights/a")
            with pytest.raises(InvalidInput, match="path"):
                await session.create_training_client_from_state("not-a-path")
            with pytest.raises(InvalidInput, match="limit"):
                await session.list_user_checkpoints(limit=0)
            one = types.SamplingParams(max_tokens=1)
            with pytest.raises(InvalidInput, match="topk_prompt_logprobs"):
                sampler.sample(PROMPT, 1, one, topk_prompt_logprobs=-1)
            with pytest.raises(InvalidInput, match="topk_sample_logprobs"):
                sampler.sample(PROMPT, 1, one, topk_sample_logprobs=True)
            assert len(rec.records) == sent


async def test_the_fireworks_dialect_refuses_what_it_cannot_express(trainer: LocalTrainer) -> None:
    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect="fireworks") as session:
            client = await session.create_training_client(MODEL, lora_rank=2)
            saved = await client.save_state("fw")
            sent = len(rec.records)
            for create in (
                session.create_training_client_from_state,
                session.create_training_client_from_state_with_optimizer,
            ):
                with pytest.raises(InvalidInput, match="tinker dialect") as refused:
                    await create(saved)
                assert "load_state_with_optimizer" in str(refused.value)
            with pytest.raises(InvalidInput, match=r"user_metadata.*tinker dialect"):
                client.save_state("fw-meta", user_metadata={"a": "b"})
            with pytest.raises(InvalidInput, match="ttl_seconds"):
                client.save_state("fw-ttl", ttl_seconds=3600)
            with pytest.raises(InvalidInput, match="TTL"):
                await session.set_checkpoint_ttl_from_tinker_path(saved.path, None)
            with pytest.raises(InvalidInput, match="cannot delete"):
                await session.delete_checkpoint_from_tinker_path(saved.path)
            assert len(rec.records) == sent


async def test_topk_logprobs_are_the_models(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        sampler = await session.create_sampling_client(base_model=MODEL)
        vocab = 257  # the byte model's: 256 bytes and EOS
        full = await sampler.sample(
            PROMPT,
            1,
            types.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            topk_prompt_logprobs=vocab,
        )
        rows = full.topk_prompt_logprobs
        assert rows is not None and len(rows) == len(PROMPT.to_ints())
        assert rows[0] is None  # no context before the first token
        prompt_lps = full.prompt_logprobs
        assert prompt_lps is not None
        for t, row in enumerate(rows[1:], start=1):
            assert row is not None and len(row) == vocab
            lps = [lp for _, lp in row]
            assert lps == sorted(lps, reverse=True)
            assert math.isclose(float(np.logaddexp.reduce(lps)), 0.0, abs_tol=1e-4)
            by_token = dict(row)
            assert by_token[PROMPT.to_ints()[t]] == pytest.approx(prompt_lps[t], abs=1e-5)

        greedy = await sampler.sample(
            PROMPT,
            2,
            types.SamplingParams(max_tokens=6, temperature=0.0),
            topk_sample_logprobs=3,
            topk_prompt_logprobs=2,
        )
        top_prompt = greedy.topk_prompt_logprobs
        assert top_prompt is not None and top_prompt[1] == rows[1][:2]  # type: ignore[index]
        for seq in greedy.sequences:
            top = seq.topk_logprobs
            assert top is not None and len(top) == len(seq.tokens)
            assert seq.logprobs is not None
            for token, lp, row in zip(seq.tokens, seq.logprobs, top, strict=True):
                assert row is not None and len(row) == 3
                assert row[0][0] == token and row[0][1] == pytest.approx(lp, abs=1e-6)
        # At a temperature, the rows are the distribution the sampled token was drawn from.
        warm = await sampler.sample(
            PROMPT, 1, types.SamplingParams(max_tokens=4, temperature=0.7, seed=3),
            topk_sample_logprobs=vocab,
        )
        seq = warm.sequences[0]
        assert seq.topk_logprobs is not None and seq.logprobs is not None
        for token, lp, row in zip(seq.tokens, seq.logprobs, seq.topk_logprobs, strict=True):
            assert row is not None
            assert dict(row)[token] == pytest.approx(lp, abs=1e-5)
        plain = await sampler.sample(PROMPT, 1, types.SamplingParams(max_tokens=2))
        assert plain.topk_prompt_logprobs is None and plain.sequences[0].topk_logprobs is None


async def test_external_weights_download_through_signed_urls(make_trainer: Any) -> None:
    guarded = make_trainer(seed=5, api_key="tml-the-key")
    async with ServiceSession(guarded.base_url, api_key="tml-the-key") as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        with pytest.raises(InvalidInput, match="external_weights"):
            await session.get_external_weights_urls("tinker://r/weights/a")
        export = await client.save_weights_external("export", ttl_seconds=3600)
        assert export.path == f"tinker://{client.model_id}/external_weights/export"
        listing = await session.list_checkpoints(client.model_id)
        assert [(c.checkpoint_id, c.checkpoint_type) for c in listing.checkpoints] == [
            ("external_weights/export", "external")
        ]
        signed = await session.get_external_weights_urls(export.path)
        assert signed.expires > datetime.now(UTC) + timedelta(minutes=50)
        (file_name, url), = signed.urls.items()
        assert "tml-the-key" not in url
        async with httpx.AsyncClient() as http:  # no API key: the URL is the credential
            got = await http.get(url)
            assert got.status_code == 200
            with np.load(io.BytesIO(got.content)) as arrays:
                assert arrays.files and all(arrays[k].dtype == np.float32 for k in arrays.files)
            forged = url.replace("signature=", "signature=0")
            assert (await http.get(forged)).status_code == 403
            other = url.replace(f"/{file_name}?", "/other.bin?")
            assert (await http.get(other)).status_code == 403
        await session.delete_checkpoint_from_tinker_path(export.path)
        with pytest.raises(APIStatusError) as gone:
            await session.get_external_weights_urls(export.path)
        assert gone.value.status_code == 404
    async with ServiceSession(guarded.base_url, api_key="tml-the-key", dialect="fireworks") as fw:
        fw_client = await fw.create_training_client(MODEL, lora_rank=2)
        with pytest.raises(InvalidInput, match="save_weights_external"):
            fw_client.save_weights_external("export")


# -- create_custom_loss ------------------------------------------------------------------------

def _pg_datum(text: bytes, advantage: float) -> types.Datum:
    n = len(text) - 1
    inputs: dict[str, Any] = {"target_tokens": list(text[1:]), "advantages": [advantage] * n}
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(text[:-1])), loss_fn_inputs=inputs
    )


PG_BATCH = [_pg_datum(b"a traced loss!", 0.5), _pg_datum(b"runs here.", -1.5)]


def pg(logprobs: Any, advantages: Any) -> tuple[Any, dict[str, Any]]:
    loss = -(logprobs.exp() * advantages).mean()
    return loss, {"custom/pg:mean": loss, "custom/adv:sum": advantages.sum()}


def pg_numpy(
    data: list[types.Datum], logprobs: list[np.ndarray]
) -> tuple[float, list[np.ndarray]]:
    """``pg`` by hand, in the numpy form ``forward_backward_custom`` also takes."""
    loss, grads = 0.0, []
    for datum, lp in zip(data, logprobs, strict=True):
        adv = np.asarray(datum.loss_fn_inputs["advantages"].data)
        loss += float(-(np.exp(lp) * adv).mean())
        grads.append(-np.exp(lp) * adv / lp.size)
    return loss, grads


async def test_a_created_custom_loss_trains_like_the_same_loss_by_hand(
    trainer: LocalTrainer,
) -> None:
    pytest.importorskip("torch")  # the torch extra
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        handle = await session.create_custom_loss(pg, {"logprobs": 1, "advantages": 1})
        assert handle.name == "pg" and handle.input_names == ("advantages",)
        traced = await session.create_training_client(MODEL, lora_rank=4, seed=9)
        before = await _loss(traced)
        scored = [
            types.Datum(
                model_input=d.model_input,
                loss_fn_inputs={
                    "target_tokens": d.loss_fn_inputs["target_tokens"],
                    "weights": types.TensorData(
                        data=[0.0] * d.model_input.length,
                        dtype="float32",
                        shape=[d.model_input.length],
                    ),
                },
            )
            for d in PG_BATCH
        ]
        forward = await traced.forward(scored, "cross_entropy")
        logprobs = [o["logprobs"].to_numpy().astype(np.float64) for o in forward.loss_fn_outputs]
        out = await traced.forward_backward_custom(PG_BATCH, handle)
        expected, _ = pg_numpy(PG_BATCH, logprobs)
        assert out.metrics["loss:sum"] == pytest.approx(expected, rel=1e-5)
        assert out.metrics["custom/pg:mean"] == pytest.approx(expected / 2, rel=1e-5)
        assert out.metrics["custom/adv:sum"] == pytest.approx(0.5 * 13 - 1.5 * 9)
        assert "surrogate_loss:sum" in out.metrics
        await traced.optim_step(ADAM)
        after = await _loss(traced)
    # The same loss by hand (numpy gradients) from the same start moves the weights the same way.
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        twin = await session.create_training_client(MODEL, lora_rank=4, seed=9)
        assert await _loss(twin) == before
        await twin.forward_backward_custom(PG_BATCH, pg_numpy)
        await twin.optim_step(ADAM)
        assert await _loss(twin) == pytest.approx(after, rel=1e-6)
    assert after != before


async def test_create_custom_loss_refuses_what_the_sdk_refuses(trainer: LocalTrainer) -> None:
    pytest.importorskip("torch")  # the torch extra
    def branches(logprobs: Any) -> tuple[Any, dict[str, Any]]:
        loss = logprobs.sum()
        return (loss if loss > 0 else -loss), {}

    def bad_metric(logprobs: Any) -> tuple[Any, dict[str, Any]]:
        loss = logprobs.sum()
        return loss, {"loss": loss}

    with Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, lora_rank=2)
            handle = await session.create_custom_loss(pg, {"logprobs": 1, "advantages": 1})
            sent = len(rec.records)
            with pytest.raises(InvalidInput, match=r"fn: .*cannot branch on tensor values"):
                await session.create_custom_loss(branches, {"logprobs": 1})
            with pytest.raises(InvalidInput, match=r"fn: .*custom/<name>:sum"):
                await session.create_custom_loss(bad_metric, {"logprobs": 1})
            with pytest.raises(InvalidInput, match="input_ranks"):
                await session.create_custom_loss(pg, {"logprobs": 1})
            with pytest.raises(InvalidInput, match="input_ranks"):
                await session.create_custom_loss(pg, {"logprobs": 1, "advantages": 3})
            with pytest.raises(InvalidInput, match="already created 'pg'"):
                await session.create_custom_loss(pg, {"logprobs": 1, "advantages": 1})
            with pytest.raises(InvalidInput, match=r"data: .*advantages"):
                client.forward_backward_custom(BATCH, handle)
            assert len(rec.records) == sent
        async with ServiceSession(trainer.base_url, dialect="tinker") as other:
            stranger = await other.create_training_client(MODEL, lora_rank=2)
            with pytest.raises(InvalidInput, match="another session"):
                stranger.forward_backward_custom(PG_BATCH, handle)
