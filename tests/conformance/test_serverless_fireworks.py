"""Fireworks serverless: the unmodified SDK (1.2.30) runs its serverless flow against the local
trainer (conformance), and ``firetitan_async`` sends the same requests (fidelity).

The flow, both sides: a service on ``…/training/v1/serverless`` (a ``ts-`` session), a LoRA
model, one ``forward_backward`` and ``optim_step``, a sampler save and a state save, a sample
through the serverless completions endpoint with the session-checkpoint model, the session's
checkpoint list and a promotion, then a second service that samples the first one's checkpoint
through a standalone route (``create_sampling_route``), reads ``weights_info`` and loads the
state, and both sessions deleted. Each runs behind a recording proxy; the requests are
compared in order, with the random ids (sessions, runs, request ids, name suffixes) replaced
by their role.

Deliberate differences (asserted below, so the list stays true):

* the account lookup (``GET /v1/accounts``, once per service on both sides) comes when the
  account is first needed; the SDK looks it up right after ``create_model`` (to name the run).
* the completions body: only ``model`` and ``prompt`` are compared; the SDK's
  ``FiretitanSamplingClient.sample`` streams with its defaults, ours is
  ``DeploymentSampler.sample`` (its parameters are held to the SDK's sampler elsewhere).
* the SDK resolves the control plane from ``$FIREWORKS_BASE_URL`` (default
  ``api.fireworks.ai``); we take the serverless URL without its suffix (the same host for
  Fireworks' own URL). The test sets the variable for the SDK.
* the SDK sends Stainless headers (``x-stainless-*``) and none of ``x-tinker-request-*`` on
  polls; headers are not compared here (``test_wire_fidelity_fireworks.py`` holds the session
  wire).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import numpy as np
import pytest
from fireworks.training import sdk
from fireworks.training.sdk.fireworks_client import FireworksClient
from tinker import types

from firetitan_async import ServiceSession
from firetitan_async.local import LocalTrainer, sft_datum
from firetitan_async.local._model import MODEL_NAME
from firetitan_async.local._recorder import RecordedExchange, Recorder

pytestmark = pytest.mark.conformance

KEY = "fw_local_serverless_conformance_01"
TOKENS = list(b"hello serverless")
_IDS = (
    (re.compile(r"ts-[0-9a-f]{16}"), "ts"),
    (re.compile(r"run-[0-9a-f]{32}"), "run"),
    (re.compile(r"req-[0-9a-f]+-\d+"), "req"),
    (re.compile(r"(?<=step-1-)[0-9a-f]{8}"), "sfx"),
)


def _sdk_datum() -> Any:
    return sdk.Datum(
        model_input=sdk.ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={
            "target_tokens": sdk.TensorData.from_numpy(np.asarray(TOKENS[1:], np.int64)),
            "weights": sdk.TensorData.from_numpy(np.ones(len(TOKENS) - 1, np.float32)),
        },
    )


def _sdk_flow(url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("FIREWORKS_BASE_URL", url)
    service = sdk.FiretitanServiceClient(api_key=KEY, base_url=url + "/training/v1/serverless")
    client = service.create_lora_training_client(MODEL_NAME, rank=4)
    fb = client.forward_backward([_sdk_datum()], "cross_entropy").result()
    client.optim_step(sdk.AdamParams(learning_rate=1e-2)).result()
    saved = client.save_weights_for_sampler("step-1").result()
    state = client.save_state("state-1").result()
    sampler = service.create_sampling_client(model_path=saved.path)
    sample = sampler.sample(
        sdk.ModelInput.from_ints([1, 2, 3]), num_samples=1,
        sampling_params=sdk.SamplingParams(max_tokens=4, temperature=1.0, seed=7),
        include_prompt_logprobs=True,
    ).result()
    with warnings.catch_warnings():  # the SDK recommends forward() for logprobs
        warnings.simplefilter("ignore", UserWarning)
        logprobs = sampler.compute_logprobs(sdk.ModelInput.from_ints([1, 2, 3])).result()
    base = service.create_sampling_client(base_model=MODEL_NAME).sample(
        sdk.ModelInput.from_ints([4, 5]), num_samples=1,
        sampling_params=sdk.SamplingParams(max_tokens=2),
    ).result()
    control = FireworksClient(api_key=KEY, base_url=url)
    rows = control.list_training_session_checkpoints(service.training_session_name)
    promotable = [r for r in rows if r["promotable"]]
    model = control.promote_session_checkpoint(promotable[-1]["name"], "promoted-one", MODEL_NAME)
    second = sdk.FiretitanServiceClient(api_key=KEY, base_url=url + "/training/v1/serverless")
    # Another service's checkpoint: a standalone route (create_sampling_route), then sampling.
    standalone = second.create_sampling_client(model_path=saved.path).sample(
        sdk.ModelInput.from_ints([1, 2, 3]), num_samples=1,
        sampling_params=sdk.SamplingParams(max_tokens=2, temperature=1.0),
    ).result()
    resumed = second.create_training_client_from_state(state.path)
    second.delete_training_session()
    service.delete_training_session()
    return {
        "session": service.training_session_id, "second": second.training_session_id,
        "loss": fb.metrics["loss:sum"], "saved": saved.path, "state": state.path,
        "tokens": sample.sequences[0].tokens, "rows": rows, "model": model,
        "resumed": resumed.model_id, "standalone": standalone.sequences[0].tokens,
        "prompt_logprobs": sample.prompt_logprobs, "logprobs": logprobs,
        "base": base.sequences[0].tokens,
    }


async def _our_flow(url: str) -> dict[str, Any]:
    async with ServiceSession(url, api_key=KEY, serverless=True) as session:
        client = await session.create_training_client(MODEL_NAME, lora_rank=4)
        await client.forward_backward([sft_datum(bytes(TOKENS))], "cross_entropy")
        await client.optim_step(types.AdamParams(learning_rate=1e-2))
        saved = await client.save_weights_for_sampler("step-1")
        state = await client.save_state("state-1")
        # The SDK's calls, tinker-shaped: create_sampling_client, sample, compute_logprobs.
        sampler = await session.create_sampling_client(model_path=saved.path)
        sample = await sampler.sample(
            types.ModelInput.from_ints([1, 2, 3]), 1,
            types.SamplingParams(max_tokens=4, temperature=1.0, seed=7),
            include_prompt_logprobs=True,
        )
        logprobs = await sampler.compute_logprobs(types.ModelInput.from_ints([1, 2, 3]))
        base = await session.create_sampling_client(base_model=MODEL_NAME)
        await base.sample(types.ModelInput.from_ints([4, 5]), 1, types.SamplingParams(max_tokens=2))
        rows = await session.list_session_checkpoints()
        promotable = [r for r in rows if r.promotable]
        await session.promote_session_checkpoint(promotable[-1], "promoted-one", MODEL_NAME)
        async with ServiceSession(url, api_key=KEY, serverless=True) as second:
            standalone = await second.create_sampling_client(model_path=saved.path)
            await standalone.sample(types.ModelInput.from_ints([1, 2, 3]), 1,
                                    types.SamplingParams(max_tokens=2, temperature=1.0))
            info = await second.weights_info(state.path)
            resumed = await second.create_training_client(
                info.base_model, lora_rank=info.lora_rank or 0
            )
            await resumed.load_state(state.path)
            await second.delete_training_session()
        await session.delete_training_session()
    return {"tokens": list(sample.sequences[0].tokens), "logprobs": logprobs,
            "prompt_logprobs": sample.prompt_logprobs}


# What the SDK's completions body adds because it streams (SSE), and ours does not.
_STREAMING = ("stream", "perf_metrics_in_response")


def _by_role(name: Callable[[str, str], str], role: str, match: re.Match[str]) -> str:
    return name(match.group(0), role)


def _normalized(records: tuple[RecordedExchange, ...]) -> list[tuple[Any, ...]]:
    """The requests in order, random ids by role (first seen = 1), completions bodies without
    the SDK's streaming fields (``stream``, ``perf_metrics_in_response``)."""
    seen: dict[str, str] = {}
    counts: dict[str, int] = {}

    def name(found: str, role: str) -> str:
        if found not in seen:
            counts[role] = counts.get(role, 0) + 1
            seen[found] = f"<{role}{counts[role]}>"
        return seen[found]

    def sub(value: Any) -> Any:
        if isinstance(value, str):
            for pattern, role in _IDS:
                value = pattern.sub(partial(_by_role, name, role), value)
            return value
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [sub(v) for v in value]
        return value

    rows = []
    for ex in records:
        body = ex.body
        if ex.path.endswith("/inference/v1/completions"):
            body = {k: v for k, v in body.items() if k not in _STREAMING}
        rows.append((ex.method, sub(ex.path), sub(ex.query), sub(body)))
    return rows


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(api_key=KEY, seed=3) as lt:
        yield lt


