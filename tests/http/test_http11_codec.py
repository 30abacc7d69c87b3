"""The sans-IO HTTP/1.1 codec (firetitan_async._http._http11), tested with plain bytes.

Every reply is also fed one byte at a time and in two halves split at every position, so a
framing bug at a buffer boundary cannot hide behind one convenient read size.
"""

from __future__ import annotations

import gc
import time

import pytest

from firetitan_async._http._http11 import (
    BodyTooLarge,
    ProtocolViolation,
    ReplyReader,
    encode_request,
)

MB = 1 << 20


def read(data: bytes, *, max_body: int = MB, head_request: bool = False) -> ReplyReader:
    """Feed ``data`` whole, byte by byte and split everywhere; all must agree; return one."""
    feeds: list[list[bytes]] = [[data], [data[i : i + 1] for i in range(len(data))]]
    feeds += [[data[:cut], data[cut:]] for cut in range(1, len(data))]
    readers = []
    for pieces in feeds:
        reader = ReplyReader(max_body=max_body, head_request=head_request)
        done = False
        for piece in pieces:
            assert not done, "the reader finished before all bytes of the reply were fed"
            if piece:
                done = reader.feed(piece)
        if not done:
            done = reader.feed(b"")  # the server closes the connection
        assert done
        readers.append(reader)
    first = readers[0]
    for other in readers[1:]:
        assert (other.status, other.headers, other.body, other.keep_alive) == (
            first.status,
            first.headers,
            first.body,
            first.keep_alive,
        )
    return first


# -- requests --------------------------------------------------------------------------------


def test_a_request_is_its_line_headers_and_body() -> None:
    wire = encode_request(
        b"POST", b"/api/v1/forward?x=1", [(b"Host", b"h:1"), (b"Content-Length", b"2")], b"{}"
    )
    assert wire == b"POST /api/v1/forward?x=1 HTTP/1.1\r\nHost: h:1\r\nContent-Length: 2\r\n\r\n{}"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"X-Key", b"a\r\nX-Injected: 1"),
        (b"X-Key", b"a\nb"),
        (b"X-Key", b"a\rb"),
        (b"X-Key", b"a\0b"),
        (b"X Key", b"a"),
        (b"X-Key:", b"a"),
        (b"", b"a"),
    ],
)
def test_a_header_that_would_split_the_request_is_refused(name: bytes, value: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        encode_request(b"GET", b"/", [(b"Host", b"h"), (name, value)], b"")


def test_a_target_with_a_space_or_line_break_is_refused() -> None:
    for target in (b"/a b", b"/a\r\nHost: evil"):
        with pytest.raises(ProtocolViolation):
            encode_request(b"GET", target, [(b"Host", b"h")], b"")


# -- replies ---------------------------------------------------------------------------------


def test_content_length_framing() -> None:
    reader = read(
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}'
    )
    assert (reader.status, reader.reason, reader.body) == (200, b"OK", b'{"a":1}')
    assert reader.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"7")]
    assert reader.keep_alive


def test_header_values_are_trimmed_and_repeated_headers_kept_in_order() -> None:
    reader = read(
        b"HTTP/1.1 200 OK\r\nSet-Cookie:  a=1 \r\nSet-Cookie:\tb=2\r\nContent-Length: 0\r\n\r\n"
    )
    assert reader.headers[:2] == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_chunked_framing_with_extensions_and_trailers() -> None:
    body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n"
    reader = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert reader.body == b"Wikipedia in\r\n\r\nchunks."
    assert reader.keep_alive


def test_chunked_without_trailers() -> None:
    reader = read(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert reader.body == b"abc"


def test_a_body_until_the_connection_closes() -> None:
    reader = read(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    assert reader.body == b"all of it"
    assert not reader.keep_alive


def test_interim_replies_are_skipped() -> None:
    reader = read(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    )
    assert (reader.status, reader.body, reader.headers) == (
        201,
        b"ok",
        [(b"Content-Length", b"2")],
    )


@pytest.mark.parametrize("status", [204, 304])
def test_replies_without_a_body(status: int) -> None:
    reader = read(f"HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n".encode())
    assert (reader.status, reader.body, reader.keep_alive) == (status, b"", True)


def test_a_head_reply_has_no_body_whatever_its_content_length() -> None:
    reader = read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", head_request=True)
    assert reader.body == b""


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\n", False),
        (b"HTTP/1.0 200 OK\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n", True),
    ],
)
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert read(head + b"Content-Length: 1\r\n\r\nx").keep_alive is keep_alive


