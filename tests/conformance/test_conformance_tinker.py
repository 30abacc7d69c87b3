"""Conformance: the unmodified tinker SDK (0.38, sync API) trains against the local trainer.

This checks both sides: our server speaks the wire the SDK speaks, and our reading of the SDK
(``protocol/tinker-wire.md``) holds. The SDK keeps a process-wide background thread; that is
fine here. Everything runs in one test so the SDK bootstrap happens once.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
from _loopback_app import serve_on_loopback
from tinker import types

from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME

TEXTS = [b"hello tinker, hello world", b"the local trainer is tiny", b"bytes in, bytes out!"]


def _td(arr: np.ndarray) -> types.TensorData:
    return types.TensorData.from_numpy(arr)


def _datum(text: bytes) -> types.Datum:
    tokens = list(text)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": _td(np.asarray(tokens[1:], np.int64)),
            "weights": _td(np.ones(len(tokens) - 1, np.float32)),
        },
    )


def _rl_datum(text: bytes) -> types.Datum:
    tokens = list(text)
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": _td(np.asarray(tokens[1:], np.int64)),
            "logprobs": _td(np.full(n, -5.0, np.float32)),
            "advantages": _td(np.linspace(-1.0, 1.0, n).astype(np.float32)),
        },
    )


def _logprobs(out: types.ForwardBackwardOutput) -> list[np.ndarray]:
    return [np.asarray(o["logprobs"].to_numpy()) for o in out.loss_fn_outputs]


@pytest.fixture
def trainer(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalTrainer]:
    monkeypatch.setenv("TINKER_API_KEY", "tml-local")
    monkeypatch.setenv("TINKER_TELEMETRY", "0")
    with LocalTrainer(seed=3) as lt:
        monkeypatch.setenv("TINKER_BASE_URL", lt.base_url)
        yield lt


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_unmodified_tinker_sdk_trains_saves_samples_and_resumes(trainer: LocalTrainer) -> None:
    batch = [_datum(t) for t in TEXTS]
    adam = types.AdamParams(learning_rate=5e-3)
    with tinker.ServiceClient(base_url=trainer.base_url) as service:
        lora = service.create_lora_training_client(base_model=MODEL_NAME, rank=8).result()
        full = service.create_lora_training_client(base_model=MODEL_NAME, rank=0).result()
        assert lora.get_info().lora_rank == 8 and lora.get_info().is_lora
        assert not full.get_info().is_lora
        assert lora.model_id != full.model_id

        for client in (lora, full):
            losses = []
            for _ in range(10):
                fb = client.forward_backward(batch, "cross_entropy")
                step = client.optim_step(adam)
                losses.append(fb.result().metrics["loss:sum"])
                step.result()
            assert losses[-1] < losses[0] * 0.9, losses

        fwd = full.forward(batch, "cross_entropy").result()
        assert [len(lp) for lp in _logprobs(fwd)] == [len(t) - 1 for t in TEXTS]
        rl = full.forward_backward([_rl_datum(t) for t in TEXTS], "importance_sampling").result()
        assert np.isfinite(rl.metrics["loss:sum"])
        full.optim_step(adam).result()

        state_path = lora.save_state("conf-state").result().path
        sampler_path = lora.save_weights_for_sampler("conf-sampler").result().path
        assert state_path == f"tinker://{lora.model_id}/weights/conf-state"
        assert sampler_path == f"tinker://{lora.model_id}/sampler_weights/conf-sampler"

        rest = service.create_rest_client()
        listed = rest.list_checkpoints(lora.model_id).result()
        assert {c.checkpoint_id for c in listed.checkpoints} == {
            "weights/conf-state",
            "sampler_weights/conf-sampler",
        }
        assert all(c.tinker_path.startswith("tinker://") for c in listed.checkpoints)
        caps = rest.get_server_capabilities().result()
        assert caps.supported_models[0].model_name == MODEL_NAME

        sampler = service.create_sampling_client(model_path=sampler_path)
        prompt = types.ModelInput.from_ints(list(b"hello "))
        params = types.SamplingParams(max_tokens=12, temperature=0.7, seed=42)
        first = sampler.sample(prompt, num_samples=3, sampling_params=params).result()
        again = sampler.sample(prompt, num_samples=3, sampling_params=params).result()
        assert len(first.sequences) == 3
        assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
        assert all(0 < len(s.tokens) <= 12 for s in first.sequences)
        prompt_lps = sampler.compute_logprobs(prompt).result()
        assert prompt_lps[0] is None and all(isinstance(x, float) for x in prompt_lps[1:])

        live = lora.save_weights_and_get_sampling_client().result()
        live_out = live.sample(prompt, num_samples=3, sampling_params=params).result()
        assert [s.tokens for s in live_out.sequences] == [s.tokens for s in first.sequences]

        # Resume with the optimizer state: the same next step gives the same logprobs.
        resumed = service.create_training_client_from_state_with_optimizer(state_path).result()
        assert resumed.get_info().lora_rank == 8
        for client in (lora, resumed):
            client.forward_backward(batch, "cross_entropy").result()
            client.optim_step(adam).result()
        a = _logprobs(lora.forward(batch, "cross_entropy").result())
        b = _logprobs(resumed.forward(batch, "cross_entropy").result())
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    stats = trainer.stats()
    assert stats["optim_steps_applied"][lora.model_id] == 11
    assert stats["optim_steps_applied"][full.model_id] == 11
    assert stats["requests"]["sessions/finish"] == 1


class _LoseFirstReply:
    """A reverse proxy to the local trainer (ASGI) that relays every request, but answers the
    first POST to ``path`` with a 500 after the trainer has applied it: the reply is lost, as
    when a loaded server answers after the SDK's timeout. Records the bodies sent to ``path``."""

    def __init__(self, target: str, path: str) -> None:
        self.target = target
        self.path = path
        self.sent: list[tuple[str, dict[str, Any]]] = []  # (idempotency key, JSON body)
        self._tls = ssl.create_default_context()  # ~65 ms each: made once, not per client

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k.lower() not in (b"host", b"content-length")}
        url = self.target + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        async with httpx.AsyncClient(timeout=30, verify=self._tls) as http:
            reply = await http.request(scope["method"], url, headers=headers, content=body)
        status, content = reply.status_code, reply.content
        if scope["method"] == "POST" and scope["path"] == self.path:
            self.sent.append((headers.get("x-idempotency-key", ""), json.loads(body)))
            if len(self.sent) == 1:
                status, content = 500, b'{"detail": "injected: the reply was lost"}'
        content_type = reply.headers.get("content-type", "application/json").encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": content})


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_sdks_outer_retry_of_a_lost_save_gets_the_original_future(
    trainer: LocalTrainer,
) -> None:
    """``save_weights_and_get_sampling_client`` whose reply is lost: the SDK's outer retry
    (``execute_with_retries``; this call sets ``max_retries=0``, so no inner retry) resends it
    with the same ``seq_id``, a new idempotency key and the next ``sampling_session_seq_id``.
    The trainer answers with the original future, so the save runs once and the SDK samples
    from the sampler the first attempt made."""
    proxy = _LoseFirstReply(trainer.base_url, "/api/v1/save_weights_for_sampler")
    with serve_on_loopback(proxy) as url, tinker.ServiceClient(base_url=url) as service:
        client = service.create_lora_training_client(base_model=MODEL_NAME, rank=2).result()
        # A refused retry does not raise: the SDK's future never resolves (hence the timeout).
        sampler = client.save_weights_and_get_sampling_client().result(timeout=20)
        prompt = types.ModelInput.from_ints(list(b"hello "))
        params = types.SamplingParams(max_tokens=4, temperature=0.7, seed=1)
        assert len(sampler.sample(prompt, 1, params).result().sequences[0].tokens) > 0

    # Our reading of the SDK: one save, sent twice, differing only in these two.
    (key1, first), (key2, again) = proxy.sent
    assert key1 != key2 and again["seq_id"] == first["seq_id"] == 1
    assert again["sampling_session_seq_id"] == first["sampling_session_seq_id"] + 1
    del first["sampling_session_seq_id"], again["sampling_session_seq_id"]
    assert again == first
    # It ran once: the retry's sampling_session_seq_id named no sampler.
    session = client.model_id.split(":train:")[0]
    with httpx.Client(base_url=trainer.base_url) as http:
        for n, status in ((0, 200), (1, 404)):
            r = http.post("/api/v1/asample", json={
                "sampling_session_id": f"{session}:sample:{n}", "num_samples": 1,
                "prompt": {"chunks": [{"tokens": [104, 105], "type": "encoded_text"}]},
                "sampling_params": {"max_tokens": 2}})
            assert r.status_code == status, (n, r.text)
