"""Conformance, control plane: the UNMODIFIED Fireworks SDK (1.2.30, sync) drives trainer jobs
on the local trainer: account resolution, create (client-chosen id, 409 adoption), the wait
for readiness through a warm-up (healthz through the trainer gateway), training through the
gateway, ``save_state``, a SECOND job resuming from the first one's state
(``load_state_with_optimizer(resolve_checkpoint_path(name, source_job_id=first))``) and
reproducing its next-step loss exactly, control-plane checkpoint listing and promotion,
training shapes, resume_and_wait and reconnect_and_wait on failed jobs, delete (a tombstone is
left), and the tombstone refusing its id.

Every SDK call must succeed as the SDK sees it: its log warnings are captured and must be
empty (the SDK hides some failures behind a warning, e.g. a 404 on delete).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from fireworks.training import sdk
from fireworks.training.sdk import FiretitanServiceClient, TrainerJobConfig, TrainerJobManager

from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME

pytestmark = pytest.mark.conformance

KEY = "fw-conformance-key-0123456789"
WARMUP_S = 0.6
POLL_S = 0.05
TEXTS = [b"hello gateway, hello job", b"the second job resumes", b"bytes in, bytes out!"]
ADAM = sdk.AdamParams(learning_rate=1e-2)


def _datum(text: bytes) -> sdk.Datum:
    tokens = list(text)
    return sdk.Datum(
        model_input=sdk.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": sdk.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
            "weights": sdk.TensorData.from_numpy(np.ones(len(tokens) - 1, np.float32)),
        },
    )


BATCH = [_datum(t) for t in TEXTS]


def _step(client: sdk.FiretitanTrainingClient) -> float:
    """One forward_backward + optim_step, pipelined; the loss of the forward_backward."""
    fb = client.forward_backward(BATCH, "cross_entropy")
    step = client.optim_step(ADAM)
    loss = float(fb.result(timeout=30).metrics["loss:sum"])
    step.result(timeout=30)
    return loss


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTrainer]:
    for var in ("FIREWORKS_TRAINER_GATEWAY_URL", "FIREWORKS_CLIENT_SOURCE", "FIREWORKS_SESSION_ID"):
        monkeypatch.delenv(var, raising=False)
    with LocalTrainer(api_key=KEY, warmup_s=WARMUP_S, seed=5) as lt:
        yield lt


def _sdk_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("fireworks") and r.levelno >= logging.WARNING
    ]


def _fail(lt: LocalTrainer, job_id: str, message: str) -> None:
    r = httpx.post(
        f"{lt.base_url}/_local/jobs/{job_id}/fail",
        json={"message": message},
        headers={"X-Api-Key": KEY},
    )
    assert r.status_code == 200, r.text


def test_fireworks_sdk_drives_the_control_plane(
    trainer: LocalTrainer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    lt = trainer
    mgr = TrainerJobManager(api_key=KEY, base_url=lt.control_plane_url)
    assert mgr.account_id == lt.account_id

    # create -> wait_for_ready through the warm-up.
    started = time.monotonic()
    config = TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0, display_name="conformance")
    created = mgr.create(config)
    assert re.fullmatch(r"training-api-service-[0-9a-f]{8}", created.job_id)
    assert created.job_name == f"accounts/{lt.account_id}/rlorTrainerJobs/{created.job_id}"
    endpoint = mgr.wait_for_ready(created.job_id, poll_interval_s=POLL_S, timeout_s=20)
    assert time.monotonic() - started >= WARMUP_S
    gateway = f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/{lt.account_id}"
    assert endpoint.base_url == f"{gateway}/{created.job_id}"
    stats = lt.stats()["requests"]
    assert stats["jobs.get"] >= 3 and stats["healthz"] >= 1
    # A second create with the same id adopts the job (the SDK's 409 path).
    adopted = mgr.create(TrainerJobConfig(base_model=MODEL_NAME, requested_job_id=created.job_id))
    assert adopted.job_id == created.job_id

    # Training through the trainer gateway: steps, a sampler snapshot, the state.
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=KEY)
    try:
        client = service.create_training_client(MODEL_NAME, lora_rank=0, seed=11)
        losses = [_step(client) for _ in range(3)]
        assert losses[-1] < losses[0]
        snapshot = client.save_weights_for_sampler_ext("conformance-snap")
        assert snapshot.snapshot_name.startswith("conformance-snap-")
        state = client.save_state("step-1").result(timeout=30)
        assert state.path.endswith("/step-1")
        next_losses = [_step(client) for _ in range(2)]
    finally:
        service.close()

    # A second job resumes from the first job's state and reproduces its next steps exactly.
    second = mgr.create(TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0))
    second_endpoint = mgr.wait_for_ready(second.job_id, poll_interval_s=POLL_S, timeout_s=20)
    assert second_endpoint.base_url.endswith(f"/{second.job_id}")
    service = FiretitanServiceClient(base_url=second_endpoint.base_url, api_key=KEY)
    try:
        resumed_client = service.create_training_client(MODEL_NAME, lora_rank=0, seed=11)
        path = resumed_client.resolve_checkpoint_path("step-1", source_job_id=created.job_id)
        assert path == f"cross_job://{created.job_id}/step-1"
        resumed_client.load_state_with_optimizer(path).result(timeout=30)
        assert [_step(resumed_client) for _ in range(2)] == next_losses
    finally:
        service.close()

    # Control-plane checkpoints and promotion.
    rows = mgr.list_checkpoints(created.job_id, page_size=1)
    names = [row["name"].rsplit("/", 1)[1] for row in rows]
    assert names == [snapshot.snapshot_name, "step-1"]
    assert [row["promotable"] for row in rows] == [True, False]
    model = mgr.promote_checkpoint(
        name=rows[0]["name"], output_model_id="conformance-model", base_model=MODEL_NAME
    )
    assert model["name"] == f"accounts/{lt.account_id}/models/conformance-model"
    assert model["state"] == "READY" and "@type" not in model

    # Training shapes.
    shape = f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-lora"
    profile = mgr.resolve_training_profile(shape)
    assert profile.training_shape == shape and profile.supports_lora
    assert profile.max_supported_context_length == 4096
    shaped = mgr.create(
        TrainerJobConfig(base_model=MODEL_NAME, lora_rank=4, training_shape_ref=shape)
    )
    assert mgr.get(shaped.job_id)["trainingConfig"]["maxContextLength"] == 4096

    # resume_and_wait and reconnect_and_wait on failed jobs.
    _fail(lt, created.job_id, "preempted by the test")
    with pytest.raises(RuntimeError, match="preempted by the test"):
        mgr.wait_for_ready(created.job_id, poll_interval_s=POLL_S, timeout_s=5)
    resumed = mgr.resume_and_wait(created.job_id, poll_interval_s=POLL_S, timeout_s=20)
    assert resumed.base_url == endpoint.base_url
    _fail(lt, created.job_id, "preempted again")
    reconnected = mgr.reconnect_and_wait(created.job_id, poll_interval_s=POLL_S, timeout_s=20)
    assert reconnected.base_url == endpoint.base_url
    assert lt.stats()["requests"]["jobs.resume"] == 2

    # delete leaves a tombstone whose id cannot be reused; checkpoints stay listed.
    for job_id in (created.job_id, shaped.job_id, second.job_id):
        mgr.delete(job_id)
    assert mgr.try_get(created.job_id)["state"] == "JOB_STATE_DELETED"
    assert len(mgr.list_checkpoints(created.job_id)) == 2
    with pytest.raises(RuntimeError, match="cannot be recreated"):
        mgr.create(TrainerJobConfig(base_model=MODEL_NAME, requested_job_id=created.job_id))
    assert mgr.try_get("never-created") is None
    mgr.close()

    assert _sdk_warnings(caplog) == []
