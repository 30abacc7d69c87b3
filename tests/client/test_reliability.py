"""Nothing lost, nothing doubled, nothing leaked: faults, cancellation, validation, secrets."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from tinker import types

from firetitan_async import (
    APIStatusError,
    InvalidInput,
    Pending,
    RetryPolicy,
    ServiceSession,
    SubmissionLost,
    TrainingClient,
    UsageError,
)
from firetitan_async._http._http11_transport import Http11Transport
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import rl_datum, sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=5e-3)
FAST_RETRY = RetryPolicy(max_attempts=30, backoff_base_s=0.01, backoff_cap_s=0.2, deadline_s=120)
TEXTS = ["nothing lost", "nothing doubled", "nothing leaked", "bit-identical"]
PROBE = [sft_datum("the probe datum")]


def step_batch(step: int) -> list[types.Datum]:
    return [sft_datum(TEXTS[step % 4]), sft_datum(TEXTS[(step + 1) % 4])]


async def train(
    trainer: LocalTrainer, steps: int, *, cancel_waits: int = 0, seed: int = 0
) -> tuple[bytes, dict[str, int]]:
    """Run ``steps`` pipelined steps; return the probe logprobs' bytes and optim-step counts."""
    rng = random.Random(seed)
    cancel_at = set(rng.sample(range(steps), cancel_waits)) if cancel_waits else set()
    cancelled = 0
    async with ServiceSession(trainer.base_url, dialect="tinker", retry=FAST_RETRY) as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        pendings: list[Pending[object]] = []
        for step in range(steps):
            fb = client.forward_backward(step_batch(step), "cross_entropy")
            pendings.append(fb)
            pendings.append(client.optim_step(ADAM))
            if step in cancel_at:
                with anyio.move_on_after(rng.random() * 0.002) as scope:
                    await fb
                cancelled += scope.cancelled_caught
            if step % 25 == 24:  # keep a bounded window in flight, like a real loop
                await pendings[-1]
        for p in pendings:
            await p
        # Most of the waits really were cancelled mid-operation (else nothing was tested).
        assert cancelled >= cancel_waits // 4, (cancelled, cancel_waits)
        out = await client.forward(PROBE, "cross_entropy")
        probe = np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy()).tobytes()
    return probe, dict(trainer.stats()["optim_steps_applied"])


async def test_faults_leave_training_bit_identical() -> None:
    async with LocalTrainer(seed=11) as clean:
        clean_probe, clean_steps = await train(clean, 200)
    async with LocalTrainer(seed=11, fault_rate=0.2) as faulty:
        faulty_probe, faulty_steps = await train(faulty, 200)
        faults = faulty.stats()["faults_injected"]
    print(f"faults injected in the faulty run: {faults}")
    assert faults > 50
    assert list(clean_steps.values()) == [200]
    assert list(faulty_steps.values()) == [200]
    assert faulty_probe == clean_probe


async def test_cancelled_waits_leave_training_bit_identical() -> None:
    async with LocalTrainer(seed=5) as lt:
        clean_probe, _ = await train(lt, 150)
        cancelled_probe, steps = await train(lt, 150, cancel_waits=100, seed=1)
    assert sorted(steps.values()) == [150, 150]
    assert cancelled_probe == clean_probe


TRAINER_OPTIONS = {"seed": 3}  # the module's `trainer` (conftest.py)


@pytest.fixture(params=["tinker", "fireworks"])
def dialect(request: pytest.FixtureRequest) -> str:
    """Both wire dialects: the core behaviours must hold in each."""
    return str(request.param)


def d(tokens: list[int], **inputs: Any) -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


GOOD = sft_datum("abcdef")
F32 = np.float32
I64 = np.int64

