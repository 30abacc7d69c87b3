"""The one redactor: every path that turns a secret-bearing text into an error, a log line or
a repr goes through :class:`Redactor`.

A key can reach such text from several places: a server that echoes the ``X-Api-Key`` header
in an error body, an exception whose text holds a URL or a header, a request repr. Building
error messages and log lines only through ``Redactor.text`` / ``Redactor.value`` keeps the
rule in one place.

Example::

    redact = Redactor.of(api_key)
    raise APIStatusError(401, redact.value(response_json))
    logger.debug("retrying: %s", redact.text(str(exc)))
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterable
from typing import Any, TextIO, cast

import attrs

__all__ = ["REDACTED", "SECRET_HEADERS", "Redactor"]

REDACTED = "<redacted>"
_REDACTED_BYTES = REDACTED.encode()

# Request headers whose values are credentials; never logged, never shown.
SECRET_HEADERS = frozenset(
    {"x-api-key", "authorization", "cf-access-client-secret", "proxy-authorization"}
)

# Secrets shorter than this are not searched for in text: replacing every "a" of a message
# because a test used the key "a" would garble errors without protecting anything real.
_MIN_SECRET_LEN = 4


@attrs.frozen
class Redactor:
    """Replaces every known secret in text (and in JSON-like values) with ``<redacted>``."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def of(cls, *secrets: str | None) -> Redactor:
        """A redactor for the given secrets (``None`` and very short strings are skipped)."""
        kept = {s for s in secrets if s and len(s) >= _MIN_SECRET_LEN}
        # Longest first, so a secret that contains another is replaced whole.
        return cls(tuple(sorted(kept, key=len, reverse=True)))

    def with_secrets(self, secrets: Iterable[str | None]) -> Redactor:
        """This redactor plus ``secrets``."""
        return Redactor.of(*self.secrets, *secrets)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def value(self, value: Any) -> Any:
        """A JSON-like value (dicts, lists, strings, numbers) with every secret replaced."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value

    def json_bytes(self, body: bytes) -> bytes:
        """A JSON reply's bytes with every secret replaced, before they are parsed.

        Done where a reply enters, so nothing parsed from it (an id, a reason, a message, a
        snippet the sans-IO wire quotes and cuts) can hold a secret, whole or in part. The
        marker holds no quote or backslash, so JSON stays JSON. A reply with ``\\u`` or ``\\/``
        escapes (which could spell a secret the scan would not see) is re-encoded without them
        first; one that is not JSON is scanned as it is. Cost when there is nothing to do: one
        memchr for a backslash and one substring scan per secret, 0.4 ms for a 0.8 MB reply
        of floats on a loaded 2-core machine, where ``json.loads`` of it took 92 ms (the
        two-byte ``\\u`` search alone took 2 ms: hence the backslash test first).
        """
        if not self.secrets:
            return body
        if b"\\" in body and (b"\\u" in body or b"\\/" in body):
            with contextlib.suppress(ValueError):  # not JSON: its parser will say so
                body = json.dumps(
                    json.loads(body), ensure_ascii=False, separators=(",", ":")
                ).encode()
        for secret in self.secrets:
            raw = secret.encode()
            if raw in body:
                body = body.replace(raw, _REDACTED_BYTES)
        return body

    def binary_bytes(self, body: bytes) -> bytes:
        """A binary reply's bytes (protobuf) with every secret masked by as many ``*``.

        The mask keeps every length, so a length-prefixed encoding still decodes: a string
        field that held the key holds asterisks instead. One substring scan per secret.
        """
        for secret in self.secrets:
            raw = secret.encode()
            if raw in body:
                body = body.replace(raw, b"*" * len(raw))
        return body

    def cut(self, text: str, limit: int) -> str:
        """``text`` redacted, then cut to ``limit`` characters (never the other way round: a
        cut through a secret leaves a piece the redactor no longer recognises)."""
        return self.text(text)[:limit]

    def scrubbed(self, exc: BaseException) -> BaseException:
        """``exc`` with every secret taken out of its text, attributes and cause chain.

        Called where an error leaves an operation or a public call: whatever built it (the
        sans-IO wire quoting a malformed reply, an error wrapping another's text), its
        message, its string and JSON-like attributes, its notes and every exception in its
        ``__cause__``/``__context__`` chain are redacted in place. A link whose text cannot be
        changed (e.g. pydantic's ``ValidationError`` renders from its own state) and still
        holds a secret is cut from the chain. Returns ``exc`` itself.
        """
        if self.secrets and isinstance(exc, Exception):
            self._scrub(exc, set())
        return exc

    def _scrub(self, exc: BaseException, seen: set[int]) -> None:
        seen.add(id(exc))
        try:
            exc.args = self._kept(exc.args)
            for name, attr in list(vars(exc).items()):  # (``__notes__`` among them)
                if isinstance(attr, str | dict | list | tuple):
                    setattr(exc, name, self._kept(attr))
            if isinstance(exc, OSError):  # its text comes from these, not from args
                for name in ("strerror", "filename", "filename2"):
                    if isinstance(attr := getattr(exc, name), str):
                        setattr(exc, name, self.text(attr))
        except (AttributeError, TypeError):  # an exception type that refuses: judged below
            pass
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                if id(inner) not in seen:
                    self._scrub(inner, seen)
        for link in ("__cause__", "__context__"):
            inner = getattr(exc, link)
            if inner is None or id(inner) in seen:
                continue
            self._scrub(inner, seen)
            if self._leaks(inner):
                setattr(exc, link, None)
                exc.__suppress_context__ = True

    def _kept(self, value: Any) -> Any:
        """``value`` redacted, its tuples kept tuples (exception args, attributes)."""
        if isinstance(value, tuple):
            return tuple(self._kept(v) for v in value)
        return self.value(value)

    def _leaks(self, exc: BaseException) -> bool:
        try:
            text = f"{exc!s} {exc!r}"
        except Exception:  # an exception that cannot render is not kept
            return True
        return any(secret in text for secret in self.secrets)

    def exception(self, exc: BaseException) -> str:
        """``"TypeName: message"`` of an exception, redacted (for error texts and logs)."""
        text = str(exc)
        name = type(exc).__name__
        return self.text(f"{name}: {text}" if text else name)

    def headers(self, headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Headers for a log line: credential headers replaced, the rest redacted as text."""
        return {
            k: REDACTED if k.lower() in SECRET_HEADERS else self.text(v) for k, v in headers
        }

    def writer(self, stream: TextIO) -> TextIO:
        """``stream`` seen through this redactor: every text written to it is redacted (the
        command line wraps stdout and stderr with it; one ``write`` is redacted whole, as
        ``print`` and logging handlers write a message in one call).

        Example::

            with contextlib.redirect_stdout(redactor.writer(sys.stdout)):
                print(record)
        """
        return cast(TextIO, _RedactedWriter(stream, self))

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"


class _RedactedWriter(io.TextIOBase):
    """A text stream that redacts what it is given, then writes it to ``stream``."""

    def __init__(self, stream: TextIO, redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def write(self, text: str) -> int:
        self._stream.write(self._redactor.text(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")
