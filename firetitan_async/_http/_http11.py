"""A sans-IO HTTP/1.1 client codec: requests to bytes; reply bytes parsed by llhttp.

No sockets, no event loop: :func:`encode_request` returns the bytes to send and a
:class:`ReplyReader` is fed the bytes that arrive, so the codec is tested with plain bytes and
the transport (:mod:`~firetitan_async._http._http11_transport`) does the I/O. Request encoding is
ours (a few C-level bytes operations); reply parsing is httptools, i.e. llhttp, the parser of
Node.js and uvicorn: status line, headers, ``Content-Length`` / chunked / read-until-close
framing, keep-alive, strict line endings and number syntax are its rules, not ours. This
module adds what llhttp leaves to its caller:

* ``1xx`` interim replies are skipped (``101`` is refused); a reply to ``HEAD`` has no body;
* the head (status line and headers) is capped at 64 KiB, however the bytes arrive;
* a body larger than ``max_body`` fails as soon as that is known (or, for a streamed reply,
  when more than that is buffered unread);
* bytes beyond a finished reply (:attr:`ReplyReader.trailing`) end keep-alive: the server
  does not send one reply per request, so the connection is never reused.

Measured at 256 operations in flight (benchmarks/NOTES.md): llhttp costs less CPU per reply
than the hand-written parser it replaced, and about a tenth of h11's.

Example::

    wire = encode_request(b"GET", b"/healthz", [(b"Host", b"example.com")], b"")
    reader = ReplyReader(max_body=1 << 20)
    done = reader.feed(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    assert done and reader.status == 200 and reader.body == b"ok"
"""

from __future__ import annotations

import re

import httptools

__all__ = ["BodyTooLarge", "ProtocolViolation", "ReplyReader", "encode_request"]

# A reply head (status line and headers) larger than this is refused.
_MAX_HEAD = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class ProtocolViolation(Exception):
    """The bytes are not HTTP/1.1 we can read (or a header would be split on the wire)."""


class BodyTooLarge(Exception):
    """The reply's body is larger than the reader's ``max_body``."""