def test_bytes_beyond_the_reply_end_keep_alive() -> None:
    reader = ReplyReader(max_body=MB)
    assert reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n")
    assert (reader.body, reader.keep_alive) == (b"x", False)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n" + b"x" * 11,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n5\r\nghijk\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11,
    ],
)
def test_a_body_larger_than_the_cap_fails_as_soon_as_known(reply: bytes) -> None:
    reader = ReplyReader(max_body=10)
    with pytest.raises(BodyTooLarge):
        reader.feed(reply)


def test_a_body_exactly_at_the_cap_is_read() -> None:
    assert read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + b"x" * 10, max_body=10).body
    assert read(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 10, max_body=10).body == b"x" * 10
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"
    )
    assert read(chunked, max_body=10).body == b"abcdefghij"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_malformed_replies_are_protocol_violations(reply: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        ReplyReader(max_body=MB).feed(reply)


def test_repeated_content_lengths_are_refused_even_when_equal() -> None:
    # llhttp's rule (h11 accepts equal ones): a reply that frames itself twice is refused.
    with pytest.raises(ProtocolViolation):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")


def test_a_huge_head_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="head is larger"):
        ReplyReader(max_body=MB).feed(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000)


def test_the_connection_closing_says_whether_any_reply_byte_arrived() -> None:
    silent = ReplyReader(max_body=MB)
    with pytest.raises(ProtocolViolation, match="before replying"):
        silent.feed(b"")
    assert not silent.received
    cut = ReplyReader(max_body=MB)
    assert not cut.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(ProtocolViolation, match="mid-reply"):
        cut.feed(b"")
    assert cut.received and cut.head_done


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_a_large_reply_read_in_small_pieces_costs_linear_time(framing: str) -> None:
    size, piece = 64 * MB, 64 * 1024
    head = {
        "length": f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode(),
        "chunked": f"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size:x}\r\n".encode(),
        "close": b"HTTP/1.1 200 OK\r\n\r\n",
    }[framing]
    tail = b"\r\n0\r\n\r\n" if framing == "chunked" else b""
    block = b"x" * piece
    reader = ReplyReader(max_body=size)
    started = time.perf_counter()
    reader.feed(head)
    done = False
    for _ in range(size // piece):
        done = reader.feed(block)
    done = reader.feed(tail) if tail else (done or reader.feed(b""))
    elapsed = time.perf_counter() - started
    assert done and len(reader.body) == size
    # Linear: ~0.1 s here. Re-copying the body on every piece (quadratic) takes ~10 s.
    assert elapsed < 3.0, elapsed


def test_a_huge_head_is_refused_however_it_arrives() -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(ProtocolViolation, match="head is larger"):
        ReplyReader(max_body=MB).feed(head)  # whole, in one piece
    many = b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 10_000 + b"Content-Length: 0\r\n\r\n"
    with pytest.raises(ProtocolViolation, match="head is larger"):
        ReplyReader(max_body=MB).feed(many)


def test_a_trickled_head_costs_linear_time() -> None:
    """A head fed a byte at a time: 4x the bytes must cost about 4x the time, not 16x."""

    def cost(lines: int) -> float:
        head = b"HTTP/1.1 200 OK\r\n" + b"X-Header: value\r\n" * lines + b"\r\n"
        reader = ReplyReader(max_body=MB)
        started = time.process_time()
        for at in range(len(head)):
            reader.feed(head[at : at + 1])
        return time.process_time() - started

    cost(200)  # warm up
    small, large = min(cost(500) for _ in range(3)), min(cost(2000) for _ in range(3))
    assert large < 8 * small, (small, large)


@pytest.mark.parametrize(
    ("reply", "fails"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", True),
    ],
    ids=["length", "chunked", "malformed"],
)
def test_a_reply_read_or_refused_leaves_no_cycle_for_the_collector(
    reply: bytes, fails: bool
) -> None:
    # The parser calls back into its reader: a cycle each reply, unless broken when the reply
    # ends or fails (a burst of replies otherwise feeds the collector ~30 objects a reply).
    # The collector keeps what it finds (DEBUG_SAVEALL), and only readers and parsers count:
    # another thread of the suite (an SDK's background loop) may make garbage meanwhile.
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            reader = ReplyReader(max_body=MB)
            if fails:
                with pytest.raises(ProtocolViolation):
                    reader.feed(reply)
            else:
                assert reader.feed(reply)
            del reader
        gc.collect()
        found = [type(o).__name__ for o in gc.garbage]
        assert found.count("ReplyReader") == found.count("HttpResponseParser") == 0
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
