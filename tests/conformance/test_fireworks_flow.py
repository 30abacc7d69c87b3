"""End to end: the Fireworks conformance flow through ``firetitan_async``, and through the SDK.

The whole job of the Fireworks conformance suite (``test_conformance_fireworks_control.py``)
runs twice, each time on a fresh key-protected ``LocalTrainer`` with a warm-up and the same
seed: once through ``firetitan_async`` (``TrainerJobs`` + ``ServiceSession.from_job``, dialect
fireworks) under asyncio and trio, once through the unmodified Fireworks SDK (sync,
``TrainerJobManager`` + ``FiretitanServiceClient``).

Job create (again: a 409 adopts it) → ready → create the training client → 5 pipelined
``forward_backward`` + ``optim_step`` with the loss falling → ``forward`` → optim extras →
sampler snapshots (base, then the automatic delta) → ``save_state`` → ``list_checkpoints`` →
a second job resumes from the first one's state by ``cross_job://`` and reproduces its next
steps → control-plane checkpoint listing and promotion → ``unload_model`` →
``resume_and_wait`` and ``reconnect_and_wait`` on a failed job → delete (the checkpoints stay
listed, the id cannot be reused).

Same server, same seed, same order: the losses of the two runs must be bit-identical.
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
from fireworks.training import sdk
from fireworks.training.sdk import FiretitanServiceClient, TrainerJobManager
from test_conformance_fireworks_control import ADAM, BATCH, KEY, POLL_S, TEXTS, WARMUP_S, _fail
from test_conformance_fireworks_control import _step as _conformance_step

from firetitan_async import (
    FiretitanError,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobFailed,
    TrainerJobs,
    TrainingClient,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME

SEED = 5
CLIENT_SEED = 11
JOB_ID_RE = re.compile(r"training-api-service-[0-9a-f]{8}")
N_TOKENS = sum(len(t) - 1 for t in TEXTS)
GATEWAY_ENV = ("FIREWORKS_TRAINER_GATEWAY_URL", "FIREWORKS_CLIENT_SOURCE", "FIREWORKS_SESSION_ID")


def _trainer() -> LocalTrainer:
    return LocalTrainer(api_key=KEY, warmup_s=WARMUP_S, seed=SEED)


def _check_extras(extras: dict[str, float] | None, raw: dict[str, float] | None) -> None:
    """Normalised detailed grad-norm metrics, then plain ones about ``N_TOKENS`` times larger."""
    assert extras is not None and raw is not None
    assert extras["grad_norm/global:mean"] == pytest.approx(extras["grad_norm:mean"])
    assert extras["grad_norm/param/w1:mean"] > 0
    assert raw["grad_norm:mean"] > extras["grad_norm:mean"] * N_TOKENS / 3
    assert "grad_norm/param/w1:mean" not in raw and "grad_norm/rms:mean" in raw


def _check_rows(rows: list[tuple[str, str, bool]], snapshots: list[str]) -> None:
    """The first job's control-plane checkpoints: base and delta snapshot, then the state."""
    assert rows == [
        (snapshots[0], "CHECKPOINT_TYPE_INFERENCE_BASE", True),
        (snapshots[1], "CHECKPOINT_TYPE_INFERENCE_ARC_V2", False),
        ("state-a", "CHECKPOINT_TYPE_TRAINING", False),
    ]


# -- through the Fireworks SDK (sync) ---------------------------------------------------------


