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

from collections.abc import Iterable
from typing import Any

import attrs

from ..errors import ProtocolError

__all__ = ["REDACTED", "SECRET_HEADERS", "Redactor"]

REDACTED = "<redacted>"

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

    def scrubbed(self, exc: BaseException) -> BaseException:
        """``exc``, or a redacted copy of it if it is a :class:`~firetitan_async.ProtocolError`.

        The sans-IO wire layer has no redactor: its ``ProtocolError`` quotes the malformed
        reply as it came. Every other error is redacted where it is built.
        """
        if isinstance(exc, ProtocolError) and self.secrets:
            problem = self.text(exc.problem)
            if problem != exc.problem:
                return ProtocolError(exc.what, problem).with_traceback(exc.__traceback__)
        return exc

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

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"
