"""A sans-IO HTTP/1.1 client codec: requests to bytes, reply bytes to a status, headers, body.

No sockets, no event loop: :func:`encode_request` returns the bytes to send and a
:class:`ReplyReader` is fed the bytes that arrive, so the codec is tested with plain bytes and
the transport (:mod:`~firetitan_async._http._http11_transport`) does the I/O. It is the small subset
of HTTP/1.1 a client of JSON APIs needs, done with a few C-level bytes operations per message
(h11, which this replaced, spent about a tenth of the client's CPU at hundreds of operations in
flight on events, state machines and per-header regular expressions):

* requests carry a ``Content-Length`` body (never chunked); header names and values are
  checked for the bytes that would split a header (CR, LF, NUL) and names for ``:``;
* replies are framed by ``Content-Length``, ``Transfer-Encoding: chunked`` or the end of the
  connection; ``1xx`` interim replies are skipped; ``HEAD``, ``204`` and ``304`` have no body;
* a reply whose body would exceed ``max_body`` fails as soon as that is known;
* whether the connection may carry another request (:attr:`ReplyReader.keep_alive`).

Example::

    wire = encode_request(b"GET", b"/healthz", [(b"Host", b"example.com")], b"")
    reader = ReplyReader(max_body=1 << 20)
    done = reader.feed(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    assert done and reader.status == 200 and reader.body == b"ok"
"""

from __future__ import annotations

import re

__all__ = ["BodyTooLarge", "ProtocolViolation", "ReplyReader", "encode_request"]

