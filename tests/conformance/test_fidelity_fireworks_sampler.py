"""The deployment sampler's parameters, against the Fireworks SDK 1.2.30's ``DeploymentSampler``.

Conformance: the unmodified SDK sampler runs with every parameter it sends (``echo`` with
logprobs, token-id ``stop`` decoded by its tokenizer, ``max_seq_len``, ``prompt_cache_key``,
``include_routing_matrix``, ``seed``, an extra body field, a per-request ``http_timeout``) and
``FiretitanSamplingClient.compute_logprobs`` against a key-protected ``LocalTrainer``, and gets
what ours gets. Fidelity: the same call through ``DeploymentSampler.sample`` (asyncio and
trio; the SDK, asyncio-only, on a thread of its own) behind a recording proxy, request by
request. Differences (asserted below, so the list stays true):

* bodies: the SDK sends ``n`` requests of ``n: 1`` over SSE (``stream: true``,
  ``perf_metrics_in_response: true``); ``sample`` sends one request with ``n`` and reads JSON
  (``stream: false``). Every other field is identical: ``top_k: 0``, ``top_p``,
  ``raw_output``, ``logprobs``, ``echo``, ``stop`` (token ids decoded to the same strings),
  ``prompt_cache_key``, ``seed``, ``include_routing_matrix`` and the extra field.
* headers: both send ``Authorization``, ``X-Api-Key``, ``Content-Type: application/json``,
  ``User-Agent`` and an ``x-request-id``. The SDK's httpx client adds ``Accept: */*``,
  ``Accept-Encoding`` and ``Connection: keep-alive``; ours sends ``Accept: application/json``
  (what it reads), no ``Accept-Encoding`` (replies are not compressed for it to inflate) and
  no ``Connection`` (keep-alive is HTTP/1.1's default).
* ``max_seq_len`` and the per-call timeout are not on the wire on either side: a prompt that
  already fills ``max_seq_len`` sends nothing, longer completions are dropped after the reply.
* ``stream`` (with ``echo``) sends the SDK's streamed body but ``perf_metrics_in_response``,
  and reads the echoed prompt's rows off the head of the stream as the SDK does: its first
  delta's ``prompt_logprobs`` (the first None) are the SDK's first ``P - 1`` rows.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from fireworks.training import sdk

from firetitan_async import DeploymentSampler
from firetitan_async.local import LocalTrainer
from firetitan_async.local._recorder import Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.conformance]

KEY = "fw_local_sampler_fidelity_0001"
MODEL = "accounts/local/deployments/rollouts"
PROMPT = list(b"once upon ")
# Every parameter the SDK sends for a rollout (max_seq_len is the SDK's client-side filter;
# "user" stands for any extra body field, the SDK's **kwargs and our **extra).
ARGS: dict[str, Any] = {
    "max_tokens": 6, "temperature": 1.0, "top_p": 1.0, "logprobs": True, "echo": True,
    "include_routing_matrix": True, "stop": [32], "prompt_cache_key": "rollout-7", "seed": 3,
    "max_seq_len": 64, "user": "u1",
}
SDK_ONLY_HEADERS = {"accept-encoding", "connection"}


class ByteTokenizer:
    """The local model's byte vocabulary as a tokenizer (the SDK decodes token-id stops)."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("latin-1")


@pytest.fixture
def sides() -> Iterator[tuple[LocalTrainer, Recorder]]:
    with LocalTrainer(api_key=KEY, seed=2) as lt, Recorder(lt.base_url) as rec:
        httpx.post(
            f"{lt.base_url}/v1/accounts/local/deployments?deploymentId=rollouts",
            json={"baseModel": "local/tiny-byte-lm"}, headers={"X-Api-Key": KEY},
        ).raise_for_status()
        yield lt, rec


def _sdk_run(url: str) -> tuple[list[Any], list[Any], list[float | None]]:
    """The SDK's sampler with every parameter, a prompt at max_seq_len, and the sampling
    client's compute_logprobs; on a thread of its own (the SDK is asyncio-only)."""

    async def run() -> tuple[list[Any], list[Any]]:
        sampler = sdk.DeploymentSampler(
            inference_url=url, model=MODEL, api_key=KEY, tokenizer=ByteTokenizer(),
            concurrency_controller=sdk.FixedConcurrencyController(2),
        )
        try:
            got = await sampler.sample_with_prompt_tokens(PROMPT, n=2, http_timeout=30, **ARGS)
            none = await sampler.sample_with_prompt_tokens(PROMPT, max_seq_len=len(PROMPT))
        finally:
            sampler.close()
        return got, none

    got, none = asyncio.run(run())
    client = sdk.FiretitanSamplingClient(
        sdk.DeploymentSampler(inference_url=url, model=MODEL, api_key=KEY)
    )
    try:
        with warnings.catch_warnings():  # "use training_client.forward() instead"
            warnings.simplefilter("ignore", UserWarning)
            future = client.compute_logprobs(sdk.ModelInput.from_ints(PROMPT))
            logprobs = future.result(timeout=60)
    finally:
        client.close()  # its event-loop thread
    return got, none, list(logprobs)


