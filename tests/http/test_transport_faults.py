"""The data-plane transport on a realistic network: the fault proxy (tests/_fault_proxy.py)
between the client and the real local trainer closes idle connections, resets replies,
appends late bytes, trickles and half-closes; every operation still succeeds, once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import anyio
import anyio.abc
import httpx
import pytest
from _fault_proxy import Faults, fault_proxy
from tinker import types

from firetitan_async import DeploymentSampler, RetryPolicy, ServiceSession
from firetitan_async._http._http11_transport import Http11Transport
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
ADAM = types.AdamParams(learning_rate=5e-3)
BATCH = [sft_datum("nothing doubled")]
# A fake reply: if it is ever read as the answer to a request, the test sees it.
LATE = b'HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\n{"late": true}'


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    lt = LocalTrainer(seed=3)
    lt.start()
    try:
        yield lt
    finally:
        lt.stop()


def sent(proxy_requests: list[tuple[str, str]]) -> Counter[str]:
    return Counter(path.rsplit("/", 1)[-1] for _, path in proxy_requests)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``condition`` (the proxy's counters change in its own tasks) until it holds."""
    with anyio.fail_after(timeout):
        while not condition():  # noqa: ASYNC110 - a counter, not an event, is watched
            await anyio.sleep(0.02)


async def test_64_pooled_connections_closed_while_idle_then_1_then_200_operations(
    trainer: LocalTrainer,
) -> None:
    async with fault_proxy(trainer.base_url, Faults(idle_close_s=0.5)) as proxy:
        async with ServiceSession(proxy.url, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            warm = [client.forward(BATCH, "cross_entropy") for _ in range(64)]
            for pending in warm:  # 64 in flight at once: dozens of pooled connections
                await pending
            # (not exactly 64: a submission that is answered before the next one is encoded
            # hands its connection on, so a run may pool 63 or fewer)
            assert proxy.connections >= 48
            await wait_until(lambda: proxy.open == 0)  # the proxy closed every one of them
            assert proxy.idle_closed >= 48

            started = time.monotonic()
            await client.forward(BATCH, "cross_entropy")
            one = time.monotonic() - started
            assert sent(proxy.requests)["forward_backward"] == 65  # not resent: checked first
            started = time.monotonic()
            steps = [client.optim_step(ADAM) for _ in range(200)]
            for step in steps:
                await step
            many = time.monotonic() - started
            model_id = client.model_id
    # Generous bounds for a loaded 2-core machine; reusing dead connections took 32+ s.
    assert one < 3.0, one
    assert many < 20.0, many
    # Nothing doubled: each step applied once.
    assert trainer.stats()["optim_steps_applied"][model_id] == 200


async def test_an_rl_shaped_run_with_idle_gaps_longer_than_the_proxy_s_timeout(
    trainer: LocalTrainer,
) -> None:
    async with fault_proxy(trainer.base_url, Faults(idle_close_s=0.15)) as proxy:
        async with ServiceSession(proxy.url, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            for _ in range(4):
                closed_before = proxy.idle_closed
                started = time.monotonic()
                fb = client.forward_backward(BATCH * 4, "cross_entropy")
                step = client.optim_step(ADAM)
                await fb
                await step
                assert time.monotonic() - started < 3.0
                # The "rollouts": the data plane idles past the proxy's idle timeout.
                await wait_until(
                    lambda: proxy.idle_closed > closed_before and proxy.open == 0  # noqa: B023
                )
    counts = sent(proxy.requests)
    assert (counts["forward_backward"], counts["optim_step"]) == (4, 4)


@pytest.mark.parametrize("delay", [0.0, 0.05], ids=["with-the-reply", "after-the-reply"])
async def test_late_bytes_never_reach_the_next_reply(trainer: LocalTrainer, delay: float) -> None:
    faults = Faults(append_after_reply=LATE, append_delay_s=delay)
    async with fault_proxy(trainer.base_url, faults) as proxy:
        async with httpx.AsyncClient(transport=Http11Transport()) as http:
            for n in range(12):
                reply = await http.get(f"{proxy.url}/api/v1/healthz")
                assert reply.status_code == 200 and b"late" not in reply.content
                if delay:  # the late bytes arrive while the connection idles
                    await wait_until(lambda: proxy.late_sent > n)  # noqa: B023
    assert len(proxy.requests) == 12  # each request sent once, each on a new connection
    assert proxy.connections == 12


async def test_a_trickled_reply_is_read_whole(trainer: LocalTrainer) -> None:
    async with httpx.AsyncClient(transport=Http11Transport()) as http:
        direct = (await http.get(f"{trainer.base_url}/api/v1/get_server_capabilities")).json()
        async with fault_proxy(trainer.base_url, Faults(trickle=True)) as proxy:
            for _ in range(3):
                reply = await http.get(f"{proxy.url}/api/v1/get_server_capabilities")
                assert reply.json() == direct
    assert proxy.connections == 1  # kept alive between the trickled replies


async def test_a_half_closed_connection_is_never_reused(trainer: LocalTrainer) -> None:
    async with fault_proxy(trainer.base_url, Faults(half_close_after_reply=True)) as proxy:
        async with httpx.AsyncClient(transport=Http11Transport()) as http:
            for _ in range(10):
                await anyio.sleep(0.01)
                reply = await http.get(f"{proxy.url}/api/v1/healthz")
                assert reply.status_code == 200
    # Seen at checkout (EOF waiting), not by sending on it: no request was sent into it.
    assert len(proxy.requests) == 10 and proxy.connections == 10


async def test_replies_reset_midway_are_retried_and_applied_once(trainer: LocalTrainer) -> None:
    retry = RetryPolicy(max_attempts=10, backoff_base_s=0.01, backoff_cap_s=0.05)
    faults = Faults(reset_reply=lambda n: n in (3, 6, 9, 12))
    async with fault_proxy(trainer.base_url, faults) as proxy:
        async with ServiceSession(proxy.url, dialect="tinker", retry=retry) as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            model_id = client.model_id
            for _ in range(6):
                await client.forward_backward(BATCH, "cross_entropy")
                await client.optim_step(ADAM)
    applied = trainer.stats()["optim_steps_applied"]
    assert applied[model_id] == 6  # resent after a reset, applied once (idempotency keys)
    assert proxy.replies >= 12


async def test_stream_yields_each_event_as_it_arrives() -> None:
    """Events sent 0.3 s apart arrive 0.3 s apart (they all arrived at the end before)."""
    gap = 0.3
    sent_at: list[float] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            await stream.send(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            for token in range(4):
                event = (
                    b'data: {"choices":[{"index":0,"text":"x","logprobs":{"content":'
                    b'[{"token_id":%d,"logprob":-0.5}]}}]}\n\n' % token
                )
                sent_at.append(time.monotonic())
                await stream.send(b"%x\r\n%s\r\n" % (len(event), event))
                await anyio.sleep(gap)
            done = b'data: {"choices":[{"index":0,"finish_reason":"length"}]}\n\ndata: [DONE]\n\n'
            await stream.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    arrived: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        url = f"http://127.0.0.1:{port}"
        async with DeploymentSampler(url, "accounts/a/deployments/d", api_key="k") as sampler:
            async for delta in sampler.stream([1, 2], max_tokens=4):
                if delta.token is not None:
                    arrived.append(time.monotonic())
        tg.cancel_scope.cancel()
    assert len(arrived) == 4
    # The first tokens arrived before the last one was sent (read whole, all came at the end);
    # the 0.6-0.9 s of margin holds on a loaded machine.
    assert arrived[0] < sent_at[3] and arrived[1] < sent_at[3], (arrived, sent_at)