# A reply head (status line and headers) larger than this is refused.
_MAX_HEAD = 64 * 1024
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NO_BODY_STATUSES = frozenset({204, 304})


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
    """Reads one reply from the bytes fed to it.

    :meth:`feed` returns True once the reply is complete; ``feed(b"")`` means the server closed
    the connection. After completion: :attr:`status`, :attr:`reason`, :attr:`headers` (raw
    ``(name, value)`` pairs, names as sent), :attr:`body`, :attr:`keep_alive`. :attr:`received`
    tells whether any reply byte arrived (a request that got none may not have been seen).
    Body bytes are kept as the pieces that arrived and joined once, so a large reply costs
    linear time.
    """

    __slots__ = (
        "_chunk_left",
        "_framing",
        "_head",
        "_head_request",
        "_left",
        "_max_body",
        "_parts",
        "_pending",
        "_size",
        "body",
        "head_done",
        "headers",
        "keep_alive",
        "reason",
        "received",
        "status",
    )

    def __init__(self, *, max_body: int, head_request: bool = False) -> None:
        self._max_body = max_body
        self._head_request = head_request
        self._head = b""  # bytes of the head read so far
        self._framing = ""  # "length" | "chunked" | "close" once the head is read
        self._left = 0  # "length": body bytes still to come
        self._pending = bytearray()  # "chunked": bytes not yet parsed
        self._chunk_left = -1  # "chunked": data bytes left in this chunk; -1 size line; -2 trailers
        self._parts: list[bytes] = []
        self._size = 0
        self.received = False
        self.head_done = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = False

    def feed(self, data: bytes) -> bool:
        """Take the next bytes (``b""``: the connection closed); True once the reply is whole."""
        if not data:
            return self._closed()
        self.received = True
        if not self.head_done:
            data = self._read_head(data)
            if not self.head_done:
                return False
        framing = self._framing
        if framing == "length":
            if len(data) < self._left:
                self._add(data)
                self._left -= len(data)
                return False
            self._add(data[: self._left])
            return self._finish(rest=len(data) > self._left)
        if framing == "chunked":
            return self._read_chunks(data)
        self._add(data)
        return False

    # -- the head --------------------------------------------------------------------------

    def _read_head(self, data: bytes) -> bytes:
        """Consume head bytes; return the bytes after the head (once it is whole)."""
        buffer = self._head + data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    raise ProtocolViolation(f"the reply head is larger than {_MAX_HEAD} bytes")
                self._head = buffer
                return b""
            lines = buffer[:end].split(b"\r\n")
            buffer = buffer[end + 4 :]
            version, status, reason = _status_line(lines[0])
            if 100 <= status < 200:
                if status == 101:
                    raise ProtocolViolation("the server switched protocols (101)")
                continue  # an interim reply (100 Continue, 103 Early Hints): the real one follows
            break
        self._head = b""
        headers = self.headers
        close = version == b"HTTP/1.0"
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise ProtocolViolation(f"bad header line {line[:100]!r}")
            value = value.strip(b" \t")
            headers.append((name, value))
            lowered = name.lower()
            if lowered == b"content-length":
                length = _content_length(value, length)
            elif lowered == b"transfer-encoding":
                codings = [c.strip() for c in value.lower().split(b",")]
                if codings[-1] != b"chunked":
                    raise ProtocolViolation(f"unsupported transfer-encoding {value[:100]!r}")
                chunked = True
            elif lowered == b"connection":
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    close = True
                elif b"keep-alive" in tokens:
                    close = False
        self.status, self.reason, self.head_done = status, reason, True
        self.keep_alive = not close
        if self._head_request or status in _NO_BODY_STATUSES:
            self._framing, self._left = "length", 0
        elif chunked:
            self._framing = "chunked"
        elif length is not None:
            if length > self._max_body:
                raise BodyTooLarge(f"the reply is larger than {self._max_body} bytes")
            self._framing, self._left = "length", length
        else:
            self._framing, self.keep_alive = "close", False
        return buffer

    # -- bodies ----------------------------------------------------------------------------

    def _read_chunks(self, data: bytes) -> bool:
        pending = self._pending
        pending += data
        while True:
            left = self._chunk_left
            if left > 0:  # chunk data
                take = min(left, len(pending))
                if not take:
                    return False
                self._add(bytes(pending[:take]))
                del pending[:take]
                self._chunk_left = left - take
                if self._chunk_left:
                    return False
            elif left == 0:  # the CRLF after a chunk's data
                if len(pending) < 2:
                    return False
                if pending[:2] != b"\r\n":
                    raise ProtocolViolation("a chunk does not end with CRLF")
                del pending[:2]
                self._chunk_left = -1
            elif left == -1:  # a size line
                end = pending.find(b"\r\n")
                if end < 0:
                    if len(pending) > _MAX_HEAD:
                        raise ProtocolViolation("a chunk size line is too long")
                    return False
                size_text = bytes(pending[:end]).split(b";", 1)[0].strip()
                del pending[: end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolViolation(f"bad chunk size {size_text[:20]!r}") from None
                if size < 0 or size_text.startswith((b"+", b"-")):
                    raise ProtocolViolation(f"bad chunk size {size_text[:20]!r}")
                if size + self._size > self._max_body:
                    raise BodyTooLarge(f"the reply is larger than {self._max_body} bytes")
                self._chunk_left = size if size else -2
            else:  # trailers (ignored) after the last chunk, ended by an empty line
                if pending.startswith(b"\r\n"):
                    return self._finish(rest=len(pending) > 2)
                end = pending.find(b"\r\n\r\n")
                if end < 0:
                    if len(pending) > _MAX_HEAD:
                        raise ProtocolViolation("the trailers are too long")
                    return False
                return self._finish(rest=len(pending) > end + 4)

    def _add(self, piece: bytes) -> None:
        if piece:
            self._size += len(piece)
            if self._size > self._max_body:
                raise BodyTooLarge(f"the reply is larger than {self._max_body} bytes")
            self._parts.append(piece)

    def _closed(self) -> bool:
        if self.head_done and self._framing == "close":
            return self._finish(rest=False)
        where = "mid-reply" if self.received else "before replying"
        raise ProtocolViolation(f"the server closed the connection {where}")

    def _finish(self, *, rest: bool) -> bool:
        parts = self._parts
        self.body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts, self._pending = [], bytearray()
        if rest:
            # Bytes beyond the reply: this server does not send one reply per request.
            self.keep_alive = False
        return True


def _status_line(line: bytes) -> tuple[bytes, int, bytes]:
    version, _, rest = line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ProtocolViolation(f"bad status line {line[:100]!r}")
    return version, int(code), reason


def _content_length(value: bytes, previous: int | None) -> int:
    # Several equal values (or a comma-joined list of equal values) are allowed; others not.
    values = {v.strip() for v in value.split(b",")}
    if len(values) != 1:
        raise ProtocolViolation(f"conflicting content-length {value[:100]!r}")
    text = values.pop()
    if not text.isdigit():
        raise ProtocolViolation(f"bad content-length {value[:100]!r}")
    length = int(text)
    if previous is not None and previous != length:
        raise ProtocolViolation("conflicting content-length headers")
    return length