async def test_the_sdks_sampler_and_ours_send_and_get_the_same(
    sides: tuple[LocalTrainer, Recorder],
) -> None:
    _, rec = sides
    theirs, theirs_none, their_logprobs = await anyio.to_thread.run_sync(_sdk_run, rec.base_url)
    sdk_records = rec.take()
    async with DeploymentSampler(rec.base_url, MODEL, KEY, tokenizer=ByteTokenizer()) as ours:
        mine = await ours.sample(PROMPT, n=2, timeout=30, **ARGS)
        assert await ours.sample(PROMPT, max_seq_len=len(PROMPT)) == []
        my_logprobs = await ours.compute_logprobs(PROMPT)
        # n=1 with the seed draws what each of the SDK's n=1 requests drew
        [single] = await ours.sample(PROMPT, timeout=30, **ARGS)
        head, *streamed = [d async for d in ours.stream(PROMPT, timeout=30, **ARGS)]
    our_records = rec.take()

    # conformance: the SDK ran every parameter against the local deployment
    assert theirs_none == [] and len(theirs) == 2
    p = len(PROMPT)
    assert single.prompt_logprobs is not None and single.prompt_routing_matrices is not None
    for completion in theirs:
        c = completion.completion_len
        assert completion.logprobs_echoed and completion.prompt_len == p
        assert completion.full_tokens == single.full_tokens
        # echo: P+C-1 training-aligned rows (the first, context-free row dropped)
        assert len(completion.inference_logprobs) == p + c - 1
        assert completion.inference_logprobs[: p - 1] == single.prompt_logprobs[1:]
        assert completion.sampling_logprobs[p - 1 :] == single.logprobs
        assert completion.routing_matrices[p - 1 :] == single.routing_matrices
        assert completion.routing_matrices[: p - 1] == single.prompt_routing_matrices[1:]
    assert their_logprobs == my_logprobs and my_logprobs[0] is None and len(my_logprobs) == p
    # stream(echo=True): the prompt's delta first, then the tokens the SDK's stream held
    first = theirs[0]
    assert head.prompt == PROMPT and head.prompt_logprobs is not None
    assert head.prompt_logprobs[1:] == first.inference_logprobs[: p - 1]
    assert head.prompt_routing_matrices is not None
    assert head.prompt_routing_matrices[1:] == first.routing_matrices[: p - 1]
    assert [d.token for d in streamed if d.token is not None] == single.tokens
    assert [d.logprob for d in streamed if d.token is not None] == (
        first.sampling_logprobs[p - 1 :]
    )

    # fidelity: request by request
    sdk_samples, sdk_logprobs = sdk_records[:2], sdk_records[2]
    our_sample, our_logprobs = our_records[0], our_records[1]
    assert len(sdk_records) == 3  # nothing was sent for the prompt at max_seq_len
    assert sdk_samples[0].body == sdk_samples[1].body
    wire = {"n": (1, 2), "stream": (True, False), "perf_metrics_in_response": (True, None)}
    assert _differences(sdk_samples[0].body, our_sample.body) == wire
    assert sdk_samples[0].body["stop"] == [" "] and our_sample.body["top_k"] == 0
    del wire["n"]
    assert _differences(sdk_logprobs.body, our_logprobs.body) == wire
    our_stream = our_records[3]
    assert _differences(sdk_samples[0].body, our_stream.body) == {
        "perf_metrics_in_response": (True, None)
    }
    for mine_ex, sdk_ex in ((our_sample, sdk_samples[0]), (our_logprobs, sdk_logprobs)):
        assert sdk_ex.header_names - mine_ex.header_names == SDK_ONLY_HEADERS
        assert mine_ex.header_names <= sdk_ex.header_names
        assert {"authorization", "x-api-key", "x-request-id", "user-agent"} <= (
            mine_ex.header_names
        )
        assert mine_ex.headers["content-type"] == sdk_ex.headers["content-type"]
        assert (sdk_ex.headers["accept"], mine_ex.headers["accept"]) == ("*/*",
                                                                         "application/json")
    assert len(mine) == 2 and all(c.prompt_tokens == PROMPT for c in mine)


def _differences(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    keys = set(theirs) | set(ours)
    return {k: (theirs.get(k), ours.get(k)) for k in keys if theirs.get(k) != ours.get(k)}
