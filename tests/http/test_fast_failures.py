"""Wrong address, wrong server: the client fails fast and says what to check."""

from __future__ import annotations

import time

import anyio
import anyio.abc
import httpx
import pytest

from firetitan_async import (
    DeploymentSampler,
    FiretitanError,
    RetryPolicy,
    SamplingError,
    ServiceSession,
)
from firetitan_async._http._redact import Redactor
from firetitan_async._http._send import send_with_retry

pytestmark = pytest.mark.anyio

HTML_501 = (
    b"<!DOCTYPE html><html><head><title>501 Not Implemented</title></head><body>"
    + b"<p>" + b"lorem ipsum " * 400 + b"</p></body></html>"
)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_nothing_listening_fails_within_5_s_and_says_what_to_check() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(FiretitanError) as caught:
        async with ServiceSession(url, dialect="tinker") as session:
            await session.create_training_client("local/tiny-byte-lm")
    took = time.monotonic() - started
    assert took < 5.0, took
    message = str(caught.value)
    assert f"is a trainer listening at {url}?" in message
    assert "firetitan-async serve" in message


async def test_the_connect_deadline_is_configurable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    policy = RetryPolicy(connect_deadline_s=0.3, backoff_base_s=0.05)
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        with pytest.raises(FiretitanError, match="is a server listening at"):
            await send_with_retry(
                client, client.build_request("GET", url), policy=policy,
                redactor=Redactor.of(None), replay_safe=True,
            )
    assert time.monotonic() - started < 1.5


async def test_a_web_server_that_is_not_a_trainer_fails_at_once_with_a_summary() -> None:
    requests = 0

    async def serve(stream: anyio.abc.SocketStream) -> None:
        nonlocal requests
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            requests += 1
            await stream.send(
                b"HTTP/1.1 501 Not Implemented\r\ncontent-type: text/html\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(HTML_501), HTML_501)
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        started = time.monotonic()
        with pytest.raises(FiretitanError) as caught:
            async with ServiceSession(f"http://127.0.0.1:{port}", dialect="tinker") as session:
                await session.create_training_client("local/tiny-byte-lm")
        took = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert requests == 1 and took < 2.0, (requests, took)  # not retried
    message = str(caught.value)
    assert "501" in message and "501 Not Implemented" in message and "HTML page" in message
    assert "lorem" not in message and len(message) < 600, message  # summarised, not dumped


async def test_a_backoff_sleep_never_overshoots_the_deadline() -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            while True:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += await stream.receive()
                await stream.send(b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n")

    policy = RetryPolicy(max_attempts=100, backoff_base_s=0.6, backoff_cap_s=5.0,
                         jitter=0.0, deadline_s=1.0)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        started = time.monotonic()
        async with httpx.AsyncClient() as client:
            with pytest.raises(FiretitanError, match="503"):
                await send_with_retry(
                    client, client.build_request("GET", f"http://127.0.0.1:{port}/"),
                    policy=policy, redactor=Redactor.of(None), replay_safe=True,
                )
        took = time.monotonic() - started
        tg.cancel_scope.cancel()
    # Sleeps of 0.6 then 1.2 s would end at 1.8 s; cut to the deadline, the last try is at 1 s.
    assert took < 1.5, took


async def test_a_sampler_pointed_at_a_web_server_fails_at_once_on_its_404_page() -> None:
    """A deployment answers 404 while it hot-loads (waited out, 5 s a time); an HTML 404
    page is a web server that is not a deployment: one request, then the error."""
    requests = 0
    page = b"<html><head><title>404 Not Found</title></head><body>nginx</body></html>"

    async def serve(stream: anyio.abc.SocketStream) -> None:
        nonlocal requests
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            requests += 1
            await stream.send(
                b"HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(page), page)
            )

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        url = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        async with DeploymentSampler(url, "accounts/a/deployments/d", api_key="k") as sampler:
            with pytest.raises(SamplingError, match="404"):
                await sampler.sample([1, 2], max_tokens=2)
        took = time.monotonic() - started
        tg.cancel_scope.cancel()
    assert requests == 1 and took < 2.0, (requests, took)