# (label, operation on a training client, a substring of the offending field's name)
MALFORMED: list[tuple[str, Callable[[TrainingClient], Any], str]] = [
    ("empty batch", lambda c: c.forward_backward([], "cross_entropy"), "data"),
    ("unknown loss", lambda c: c.forward_backward([GOOD], "hinge"), "loss_fn"),
    ("not a datum", lambda c: c.forward_backward([{"x": 1}], "cross_entropy"), "datum"),  # type: ignore[list-item]
    (
        "missing weights",
        lambda c: c.forward_backward(
            [d([1, 2], target_tokens=np.array([2, 3], I64))], "cross_entropy"
        ),
        "weights",
    ),
    (
        "missing advantages",
        lambda c: c.forward_backward(
            [d([1, 2], target_tokens=np.array([2, 3], I64), logprobs=np.zeros(2, F32))],
            "importance_sampling",
        ),
        "advantages",
    ),
    (
        "weights length",
        lambda c: c.forward_backward(
            [d([1, 2, 3], target_tokens=np.array([2, 3, 4], I64), weights=np.ones(2, F32))],
            "cross_entropy",
        ),
        "weights",
    ),
    (
        "targets length",
        lambda c: c.forward_backward(
            [d([1, 2, 3], target_tokens=np.array([2, 3], I64), weights=np.ones(3, F32))],
            "cross_entropy",
        ),
        "target_tokens",
    ),
    (
        "targets dtype",
        lambda c: c.forward_backward(
            [d([1, 2], target_tokens=np.array([2.0, 3.0], F32), weights=np.ones(2, F32))],
            "cross_entropy",
        ),
        "target_tokens",
    ),
    (
        "nan advantages",
        lambda c: c.forward_backward(
            [rl_datum([1, 2], [3, 4], [-1.0, -1.0], advantage=float("nan"))], "importance_sampling"
        ),
        "advantages",
    ),
    (
        "inf weights",
        lambda c: c.forward_backward(
            [d([1, 2], target_tokens=np.array([2, 3], I64), weights=np.array([1, np.inf], F32))],
            "cross_entropy",
        ),
        "weights",
    ),
    (
        "empty model input",
        lambda c: c.forward_backward(
            [d([], target_tokens=np.zeros(0, I64), weights=np.zeros(0, F32))], "cross_entropy"
        ),
        "model_input",
    ),
    (
        "bad config value",
        lambda c: c.forward_backward(
            [rl_datum([1, 2], [3], [-1.0], 1.0)],
            "ppo",
            {"clip_low_threshold": [0.8]},  # type: ignore[dict-item]
        ),
        "clip_low_threshold",
    ),
    (
        "clip low above high",
        lambda c: c.forward_backward(
            [rl_datum([1, 2], [3], [-1.0], 1.0)],
            "ppo",
            {"clip_low_threshold": 1.5, "clip_high_threshold": 1.2},
        ),
        "clip",
    ),
    ("negative ttl", lambda c: c.save_state("ok", ttl_seconds=-5), "ttl_seconds"),
    ("zero ttl", lambda c: c.save_weights_for_sampler("ok", ttl_seconds=0), "ttl_seconds"),
    ("slash in name", lambda c: c.save_state("a/b"), "name"),
    ("space in name", lambda c: c.save_state("a b"), "name"),
    ("empty name", lambda c: c.save_weights_for_sampler(""), "name"),
    ("not a tinker path", lambda c: c.load_state("/tmp/weights"), "path"),
    ("bad path kind", lambda c: c.load_state_with_optimizer("tinker://run/blobs/x"), "path"),
    (
        "delta before base",
        lambda c: c.save_weights_for_sampler_ext("s", checkpoint_type="delta"),
        "checkpoint_type",
    ),
    (
        "unknown snapshot type",
        lambda c: c.save_weights_for_sampler_ext("s", checkpoint_type="full"),  # type: ignore[arg-type]
        "checkpoint_type",
    ),
    ("negative lr", lambda c: c.optim_step(types.AdamParams(learning_rate=-1.0)), "learning_rate"),
    ("beta1 of 1", lambda c: c.optim_step(types.AdamParams(beta1=1.0)), "beta1"),
    ("nan eps", lambda c: c.optim_step(types.AdamParams(eps=float("nan"))), "eps"),
]


