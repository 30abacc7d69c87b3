"""DeploymentSampler and the concurrency controllers.

Against the local deployment (real HTTP on loopback) for load, streaming and the event loop;
``httpx.MockTransport`` only for fault shapes the local server does not produce (425 while a
hot-load lands, a server echoing the key).
"""

from __future__ import annotations

import contextvars
import functools
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pytest

from firetitan_async import (
    AdaptiveConcurrency,
    DeploymentSampler,
    FixedConcurrency,
    InvalidInput,
    Observation,
    RetryPolicy,
    SampledCompletion,
    SamplingError,
)
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

MODEL = "accounts/local/deployments/rollouts"
PROMPT = list(b"once upon ")
KEY = "fw-secret-key-1234567890"


@pytest.fixture
def deployment() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=0) as lt:
        httpx.post(
            f"{lt.base_url}/v1/accounts/local/deployments?deploymentId=rollouts",
            json={"baseModel": "local/tiny-byte-lm"},
        ).raise_for_status()
        yield lt


def _knobs(lt: LocalTrainer, **knobs: Any) -> None:
    httpx.post(f"{lt.base_url}/_local/inference/config", json=knobs).raise_for_status()


def _server_stats(lt: LocalTrainer) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(f"{lt.base_url}/_local/inference/stats").json()
    return reply


async def test_2000_concurrent_rollouts_complete_with_the_adaptive_window_holding_under_429(
    deployment: LocalTrainer,
) -> None:
    limit = 16
    _knobs(deployment, max_concurrency=limit, latency_s=0.01)
    window = AdaptiveConcurrency(initial=64, max_window=512, cooldown_s=0.05)
    results: list[int] = []
    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:

        async def one(i: int) -> None:
            [c] = await sampler.sample(PROMPT, max_tokens=1, seed=i)
            results.append(len(c.tokens))

        async with anyio.create_task_group() as tg:
            for i in range(2000):
                tg.start_soon(one, i)
    stats = window.stats()
    server = _server_stats(deployment)
    assert len(results) == 2000 and all(n == 1 for n in results)
    assert server["completions"] == 2000 and server["max_in_flight"] <= limit
    # The window started 4x too wide, shrank to the server's limit on the first 429s and held
    # there: few rejections in all, never wider than it started, and near the limit at the end.
    assert stats["shrinks"] >= 2
    assert stats["peak_window"] <= 64 and window.window <= 2 * limit
    assert server["rejected_429"] < 0.25 * 2000
    assert window.in_flight == 0


async def test_a_fixed_window_bounds_requests_in_flight(deployment: LocalTrainer) -> None:
    # One token a request (the default, 1,024, cost 2.5-3 s of sampling): the 50 ms latency
    # keeps each request in flight while the next ones arrive.
    _knobs(deployment, latency_s=0.05)
    window = FixedConcurrency(7)
    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(functools.partial(sampler.sample, PROMPT, max_tokens=1))
    assert window.max_in_flight == 7 == _server_stats(deployment)["max_in_flight"]


async def test_stream_yields_the_same_tokens_as_sample(deployment: LocalTrainer) -> None:
    async with DeploymentSampler(deployment.base_url, MODEL) as sampler:
        [whole] = await sampler.sample(PROMPT, max_tokens=10, logprobs=True, seed=3)
        deltas = [d async for d in sampler.stream(PROMPT, max_tokens=10, logprobs=True, seed=3)]
    assert [d.token for d in deltas if d.token is not None] == whole.tokens
    assert [d.logprob for d in deltas if d.token is not None] == whole.logprobs
    assert deltas[-1].finish_reason == whole.finish_reason and deltas[-1].token is None


async def test_hundreds_of_rollouts_in_flight_do_not_block_the_event_loop(
    deployment: LocalTrainer,
) -> None:
    # Each reply takes 2 s: any synchronous request would stall the loop that long. The bound
    # leaves room for the scheduling gaps of a loaded 2-core machine (the benchmark measures
    # the stall itself, in a quiet client process).
    _knobs(deployment, latency_s=2.0)
    worst = 0.0
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.perf_counter()
            worst = max(worst, now - last - 0.005)
            last = now

    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=1024) as sampler:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            with anyio.fail_after(30):  # 200 requests run side by side in ~2 s, not 400 s
                async with anyio.create_task_group() as rollouts:
                    for _ in range(200):
                        rollouts.start_soon(
                            functools.partial(sampler.sample, PROMPT, max_tokens=1)
                        )
            done.set()
    assert worst < 1.5, f"the event loop stalled {worst * 1000:.0f} ms"


