"""``read_json_object``: a request's JSON object body, or a 400 that says what is wrong.

Example::

    body = await read_json_object(request)   # {} for an empty body
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ._http_errors import ApiError

__all__ = ["read_json_object"]


async def read_json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object (``{}`` if empty); ``ApiError(400)`` otherwise."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}")
    return body
