"""``DeploymentSampler``'s rollout parameters (the Fireworks SDK's): echo and prompt logprobs,
token-id and string stops, ``max_seq_len``, a per-call timeout, routing matrices, ``ModelInput``
prompts, extra body fields, ``keepalive_expiry``; against the local deployment over real HTTP
(a mock transport only to see what would be sent when nothing may be).
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import pytest
from fireworks.training import sdk
from tinker import types

from firetitan_async import (
    DeploymentSampler,
    FixedConcurrency,
    InvalidInput,
    OperationTimeout,
    SamplingError,
)
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

MODEL = "accounts/local/deployments/rollouts"
PROMPT = list(b"once upon ")
SPACE = 32


class ByteTokenizer:
    """The local model's byte vocabulary as a tokenizer."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("latin-1")


@pytest.fixture(scope="module")
def deployment() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=0) as lt:
        httpx.post(
            f"{lt.base_url}/v1/accounts/local/deployments?deploymentId=rollouts",
            json={"baseModel": "local/tiny-byte-lm"},
        ).raise_for_status()
        yield lt


def _knobs(lt: LocalTrainer, **knobs: Any) -> None:
    httpx.post(f"{lt.base_url}/_local/inference/config", json=knobs).raise_for_status()


def _completions_served(lt: LocalTrainer) -> int:
    count: int = httpx.get(f"{lt.base_url}/_local/inference/stats").json()["completions"]
    return count


def _recording(seen: list[dict[str, Any]]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"choices": [
            {"index": 0, "text": "a", "finish_reason": "length",
             "raw_output": {"completion_token_ids": [97]}}]})

    return httpx.MockTransport(handler)


async def test_echo_returns_the_prompts_logprobs_aligned_with_the_sampled_ones(
    deployment: LocalTrainer,
) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        [plain] = await sampler.sample(PROMPT, max_tokens=8, logprobs=True, seed=4)
        [echoed] = await sampler.sample(PROMPT, max_tokens=8, logprobs=True, echo=True, seed=4)
        # the prompt + completion echoed back: the completion's logprobs (temperature 1,
        # full distribution) are the model's logprobs of those tokens in context
        whole = await sampler.compute_logprobs(plain.full_tokens)
        [many] = await sampler.sample_many([PROMPT], max_tokens=8, logprobs=True, echo=True,
                                           seed=4)
    assert (echoed.tokens, echoed.logprobs) == (plain.tokens, plain.logprobs)
    assert echoed.prompt_tokens == PROMPT and plain.prompt_logprobs is None
    assert echoed.prompt_logprobs is not None and len(echoed.prompt_logprobs) == len(PROMPT)
    assert echoed.prompt_logprobs[0] is None
    assert plain.logprobs is not None and whole[0] is None
    # float32 sums over a longer prompt: equal to ~1e-6
    assert whole[1:] == pytest.approx([*echoed.prompt_logprobs[1:], *plain.logprobs], abs=1e-5)
    assert many[0] == attrs.evolve(echoed, request_id=many[0].request_id)


async def test_token_id_stops_stop_and_string_stops_go_as_the_sdk_sends_them(
    deployment: LocalTrainer,
) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL, tokenizer=ByteTokenizer()) as s:
        stopped = await s.sample(PROMPT, n=16, max_tokens=48, stop=[SPACE], seed=11)
        free = await s.sample(PROMPT, n=16, max_tokens=48, seed=11)
    assert any(SPACE in c.tokens for c in free)  # without the stop, spaces are drawn
    for c in stopped:
        assert SPACE not in c.tokens[:-1]
        assert c.finish_reason == "stop" or len(c.tokens) == 48
    assert sum(c.tokens[-1:] == [SPACE] and c.finish_reason == "stop" for c in stopped) >= 1

    seen: list[dict[str, Any]] = []
    async with DeploymentSampler("http://127.0.0.1:1", MODEL, transport=_recording(seen),
                                 allow_insecure_http=True) as bare:
        await bare.sample(PROMPT, stop="x")
        await bare.sample(PROMPT, stop=["x", "yz"])
        with pytest.raises(InvalidInput, match="tokenizer") as info:  # no tokenizer to decode
            await bare.sample(PROMPT, stop=[SPACE])
        assert info.value.field == "stop"
        bare.tokenizer = ByteTokenizer()  # set afterwards, as on the SDK's sampler
        await bare.sample(PROMPT, stop=[SPACE])
        with pytest.raises(InvalidInput) as info:
            bare.tokenizer = object()
        assert info.value.field == "tokenizer"
    assert [b["stop"] for b in seen] == [["x"], ["x", "yz"], [" "]]


