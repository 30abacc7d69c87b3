"""``ApiError``: an HTTP error reply with a JSON ``{"detail": ...}`` body.

Handlers raise it; the app turns it into the reply. A 4xx always says exactly what is wrong.

Example::

    raise ApiError(404, f"unknown model_id {model_id!r}")
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ApiError"]


class ApiError(Exception):
    """An error reply: ``status`` and a human-readable ``detail`` (and optional headers)."""

    def __init__(
        self, status: int, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})
