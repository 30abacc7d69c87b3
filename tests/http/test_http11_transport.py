"""The HTTP/1.1 transport against a scripted raw TCP server (fault shapes on demand)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import anyio
import anyio.abc
import httpx
import pytest

from firetitan_async import RetryPolicy
from firetitan_async._http._http11_transport import STREAM_EXTENSION, Http11Transport
from firetitan_async._http._transport import Transport
from firetitan_async.errors import ReplyTooLarge

pytestmark = pytest.mark.anyio

Handler = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


def reply(body: bytes = b"ok", *, close: bool = False) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n"
    return (head + ("connection: close\r\n" if close else "") + "\r\n").encode() + body


async def read_request(stream: anyio.abc.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await stream.receive()
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(rest) < length:
        rest += await stream.receive()
    return head


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler(stream, connection_index)``; yields (url, counts)."""
    connections: list[int] = []
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        index = len(connections)
        connections.append(0)
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await handler(stream, index)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        try:
            yield f"http://127.0.0.1:{port}", connections
        finally:
            tg.cancel_scope.cancel()


async def test_keep_alive_reuses_one_connection() -> None:
    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        while True:
            await read_request(stream)
            await stream.send(reply(b"hello"))

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            for _ in range(5):
                response = await client.post(url + "/x", content=b"body")
                assert response.status_code == 200 and response.content == b"hello"
    assert len(connections) == 1


@pytest.mark.parametrize(
    "why", ["request asks close", "reply asks close", "extra bytes", "chunked"]
)
async def test_a_connection_is_kept_only_when_both_sides_allow_it(why: str) -> None:
    """Keep-alive unless the request or the reply says ``Connection: close``, or the server
    sent bytes beyond its reply (they would be read as the next reply); a chunked reply
    keeps it."""
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    answer = {
        "request asks close": reply(b"ok"),
        "reply asks close": reply(b"ok", close=True),
        "extra bytes": reply(b"ok") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale",
        "chunked": chunked,
    }[why]

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        while True:
            await read_request(stream)
            await stream.send(answer)

    headers = {"Connection": "close"} if why == "request asks close" else {}
    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            for _ in range(3):
                response = await client.get(url, headers=headers)
                assert response.content == b"ok"
    assert len(connections) == (1 if why == "chunked" else 3)


async def test_stale_idle_connection_is_replaced_transparently() -> None:
    seen: list[int] = []

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        seen.append(index)
        await stream.send(reply(b"once"))
        # then close: the client's idle connection goes stale

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            assert (await client.get(url)).content == b"once"
            await anyio.sleep(0.05)
            assert (await client.get(url)).content == b"once"
    assert seen == [0, 1]
    assert len(connections) == 2


async def test_a_reply_cut_short_is_an_error_and_not_resent() -> None:
    requests = 0

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        nonlocal requests
        await read_request(stream)
        requests += 1
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")

    async with raw_server(handler) as (url, _):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url, content=b"apply me once")
    assert requests == 1


async def test_a_reply_cut_short_on_a_reused_connection_is_not_resent() -> None:
    """The stale-connection retry is only for a request that got no reply byte at all."""
    seen: list[bytes] = []

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        head = await read_request(stream)
        seen.append(head.split(b" ")[1])
        await stream.send(reply(b"first"))  # keep-alive: the client reuses this connection
        head = await read_request(stream)
        seen.append(head.split(b" ")[1])
        await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            assert (await client.post(url + "/one", content=b"a")).content == b"first"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post(url + "/two", content=b"apply me once")
            await anyio.sleep(0.05)  # a resend, if any, would have arrived by now
    assert seen == [b"/one", b"/two"]
    assert len(connections) == 1


