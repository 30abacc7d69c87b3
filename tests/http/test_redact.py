"""The one redactor: secrets out of text, JSON-like values, exceptions and headers."""

from __future__ import annotations

import io
import json
import traceback

from firetitan_async import APIStatusError, ProtocolError, SubmissionLost
from firetitan_async._http._redact import REDACTED, Redactor

KEY = "fw_secret_key_123456"


def test_text_and_nested_values() -> None:
    r = Redactor.of(KEY, None)
    assert r.text(f"bad key {KEY}!") == f"bad key {REDACTED}!"
    body = {"detail": [f"X-Api-Key: {KEY}", {KEY: 3}], "n": 1}
    assert KEY not in repr(r.value(body))
    assert r.value(body)["n"] == 1


def test_longest_secret_first_and_short_ones_skipped() -> None:
    r = Redactor.of("abcd", "abcdefgh", "x")
    assert r.text("abcdefgh abcd x") == f"{REDACTED} {REDACTED} x"


def test_exception_and_headers() -> None:
    r = Redactor.of(KEY)
    assert KEY not in r.exception(RuntimeError(f"connect to http://h/?k={KEY} failed"))
    assert r.exception(RuntimeError()) == "RuntimeError"
    hdrs = r.headers([("X-API-Key", KEY), ("Authorization", f"Bearer {KEY}"), ("a", KEY)])
    assert set(hdrs.values()) == {REDACTED}
    assert KEY not in repr(r)


def test_json_bytes_redacts_raw_and_escaped_spellings() -> None:
    r = Redactor.of(KEY)
    raw = json.dumps({"id": f"req-{KEY}", "n": [1.5, 2]}).encode()
    assert json.loads(r.json_bytes(raw)) == {"id": f"req-{REDACTED}", "n": [1.5, 2]}
    escaped = json.dumps({"why": KEY.replace("s", "\\u0073")}).replace("\\\\", "\\").encode()
    assert KEY.encode() not in escaped and json.loads(escaped)["why"] == KEY
    assert json.loads(r.json_bytes(escaped)) == {"why": REDACTED}
    assert r.json_bytes(b"not json \\u0 " + KEY.encode()) == b"not json \\u0 " + REDACTED.encode()
    assert Redactor.of().json_bytes(raw) is raw


def test_cut_redacts_before_cutting() -> None:
    r = Redactor.of(KEY)
    text = "x" * 10 + KEY
    assert r.cut(text, 15) == "x" * 10 + REDACTED[:5]
    assert KEY[:5] not in r.cut(text, 15)


class _Refusing(Exception):
    """An exception whose text comes from its own state (as pydantic's errors do)."""

    def __init__(self, hidden: str) -> None:
        super().__init__()
        self._hidden = io.StringIO(hidden)

    def __str__(self) -> str:
        return f"input_value={self._hidden.getvalue()!r}"


def test_scrubbed_cleans_text_attributes_and_the_cause_chain() -> None:
    r = Redactor.of(KEY)
    inner = ProtocolError("retrieve_future reply", f"not JSON: {KEY}")
    try:
        try:
            raise inner
        except ProtocolError as lost:
            raise SubmissionLost(f"optim_step could not be submitted: {lost}") from lost
    except SubmissionLost as caught:
        outer = caught
    failed = APIStatusError(500, {"detail": [f"bad {KEY}"]}, request_id=f"r-{KEY}")
    failed.__context__ = _Refusing(KEY)  # its text cannot be changed: cut from the chain
    for error in (outer, failed):
        assert r.scrubbed(error) is error
        text = "".join(traceback.format_exception(error)) + repr(vars(error))
        assert KEY not in text and REDACTED in text
    assert inner.problem == f"not JSON: {REDACTED}"
    group = ExceptionGroup("two", [OSError(5, f"disk of {KEY}"), ValueError(KEY)])
    group.add_note(f"while saving for {KEY}")
    r.scrubbed(group)
    assert KEY not in "".join(traceback.format_exception(group))
    assert group.exceptions[0].args == (5, f"disk of {REDACTED}")  # a tuple, ints kept
    assert failed.__context__ is None and failed.request_id == f"r-{REDACTED}"


def test_writer_redacts_each_write() -> None:
    out = io.StringIO()
    writer = Redactor.of(KEY).writer(out)
    print(f"key={KEY}", file=writer)
    assert out.getvalue() == f"key={REDACTED}\n"
