"""Fireworks serverless mode of ``ServiceSession`` against the local trainer's serverless gateway
(asyncio and trio): the URL/kwarg choice, the whole flow, the opt-in capacity-409 retry, bad
input refused before anything is sent, and the key kept out of every error of these routes.
(The SDK's own flow and the request-by-request comparison live in
``tests/conformance/test_serverless_fireworks.py``.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from tinker import types

from firetitan_async import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    RetryPolicy,
    ServiceSession,
    SessionCheckpoint,
)
from firetitan_async._http._http11_transport import Http11Transport
from firetitan_async.local import LocalTrainer, sft_datum, write_byte_tokenizer
from firetitan_async.local._model import MODEL_NAME
from firetitan_async.wire.fireworks_serverless import (
    is_capacity_conflict,
    serverless_choice,
    session_model,
)

pytestmark = pytest.mark.anyio

KEY = "fw_local_serverless_client_key_42"
TRAINER_OPTIONS = {"api_key": KEY, "seed": 4}
TOKENS = list(b"hello serverless")
SUFFIX = "/training/v1/serverless"


def _datum() -> types.Datum:
    return sft_datum(bytes(TOKENS))


def _knob(trainer: LocalTrainer, **knobs: Any) -> None:
    reply = httpx.post(trainer.base_url + "/_local/serverless", json=knobs,
                       headers={"X-API-Key": KEY})
    reply.raise_for_status()


def _requests(trainer: LocalTrainer) -> dict[str, int]:
    return dict(trainer.stats()["requests"])


# -- choosing serverless -----------------------------------------------------------------------


def test_the_url_or_the_kwarg_chooses_serverless() -> None:
    root = "https://api.fireworks.ai"
    assert serverless_choice(root + SUFFIX, "auto", None) == (root + SUFFIX, "fireworks")
    assert serverless_choice(root, "auto", True) == (root + SUFFIX, "fireworks")
    assert serverless_choice(root + SUFFIX + "/", "fireworks", True)[0] == root + SUFFIX
    assert serverless_choice(root, "auto", None) == (root, "auto")
    assert serverless_choice(root, "tinker", False) == (root, "tinker")
    with pytest.raises(InvalidInput, match="serverless"):
        serverless_choice(root + SUFFIX, "tinker", None)
    with pytest.raises(InvalidInput, match="serverless"):
        serverless_choice(root + SUFFIX, "auto", False)
    with pytest.raises(InvalidInput, match="serverless"):
        serverless_choice(root, "auto", "yes")  # type: ignore[arg-type]


def test_a_session_knows_it_is_serverless() -> None:
    session = ServiceSession("https://api.fireworks.ai", api_key=KEY, serverless=True)
    assert session.serverless and session.dialect == "fireworks"
    assert session.base_url == "https://api.fireworks.ai" + SUFFIX
    assert session.training_session_id is None  # not open yet
    assert not ServiceSession("https://api.fireworks.ai", api_key=KEY).serverless
    assert KEY not in repr(session)


@pytest.mark.parametrize(
    ("body", "retried"),
    [
        ('{"detail": "training capacity is temporarily exhausted"}', True),
        ('{"error": {"message": "RESOURCE_EXHAUSTED: out of capacity"}}', True),
        ("", True),
        ("{}", True),
        ('{"detail": "model already exists (capacity_exhausted)"}', False),  # terminal wins
        ('{"detail": "idempotency key reused with a different request payload"}', False),
        ('{"detail": "run FAILED"}', False),  # an explicit, unknown conflict stays fatal
    ],
)
def test_which_409s_are_capacity(body: str, retried: bool) -> None:
    assert is_capacity_conflict(body) is retried
    opted = RetryPolicy(capacity_409=True)
    assert opted.retryable_reply(409, body, serverless_poll=True) is retried
    assert RetryPolicy().retryable_reply(409, body, serverless_poll=True) is False
    # Elsewhere a 409 keeps its meaning (a concurrent duplicate: retried).
    assert RetryPolicy().retryable_reply(409, body, serverless_poll=False) is True
    with pytest.raises(InvalidInput, match="capacity_409"):
        RetryPolicy(capacity_409="yes")  # type: ignore[arg-type]


# -- the flow ---------------------------------------------------------------------------------


async def test_the_serverless_flow_against_the_local_trainer(
    trainer: LocalTrainer, tmp_path: Path
) -> None:
    tokenizer_model = str(write_byte_tokenizer(tmp_path / "byte-tokenizer"))
    async with ServiceSession(trainer.base_url, api_key=KEY, serverless=True) as session:
        assert session.training_session_id is not None
        assert session.training_session_id.startswith("ts-")
        name = await session.training_session_name()
        assert name == f"accounts/local/trainingSessions/{session.training_session_id}"
        client = await session.create_training_client(MODEL_NAME, lora_rank=4)
        assert re.fullmatch(r"run-[0-9a-f]{32}:train:0", client.model_id)
        await client.forward_backward([_datum()], "cross_entropy")
        await client.optim_step(types.AdamParams(learning_rate=1e-2))
        saved = await client.save_weights_for_sampler("step-1")
        state = await client.save_state("state-1")
        run = client.model_id.partition(":")[0]
        assert saved.path.startswith(f"local/{run}/step-1-")

        async with await session.create_serverless_sampler(
            saved.path, tokenizer_model=tokenizer_model
        ) as sampler:
            assert sampler.model == session_model(
                "local", session.training_session_id, saved.path
            )
            out = await sampler.sample([1, 2, 3], n=2, max_tokens=5, temperature=1.0, seed=1)
            # a token-id stop: tokenizer_model is loaded now (not before), then decodes it
            assert sampler.tokenizer is None
            stop = [next(t for t in out[0].tokens[1:] if 33 <= t < 127)]  # an ASCII token drawn
            [stopped, _] = await sampler.sample([1, 2, 3], n=2, max_tokens=5, temperature=1.0,
                                                seed=1, stop=stop)
            assert sampler.tokenizer is not None
        assert [len(c.tokens) for c in out] == [5, 5]
        assert stopped.finish_reason == "stop"
        assert stopped.tokens == out[0].tokens[: out[0].tokens.index(stop[0]) + 1]
        async with await session.create_serverless_sampler(
            base_model=MODEL_NAME, tokenizer_model=tokenizer_model
        ) as base:
            assert base.model == name  # the session's rollout host serves its base weights
            assert len((await base.sample([1, 2], max_tokens=3))[0].tokens) == 3
            assert await base.get_tokenizer() is sampler.tokenizer  # one load per session

        rows = await session.list_session_checkpoints()
        assert all(isinstance(r, SessionCheckpoint) for r in rows)
        assert [(r.checkpoint_id, r.promotable) for r in rows] == [
            (saved.path.rsplit("/", 1)[1], True), ("state-1", False)
        ]
        served = "served-" + session.training_session_id[3:11]  # one per run of this test
        model = await session.promote_session_checkpoint(rows[0], served, MODEL_NAME)
        assert (model.name, model.state) == (f"accounts/local/models/{served}", "READY")
        with pytest.raises(APIStatusError) as refused:  # a training state is not promotable
            await session.promote_session_checkpoint("state-1", "served-two", MODEL_NAME)
        assert refused.value.status_code == 400

        async with ServiceSession(trainer.base_url + SUFFIX, api_key=KEY) as other:
            info = await other.weights_info(state.path)
            assert (info.base_model, info.is_lora, info.lora_rank) == (MODEL_NAME, True, 4)
            resumed = await other.create_training_client(info.base_model, lora_rank=4)
            await resumed.load_state(state.path)
            # The SDK's from-state sequence does the same in one call, optimizer included.
            async with ServiceSession(trainer.base_url + SUFFIX, api_key=KEY) as third:
                again = await third.create_training_client_from_state_with_optimizer(state)
                assert (again.base_model, again.lora_rank) == (MODEL_NAME, 4)
                prompt = [_datum()]
                want = await resumed.forward(prompt, "cross_entropy")
                got = await again.forward(prompt, "cross_entropy")
                assert [o["logprobs"].tolist() for o in got.loss_fn_outputs] == [
                    o["logprobs"].tolist() for o in want.loss_fn_outputs
                ]
                await third.delete_training_session()
            # Another session's checkpoint: a standalone route, bound first.
            before = _requests(trainer).get("create_sampling_route", 0)
            async with await other.create_serverless_sampler(saved.path) as standalone:
                route = f"accounts/local/trainingSamplers/checkpoints/{saved.path}"
                assert standalone.model == route
                assert len((await standalone.sample([1], max_tokens=2))[0].tokens) == 2
            assert _requests(trainer)["create_sampling_route"] == before + 1
            await other.delete_training_session()
            await other.delete_training_session()  # idempotent

        await session.delete_training_session()
        with pytest.raises(APIStatusError) as gone:
            await session.list_session_checkpoints()
        assert gone.value.status_code == 404


async def test_create_sampling_client_samples_through_the_serverless_completions(
    trainer: LocalTrainer,
) -> None:
    """The Fireworks SDK's ``create_sampling_client`` on a serverless session: the gateway's
    completions route, never tinker's sampling sessions (a real gateway has none)."""
    async with ServiceSession(trainer.base_url, api_key=KEY, serverless=True) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=4)
        saved = await client.save_weights_for_sampler("sampled")
        before = _requests(trainer)
        sampler = await session.create_sampling_client(model_path=saved.path)
        assert sampler.sampling_session_id is None and sampler.deployment_sampler is not None
        assert session.training_session_id is not None
        assert sampler.deployment_sampler.model == session_model(
            "local", session.training_session_id, saved.path
        )
        prompt = types.ModelInput.from_ints(TOKENS[:6])
        params = types.SamplingParams(max_tokens=5, temperature=1.0, seed=11)
        out = await sampler.sample(prompt, 2, params, include_prompt_logprobs=True)
        assert [len(s.tokens) for s in out.sequences] == [5, 5]
        assert all(s.logprobs is not None and len(s.logprobs) == 5 for s in out.sequences)
        assert out.prompt_logprobs is not None and len(out.prompt_logprobs) == 6
        assert out.prompt_logprobs[0] is None
        # The same request through the serverless sampler itself draws the same tokens.
        async with await session.create_serverless_sampler(saved.path) as direct:
            want = await direct.sample(TOKENS[:6], n=2, max_tokens=5, temperature=1.0, seed=11,
                                       logprobs=True)
            # The SDK's deployment_sampler=: a sampler you made, wrapped as it is.
            wrapped = await session.create_sampling_client(deployment_sampler=direct)
            assert wrapped.deployment_sampler is direct
            again = await wrapped.sample(prompt, 2, params)
        assert [s.tokens for s in out.sequences] == [c.tokens for c in want]
        assert [s.tokens for s in again.sequences] == [c.tokens for c in want]
        assert await sampler.compute_logprobs(prompt) == out.prompt_logprobs
        base = await session.create_sampling_client(base_model=MODEL_NAME)
        assert len((await base.sample(prompt, 1, params)).sequences[0].tokens) == 5
        with pytest.raises(InvalidInput) as refused:  # the completions API has no top-k
            sampler.sample(prompt, 1, params, topk_prompt_logprobs=2)
        assert refused.value.field == "topk_prompt_logprobs"
        with pytest.raises(InvalidInput) as refused:  # token-id stops need a tokenizer
            await sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2, stop=[10]))
        assert refused.value.field == "stop"
        stopped = await sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3, stop=["q"]))
        assert len(stopped.sequences[0].tokens) <= 3
        sent = _requests(trainer)
        assert sent.get("create_sampling_session", 0) == before.get("create_sampling_session", 0)
        assert sent.get("asample", 0) == before.get("asample", 0)
        # sample, the direct and wrapped samples, compute_logprobs, the base and string-stop
        # samples
        assert sent["serverless.completions"] == before.get("serverless.completions", 0) + 6
        await session.delete_training_session()