@pytest.mark.parametrize(("label", "call", "field"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_input_is_refused_before_sending(
    trainer: LocalTrainer,
    label: str,
    call: Callable[[TrainingClient], Any],
    field: str,
    dialect: str,
) -> None:
    async with ServiceSession(trainer.base_url, dialect=dialect) as session:
        client = await session.create_training_client(MODEL, lora_rank=1)
        before = trainer.stats()["requests"]
        with pytest.raises(InvalidInput) as info:
            call(client)
        assert field in info.value.field, (label, info.value.field, str(info.value))
        assert field in str(info.value)
        assert trainer.stats()["requests"] == before, f"{label}: a request reached the server"


async def test_malformed_session_arguments_are_refused(trainer: LocalTrainer, dialect: str) -> None:
    async with ServiceSession(trainer.base_url, dialect=dialect) as session:
        before = trainer.stats()["requests"]
        with pytest.raises(InvalidInput, match="lora_rank"):
            await session.create_training_client(MODEL, lora_rank=-1)
        with pytest.raises(InvalidInput, match="base_model"):
            await session.create_training_client("")
        client = await session.create_training_client(MODEL, lora_rank=5)
        sampler_before = trainer.stats()["requests"]
        if dialect == "fireworks":  # no sampling sessions on a Fireworks trainer
            with pytest.raises(UsageError, match="serverless"):
                await session.create_sampling_client(base_model=MODEL)
        else:
            sampler = await session.create_sampling_client(base_model=MODEL)
            sampler_before = trainer.stats()["requests"]
            prompt = types.ModelInput.from_ints([1, 2, 3])
            with pytest.raises(InvalidInput, match="num_samples"):
                sampler.sample(prompt, 0, types.SamplingParams(max_tokens=4))
            with pytest.raises(InvalidInput, match="temperature"):
                sampler.sample(prompt, 1, types.SamplingParams(max_tokens=4, temperature=-1.0))
        assert trainer.stats()["requests"] == sampler_before
        assert client.lora_rank == 5
        assert before.get("create_model", 0) + 1 == trainer.stats()["requests"]["create_model"]


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ValueError, match="allow_insecure_http"):
        ServiceSession("http://203.0.113.7:8080", api_key="tml-x")
    # Explicitly allowed: constructing does not connect anywhere.
    ServiceSession("http://203.0.113.7:8080", api_key="tml-x", allow_insecure_http=True)
    ServiceSession("https://203.0.113.7", api_key="tml-x")
    ServiceSession("http://localhost:1", api_key="tml-x")
    ServiceSession("http://[::1]:1", api_key="tml-x")


async def test_api_key_never_appears_in_logs_reprs_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "tml-SECRET-do-not-leak-1234567890"
    caplog.set_level(logging.DEBUG)
    async with LocalTrainer(api_key="tml-the-right-key") as lt:
        session = ServiceSession(lt.base_url, dialect="tinker", api_key=secret, retry=FAST_RETRY)
        texts = [repr(session), str(session)]
        with pytest.raises(APIStatusError) as info:
            async with session:
                pass
        assert info.value.status_code == 401
        texts += [str(info.value), repr(info.value), repr(info.value.body), repr(session)]
        # With the right key the same server works.
        async with ServiceSession(lt.base_url, api_key="tml-the-right-key") as ok:
            client = await ok.create_training_client(MODEL)
            await client.forward([sft_datum("fine")], "cross_entropy")
            texts += [repr(ok), repr(client), repr(ok._open_transport)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [str(record.args) for record in caplog.records]
    assert len(caplog.records) > 0
    for text in texts:
        assert secret not in text
        assert "the-right-key" not in text


async def test_a_rejected_submission_does_not_wedge_later_operations(
    trainer: LocalTrainer, dialect: str
) -> None:
    async with ServiceSession(trainer.base_url, dialect=dialect) as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        ok_before = client.forward_backward(step_batch(0), "cross_entropy")
        # Token 999 passes the client's checks (it knows no vocabulary) but not the server's.
        rejected = client.forward_backward(
            [sft_datum("ab"), d([999, 1], **_ce(2))], "cross_entropy"
        )
        later = [client.optim_step(ADAM), client.forward(step_batch(1), "cross_entropy")]
        with anyio.fail_after(30):
            await ok_before
            with pytest.raises(APIStatusError) as info:
                await rejected
            for p in later:
                await p
    assert 400 <= info.value.status_code < 500
    assert "999" in str(info.value) or "token" in str(info.value)


def _ce(n: int) -> dict[str, Any]:
    return {
        "target_tokens": types.TensorData.from_numpy(np.ones(n, dtype=np.int64)),
        "weights": types.TensorData.from_numpy(np.ones(n, dtype=np.float32)),
    }


class _LoseSubmission(httpx.AsyncBaseTransport):
    """Forwards to the real server, but every attempt to submit ``seq_id`` fails to connect:
    a submission lost for good, which a real server cannot be asked to produce."""

    def __init__(self, seq_id: int) -> None:
        self._inner = Http11Transport()
        self._seq_id = seq_id
        self.lost_attempts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (
            request.url.path.endswith("/optim_step")
            and json.loads(request.content).get("seq_id") == self._seq_id
        ):
            self.lost_attempts += 1
            raise httpx.ConnectError("injected: connection refused", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_lost_submission_fails_later_operations_instead_of_hanging(
    trainer: LocalTrainer, dialect: str
) -> None:
    lose = _LoseSubmission(seq_id=4)
    retry = RetryPolicy(max_attempts=3, backoff_base_s=0.01, backoff_cap_s=0.02)
    async with ServiceSession(
        trainer.base_url, dialect=dialect, retry=retry, transport=lose
    ) as session:
        client = await session.create_training_client(MODEL, lora_rank=3)
        pendings: list[Pending[object]] = []
        for step in range(4):  # seq ids 1..8: fwd/bwd odd, optim_step even
            pendings.append(client.forward_backward(step_batch(step), "cross_entropy"))
            pendings.append(client.optim_step(ADAM))
        with anyio.fail_after(20):
            outcomes = []
            for p in pendings:
                try:
                    await p
                    outcomes.append("ok")
                except SubmissionLost as exc:
                    outcomes.append(str(exc))
        after = client.forward(step_batch(0), "cross_entropy")
        with pytest.raises(SubmissionLost):
            await after
    assert outcomes[:3] == ["ok", "ok", "ok"]
    assert "seq_id 4" in outcomes[3] and "could not be submitted" in outcomes[3]
    assert all("earlier operation" in o for o in outcomes[4:])
    assert lose.lost_attempts == 3
