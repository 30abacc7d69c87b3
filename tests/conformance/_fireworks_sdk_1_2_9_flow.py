"""The Fireworks SDK 1.2.9 side of ``test_conformance_fireworks_sdk_1_2_9.py`` (run by that test
with a separate venv's python: 1.2.9 cannot share a venv with 1.2.30).

The managed flows of the fw-ai cookbook, unmodified SDK calls only: ``model_is_moe`` (the RL
recipes' router-replay check); a full-parameter policy with a separate frozen reference trainer
(``reference_required``, no training shape: the job must carry ``maxContextLength``), three
SFT steps, and the reference's ``cross_entropy`` forward with ``target_tokens`` and
``loss_mask``; a LoRA policy whose reference shares its trainer (a ``base_only`` model); the
full-parameter policy's sampler snapshot promoted and served as the base model of a new
managed trainer (the cookbook's SFT-then-RL path), whose model must hold the trained weights.
Prints one JSON object of what it observed; the test asserts on it.

Usage: ``python _fireworks_sdk_1_2_9_flow.py BASE_MODEL`` with ``FIREWORKS_API_KEY`` and
``FIREWORKS_BASE_URL`` set.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import tinker
from fireworks import __version__ as sdk_version
from fireworks.training.sdk import FiretitanServiceClient, FireworksClient

TEXTS = [b"the reference stays frozen", b"bytes in, bytes out", b"one more row of text"]


def _datum(text: bytes, mask_name: str) -> tinker.Datum:
    tokens = list(text)
    n = len(tokens) - 1
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": tinker.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
            mask_name: tinker.TensorData(data=[1.0] * n, dtype="float32", shape=[n]),
        },
    )


def _logprobs(out: Any) -> list[list[float]]:
    return [list(o["logprobs"].data) for o in out.loss_fn_outputs]


def _flow(base_model: str, lora_rank: int) -> dict[str, Any]:
    service = FiretitanServiceClient.from_firetitan_config(
        base_model=base_model,
        lora_rank=lora_rank,
        learning_rate=1e-2,
        reference_required=True,
        create_deployment=False,
        gradient_accumulation_steps=None,
        cleanup_trainer_on_close=True,
    )
    try:
        policy = service.create_training_client(lora_rank=lora_rank)
        reference = service.create_reference_client(lora_rank=lora_rank, policy_client=policy)
        batch = [_datum(t, "weights") for t in TEXTS]
        ref_batch = [_datum(t, "loss_mask") for t in TEXTS]
        before = _logprobs(policy.forward(batch, "cross_entropy").result())
        ref_before = _logprobs(reference.forward(ref_batch, "cross_entropy").result())
        losses = []
        for _ in range(3):
            fb = policy.forward_backward(batch, "cross_entropy").result()
            policy.optim_step(tinker.AdamParams(learning_rate=1e-2)).result()
            losses.append(float(fb.metrics["loss:sum"]))
        ref_after = _logprobs(reference.forward(ref_batch, "cross_entropy").result())
        saved = policy.save_state("conformance-1").result()
        seen: dict[str, Any] = {
            "losses": losses,
            "reference_is_base": ref_before == before,
            "reference_frozen": ref_after == ref_before,
            "saved_path": saved.path,
        }
        if lora_rank == 0:  # promote the trained weights, as the SFT recipe does at its end
            seen["trained"] = _logprobs(policy.forward(batch, "cross_entropy").result())
            snap = policy.save_weights_for_sampler_ext("promote-me", checkpoint_type="base")
            model = service.promote_checkpoint(
                service.trainer_job_id, snap.snapshot_name, "conformance-sft", base_model
            )
            seen["promoted"] = {"name": model["name"], "kind": model["kind"]}
        return seen
    finally:
        service.close()


def _from_promoted(model: str) -> list[list[float]]:
    """A new managed trainer whose base model is the promoted one: its model's logprobs."""
    service = FiretitanServiceClient.from_firetitan_config(
        base_model=model,
        lora_rank=0,
        learning_rate=1e-2,
        create_deployment=False,
        gradient_accumulation_steps=None,
        cleanup_trainer_on_close=True,
    )
    try:
        policy = service.create_training_client(lora_rank=0)
        return _logprobs(policy.forward([_datum(t, "weights") for t in TEXTS],
                                        "cross_entropy").result())
    finally:
        service.close()


def main() -> None:
    base_model = sys.argv[1]
    env = os.environ
    with FireworksClient(env["FIREWORKS_API_KEY"], base_url=env["FIREWORKS_BASE_URL"]) as client:
        moe = client.model_is_moe(base_model)
    report: dict[str, Any] = {
        "sdk_version": sdk_version,
        "moe": moe,
        "full": _flow(base_model, 0),
        "lora": _flow(base_model, 8),
    }
    promoted = report["full"]["promoted"]["name"]
    with FireworksClient(env["FIREWORKS_API_KEY"], base_url=env["FIREWORKS_BASE_URL"]) as client:
        report["promoted_moe"] = client.model_is_moe(promoted)
    report["from_promoted"] = _from_promoted(promoted)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
