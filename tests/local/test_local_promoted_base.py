"""What the Fireworks cookbook's SFT-then-RL path needs from the local trainer, over real HTTP:
a promoted full-parameter model is a base model (new jobs and training clients of its name
start from its weights, and its record carries the ``baseModelDetails`` the SDK's
``model_is_moe`` reads), a LoRA promotion is not, and a deployment of a model served with its
tokenizer directory stops at a special token named by its text (``stop=["<|im_end|>"]``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import ServiceSession, TrainerJobConfig, TrainerJobs
from firetitan_async.errors import APIStatusError
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

FW_QWEN = "accounts/fireworks/models/qwen3-8b"
TOKENS = list(b"What is 2 + 3? \\boxed{5}")


def _datum() -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(TOKENS[1:], np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(TOKENS) - 1, np.float32)),
        },
    )


async def _logprobs(client: Any) -> np.ndarray:
    out = await client.forward([_datum()], "cross_entropy")
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy(), np.float32)


async def _train_and_promote(
    lt: LocalTrainer, jobs: TrainerJobs, *, lora_rank: int, model_id: str
) -> tuple[Mapping[str, Any], np.ndarray]:
    """Train a job's model away from the base, save a sampler snapshot, promote it."""
    endpoint = await jobs.create_and_wait(
        TrainerJobConfig(base_model=FW_QWEN, lora_rank=lora_rank),
        poll_interval_s=0.02, timeout_s=10,
    )
    async with ServiceSession(endpoint.base_url) as session:
        client = await session.create_training_client(FW_QWEN, lora_rank=lora_rank)
        for _ in range(4):
            await client.forward_backward([_datum()], "cross_entropy")
            await client.optim_step(types.AdamParams(learning_rate=0.05))
        trained = await _logprobs(client)
        await client.save_weights_for_sampler("final")
    row = [r for r in await jobs.list_checkpoints(endpoint.job_id) if r.promotable][-1]
    promoted = await jobs.promote_checkpoint(
        name=row.name, output_model_id=model_id, base_model=FW_QWEN, poll_interval_s=0.01
    )
    return promoted.raw, trained


async def test_a_promoted_full_model_is_a_base_model_with_its_weights() -> None:
    async with LocalTrainer(seed=0) as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        record, trained = await _train_and_promote(lt, jobs, lora_rank=0, model_id="sft-1")
        name = f"accounts/{lt.account_id}/models/sft-1"
        assert record["kind"] == "HF_BASE_MODEL"
        async with httpx.AsyncClient() as http:
            got = (await http.get(f"{lt.control_plane_url}/v1/{name}")).json()
        assert got["name"] == name and got["baseModel"] == FW_QWEN
        assert got["baseModelDetails"]["moe"] is False and got["contextLength"] == 4096

        endpoint = await jobs.create_and_wait(
            TrainerJobConfig(base_model=name), poll_interval_s=0.02, timeout_s=10
        )
        assert (await jobs.get(endpoint.job_id)).raw["trainingConfig"]["baseModel"] == name
        async with ServiceSession(endpoint.base_url) as session:
            promoted_lp = await _logprobs(await session.create_training_client(name, lora_rank=0))
        async with ServiceSession(lt.base_url, dialect="tinker") as session:  # no job
            lora_lp = await _logprobs(await session.create_training_client(name, lora_rank=4))
            fresh_lp = await _logprobs(await session.create_training_client(FW_QWEN, lora_rank=0))
            sampler = await session.create_sampling_client(base_model=name)
            prompt = types.ModelInput.from_ints(TOKENS[:-1])
            scored = await sampler.compute_logprobs(prompt)
        # The promoted weights, not the seeded initial ones (the SFT gain is kept).
        np.testing.assert_allclose(promoted_lp, trained, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(lora_lp, trained, rtol=1e-5, atol=1e-5)
        assert promoted_lp.sum() > fresh_lp.sum() + 5.0
        np.testing.assert_allclose(
            np.asarray(scored[1:], np.float32), trained[:-1], rtol=1e-4, atol=1e-4
        )


async def test_a_lora_promotion_is_not_a_base_model() -> None:
    async with LocalTrainer(seed=0) as lt, TrainerJobs(base_url=lt.control_plane_url) as jobs:
        record, _ = await _train_and_promote(lt, jobs, lora_rank=4, model_id="adapter-1")
        assert record["kind"] == "HF_PEFT_ADDON" and "baseModelDetails" not in record
        with pytest.raises(APIStatusError) as info:
            await jobs.create(
                TrainerJobConfig(base_model=f"accounts/{lt.account_id}/models/adapter-1")
            )
        assert info.value.status_code == 400 and "is not served" in str(info.value)


def _chat_tokenizer(directory: Path) -> Path:
    """A tokenizer.json whose ids are the bytes, with ``<|im_end|>`` a special token (249)."""
    directory.mkdir()
    vocab = {f"<0x{b:02X}>": b for b in range(256) if b != 249}
    added = [{"id": 249, "content": "<|im_end|>", "special": True},
             {"id": 256, "content": "<|endoftext|>", "special": True}]
    (directory / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []},
                    "added_tokens": added})
    )
    return directory


async def test_a_deployment_stops_at_a_special_token_named_by_its_text(tmp_path: Path) -> None:
    tok = _chat_tokenizer(tmp_path / "tok")
    models = [f"{FW_QWEN},tokenizer={tok}", "Qwen/Qwen3-8B"]
    async with LocalTrainer(seed=0, models=models) as lt, httpx.AsyncClient(timeout=30) as http:
        root = f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/deployments"
        for dep, base in (("chat", FW_QWEN), ("plain", "Qwen/Qwen3-8B")):
            r = await http.post(root, params={"deploymentId": dep},
                                json={"baseModel": base, "minReplicaCount": 1,
                                      "maxReplicaCount": 1})
            assert r.status_code == 200, r.text

        async def complete(dep: str, stop: list[str] | None) -> list[dict[str, Any]]:
            body: dict[str, Any] = {
                "model": f"accounts/{lt.account_id}/deployments/{dep}", "prompt": TOKENS[:8],
                "n": 24, "max_tokens": 96, "temperature": 1.5, "seed": 7,
            }
            if stop is not None:
                body["stop"] = stop
            r = await http.post(f"{lt.control_plane_url}/inference/v1/completions", json=body)
            assert r.status_code == 200, r.text
            choices: list[dict[str, Any]] = r.json()["choices"]
            return choices

        def ids(choices: list[dict[str, Any]]) -> list[list[int]]:
            return [c["raw_output"]["completion_token_ids"] for c in choices]

        def mid_hits(seqs: list[list[int]]) -> int:
            return sum(249 in seq[:-1] for seq in seqs)

        stopped = await complete("chat", ["<|im_end|>"])
        # Without the stop (or on a model served without its tokenizer, where the stop is the
        # text's UTF-8 bytes), the special token is drawn mid-completion.
        assert mid_hits(ids(await complete("chat", None))) >= 1
        assert mid_hits(ids(await complete("plain", ["<|im_end|>"]))) >= 1
        assert mid_hits(ids(stopped)) == 0
        ended = [c for c in stopped if c["raw_output"]["completion_token_ids"][-1:] == [249]]
        assert ended and all(c["finish_reason"] == "stop" for c in ended)