def sdk_flow(lt: LocalTrainer) -> list[float]:
    """The flow through the unmodified Fireworks SDK; returns every loss, in order."""
    losses: list[float] = []
    mgr = TrainerJobManager(api_key=KEY, base_url=lt.control_plane_url)
    started = time.monotonic()
    first = mgr.create(sdk.TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0)).job_id
    endpoint = mgr.wait_for_ready(first, poll_interval_s=POLL_S, timeout_s=20)
    assert time.monotonic() - started >= WARMUP_S
    again = sdk.TrainerJobConfig(base_model=MODEL_NAME, requested_job_id=first)
    assert mgr.create(again).job_id == first  # a 409 adopts the job
    service = FiretitanServiceClient(base_url=endpoint.base_url, api_key=KEY)
    tc = service.create_training_client(MODEL_NAME, lora_rank=0, seed=CLIENT_SEED)
    pipelined = [
        (tc.forward_backward(BATCH, "cross_entropy"), tc.optim_step(ADAM)) for _ in range(5)
    ]
    for fb, optim in pipelined:
        losses.append(float(fb.result(timeout=30).metrics["loss:sum"]))
        optim.result(timeout=30)
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    losses.append(float(tc.forward(BATCH, "cross_entropy").result().metrics["loss:sum"]))

    fb = tc.forward_backward(BATCH, "cross_entropy")
    extras = (
        tc.optim_step(
            ADAM,
            grad_accumulation_normalization="num_loss_tokens",
            emit_grad_norm_metrics="detailed",
        )
        .result()
        .metrics
    )
    losses.append(float(fb.result().metrics["loss:sum"]))
    fb = tc.forward_backward(BATCH, "cross_entropy")
    raw = tc.optim_step(ADAM, emit_grad_norm_metrics=True).result().metrics
    losses.append(float(fb.result().metrics["loss:sum"]))
    _check_extras(extras, raw)

    snapshots = [tc.save_weights_for_sampler_ext(n).snapshot_name for n in ("snap-a", "snap-b")]
    tc.save_state("state-a").result()
    assert "state-a" in tc.list_checkpoints()
    losses += [_conformance_step(tc) for _ in range(2)]
    service.close()

    second = mgr.create(sdk.TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0)).job_id
    service = FiretitanServiceClient(
        base_url=mgr.wait_for_ready(second, poll_interval_s=POLL_S, timeout_s=20).base_url,
        api_key=KEY,
    )
    tc2 = service.create_training_client(MODEL_NAME, lora_rank=0, seed=CLIENT_SEED)
    tc2.load_state_with_optimizer(
        tc2.resolve_checkpoint_path("state-a", source_job_id=first)
    ).result(timeout=30)
    resumed = [_conformance_step(tc2) for _ in range(2)]
    assert resumed == losses[-2:]
    losses += resumed

    rows = mgr.list_checkpoints(first, page_size=1)
    _check_rows(
        [(r["name"].rsplit("/", 1)[1], r["checkpointType"], r["promotable"]) for r in rows],
        snapshots,
    )
    model = mgr.promote_checkpoint(
        name=rows[0]["name"], output_model_id="flow-model", base_model=MODEL_NAME
    )
    assert model["name"] == f"accounts/{lt.account_id}/models/flow-model"
    assert tc2.unload_model().result().model_id == tc2.model_id
    service.close()

    _fail(lt, first, "preempted by the test")
    assert mgr.resume_and_wait(first, poll_interval_s=POLL_S).base_url == endpoint.base_url
    _fail(lt, first, "preempted again")
    assert mgr.reconnect_and_wait(first, poll_interval_s=POLL_S).base_url == endpoint.base_url
    for job in (first, second):
        mgr.delete(job)
    assert mgr.try_get(first)["state"] == "JOB_STATE_DELETED"
    assert len(mgr.list_checkpoints(first)) == 3  # a deleted job's checkpoints stay listed
    with pytest.raises(RuntimeError, match="cannot be recreated"):
        mgr.create(again)
    mgr.close()
    return losses


class _Warnings(logging.Handler):
    """Warnings of this run only: threads that were already running when it started belong
    to earlier tests' SDK clients (whose telemetry may flush late, to a server now gone)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []
        self._earlier = {t.ident for t in threading.enumerate() if t is not threading.main_thread()}

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread not in self._earlier:
            self.seen.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def sdk_run() -> Iterator[tuple[list[float], list[str]]]:
    """The SDK's losses and every warning it logged (a swallowed failure)."""
    handler, logger = _Warnings(), logging.getLogger("fireworks")
    logger.addHandler(handler)
    try:
        with pytest.MonkeyPatch.context() as mp, _trainer() as lt:
            for var in GATEWAY_ENV:
                mp.delenv(var, raising=False)
            yield sdk_flow(lt), handler.seen
    finally:
        logger.removeHandler(handler)


# -- through firetitan_async -----------------------------------------------------------------


async def _step(client: TrainingClient) -> float:
    fb = client.forward_backward(BATCH, "cross_entropy")
    step = client.optim_step(ADAM)
    loss = float((await fb).metrics["loss:sum"])
    await step
    return loss


async def _fail_job(lt: LocalTrainer, job_id: str, message: str) -> None:
    await anyio.to_thread.run_sync(_fail, lt, job_id, message)