async def test_a_token_id_stop_loads_the_tokenizer_once_when_first_needed(
    deployment: LocalTrainer,
) -> None:
    loads: list[int] = []

    async def load() -> ByteTokenizer:
        loads.append(1)
        await anyio.sleep(0.01)  # concurrent first needs wait for this one load
        return ByteTokenizer()

    args: dict[str, Any] = {"max_tokens": 12, "seed": 11}
    # a given tokenizer wins: its loader is never called
    async with DeploymentSampler(deployment.base_url, MODEL, tokenizer=ByteTokenizer(),
                                 load_tokenizer=load) as given:
        free = await given.sample(PROMPT, n=3, **args)
        # an ASCII token the first completion draws: a stop that stops it
        stop = [next(t for t in free[0].tokens[1:] if 33 <= t < 127)]
        want = await given.sample(PROMPT, n=3, stop=stop, **args)
        want_streamed = [d.token async for d in given.stream(PROMPT, stop=stop, **args)]
        assert isinstance(await given.get_tokenizer(), ByteTokenizer)
    assert want[0].finish_reason == "stop" and want[0].tokens[-1] == stop[0]
    assert loads == []
    async with DeploymentSampler(deployment.base_url, MODEL, load_tokenizer=load) as lazy:
        assert lazy.tokenizer is None
        await lazy.sample(PROMPT, max_tokens=2, stop="x")  # string stops need none
        assert loads == [] and lazy.tokenizer is None
        got: list[Any] = []

        async def one() -> None:
            got.append(await lazy.sample(PROMPT, n=3, stop=stop, **args))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        [many] = await lazy.sample_many([PROMPT], n=3, stop=stop, **args)
        streamed = [d.token async for d in lazy.stream(PROMPT, stop=stop, **args)]
        assert await lazy.get_tokenizer() is lazy.tokenizer
    assert loads == [1]
    assert [[c.tokens for c in out] for out in (*got, many)] == [[c.tokens for c in want]] * 4
    assert streamed == want_streamed

    async def nothing() -> None:
        return None

    # a loader that returns no tokenizer, or no way to get one: InvalidInput, nothing sent
    seen: list[dict[str, Any]] = []
    async with DeploymentSampler("http://127.0.0.1:1", MODEL, transport=_recording(seen),
                                 allow_insecure_http=True, load_tokenizer=nothing) as bad:
        with pytest.raises(InvalidInput) as info:
            await bad.sample(PROMPT, stop=stop)
        assert info.value.field == "load_tokenizer"
    async with DeploymentSampler("http://127.0.0.1:1", MODEL, transport=_recording(seen),
                                 allow_insecure_http=True) as none:
        with pytest.raises(InvalidInput) as info:
            await none.get_tokenizer()
        assert info.value.field == "tokenizer"
    with pytest.raises(InvalidInput) as info:
        DeploymentSampler(deployment.base_url, MODEL, load_tokenizer="Qwen/Qwen3-8B")  # type: ignore[arg-type]
    assert info.value.field == "load_tokenizer"
    assert seen == []


async def test_stream_echo_yields_the_prompt_first_as_sample_echo_returns_it(
    deployment: LocalTrainer,
) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        [echoed] = await sampler.sample(PROMPT, max_tokens=8, logprobs=True, echo=True, seed=4,
                                        include_routing_matrix=True)
        deltas = [d async for d in sampler.stream(PROMPT, max_tokens=8, logprobs=True, echo=True,
                                                  seed=4, include_routing_matrix=True)]
        bare = [d async for d in sampler.stream(PROMPT, max_tokens=8, echo=True, seed=4)]
    head, *rest = deltas
    assert (head.token, head.prompt, head.text) == (None, PROMPT, bytes(PROMPT).decode())
    assert head.prompt_logprobs is not None and head.prompt_logprobs[0] is None
    assert echoed.prompt_logprobs is not None
    assert head.prompt_logprobs[1:] == pytest.approx(echoed.prompt_logprobs[1:], abs=1e-6)
    assert head.prompt_routing_matrices == echoed.prompt_routing_matrices
    assert [d.token for d in rest if d.token is not None] == echoed.tokens
    assert [d.logprob for d in rest if d.token is not None] == pytest.approx(echoed.logprobs)
    assert all(d.prompt is None for d in rest) and rest[-1].finish_reason == echoed.finish_reason
    # without logprobs: the prompt's delta without them; the same completion
    assert (bare[0].prompt, bare[0].prompt_logprobs) == (PROMPT, None)
    assert [d.token for d in bare[1:]] == [d.token for d in rest]


