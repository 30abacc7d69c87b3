"""The transport's TCP connect against ``anyio.connect_tcp``, the library it shortcuts.

For an IP address the transport connects a plain non-blocking socket and wraps it with
``SocketStream.from_socket`` (2-3x less CPU a connection than ``connect_tcp``'s resolution
and happy eyeballs); a name still goes through ``connect_tcp``. Both must give the same
outcome: bytes flow both ways on IPv4 and IPv6 literals, and a refused port is an ``OSError``.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc
import pytest

from firetitan_async._http._http11_transport import _connect_tcp

pytestmark = pytest.mark.anyio

Connect = Callable[[str, int], Awaitable[anyio.abc.SocketStream]]
CONNECTS: dict[str, Connect] = {"ours": _connect_tcp, "anyio": anyio.connect_tcp}


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def _echo_round_trip(connect: Connect, local_host: str, connect_host: str) -> bytes:
    listener = await anyio.create_tcp_listener(local_host=local_host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def echo(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(await stream.receive())

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, echo)
        async with await connect(connect_host, port) as stream:
            nodelay = stream.extra(anyio.abc.SocketAttribute.raw_socket).getsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY
            )
            assert nodelay, "TCP_NODELAY is off: small requests would wait for Nagle"
            await stream.send(b"ping")
            reply = await stream.receive()
        tg.cancel_scope.cancel()
    return reply


@pytest.mark.parametrize("which", sorted(CONNECTS))
@pytest.mark.parametrize(
    "hosts",
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::1", "[::1]"), ("127.0.0.1", "localhost")],
    ids=["ipv4", "ipv6", "ipv6-bracketed", "name"],
)
async def test_connect_round_trips_like_the_library(which: str, hosts: tuple[str, str]) -> None:
    local, target = hosts
    if ":" in local and not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    if which == "anyio" and target.startswith("["):
        pytest.skip("connect_tcp takes the bare address only")
    assert await _echo_round_trip(CONNECTS[which], local, target) == b"ping"


@pytest.mark.parametrize("which", sorted(CONNECTS))
async def test_a_refused_port_is_an_oserror_like_the_library(which: str) -> None:
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(OSError):
            await CONNECTS[which]("127.0.0.1", port)