def _mock(replies: list[httpx.Response], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return replies.pop(0)

    return httpx.MockTransport(handler)


def _ok(version: str = "snap-1") -> httpx.Response:
    body = {"choices": [{"index": 0, "text": "a", "finish_reason": "length",
                         "raw_output": {"completion_token_ids": [97]}}]}
    return httpx.Response(200, json=body, headers={"fireworks-snapshot-identity": version})


async def test_404_and_425_while_hot_loading_are_retried_within_a_bound() -> None:
    seen: list[httpx.Request] = []
    replies = [httpx.Response(425), httpx.Response(404), _ok()]
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, KEY, transport=_mock(replies, seen),
        hotload_retry_interval_s=0.01,
    ) as sampler:
        [c] = await sampler.sample(PROMPT)
        assert c.tokens == [97] and c.policy_version == "snap-1"
        assert len({r.headers["x-request-id"] for r in seen}) == 1 and len(seen) == 3
        assert seen[0].headers["authorization"] == f"Bearer {KEY}"
        seen.clear()
        replies[:] = [httpx.Response(425)] * 3
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, KEY, transport=_mock(replies, seen),
        hotload_retry_interval_s=0.01, hotload_max_retries=2,
    ) as sampler:
        with pytest.raises(SamplingError) as info:
            await sampler.sample(PROMPT)
    assert info.value.status_code == 425 and info.value.attempts == 3
    assert info.value.request_id == seen[0].headers["x-request-id"]


async def test_a_final_error_carries_the_request_id_and_never_the_key() -> None:
    seen: list[httpx.Request] = []
    echo = httpx.Response(400, json={"error": f"bad key {KEY}"}, headers={"x-request-id": "srv-9"})
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, KEY, transport=_mock([echo], seen)
    ) as sampler:
        with pytest.raises(SamplingError) as info:
            await sampler.sample(PROMPT)
    err = info.value
    assert (err.status_code, err.attempts, err.server_request_id) == (400, 1, "srv-9")
    assert err.request_id == seen[0].headers["x-request-id"]
    assert KEY not in str(err) and KEY not in repr(sampler)


async def test_429_is_retried_with_the_slot_given_back() -> None:
    seen: list[httpx.Request] = []
    window = FixedConcurrency(1)
    replies = [httpx.Response(429, headers={"retry-after-ms": "1"}), _ok()]
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, transport=_mock(replies, seen), concurrency=window,
        retry=RetryPolicy(max_attempts=3, backoff_base_s=0.001),
    ) as sampler:
        assert len(await sampler.sample(PROMPT)) == 1
    assert len(seen) == 2 and window.in_flight == 0


async def test_streams_over_capacity_are_retried_and_hold_a_slot_only_while_streaming(
    deployment: LocalTrainer,
) -> None:
    # The deployment serves one request at a time (429 beyond): eight concurrent streams
    # through a window of 4 are retried by the one loop until each gets its turn.
    _knobs(deployment, latency_s=0.005, max_concurrency=1)
    window = FixedConcurrency(4)
    held: list[int] = []
    retry = RetryPolicy(max_attempts=200, backoff_base_s=0.001, backoff_cap_s=0.01)
    async with DeploymentSampler(
        deployment.base_url, MODEL, concurrency=window, retry=retry
    ) as sampler:
        [whole] = await sampler.sample(PROMPT, max_tokens=6, seed=1)

        async def one() -> None:
            tokens = []
            async for delta in sampler.stream(PROMPT, max_tokens=6, seed=1):
                held.append(window.in_flight)
                if delta.token is not None:
                    tokens.append(delta.token)
            assert tokens == whole.tokens

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(one)
    assert _server_stats(deployment)["rejected_429"] > 0  # the 429s happened and were retried
    assert min(held) >= 1 and window.in_flight == 0  # held while streaming, given back after


async def test_a_connection_failure_is_a_sampling_error_after_the_policy_s_attempts() -> None:
    with anyio.fail_after(30):
        window = FixedConcurrency(1)
        async with DeploymentSampler(
            "http://127.0.0.1:1", MODEL, KEY, concurrency=window,
            retry=RetryPolicy(max_attempts=3, backoff_base_s=0.001),
        ) as sampler:
            with pytest.raises(SamplingError) as info:
                await sampler.sample(PROMPT)
    err = info.value
    assert (err.status_code, err.attempts) == (None, 3) and err.request_id
    assert window.in_flight == 0 and KEY not in str(err)