async def our_flow(lt: LocalTrainer) -> list[float]:
    """The same flow through ``TrainerJobs`` and ``ServiceSession.from_job``."""
    losses: list[float] = []
    async with TrainerJobs(KEY, base_url=lt.control_plane_url) as jobs:
        started = anyio.current_time()
        first = (await jobs.create(TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0))).job_id
        assert JOB_ID_RE.fullmatch(first)
        again = TrainerJobConfig(base_model=MODEL_NAME, requested_job_id=first)
        assert (await jobs.create(again)).job_id == first  # a 409 adopts the job
        async with ServiceSession.from_job(jobs, first, poll_interval_s=POLL_S) as session:
            tc = await session.create_training_client(MODEL_NAME, lora_rank=0, seed=CLIENT_SEED)
            assert anyio.current_time() - started >= WARMUP_S
            gateway = await jobs.gateway_url(first)
            assert session.base_url == gateway
            pipelined = [
                (tc.forward_backward(BATCH, "cross_entropy"), tc.optim_step(ADAM)) for _ in range(5)
            ]
            for fb, optim in pipelined:
                losses.append(float((await fb).metrics["loss:sum"]))
                await optim
            assert all(b < a for a, b in itertools.pairwise(losses)), losses
            losses.append(float((await tc.forward(BATCH, "cross_entropy")).metrics["loss:sum"]))

            fb = tc.forward_backward(BATCH, "cross_entropy")
            extras = (
                await tc.optim_step(
                    ADAM,
                    grad_accumulation_normalization="num_loss_tokens",
                    emit_grad_norm_metrics="detailed",
                )
            ).metrics
            losses.append(float((await fb).metrics["loss:sum"]))
            fb = tc.forward_backward(BATCH, "cross_entropy")
            raw = (await tc.optim_step(ADAM, emit_grad_norm_metrics=True)).metrics
            losses.append(float((await fb).metrics["loss:sum"]))
            _check_extras(extras, raw)

            base = await tc.save_weights_for_sampler_ext("snap-a")
            delta = await tc.save_weights_for_sampler_ext("snap-b")
            assert (base.checkpoint_type, delta.checkpoint_type) == ("base", "delta")
            saved = await tc.save_state("state-a")
            assert saved.path.endswith("/state-a")
            assert "state-a" in [c.name for c in await tc.list_checkpoints()]
            losses += [await _step(tc) for _ in range(2)]

        second = (await jobs.create(TrainerJobConfig(base_model=MODEL_NAME, lora_rank=0))).job_id
        async with ServiceSession.from_job(jobs, second, poll_interval_s=POLL_S) as session:
            tc2 = await session.create_training_client(MODEL_NAME, lora_rank=0, seed=CLIENT_SEED)
            path = await tc2.resolve_checkpoint_path("state-a", source_job_id=first)
            assert path == f"cross_job://{first}/state-a"
            await tc2.load_state_with_optimizer(path)
            resumed = [await _step(tc2) for _ in range(2)]
            assert resumed == losses[-2:]
            losses += resumed

            rows = await jobs.list_checkpoints(first, page_size=1)
            _check_rows(
                [(r.checkpoint_id, r.checkpoint_type or "", r.promotable) for r in rows],
                [base.snapshot_name, delta.snapshot_name],
            )
            model = await jobs.promote_checkpoint(
                name=rows[0].name,
                output_model_id="flow-model",
                base_model=MODEL_NAME,
                poll_interval_s=POLL_S,
            )
            assert (model.name, model.state) == (
                f"accounts/{lt.account_id}/models/flow-model",
                "READY",
            )
            assert (await tc2.unload_model()).model_id == tc2.model_id
            with pytest.raises(FiretitanError, match="was unloaded"):
                tc2.forward(BATCH, "cross_entropy")

        await _fail_job(lt, first, "preempted by the test")
        with pytest.raises(TrainerJobFailed, match="preempted by the test"):
            await jobs.wait_for_ready(first, poll_interval_s=POLL_S, timeout_s=5)
        assert (await jobs.resume_and_wait(first, poll_interval_s=POLL_S)).base_url == gateway
        await _fail_job(lt, first, "preempted again")
        assert (await jobs.reconnect_and_wait(first, poll_interval_s=POLL_S)).base_url == gateway
        for job in (first, second):
            await jobs.delete(job)
        deleted = await jobs.try_get(first)
        assert deleted is not None and deleted.is_tombstone
        assert len(await jobs.list_checkpoints(first)) == 3  # still listed
        with pytest.raises(TrainerJobFailed, match="cannot be reused"):
            await jobs.create(again)
    return losses


# -- the tests --------------------------------------------------------------------------------


def test_the_sdk_flow_logs_no_warning(sdk_run: tuple[list[float], list[str]]) -> None:
    losses, warnings = sdk_run
    assert warnings == []
    assert len(losses) == 12


@pytest.mark.anyio
async def test_our_flow_has_the_sdks_losses(
    sdk_run: tuple[list[float], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in GATEWAY_ENV:
        monkeypatch.delenv(var, raising=False)
    async with _trainer() as lt:
        losses = await our_flow(lt)
    # Same server, same seed, same order: bit-identical.
    assert losses == sdk_run[0]