async def test_the_capacity_409_retry_is_opt_in(trainer: LocalTrainer) -> None:
    url = trainer.base_url + SUFFIX
    async with ServiceSession(url, api_key=KEY) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=2)
        _knob(trainer, capacity_409=1)
        with pytest.raises(APIStatusError) as failed:
            await client.forward_backward([_datum()], "cross_entropy")
        assert failed.value.status_code == 409 and "capacity" in str(failed.value)
        await session.delete_training_session()
    fast = RetryPolicy(capacity_409=True, backoff_base_s=0.01, jitter=0.0)
    async with ServiceSession(url, api_key=KEY, retry=fast) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=2)
        polls = _requests(trainer)["retrieve_future"]
        _knob(trainer, capacity_409=2)
        fb = await client.forward_backward([_datum()], "cross_entropy")
        assert fb.metrics["loss:sum"] > 0
        assert _requests(trainer)["retrieve_future"] == polls + 3  # two 409s, then the result
        _knob(trainer, capacity_409=1, bare=True)  # a bare 409 counts as capacity too
        await client.optim_step(types.AdamParams(learning_rate=1e-3))
        _knob(trainer, bare=False)
        await session.delete_training_session()


# -- refused before sending -------------------------------------------------------------------


async def test_bad_input_is_refused_before_anything_is_sent(trainer: LocalTrainer) -> None:
    async with ServiceSession(trainer.base_url, api_key=KEY, serverless=True) as session:
        await session.training_session_name()  # the account, resolved once
        before = _requests(trainer)
        bad: list[tuple[str, Any]] = [
            ("model_path", session.create_serverless_sampler()),
            ("model_path", session.create_serverless_sampler("a/b", base_model=MODEL_NAME)),
            ("model_path", session.create_serverless_sampler(" / ")),
            ("base_model", session.create_serverless_sampler(base_model="")),
            ("timeout_s", session.create_serverless_sampler(base_model=MODEL_NAME, timeout_s=-1)),
            ("tokenizer_model",
             session.create_serverless_sampler(base_model=MODEL_NAME, tokenizer_model=" ")),
            ("page_size", session.list_session_checkpoints(page_size=0)),
            ("output_model_id", session.promote_session_checkpoint("c", "Bad_Id", MODEL_NAME)),
            ("base_model", session.promote_session_checkpoint("c", "good-id", "")),
            ("checkpoint", session.promote_session_checkpoint("a/b", "good-id", MODEL_NAME)),
            ("path", session.weights_info("")),
        ]
        for field, call in bad:
            with pytest.raises(InvalidInput) as refused:
                await call
            assert refused.value.field == field
        assert _requests(trainer) == before
    async with ServiceSession(trainer.base_url, api_key=KEY) as dedicated:
        before = _requests(trainer)
        for call in (
            dedicated.list_session_checkpoints(),
            dedicated.weights_info("x"),
            dedicated.create_serverless_sampler(base_model=MODEL_NAME),
            dedicated.training_session_name(),
        ):
            with pytest.raises(InvalidInput, match="serverless"):
                await call
        await dedicated.delete_training_session()  # a no-op off serverless, as the SDK's
        assert dedicated.training_session_id is None
        assert _requests(trainer) == before