class _BrokenStream(httpx.AsyncByteStream):
    """One SSE event, then the connection breaks (with the key in the error's text)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        event = {"choices": [{"index": 0, "text": "a", "logprobs": {"content": [
            {"token_id": 97, "logprob": -0.5}]}}]}
        yield f"data: {json.dumps(event)}\n\n".encode()
        raise httpx.ReadError(f"connection reset (X-Api-Key: {KEY})")


async def test_a_stream_broken_midway_is_a_sampling_error_and_gives_its_slot_back() -> None:
    window = FixedConcurrency(1)
    reply = httpx.Response(200, stream=_BrokenStream(),
                           headers={"content-type": "text/event-stream"})
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, KEY, transport=_mock([reply], []), concurrency=window
    ) as sampler:
        got = []
        with pytest.raises(SamplingError, match="the stream broke") as info:
            async for delta in sampler.stream(PROMPT):
                got.append(delta.token)
    assert got == [97] and info.value.attempts == 1  # not retried: a delta was yielded
    assert window.in_flight == 0 and KEY not in str(info.value)


async def test_bad_input_is_refused_before_anything_is_sent() -> None:
    seen: list[httpx.Request] = []
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, transport=_mock([], seen)
    ) as sampler:
        for kwargs, field in (
            ({"top_p": 0.0}, "top_p"),
            ({"n": 0}, "n"),
            ({"stop": [""]}, "stop"),
            ({"temperature": -1.0}, "temperature"),
        ):
            with pytest.raises(InvalidInput) as info:
                await sampler.sample(PROMPT, **kwargs)
            assert info.value.field == field
        with pytest.raises(InvalidInput):
            await sampler.sample([1, -2])
    assert seen == []


async def test_adaptive_window_shrinks_once_per_burst_and_follows_the_queue_header() -> None:
    window = AdaptiveConcurrency(
        initial=16, cooldown_s=60.0, interval=4, queue_target_s=0.5, ema_alpha=1.0
    )
    for _ in range(16):
        await window.acquire()
    for _ in range(16):  # one burst of rejections: one shrink
        window.release(Observation(429))
    assert window.window == 8 and window.stats()["shrinks"] == 1
    for _ in range(4):  # a long prefill queue shrinks at the interval
        await window.acquire()
        window.release(Observation(200, 0.01, queue_s=2.0))
    assert window.window == 4
    for _ in range(4):  # a short queue grows it again, by up to 4x the increase
        await window.acquire()
        window.release(Observation(200, 0.01, queue_s=0.0))
    assert window.window == 8


async def test_a_cancelled_waiter_does_not_leak_a_slot() -> None:
    window = FixedConcurrency(1)
    await window.acquire()
    with anyio.move_on_after(0.01):
        await window.acquire()
    window.release()
    with anyio.fail_after(1):
        await window.acquire()
    assert window.in_flight == 1


def test_bad_construction_is_invalid_input_naming_the_field() -> None:
    for make, field in (
        (lambda: DeploymentSampler("http://example.com", MODEL), "inference_url"),
        (lambda: DeploymentSampler("http://127.0.0.1:1", ""), "model"),
        (lambda: FixedConcurrency(0), "limit"),
        (lambda: AdaptiveConcurrency(min_window=4, max_window=2), "min_window"),
    ):
        with pytest.raises(InvalidInput) as info:
            make()
        assert info.value.field == field


async def test_a_burst_waits_for_slots_before_building_requests(
    deployment: LocalTrainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Of 200 callers at once, only the window's worth build a request (JSON and headers):
    building all of them first is what stalled the loop 250 ms at 2,000 rollouts. (The callers
    all run up to their slot wait in the loop turn after they are started, before any reply
    can be read, so a short latency and one token each do not hide it.)"""
    _knobs(deployment, latency_s=0.01)
    built: list[float] = []
    first_reply: list[float] = []

    class CountedRequest(httpx.Request):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(time.monotonic())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(
        "firetitan_async._clients._deployment_sampler.httpx.Request", CountedRequest
    )
    window = FixedConcurrency(4)

    async def one(sampler: DeploymentSampler) -> None:
        await sampler.sample(PROMPT, max_tokens=1)
        first_reply.append(time.monotonic())

    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one, sampler)
    assert len(built) == 200 and window.in_flight == 0
    before_any_reply = sum(1 for t in built if t < min(first_reply))
    assert before_any_reply <= 4, f"{before_any_reply} requests built before the first reply"


async def test_sample_many_returns_results_in_prompt_order_within_the_window(
    deployment: LocalTrainer,
) -> None:
    prompts = [list(f"prompt {i}: ".encode()) for i in range(40)]
    window = FixedConcurrency(4)
    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
        results = await sampler.sample_many(prompts, n=2, max_tokens=2, logprobs=True)
    assert [[c.prompt_tokens for c in r] for r in results] == [[p, p] for p in prompts]
    assert all(c.logprobs is not None and len(c.tokens) <= 2 for r in results for c in r)
    assert window.max_in_flight == 4 and window.in_flight == 0