@pytest.fixture(scope="module")
def sdk_run() -> Iterator[tuple[dict[str, Any], list[tuple[Any, ...]]]]:
    """The SDK's flow, run once (it is synchronous: outside any event loop), recorded."""
    with pytest.MonkeyPatch.context() as mp, LocalTrainer(api_key=KEY, seed=3) as lt, Recorder(
        lt.base_url
    ) as rec:
        result = _sdk_flow(rec.base_url, mp)
        yield result, _normalized(rec.records)


def test_the_sdks_serverless_flow_runs_against_the_local_trainer(
    sdk_run: tuple[dict[str, Any], list[tuple[Any, ...]]],
) -> None:
    result, _ = sdk_run
    assert result["session"].startswith("ts-") and result["second"].startswith("ts-")
    assert result["session"] != result["second"]
    assert result["loss"] > 0
    # The gateway's path forms: <account>/<run-32 hex>/<name>, which the SDK accepts.
    assert re.fullmatch(r"local/run-[0-9a-f]{32}/step-1-[0-9a-f]{8}", result["saved"])
    assert re.fullmatch(r"local/run-[0-9a-f]{32}/state-1", result["state"])
    assert len(result["tokens"]) == 4
    names = [r["name"].rsplit("/", 1)[1] for r in result["rows"]]
    assert names == [result["saved"].rsplit("/", 1)[1], "state-1"]  # oldest first
    assert [r["promotable"] for r in result["rows"]] == [True, False]
    assert result["model"]["name"] == "accounts/local/models/promoted-one"
    assert result["model"]["peftDetails"]["r"] == 4
    assert re.fullmatch(r"run-[0-9a-f]{32}:train:0", result["resumed"])
    assert len(result["standalone"]) == 2


