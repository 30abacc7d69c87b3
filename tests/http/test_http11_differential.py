"""Differential test: our reply-parsing path (``_http11.ReplyReader``, llhttp underneath)
against h11 on one corpus of replies, each fed whole, split at every byte, and a byte at a time.

Any disagreement fails the test unless it is listed in ``KNOWN`` with its reason.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest

from firetitan_async._http._http11 import BodyTooLarge, ProtocolViolation, ReplyReader

OK = b"HTTP/1.1 200 OK\r\n"
TE = b"Transfer-Encoding: chunked\r\n\r\n"
CORPUS: dict[str, bytes] = {
    "content-length": OK + b"Content-Length: 5\r\n\r\nhello",
    "empty body": OK + b"Content-Length: 0\r\n\r\n",
    "json reply": OK + b'Content-Type: application/json\r\nContent-Length: 9\r\n\r\n{"a": 1}\n',
    "chunked": OK + TE + b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n",
    "chunked with extension": OK + TE + b"5;x=y\r\nhello\r\n0\r\n\r\n",
    "chunked with trailers": OK + TE + b"2\r\nhi\r\n0\r\nX-T: 1\r\n\r\n",
    "chunked upper hex": OK + TE + b"A\r\n0123456789\r\n0\r\n\r\n",
    "read until close": OK + b"\r\nuntil the end",
    "connection close": OK + b"Connection: close\r\nContent-Length: 2\r\n\r\nok",
    "close then keep-alive": OK + b"Connection: close\r\nConnection: keep-alive\r\n"
    b"Content-Length: 0\r\n\r\n",
    "http/1.0": b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "http/1.0 keep-alive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
    b"Content-Length: 2\r\n\r\nok",
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "304 with a length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
    "100 then 200": b"HTTP/1.1 100 Continue\r\n\r\n" + OK + b"Content-Length: 1\r\n\r\nx",
    "103 hints then 200": b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    + OK + b"Content-Length: 1\r\n\r\nx",
    "no reason phrase": b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    "long reason": b"HTTP/1.1 503 Service Temporarily Unavailable\r\nContent-Length: 0\r\n\r\n",
    "repeated header": OK + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
    "whitespace around value": OK + b"X-A:   padded \t\r\nContent-Length: 0\r\n\r\n",
    "empty header value": OK + b"X-Empty:\r\nContent-Length: 0\r\n\r\n",
    "bytes beyond the reply": OK + b"Content-Length: 2\r\n\r\nokEXTRA",
    "a second reply beyond": OK + b"Content-Length: 2\r\n\r\nok"
    + OK + b"Content-Length: 0\r\n\r\n",
    "204 with a body": b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
    # Malformed:
    "bare LF": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "http/2 status line": b"HTTP/2 200 OK\r\n\r\n",
    "two-digit status": b"HTTP/1.1 20 OK\r\n\r\n",
    "letters for status": b"HTTP/1.1 abc OK\r\n\r\n",
    "no colon": OK + b"no colon here\r\nContent-Length: 0\r\n\r\n",
    "space in name": OK + b"Bad Name: x\r\nContent-Length: 0\r\n\r\n",
    "space before colon": OK + b"Name : x\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": OK + b"X-A: one\r\n two\r\nContent-Length: 0\r\n\r\n",
    "conflicting lengths": OK + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    "equal lengths": OK + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "length list": OK + b"Content-Length: 2, 2\r\n\r\nok",
    "negative length": OK + b"Content-Length: -1\r\n\r\n",
    "plus length": OK + b"Content-Length: +2\r\n\r\nok",
    "4300-digit length": OK + b"Content-Length: " + b"9" * 4300 + b"\r\n\r\n",
    "gzip coding": OK + b"Transfer-Encoding: gzip\r\n\r\nzipped",
    "chunked and length": OK + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
    b"0\r\n\r\n",
    "0x chunk size": OK + TE + b"0x5\r\nhello\r\n0\r\n\r\n",
    "underscore chunk size": OK + TE + b"5_0\r\nhello\r\n0\r\n\r\n",
    "space chunk size": OK + TE + b" 5\r\nhello\r\n0\r\n\r\n",
    "bad chunk size": OK + TE + b"zz\r\n",
    "chunk without CRLF": OK + TE + b"1\r\nabc\r\n0\r\n\r\n",
    "101 switch": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    "cut in the head": OK + b"Content-Le",
    "cut in the body": OK + b"Content-Length: 10\r\n\r\nabc",
    "cut in a chunk": OK + TE + b"5\r\nhe",
    "nothing": b"",
    "NUL in a value": OK + b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
}

# Where the two parsers part, and why that is acceptable (or better) for this client.
KNOWN: dict[str, str] = {
    "bare LF": "llhttp requires CRLF and fails at once; h11 accepts LF alone. The old hand "
    "parser waited for the read timeout instead.",
    "equal lengths": "llhttp refuses any repeated Content-Length; h11 accepts equal repeats "
    "(RFC 9110 allows either; a server of ours never repeats it).",
    "length list": "the same rule as 'equal lengths' for a comma-joined list.",
    "gzip coding": "a reply whose last coding is not chunked is read until the connection "
    "closes (RFC 9112 6.3 for replies); h11 refuses transfer codings it does not implement.",
    "http/1.0 keep-alive": "llhttp honours `Connection: keep-alive` on an HTTP/1.0 reply; h11 "
    "closes every HTTP/1.0 connection. Either is safe: the reply is framed by its length.",
    "obs-fold": "llhttp unfolds an obsolete line fold into the value; h11 refuses it (RFC 9112 "
    "5.2 allows a client either).",
    "chunked and length": "llhttp refuses a reply framed both ways (the request-smuggling "
    "shape); h11 lets chunked win (RFC 9112 6.3 allows a client either).",
}


def ours(data: bytes, cuts: list[int]) -> tuple[Any, ...]:
    """Our outcome: the reply, or "error"; fed in pieces cut at ``cuts``, then EOF."""
    reader = ReplyReader(max_body=1 << 20)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    try:
        done = False
        for piece in pieces:
            if piece and reader.feed(piece):
                done = True
        if not done:
            reader.feed(b"")
    except (ProtocolViolation, BodyTooLarge):
        return ("error",)
    headers = [(n.lower(), v) for n, v in reader.headers]
    return (reader.status, reader.reason, headers, reader.body, reader.keep_alive)


def theirs(data: bytes, cuts: list[int]) -> tuple[Any, ...]:
    """h11's outcome for a GET, the same way."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    pieces = [p for p in pieces if p] + [b""]
    status, reason, headers, body = 0, b"", [], b""
    outcome: tuple[Any, ...] | None = None
    try:
        for piece in pieces:
            if outcome is not None:
                if piece:  # bytes beyond the reply: the connection is not reused
                    outcome = (*outcome[:4], False)
                continue
            conn.receive_data(piece)
            while outcome is None:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Response):
                    status, reason = event.status_code, event.reason
                    headers = [(n.lower(), v) for n, v in event.headers.raw_items()]
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    trailing, closed = conn.trailing_data
                    keep = conn.their_state is h11.DONE and not trailing and not closed
                    outcome = (status, reason, headers, body, keep)
                elif isinstance(event, h11.ConnectionClosed):
                    return ("error",)
    except h11.RemoteProtocolError:
        return ("error",)
    return outcome or ("error",)


def cut_sets(data: bytes) -> list[list[int]]:
    """Whole; split in two at every byte (every 61st of a long reply); a byte at a time."""
    whole: list[list[int]] = [[]]
    step = 1 if len(data) <= 400 else 61
    split = [[at] for at in range(1, len(data), step)]
    one_by_one = [list(range(1, len(data)))] if len(data) > 1 else []
    return whole + split + one_by_one


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_our_reply_parsing_agrees_with_h11(name: str) -> None:
    data = CORPUS[name]
    for cuts in cut_sets(data):
        mine, reference = ours(data, cuts), theirs(data, cuts)
        if name in KNOWN and mine != reference:
            continue  # a listed disagreement (its reason is in KNOWN)
        assert mine == reference, (name, cuts[:3], mine, reference)
    if name in KNOWN:
        # A listed disagreement must still be one: else the list hides nothing and shrinks.
        assert ours(data, []) != theirs(data, []), f"{name!r} no longer differs: unlist it"


def test_the_answer_is_the_same_however_the_bytes_are_cut() -> None:
    for name, data in CORPUS.items():
        outcomes = {repr(ours(data, cuts)) for cuts in cut_sets(data)}
        assert len(outcomes) == 1, (name, outcomes)