# -- the key in errors ------------------------------------------------------------------------


def _hostile(request: httpx.Request) -> httpx.Response:
    """A gateway that echoes the key into every error (only create_session succeeds)."""
    path = request.url.path
    if path.endswith("/create_session"):
        return httpx.Response(200, json={"session_id": "ts-hostile", "type": "create_session"})
    if path == "/v1/accounts":
        return httpx.Response(200, json={"accounts": [{"name": "accounts/acme"}]})
    echo = {"detail": f"bad key {KEY} (X-API-Key: {KEY})", "message": KEY}
    status = 409 if path.endswith("/retrieve_future") else 400
    return httpx.Response(status, content=json.dumps(echo).encode(),
                          headers={"content-type": "application/json"})


async def test_the_key_never_appears_in_errors_of_the_serverless_routes() -> None:
    transport = httpx.MockTransport(_hostile)
    async with ServiceSession("http://127.0.0.1:9" + SUFFIX, api_key=KEY, transport=transport,
                              retry=RetryPolicy(max_attempts=1)) as session:
        calls = [
            session.create_training_client(MODEL_NAME, lora_rank=2),
            session.weights_info("acme/run-x/state-1"),
            session.list_session_checkpoints(),
            session.promote_session_checkpoint("c-1", "good-id", MODEL_NAME),
            session.delete_training_session(),
            session.create_serverless_sampler("acme/run-0123456789abcdef0123456789abcdef/c-1"),
        ]
        for call in calls:
            with pytest.raises(FiretitanError) as failed:
                await call
            seen = [failed.value, *(e for e in (failed.value.__cause__, failed.value.__context__)
                                   if e is not None)]
            for exc in seen:
                assert KEY not in str(exc) and KEY not in repr(exc), type(exc).__name__


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
async def test_sampling_clients_of_one_session_share_one_set_of_connections(
    trainer: LocalTrainer,
) -> None:
    """A long RL run makes a sampling client per publication: on a serverless session they
    share the first one's connections (a sampler each would keep a pool of idle sockets
    open until the session closes), and closing a sampler given a transport leaves it open."""
    async with ServiceSession(trainer.base_url, api_key=KEY, serverless=True) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=4)
        prompt = types.ModelInput.from_ints(TOKENS[:4])
        params = types.SamplingParams(max_tokens=2, temperature=1.0, seed=3)
        first = await session.create_sampling_client(base_model=MODEL_NAME)
        await first.sample(prompt, 1, params)
        fds = _open_fds()
        for version in range(8):  # a publication each
            saved = await client.save_weights_for_sampler(f"v{version}")
            sampler = await session.create_sampling_client(model_path=saved.path)
            assert sampler.deployment_sampler is not None
            assert sampler.deployment_sampler.model.endswith(saved.path.rsplit("/", 1)[-1])
            await sampler.sample(prompt, 1, params)
        assert _open_fds() - fds <= 2, "a new connection pool per sampling client"
        await session.delete_training_session()


    # A session given its own transport hands it to its serverless samplers: closing one of
    # them must leave the session's connections open.
    async with ServiceSession(
        trainer.base_url, api_key=KEY, serverless=True, transport=Http11Transport()
    ) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=4)
        async with await session.create_serverless_sampler(base_model=MODEL_NAME) as direct:
            await direct.sample(TOKENS[:4], max_tokens=2)
        out = await client.forward([_datum()], "cross_entropy")
        assert len(out.loss_fn_outputs) == 1
        await session.delete_training_session()