async def test_read_timeout_and_connect_errors_are_httpx_errors() -> None:
    async def silent(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        await anyio.sleep(10)

    async with raw_server(silent) as (url, _):
        async with httpx.AsyncClient(transport=Http11Transport(), timeout=0.2) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    async with httpx.AsyncClient(transport=Http11Transport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


async def test_chunked_replies_and_connection_close() -> None:
    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        await stream.send(
            b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await read_request(stream)
        await stream.send(reply(b"bye", close=True))

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            first = await client.get(url)
            assert (first.status_code, first.content) == (201, b"hello world")
            assert (await client.get(url)).content == b"bye"
    assert len(connections) == 1


async def test_many_concurrent_requests_bounded_by_max_connections() -> None:
    open_now = 0
    most = 0

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_request(stream)
                await anyio.sleep(0.01)
                await stream.send(reply())
        finally:
            open_now -= 1

    async with raw_server(handler) as (url, _):
        async with httpx.AsyncClient(transport=Http11Transport(max_connections=8)) as client:
            results: list[int] = []

            async def one() -> None:
                results.append((await client.get(url)).status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(one)
    assert results == [200] * 100
    assert most <= 8


async def test_the_session_transport_keeps_cookies_a_reply_sets() -> None:
    """Replies without Set-Cookie skip the cookie jar; one that sets a cookie is honoured."""
    heads: list[bytes] = []

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        while True:
            heads.append((await read_request(stream)).lower())
            cookie = b"set-cookie: route=r7; Path=/\r\n" if len(heads) == 1 else b""
            await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n" + cookie + b"\r\n{}")

    async with raw_server(handler) as (url, _):
        transport = Transport(url, None, timeout=10, retry=RetryPolicy())
        try:
            for _ in range(3):
                assert await transport.call("GET", "/x") == {}
        finally:
            await transport.aclose()
    assert b"cookie: route=r7" not in heads[0]
    assert all(b"cookie: route=r7" in head for head in heads[1:]), heads


@pytest.mark.parametrize("expiry, expected", [(0.1, 2), (30.0, 1)])
async def test_an_idle_connection_older_than_keepalive_expiry_is_not_reused(
    expiry: float, expected: int
) -> None:
    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        while True:
            await read_request(stream)
            await stream.send(reply(b"ok"))

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport(keepalive_expiry=expiry)) as client:
            await client.get(url)
            await anyio.sleep(0.25)
            await client.get(url)
    assert len(connections) == expected


async def test_the_pool_timeout_is_honoured() -> None:
    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        await anyio.sleep(2.0)
        await stream.send(reply(b"late"))

    async with raw_server(handler) as (url, _connections):
        client = httpx.AsyncClient(transport=Http11Transport(max_connections=1))
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(client.get, url)  # holds the one connection slot
            await anyio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(httpx.PoolTimeout):
                await client.get(url, timeout=httpx.Timeout(5.0, pool=0.2))
            assert time.monotonic() - started < 1.5
            tg.cancel_scope.cancel()


async def test_the_retry_after_a_stale_connection_uses_a_new_one_not_another_idle_one() -> None:
    """Two idle connections that look alive but drop the next request unanswered (the server
    closed them as it got it): the retry must not take the second one."""

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        if index < 2:
            await anyio.sleep(0.1)  # both first requests in flight: two connections
            await stream.send(reply(b"first"))
            await read_request(stream)
            return  # close without a reply
        while True:
            await stream.send(reply(b"fresh"))
            await read_request(stream)

    async with raw_server(handler) as (url, connections):
        async with httpx.AsyncClient(transport=Http11Transport()) as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.get, url)
                tg.start_soon(client.get, url)
            assert len(connections) == 2
            assert (await client.get(url)).content == b"fresh"
    assert len(connections) == 3


@pytest.mark.parametrize("streamed", [True, False])
async def test_the_reply_cap_counts_what_is_buffered_for_a_streamed_reply(streamed: bool) -> None:
    """Ten 50-byte chunks under a 100-byte cap: read as they come, never more than one is
    buffered; read whole, the reply is too large."""

    async def handler(stream: anyio.abc.SocketStream, index: int) -> None:
        await read_request(stream)
        await stream.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(10):
            await stream.send(b"32\r\n" + b"x" * 50 + b"\r\n")
            await anyio.sleep(0.01)
        await stream.send(b"0\r\n\r\n")

    async with raw_server(handler) as (url, _connections):
        async with httpx.AsyncClient(transport=Http11Transport(max_reply_bytes=100)) as client:
            request = client.build_request("GET", url, extensions={STREAM_EXTENSION: streamed})
            if not streamed:
                with pytest.raises(ReplyTooLarge):
                    await client.send(request)
                return
            response = await client.send(request, stream=True)
            pieces = [piece async for piece in response.aiter_raw()]
            await response.aclose()
    assert sum(map(len, pieces)) == 500 and max(map(len, pieces)) <= 100
