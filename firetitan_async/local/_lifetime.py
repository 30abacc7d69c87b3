"""What the local servers (trainer, recorder) share: a listening socket and their lifetimes."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread

__all__ = ["ThreadedServerLifetime", "bind_listener"]


def bind_listener(host: str, port: int, *, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket on ``(host, port)`` (port 0 picks a free one).

    ``proto=IPPROTO_TCP`` matters: asyncio sets ``TCP_NODELAY`` on accepted sockets only when
    the listener says TCP; with proto 0, Nagle plus delayed ACKs add ~40 ms to every reply.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class ThreadedServerLifetime:
    """``with`` / ``async with`` for a server whose blocking ``start()``/``stop()`` run a
    thread: under asyncio or trio the blocking parts go to a worker thread."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.stop)
