"""A lean HTTP/1.1 ``httpx.AsyncBaseTransport``: our sans-IO codec over anyio streams, O(1) pooling.

httpcore's pool rescans every connection and queued request on each request and reply, and
under hundreds of concurrent requests its HTTP/1.1 connections are often handed two requests
at once, one of which is then retried internally: at 256 operations in flight most of the
client's CPU went there. This transport keeps idle connections in a stack (take the most
recently used, put back after the reply), so a request costs the same however many are in
flight. It reads whole replies (our bodies are small) with :mod:`~firetitan_async._http._http11`
and speaks ``http`` and ``https``.

The pool follows httpcore's rules: an idle connection that is readable (the server closed
it, or sent bytes nobody asked for) or older than ``keepalive_expiry`` is closed at checkout,
never used; a reply followed by bytes beyond its end closes its connection; a request that
fails on a reused connection before any reply byte arrived is sent once more on a *new*
connection (never another idle one); a request waits at most the ``pool`` timeout for a
connection slot (``httpx.PoolTimeout``). A request with the ``STREAM_EXTENSION`` gets its
reply once the head is read; its body is read as the caller iterates it.

The TLS context for ``https`` is built on the first ``https`` connection, in a worker thread
(loading the CA bundle takes 30-200 ms), once per transport; ``http`` builds none. An exchange
that carries a :class:`~._cpu_turns.Turn` (request extension ``TURN_EXTENSION``)
gives it back while it waits for a connection slot, connects or waits for reply bytes. A reply
larger than ``max_reply_bytes`` fails with :class:`ReplyTooLarge` (never retried).

Errors are raised as the httpx exceptions the rest of the client already handles
(``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``, ``PoolTimeout``, …).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import NoReturn

import anyio
import anyio.abc
import anyio.streams.tls
import anyio.to_thread
import httpx

from ..errors import ReplyTooLarge
from ._cpu_turns import CpuTurns, Turn
from ._http11 import BodyTooLarge, ProtocolViolation, ReplyReader, encode_request

__all__ = [
    "DEFAULT_KEEPALIVE_EXPIRY_S",
    "DEFAULT_MAX_REPLY_BYTES",
    "STREAM_EXTENSION",
    "TURN_EXTENSION",
    "Http11Transport",
    "ReplyTooLarge",
]

#: The request extension that carries an exchange's CPU turn (a ``Turn`` or None).
TURN_EXTENSION = "firetitan_async.turn"
#: The request extension asking for the reply's body as it arrives (``response.aiter_bytes``).
STREAM_EXTENSION = "firetitan_async.stream"
#: Idle connections older than this are closed, not reused: below the idle timeouts of common
#: load balancers and gateways (60-350 s), so the server side has not closed them yet.
DEFAULT_KEEPALIVE_EXPIRY_S = 30.0
#: Replies larger than this are refused (a result of ours is kilobytes to a few megabytes).
DEFAULT_MAX_REPLY_BYTES = 256 * 1024 * 1024

_READ_SIZE = 65536
_Key = tuple[str, str, int]
_STREAM_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError)


class _Connection:
    """One keep-alive HTTP/1.1 connection (idle between exchanges)."""

    __slots__ = ("idle_since", "sock", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.sock: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.idle_since = 0.0

    def readable(self) -> bool:
        """Whether the idle connection has bytes or an EOF waiting: either way, unusable.

        An idle HTTP/1.1 connection has nothing to read unless the server closed it (EOF, or
        a reset) or sent bytes no request asked for. One ``select`` with a zero timeout.
        """
        sock = self.sock
        if sock is None or sock.fileno() < 0:
            return sock is not None
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(*_STREAM_ERRORS):
                await self.stream.aclose()



class _ReplyStarted(Exception):
    """Internal: the exchange failed after reply bytes arrived, so it is not retried here."""


class Http11Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 transport with a constant-cost connection pool.

    ``max_connections`` bounds open connections (beyond it a request waits for one, at most
    its ``pool`` timeout); ``max_idle`` bounds kept-alive idle ones; ``keepalive_expiry``
    (seconds) is how long an idle connection may be reused; ``ssl_context`` serves ``https``
    URLs (default: httpx's, built off the loop on first use); ``turns`` is the session's
    CPU-turn limiter that requests' turns belong to; ``max_reply_bytes`` caps one reply's
    body (a streamed reply's unread bytes).

    Example::

        transport = Http11Transport(keepalive_expiry=10.0)
        async with httpx.AsyncClient(transport=transport) as client:
            reply = await client.get("http://127.0.0.1:8000/healthz")
    """

    def __init__(
        self,
        *,
        max_connections: int = 4096,
        max_idle: int = 512,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
        turns: CpuTurns | None = None,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> None:
        self._idle: dict[_Key, deque[_Connection]] = {}
        # No checkpoint when a connection slot is free: the exchange yields at its I/O anyway.
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl_context = ssl_context
        self._ssl_lock = anyio.Lock()
        self._turns = turns or CpuTurns()
        self._max_reply_bytes = max_reply_bytes
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        url = request.url
        key: _Key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        turn: Turn | None = request.extensions.get(TURN_EXTENSION)
        slots = self._slots
        if slots.value > 0:
            await slots.acquire()
        else:
            await self._wait_for_slot(request, turn)
        release = True
        try:
            for attempt in (0, 1):
                # After a stale connection failed, a new one: another idle one may be stale too.
                conn, reused = await self._checkout(key, request, turn, fresh=attempt > 0)
                try:
                    response, keep_alive = await self._exchange(key, conn, request, turn)
                except _ReplyStarted as exc:
                    await conn.aclose()
                    assert isinstance(exc.__cause__, httpx.TransportError | ReplyTooLarge)
                    raise exc.__cause__ from None
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                    await conn.aclose()
                    if reused and attempt == 0:
                        continue  # a stale keep-alive connection: the server never saw it
                    raise
                except BaseException:
                    await conn.aclose()
                    raise
                if isinstance(response.stream, _BodyStream):
                    release = False  # the stream gives the slot back when it ends
                    return response
                await self._checkin(key, conn, keep_alive)
                return response
        finally:
            if release:
                slots.release()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()

    async def _wait_for_slot(self, request: httpx.Request, turn: Turn | None) -> None:
        timeout = _timeouts(request).get("pool")
        try:
            async with self._turns.yielded(turn):
                with anyio.fail_after(timeout):
                    await self._slots.acquire()
        except TimeoutError:
            message = f"no connection slot became free within {timeout} s (the pool timeout)"
            raise httpx.PoolTimeout(message, request=request) from None

    async def _tls_context(self) -> ssl.SSLContext:
        """httpx's default TLS context, built once, in a worker thread (not on the loop)."""
        if self._ssl_context is None:
            async with self._ssl_lock:
                if self._ssl_context is None:
                    self._ssl_context = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        return self._ssl_context

    async def _checkin(self, key: _Key, conn: _Connection, keep_alive: bool) -> None:
        """Keep ``conn`` for the next request to ``key``, or close it."""
        idle = self._idle.get(key)
        if keep_alive and not self._closed and idle is not None and len(idle) < self._max_idle:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            await conn.aclose()

    async def _checkout(
        self, key: _Key, request: httpx.Request, turn: Turn | None, *, fresh: bool = False
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = deque()
        if idle:
            oldest = time.monotonic() - self._expiry
            # The least recently used first: expired ones are closed, never handed out.
            while idle and idle[0].idle_since < oldest:
                await idle.popleft().aclose()
            while idle and not fresh:
                conn = idle.pop()
                if not conn.readable():
                    return conn, True
                await conn.aclose()  # closed by the server, or bytes no request asked for
        scheme, host, port = key
        timeout = _timeouts(request).get("connect")
        try:
            async with self._turns.yielded(turn):
                with anyio.fail_after(timeout):
                    stream: anyio.abc.ByteStream = await _connect_tcp(host, port)
                    if scheme == "https":
                        stream = await anyio.streams.tls.TLSStream.wrap(
                            stream,
                            hostname=host,
                            ssl_context=await self._tls_context(),
                            standard_compatible=False,
                        )
        except TimeoutError as exc:
            message = f"connecting to {host}:{port} timed out"
            raise httpx.ConnectTimeout(message, request=request) from exc
        except OSError as exc:
            message = f"cannot connect to {host}:{port}: {exc}"
            raise httpx.ConnectError(message, request=request) from exc
        return _Connection(stream), False

    async def _exchange(
        self, key: _Key, conn: _Connection, request: httpx.Request, turn: Turn | None
    ) -> tuple[httpx.Response, bool]:
        """One request and its reply on ``conn``; also whether ``conn`` may be reused.

        With the ``STREAM_EXTENSION`` the reply returns once its head is read, its stream
        reading the rest (and giving the connection and its slot back at its end).
        """
        timeouts = _timeouts(request)
        body = request.content  # httpx has already read our (small) bodies
        url = request.url
        headers = request.headers.raw
        names = {name.lower() for name, _ in headers}
        close = b"connection" in names and b"close" in _connection_tokens(headers)
        if b"host" not in names:
            headers = [(b"Host", url.netloc), *headers]
        if body and b"content-length" not in names:
            headers = [*headers, (b"Content-Length", str(len(body)).encode())]
        try:
            out = encode_request(request.method.encode(), url.raw_path, headers, body)
        except ProtocolViolation as exc:
            raise httpx.LocalProtocolError(str(exc), request=request) from exc
        stream_reply = bool(request.extensions.get(STREAM_EXTENSION))
        reader = ReplyReader(
            max_body=self._max_reply_bytes,
            head_request=request.method == "HEAD",
            stream=stream_reply,
        )
        on_reply_started = request.extensions.get("firetitan.reply_started")
        stream, turns = conn.stream, self._turns
        reading = False
        complete = False
        # One cancel scope for the exchange; its deadline moves from the write to the read.
        with anyio.CancelScope(deadline=_deadline(timeouts.get("write"))) as scope:
            try:
                await stream.send(out)
                reading = True
                scope.deadline = _deadline(timeouts.get("read"))
                while True:
                    # The turn is given back while the reply is awaited (``turns.yielded``
                    # inlined: this runs for every read).
                    held = turn if turn is not None and turn.held else None
                    if held is not None:
                        turns.give_back(held)
                    try:
                        data = await stream.receive(_READ_SIZE)
                    except anyio.EndOfStream:
                        data = b""
                    if held is not None:
                        await turns.take(held)
                    head_done = reader.head_done
                    complete = reader.feed(data)
                    if on_reply_started is not None and reader.head_done and not head_done:
                        on_reply_started()  # the body follows (deadlines time it apart)
                    if complete or (stream_reply and reader.head_done):
                        break
            except BodyTooLarge as exc:
                raise _ReplyStarted() from ReplyTooLarge(str(exc))
            except ProtocolViolation as exc:
                message = f"the server closed the connection or sent a bad reply: {exc}"
                _fail(httpx.RemoteProtocolError(message, request=request), exc, reader.received)
            except _STREAM_ERRORS as exc:
                if not reading:
                    message = f"writing the request failed: {exc!r}"
                    raise httpx.WriteError(message, request=request) from exc
                message = f"reading the reply failed: {exc!r}"
                _fail(httpx.ReadError(message, request=request), exc, reader.received)
        if scope.cancelled_caught:
            if not reading:
                raise httpx.WriteTimeout("writing the request timed out", request=request)
            _fail(httpx.ReadTimeout("the reply timed out", request=request), None, reader.received)
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": reader.reason}
        if stream_reply:
            body_stream = _BodyStream(self, key, conn, reader, request, complete, close)
            response = httpx.Response(
                reader.status,
                headers=reader.headers,
                stream=body_stream,
                request=request,
                extensions=extensions,
            )
            return response, False
        response = httpx.Response(
            reader.status,
            headers=reader.headers,
            content=reader.body,
            request=request,
            extensions=extensions,
        )
        return response, reader.keep_alive and not close


class _BodyStream(httpx.AsyncByteStream):
    """A streamed reply's body, read from its connection as the caller iterates it.

    It holds the request's connection slot: :meth:`aclose` (httpx calls it when the response
    is closed or read to its end) keeps the connection if the reply ended cleanly and closes
    it otherwise, then gives the slot back.
    """

    def __init__(
        self,
        transport: Http11Transport,
        key: _Key,
        conn: _Connection,
        reader: ReplyReader,
        request: httpx.Request,
        complete: bool,
        close: bool,
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn: _Connection | None = conn
        self._reader = reader
        self._request = request
        self._complete = complete
        self._close = close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader, conn = self._reader, self._conn
        first = reader.take_body()
        if first:
            yield first
        if conn is None:
            return
        read_timeout = _timeouts(self._request).get("read")
        while not self._complete:
            try:
                with anyio.fail_after(read_timeout):
                    try:
                        data = await conn.stream.receive(_READ_SIZE)
                    except anyio.EndOfStream:
                        data = b""
                self._complete = reader.feed(data)
            except TimeoutError:
                await self.aclose()
                raise httpx.ReadTimeout("the reply timed out", request=self._request) from None
            except BodyTooLarge as exc:
                await self.aclose()
                raise ReplyTooLarge(str(exc)) from None
            except ProtocolViolation as exc:
                await self.aclose()
                message = f"the server closed the connection or sent a bad reply: {exc}"
                raise httpx.RemoteProtocolError(message, request=self._request) from None
            except _STREAM_ERRORS as exc:
                await self.aclose()
                message = f"reading the reply failed: {exc!r}"
                raise httpx.ReadError(message, request=self._request) from None
            piece = reader.take_body()
            if piece:
                yield piece

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        transport = self._transport
        try:
            keep = self._complete and self._reader.keep_alive and not self._close
            await transport._checkin(self._key, conn, keep)
        finally:
            transport._slots.release()


async def _connect_tcp(host: str, port: int) -> anyio.abc.SocketStream:
    """A TCP connection to ``host:port``: ``anyio.connect_tcp`` for a name; for an IP address
    a plain non-blocking connect wrapped by ``SocketStream.from_socket``.

    ``connect_tcp`` resolves even a literal address (a worker thread) and races its attempts
    in a task group (happy eyeballs): 360-480 µs of CPU a connection on asyncio against
    100-220 µs for the plain connect (200 loopback connections, on both backends). A burst
    that opens a connection per operation in flight pays that per operation.
    """
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return await anyio.connect_tcp(host, port)
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect((str(address), port))
        except BlockingIOError:
            await anyio.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect to {host}:{port}: {os.strerror(error)}") from None
        return await anyio.abc.SocketStream.from_socket(sock)
    except BaseException:
        sock.close()
        raise


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
    return timeouts


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else anyio.current_time() + timeout


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The tokens of the request's own ``Connection`` headers (``close`` ends keep-alive)."""
    return {
        token.strip()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.lower().split(b",")
    }


def _fail(error: httpx.TransportError, cause: BaseException | None, started: bool) -> NoReturn:
    """Raise ``error``; marked as "after the reply started" when it is (then never retried)."""
    if started:
        raise _ReplyStarted() from error
    raise error from cause