class _TaskRecorder(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the tasks its requests come from.

    A task is told by a context variable it sets on its first request (each task runs in its
    own copy of its parent's context); task ids would not do, they are reused.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.tasks = 0
        self._seen: contextvars.ContextVar[bool] = contextvars.ContextVar("seen", default=False)
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if not self._seen.get():
            self._seen.set(True)
            self.tasks += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_sample_many_carries_the_batch_on_about_a_window_of_tasks(
    deployment: LocalTrainer,
) -> None:
    """Each request task goes on to the next prompt: 60 prompts through a window of 4 take a
    handful of tasks, not one task per prompt (a task start costs more than a request's turn).
    """
    prompts = [list(f"p{i}: ".encode()) for i in range(60)]
    recorder = _TaskRecorder()
    window = FixedConcurrency(4)
    async with DeploymentSampler(
        deployment.base_url, MODEL, concurrency=window, transport=recorder
    ) as sampler:
        results = await sampler.sample_many(prompts, max_tokens=1)
    assert [r[0].prompt_tokens for r in results] == prompts
    assert recorder.requests == 60 and window.in_flight == 0
    assert recorder.tasks <= 20, f"{recorder.tasks} tasks for 60 prompts"


async def test_sample_many_hands_each_result_over_as_it_arrives(
    deployment: LocalTrainer,
) -> None:
    # Through a window of one, prompt k's result reaches on_result before prompt k+1 is sent:
    # the caller gets rollouts while the rest are still being sampled, not all at the end.
    prompts = [list(f"q{i}: ".encode()) for i in range(6)]
    recorder = _TaskRecorder()
    seen: list[tuple[int, int, list[SampledCompletion]]] = []  # (index, requests sent, result)

    def on_result(index: int, completions: list[SampledCompletion]) -> None:
        seen.append((index, recorder.requests, completions))

    async with DeploymentSampler(
        deployment.base_url, MODEL, concurrency=FixedConcurrency(1), transport=recorder
    ) as sampler:
        results = await sampler.sample_many(prompts, max_tokens=2, on_result=on_result)
    assert [(index, sent) for index, sent, _ in seen] == [(k, k + 1) for k in range(6)]
    assert all(results[index] is completions for index, _, completions in seen)


async def test_sample_many_fails_when_on_result_raises_and_checks_it_before_sending(
    deployment: LocalTrainer,
) -> None:
    window = FixedConcurrency(2)

    def broken(index: int, completions: list[SampledCompletion]) -> None:
        if index == 3:
            raise KeyError("scoring failed")

    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
        with pytest.raises(KeyError, match="scoring failed"):
            await sampler.sample_many([PROMPT] * 20, max_tokens=1, on_result=broken)
        assert window.in_flight == 0
        with pytest.raises(InvalidInput) as info:
            await sampler.sample_many([PROMPT], on_result="print")  # type: ignore[arg-type]
        assert info.value.field == "on_result"


async def test_a_cancelled_sample_many_gives_every_slot_back(deployment: LocalTrainer) -> None:
    window = FixedConcurrency(3)
    async with DeploymentSampler(deployment.base_url, MODEL, concurrency=window) as sampler:
        with anyio.move_on_after(0.05):
            await sampler.sample_many([PROMPT] * 400, max_tokens=4)
        assert window.in_flight == 0
        [completion] = await sampler.sample(PROMPT, max_tokens=1)  # the window still works
    assert len(completion.tokens) == 1


async def test_sample_many_checks_every_prompt_before_sending_and_raises_the_first_failure(
) -> None:
    seen: list[httpx.Request] = []
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, transport=_mock([], seen)
    ) as sampler:
        with pytest.raises(InvalidInput) as info:
            await sampler.sample_many([PROMPT, PROMPT, [1, -2]])
        assert info.value.field == "prompts[2][1]"
        with pytest.raises(InvalidInput) as info:
            await sampler.sample_many([PROMPT], top_p=0.0)
        assert info.value.field == "top_p"
    assert seen == []
    replies = [_ok(), httpx.Response(400, json={"error": "bad"}), _ok()]
    async with DeploymentSampler(
        "http://127.0.0.1:1", MODEL, transport=_mock(replies, seen), concurrency=1
    ) as sampler:
        with pytest.raises(SamplingError, match="HTTP 400"):
            await sampler.sample_many([PROMPT, PROMPT, PROMPT])
        assert sampler.concurrency.in_flight == 0  # type: ignore[attr-defined]