async def test_max_seq_len_sends_nothing_for_a_full_prompt_and_drops_long_completions(
    deployment: LocalTrainer,
) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        before = _completions_served(deployment)
        assert await sampler.sample(PROMPT, max_seq_len=len(PROMPT)) == []
        assert _completions_served(deployment) == before  # no request
        free = await sampler.sample(PROMPT, n=16, max_tokens=12, seed=5)
        kept = await sampler.sample(PROMPT, n=16, max_tokens=12, seed=5,
                                    max_seq_len=len(PROMPT) + 6)
    short = [c.tokens for c in free if len(c.tokens) <= 6]
    assert [c.tokens for c in kept] == short and len(short) < len(free)


async def test_a_per_call_timeout_ends_that_call_only(deployment: LocalTrainer) -> None:
    _knobs(deployment, latency_s=2.0)
    try:
        window = FixedConcurrency(2)
        async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
            started = time.monotonic()
            with pytest.raises(OperationTimeout) as info:
                await sampler.sample(PROMPT, max_tokens=2, timeout=0.1)
            assert time.monotonic() - started < 1.0
            assert info.value.operation == "sample" and info.value.budget_s == 0.1
            assert info.value.request_id
            with pytest.raises(OperationTimeout):
                await sampler.sample_many([PROMPT, PROMPT], max_tokens=2, timeout=0.1)
            with pytest.raises(OperationTimeout) as streamed:
                async for _ in sampler.stream(PROMPT, max_tokens=2, timeout=0.1):
                    pass
            assert streamed.value.operation == "stream"
            assert window.in_flight == 0  # every slot given back
            _knobs(deployment, latency_s=0.15)
            [c] = await sampler.sample(PROMPT, max_tokens=2)  # no timeout: it waits
            assert len(c.tokens) == 2
    finally:
        _knobs(deployment, latency_s=0.0)


async def test_routing_matrices_come_back_per_token_when_asked(
    deployment: LocalTrainer,
) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        [plain] = await sampler.sample(PROMPT, max_tokens=6, seed=2)
        [routed] = await sampler.sample(PROMPT, max_tokens=6, seed=2,
                                        include_routing_matrix=True)
        [echoed] = await sampler.sample(PROMPT, max_tokens=6, seed=2, echo=True,
                                        include_routing_matrix=True)
        streamed = [d async for d in sampler.stream(PROMPT, max_tokens=6, seed=2,
                                                    include_routing_matrix=True)]
    assert plain.routing_matrices is None and routed.tokens == plain.tokens
    assert routed.routing_matrices is not None and len(routed.routing_matrices) == 6
    assert all(len(base64.b64decode(m, validate=True)) == 2 for m in routed.routing_matrices)
    assert echoed.routing_matrices == routed.routing_matrices
    assert echoed.prompt_routing_matrices is not None
    assert len(echoed.prompt_routing_matrices) == len(PROMPT)
    assert [d.routing_matrix for d in streamed if d.token is not None] == (
        routed.routing_matrices
    )


async def test_a_model_input_is_a_prompt(deployment: LocalTrainer) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        [listed] = await sampler.sample(PROMPT, max_tokens=5, seed=8)
        [tinkers] = await sampler.sample(types.ModelInput.from_ints(PROMPT), max_tokens=5, seed=8)
        [fireworks] = await sampler.sample(sdk.ModelInput.from_ints(PROMPT), max_tokens=5,
                                           seed=8)
        deltas = [d.token async for d in sampler.stream(types.ModelInput.from_ints(PROMPT),
                                                        max_tokens=5, seed=8)]
        image = types.ModelInput(chunks=[types.ImageChunk(data=b"\x89PNG", format="png")])
        with pytest.raises(InvalidInput) as info:
            await sampler.sample(image, max_tokens=5)
        assert info.value.field == "prompt"
    assert listed.full_tokens == tinkers.full_tokens == fireworks.full_tokens
    assert [t for t in deltas if t is not None] == listed.tokens


