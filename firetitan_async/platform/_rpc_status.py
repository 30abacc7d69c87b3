"""``PlatformAPIError``: a control-plane reply that failed, with its ``google.rpc.Status`` parsed.

Fireworks answers errors with ``{"code": <grpc code>, "message": str, "details": [...]}``
(sometimes wrapped as ``{"error": {...}}``); a ``google.rpc.ErrorInfo`` detail carries a
machine-readable ``reason`` and ``metadata``. Other bodies (``{"detail": ...}``, plain text)
still give a readable message. Bodies are redacted before they are kept.

Example::

    try:
        await jobs.get("missing")
    except PlatformAPIError as exc:
        print(exc.status_code, exc.grpc_code, exc.reason, exc.message)
"""

from __future__ import annotations

from typing import Any

import httpx

from .._http._redact import Redactor
from .._http._send import redacted_body
from ..errors import PlatformAPIError

__all__ = ["PlatformAPIError", "platform_error"]

_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"



def platform_error(response: httpx.Response, redactor: Redactor) -> PlatformAPIError:
    """Parse a failed control-plane reply into a :class:`PlatformAPIError` (redacted).

    Example::

        raise platform_error(response, Redactor.of(api_key))
    """
    body = redacted_body(response, redactor, max_text=500)
    status = body.get("error", body) if isinstance(body, dict) else body
    message = ""
    grpc_code: int | None = None
    reason: str | None = None
    metadata: dict[str, str] = {}
    details: list[Any] = []
    if isinstance(status, dict):
        raw_message = status.get("message", status.get("detail"))
        message = raw_message if isinstance(raw_message, str) else str(status)
        code = status.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 16:
            grpc_code = code
        raw_details = status.get("details")
        if isinstance(raw_details, list):
            details = raw_details
            reason, metadata = _error_info(raw_details)
    else:
        message = str(status)
    return PlatformAPIError(
        response.status_code,
        body,
        method=response.request.method,
        path=response.request.url.path,
        message=message,
        grpc_code=grpc_code,
        reason=reason,
        metadata=metadata,
        details=details,
    )


def _error_info(details: list[Any]) -> tuple[str | None, dict[str, str]]:
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO_TYPE:
            reason = detail.get("reason")
            raw = detail.get("metadata")
            metadata = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
            return (reason if isinstance(reason, str) and reason else None), metadata
    return None, {}