def encode_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The bytes of one request. ``headers`` must hold ``Host`` and, with a body,
    ``Content-Length`` (the caller's: this adds none).

    Raises :class:`ProtocolViolation` for a header name that is not a token or a name, value,
    method or target holding a byte that would end a line early.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if not _TOKEN.fullmatch(name):
            raise ProtocolViolation(f"bad header name {name!r}")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    # A CR, LF or NUL inside a value, the method or the target adds a line break (or a NUL)
    # that the header count does not: one count instead of a scan per header.
    if head.count(b"\n") != len(headers) + 2 or head.count(b"\r") != len(headers) + 2:
        raise ProtocolViolation("a header value, the method or the target holds CR or LF")
    if b"\0" in head or b" " in target or b" " in method:
        raise ProtocolViolation("the request line or a header holds a NUL or a space")
    return head + body if body else head


class ReplyReader:
    """Reads one reply from the bytes fed to it (llhttp does the parsing).

    :meth:`feed` returns True once the reply is complete; ``feed(b"")`` means the server closed
    the connection. Once the head is read (:attr:`head_done`): :attr:`status`, :attr:`reason`,
    :attr:`headers` (raw ``(name, value)`` pairs, names as sent). After completion:
    :attr:`body` (unless ``stream``), :attr:`keep_alive`, :attr:`trailing`. :attr:`received`
    tells whether any reply byte arrived (a request that got none may not have been seen).
    With ``stream=True`` the body is not joined: :meth:`take_body` hands over what arrived so
    far, and ``max_body`` bounds what is buffered unread.
    """

    __slots__ = (
        "_complete",
        "_head_bytes",
        "_head_request",
        "_head_size",
        "_max_body",
        "_parser",
        "_parts",
        "_size",
        "_stream",
        "body",
        "head_done",
        "headers",
        "keep_alive",
        "reason",
        "received",
        "status",
        "trailing",
    )

    def __init__(
        self, *, max_body: int, head_request: bool = False, stream: bool = False
    ) -> None:
        self._max_body = max_body
        self._head_request = head_request
        self._stream = stream
        # The parser holds this reader's callbacks and the reader holds the parser: a cycle,
        # broken when the reply ends or fails, so each reply is freed as soon as it is read
        # instead of waiting for the cycle collector (about 30 objects a reply).
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_bytes = 0  # bytes fed before the head was whole (the 64 KiB cap)
        self._head_size = 0  # bytes of the header lines read (the cap, for a head fed whole)
        self._complete = False
        self._parts: list[bytes] = []
        self._size = 0  # body bytes buffered (all of them unless ``stream``)
        self.received = False
        self.head_done = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = False
        self.trailing = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes (``b""``: the connection closed); True once the reply is whole."""
        if self._complete:
            if data:
                self.trailing, self.keep_alive = True, False
            return True
        if not data:
            return self._closed()
        self.received = True
        head_done = self.head_done
        if not head_done:
            self._head_bytes += len(data)
        try:
            self._parse(data)
        except BaseException:
            self._parser = None  # the reply is given up
            raise
        if self._complete:
            self._finish()
            return True
        return False

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            raise ProtocolViolation("the reply was given up after a bad byte; read no more")
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolViolation | BodyTooLarge):
                raise cause from None
            raise ProtocolViolation(f"bad reply: {exc}") from None
        except httptools.HttpParserUpgrade:
            raise ProtocolViolation("the server switched protocols (101)") from None
        except httptools.HttpParserError as exc:
            if not self._complete:
                raise ProtocolViolation(f"bad reply: {exc}") from None
            # A reply followed by bytes that are not one: the reply stands, the connection not.
            self.trailing = True
        if not self.head_done and self._head_bytes > _MAX_HEAD:
            raise ProtocolViolation(f"the reply head is larger than {_MAX_HEAD} bytes")

    def take_body(self) -> bytes:
        """The body bytes that arrived since the last call (``stream=True``)."""
        parts, self._parts, self._size = self._parts, [], 0
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- llhttp's callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # A second message on one reply: bytes beyond it (parsed on, never read).
            self.trailing = True

    def on_status(self, reason: bytes) -> None:
        if not self._complete:
            self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > _MAX_HEAD:
            raise ProtocolViolation(f"the reply head is larger than {_MAX_HEAD} bytes")
        if not self.head_done:  # not the trailers of a chunked body (ignored, as h11 does)
            self.headers.append((name, value.rstrip(b" \t")))  # llhttp keeps trailing OWS

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        parser = self._parser
        assert parser is not None  # llhttp calls back only from within feed_data
        status = parser.get_status_code()
        if 100 <= status < 200:
            self.headers, self.reason = [], b""  # an interim reply: the real one follows
            return
        self.status, self.head_done = status, True
        if self._head_request:
            # llhttp does not know the request; a reply to HEAD ends with its head. What
            # llhttp would read as its body is never read: the connection is not reused.
            self._complete = True
            self._finish_head_only()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._size += len(body)
        if self._size > self._max_body:
            raise BodyTooLarge(f"the reply is larger than {self._max_body} bytes")
        self._parts.append(body)

    def on_message_complete(self) -> None:
        if self._complete:
            return
        if not self.head_done:  # the end of an interim reply
            return
        parser = self._parser
        assert parser is not None  # llhttp calls back only from within feed_data
        self.keep_alive = bool(parser.should_keep_alive())
        self._complete = True

    # -- helpers -----------------------------------------------------------------------------

    def _finish_head_only(self) -> None:
        self.keep_alive = False

    def _closed(self) -> bool:
        if self.head_done and self._until_close():
            # llhttp reads such a body until the end of the connection: that is its end.
            self._complete = True
            self._finish()
            self.keep_alive = False
            return True
        where = "mid-reply" if self.received else "before replying"
        raise ProtocolViolation(f"the server closed the connection {where}")

    def _until_close(self) -> bool:
        """Whether the body is framed by the connection's end (no length, not chunked)."""
        if self.status in (204, 304):
            return False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == b"content-length":
                return False
            if lowered == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
                return False
        return True

    def _finish(self) -> None:
        self._parser = None  # read whole: the parser is never fed again
        if not self._stream:
            parts = self._parts
            self.body = parts[0] if len(parts) == 1 else b"".join(parts)
            self._parts = []
        if self.trailing:
            self.keep_alive = False


