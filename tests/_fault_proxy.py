"""A fault-injecting TCP proxy on loopback: a real network's bad habits, on demand.

It forwards bytes between a client and an upstream server (the local trainer) and, as
:class:`Faults` says, closes connections that sat idle (as every load balancer does), resets
a reply midway, appends bytes after a reply (at once or a little later), trickles replies a
byte at a time, or half-closes a connection after each reply. It runs in the test's event
loop (asyncio or trio) and counts what it saw: connections, requests (method and path, as
they reached the upstream), replies.

Example::

    async with fault_proxy(trainer.base_url, Faults(idle_close_s=0.2)) as proxy:
        async with ServiceSession(proxy.url) as session: ...
        assert proxy.requests.count(("POST", "/api/v1/forward")) == 1
"""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.lowlevel
import httptools

_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError)


@dataclass
class Faults:
    """What the proxy does wrong (everything off by default: a plain proxy)."""

    #: Close a connection (FIN) that carried no bytes for this long with no request pending.
    idle_close_s: float | None = None
    #: ``reset_reply(n)`` true: forward half of reply ``n`` (0-based, all connections) and
    #: reset the connection (RST).
    reset_reply: Callable[[int], bool] | None = None
    #: Bytes sent after every reply, ``append_delay_s`` after it (0: in the same write).
    append_after_reply: bytes = b""
    append_delay_s: float = 0.0
    #: Send replies one byte at a time.
    trickle: bool = False
    #: Shut the client side's write half (FIN) after each reply, keeping the connection.
    half_close_after_reply: bool = False


@dataclass
class FaultProxy:
    url: str
    faults: Faults
    #: Connections accepted, and how many of them the proxy closed for idleness.
    connections: int = 0
    idle_closed: int = 0
    open: int = 0
    #: (method, path) of every request that reached the upstream, in order.
    requests: list[tuple[str, str]] = field(default_factory=list)
    replies: int = 0
    #: Late bytes (``append_delay_s``) sent so far.
    late_sent: int = 0


class _Requests:
    """llhttp callbacks recording each request's method and path."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.url = b""
        self.parser = httptools.HttpRequestParser(self)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        path = self.url.decode().split("?")[0]
        self.proxy.requests.append((self.parser.get_method().decode(), path))
        self.url = b""


class _Replies:
    """llhttp callbacks counting the replies that ended."""

    def __init__(self) -> None:
        self.ended = 0
        self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        self.ended += 1


@asynccontextmanager
async def fault_proxy(upstream_url: str, faults: Faults) -> AsyncIterator[FaultProxy]:
    """A proxy in front of ``upstream_url`` (``http://host:port``) for the ``with`` block."""
    parts = urlsplit(upstream_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    local_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    proxy = FaultProxy(url=f"http://127.0.0.1:{local_port}", faults=faults)

    async def handle(client: anyio.abc.SocketStream) -> None:
        proxy.connections += 1
        proxy.open += 1
        try:
            async with client, await anyio.connect_tcp(host, port) as upstream:
                await _carry(proxy, client, upstream)
        except _GONE:
            pass
        finally:
            proxy.open -= 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield proxy
        finally:
            tg.cancel_scope.cancel()


async def _carry(
    proxy: FaultProxy, client: anyio.abc.SocketStream, upstream: anyio.abc.SocketStream
) -> None:
    faults = proxy.faults
    requests = _Requests(proxy)
    replies = _Replies()
    last_byte = anyio.current_time()

    def pending() -> int:
        return len(requests_seen) - replies.ended

    requests_seen: list[None] = []

    async def up(scope: anyio.CancelScope) -> None:
        nonlocal last_byte
        with suppress(*_GONE):
            while True:
                data = await client.receive()
                last_byte = anyio.current_time()
                before = len(proxy.requests)
                requests.parser.feed_data(data)
                requests_seen.extend([None] * (len(proxy.requests) - before))
                await upstream.send(data)
        scope.cancel()

    async def down(scope: anyio.CancelScope, tg: anyio.abc.TaskGroup) -> None:
        nonlocal last_byte
        with suppress(*_GONE):
            while True:
                data = await upstream.receive()
                index = proxy.replies  # the reply these bytes belong to (or start)
                ended_before = replies.ended
                replies.parser.feed_data(data)
                ended = replies.ended - ended_before
                if faults.reset_reply is not None and faults.reset_reply(index):
                    await client.send(data[: max(1, len(data) // 2)])
                    proxy.replies += 1
                    _reset(client)
                    scope.cancel()
                    return
                if faults.trickle:
                    for at in range(len(data)):
                        await client.send(data[at : at + 1])
                        await anyio.lowlevel.checkpoint()
                elif ended and faults.append_after_reply and not faults.append_delay_s:
                    await client.send(data + faults.append_after_reply)
                else:
                    await client.send(data)
                last_byte = anyio.current_time()
                proxy.replies += ended
                if ended and faults.append_after_reply and faults.append_delay_s:
                    tg.start_soon(_send_later, proxy, client)
                if ended and faults.half_close_after_reply:
                    await client.send_eof()
        scope.cancel()

    async def idle_watch(scope: anyio.CancelScope) -> None:
        assert faults.idle_close_s is not None
        while True:
            await anyio.sleep(faults.idle_close_s / 4)
            quiet = anyio.current_time() - last_byte
            if not pending() and quiet >= faults.idle_close_s:
                proxy.idle_closed += 1
                scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(up, tg.cancel_scope)
        tg.start_soon(down, tg.cancel_scope, tg)
        if faults.idle_close_s is not None:
            tg.start_soon(idle_watch, tg.cancel_scope)


async def _send_later(proxy: FaultProxy, client: anyio.abc.SocketStream) -> None:
    await anyio.sleep(proxy.faults.append_delay_s)
    with suppress(*_GONE):
        await client.send(proxy.faults.append_after_reply)
        proxy.late_sent += 1


def _reset(client: anyio.abc.SocketStream) -> None:
    """Make the coming close a reset (RST), not a FIN."""
    sock = client.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