def test_the_sdks_capacity_409_retry_is_opt_in(trainer: LocalTrainer) -> None:
    url = trainer.base_url + "/training/v1/serverless"
    knob = {"X-API-Key": KEY}
    datum = _sdk_datum()
    plain = sdk.FiretitanServiceClient(api_key=KEY, base_url=url)
    client = plain.create_lora_training_client(MODEL_NAME, rank=4)
    httpx.post(trainer.base_url + "/_local/serverless", json={"capacity_409": 1}, headers=knob)
    with pytest.raises(Exception, match="409"):
        client.forward_backward([datum], "cross_entropy").result()
    opted = sdk.FiretitanServiceClient(api_key=KEY, base_url=url)
    opted._enable_serverless_supervised_409_retry()
    client = opted.create_lora_training_client(MODEL_NAME, rank=4)
    httpx.post(trainer.base_url + "/_local/serverless", json={"capacity_409": 1}, headers=knob)
    assert client.forward_backward([datum], "cross_entropy").result().metrics["loss:sum"] > 0
    # The knob is spent (the unauthenticated hook is refused: /_local/ needs the key).
    assert httpx.post(trainer.base_url + "/_local/serverless", json={}).status_code == 401
    reply = httpx.post(trainer.base_url + "/_local/serverless", json={}, headers=knob).json()
    assert reply == {"capacity_409": 0, "bare": False}


@pytest.mark.anyio
async def test_our_serverless_requests_match_the_sdks(
    sdk_run: tuple[dict[str, Any], list[tuple[Any, ...]]],
) -> None:
    result, theirs = sdk_run
    with LocalTrainer(api_key=KEY, seed=3) as lt, Recorder(lt.base_url) as rec:
        got = await _our_flow(rec.base_url)
        ours = _normalized(rec.records)
        streamed = [ex.body for ex in rec.records if ex.path.endswith("/completions")]
    assert all(body["stream"] is False and "perf_metrics_in_response" not in body
               for body in streamed)
    # The same seeded sample and prompt logprobs from the same weights.
    assert got["tokens"] == list(result["tokens"])
    np.testing.assert_allclose(
        np.asarray(got["prompt_logprobs"][1:]), np.asarray(result["prompt_logprobs"][1:]),
        rtol=1e-6,
    )
    assert got["logprobs"][0] is None and result["logprobs"][0] is None
    np.testing.assert_allclose(got["logprobs"][1:], result["logprobs"][1:], rtol=1e-6)
    # The account lookups: once per service on both sides, at different moments.
    accounts = ("GET", "/v1/accounts", [["pageSize", "2"]], None)
    assert [r for r in ours if r[1] == "/v1/accounts"] == [accounts, accounts]
    assert [r for r in theirs if r[1] == "/v1/accounts"] == [accounts, accounts]
    assert [r for r in ours if r[1] != "/v1/accounts"] == [
        r for r in theirs if r[1] != "/v1/accounts"
    ]
    kinds = [r[1].rsplit("/", 1)[-1] for r in ours]
    assert kinds.count("completions") == 4 and kinds.count("create_sampling_route") == 1
    assert "create_sampling_session" not in kinds and "asample" not in kinds
    assert {"create_session", "weights_info", "<ts1>", "<ts2>"} <= set(kinds)  # DELETEs
