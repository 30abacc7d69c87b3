"""What the local servers (trainer, recorder) share: a listening socket, a uvicorn server that
stops when told, and their lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread
import uvicorn

__all__ = ["PromptServer", "ThreadedServerLifetime", "bind_listener"]


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


class PromptServer(uvicorn.Server):
    """``uvicorn.Server`` that stops as soon as :meth:`stop_soon` is called (from any thread).

    uvicorn notices ``should_exit`` at its next 0.1 s tick, then waits a fixed 0.1 s for the
    open connections to close before it waits for them in 0.1 s steps: 0.15-0.2 s to stop a
    server whose connections close at once (idle keep-alive ones do). That was ~100 s of the
    test suite, which starts and stops about 700 local trainers. Here the tick's sleep is cut
    short by :meth:`stop_soon`, and shutdown waits for exactly the connections and request
    tasks still open (polled every millisecond, bounded by ``timeout_graceful_shutdown``, after
    which the tasks are cancelled as uvicorn does): ~1 ms to stop an idle server.

    Example::

        server = PromptServer(uvicorn.Config(app, lifespan="on"))
        # serve on a thread: server.run(sockets=[sock]); then, from any thread:
        server.stop_soon()
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._wake: asyncio.Event | None = None
        self._wake_loop: asyncio.AbstractEventLoop | None = None

    def stop_soon(self) -> None:
        """Ask the server to stop now (thread-safe; ``serve`` returns once it has)."""
        self.should_exit = True
        wake, loop = self._wake, self._wake_loop
        if wake is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop just closed: it has stopped
                loop.call_soon_threadsafe(wake.set)

    async def main_loop(self) -> None:
        # As uvicorn's: tick every 0.1 s (the Date header, the exit check), but a tick also
        # comes at once when stop_soon() is called. The event exists before the first check,
        # so a stop_soon() that finds no event set should_exit before that check read it.
        self._wake_loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()  # an idle one closes now, a busy one after its reply
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                # uvicorn keeps no event for "the last connection closed": poll it.
                while (state.connections or state.tasks) and not self.force_exit:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
        except TimeoutError:
            for task in state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


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
