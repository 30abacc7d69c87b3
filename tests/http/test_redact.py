"""The one redactor: secrets out of text, JSON-like values, exceptions and headers."""

from __future__ import annotations

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