async def test_every_parameter_reaches_the_body_and_bad_ones_are_refused_first() -> None:
    seen: list[dict[str, Any]] = []
    async with DeploymentSampler("http://127.0.0.1:1", MODEL, transport=_recording(seen),
                                 allow_insecure_http=True) as sampler:
        await sampler.sample(PROMPT)
        with pytest.raises(SamplingError, match="prompt"):  # the mock's reply is no echo
            await sampler.sample(PROMPT, n=2, max_tokens=7, temperature=0.5, top_p=0.9,
                                 top_k=40, logprobs=False, echo=True, prompt_cache_key="conv-1",
                                 seed=3, include_routing_matrix=False, user="u1",
                                 top_logprobs=2)
        with pytest.raises(SamplingError, match=r"logprobs\.content"):  # nor matrices
            await sampler.sample(PROMPT, include_routing_matrix=True)
        before = len(seen)
        for kwargs, field in (
            ({"top_k": -2}, "top_k"),
            ({"max_seq_len": 0}, "max_seq_len"),
            ({"prompt_cache_key": ""}, "prompt_cache_key"),
            ({"stop": [1, "a"]}, "stop"),
            ({"timeout": 0}, "timeout"),
            ({"model": "other"}, "model"),
            ({"raw_output": False}, "raw_output"),
            ({"user": object()}, "user"),
        ):
            with pytest.raises(InvalidInput) as info:
                await sampler.sample(PROMPT, **kwargs)
            assert info.value.field == field
        with pytest.raises(InvalidInput) as info:
            await sampler.sample_many([PROMPT, [1, -2]], prompt_cache_key="k")
        assert info.value.field == "prompts[1][1]"
    assert len(seen) == before == 3
    defaults, full, routed = seen
    # the SDK's defaults: top_k 0 on purpose, top_p 1, temperature 1, max_tokens 1024
    assert defaults == {"model": MODEL, "prompt": PROMPT, "n": 1, "max_tokens": 1024,
                        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "raw_output": True,
                        "stream": False}
    assert full == {**defaults, "n": 2, "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
                    "top_k": 40, "echo": True, "prompt_cache_key": "conv-1", "seed": 3,
                    "user": "u1", "top_logprobs": 2}
    assert routed == {**defaults, "include_routing_matrix": True}


def test_bad_keepalive_expiry_or_tokenizer_is_refused() -> None:
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(InvalidInput) as info:
            DeploymentSampler("http://127.0.0.1:1", MODEL, keepalive_expiry=bad,
                              allow_insecure_http=True)
        assert info.value.field == "keepalive_expiry"
    with pytest.raises(InvalidInput) as info:
        DeploymentSampler("http://127.0.0.1:1", MODEL, tokenizer=object(),
                          allow_insecure_http=True)
    assert info.value.field == "tokenizer"


@pytest.mark.parametrize("expiry, connections", [(0.05, 2), (30.0, 1)])
async def test_an_idle_connection_older_than_keepalive_expiry_is_not_reused(
    expiry: float, connections: int
) -> None:
    body = json.dumps({"choices": [{"index": 0, "text": "a", "finish_reason": "length",
                                    "raw_output": {"completion_token_ids": [97]}}]}).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    opened: list[int] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        opened.append(1)
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    data = b""
                    while not data.endswith(b"}"):  # the JSON request body has arrived
                        data += await stream.receive()
                    await stream.send(head.encode() + b"\r\n\r\n" + body)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        async with DeploymentSampler(f"http://127.0.0.1:{port}", MODEL, keepalive_expiry=expiry,
                                     allow_insecure_http=True) as sampler:
            await sampler.sample(PROMPT, max_tokens=1)
            await anyio.sleep(0.15)
            await sampler.sample(PROMPT, max_tokens=1)
        tg.cancel_scope.cancel()
    assert len(opened) == connections
