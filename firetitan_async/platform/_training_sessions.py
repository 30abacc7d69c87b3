"""Serverless training sessions on the control plane: list a session's checkpoints, promote one
to a model, delete the session.

The wire is the Fireworks SDK 1.2.30's ``FireworksClient.list_training_session_checkpoints``,
``promote_session_checkpoint`` and ``delete_training_session``:
``GET /v1/accounts/{a}/trainingSessions/{ts}/checkpoints?pageSize=N[&pageToken=…]`` (rows under
``trainingSessionCheckpoints``, oldest first), ``POST …/checkpoints/{c}:promote``
``{"output_model", "base_model"}`` (→ ``{"model"}``) and ``DELETE
/v1/accounts/{a}/trainingSessions/{ts}`` (a 404 is success: the session is gone already).
Through the control plane's one ``RestCore`` (headers, account, retries, redaction).

Example::

    rows = await list_session_checkpoints(rest, account, session_id)
    model = await promote_session_checkpoint(rest, rows[-1].name, "my-model", base_model)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs
import httpx

from ..errors import FiretitanError, InvalidInput
from ..wire import paths
from ..wire.promotion import promote_body
from ._checkpoints import PromotedModel
from ._rest import LONG_WRITE_TIMEOUT_S, READ_TIMEOUT_S, RestCore

__all__ = [
    "SessionCheckpoint",
    "delete_training_session",
    "list_session_checkpoints",
    "promote_session_checkpoint",
]

logger = logging.getLogger("firetitan_async.platform")

_NAME_RE: Final = re.compile(r"^accounts/([^/]+)/trainingSessions/([^/]+)/checkpoints/([^/]+)$")


@attrs.frozen
class SessionCheckpoint:
    """One checkpoint of a serverless training session, as the control plane lists it.

    ``name`` is ``accounts/<a>/trainingSessions/<ts>/checkpoints/<c>``, ``checkpoint_id`` its
    last segment; ``checkpoint_type`` the server's enum string (opaque); ``promotable`` is
    true iff :meth:`ServiceSession.promote_session_checkpoint` accepts it; ``create_time`` an
    RFC 3339 string when sent; ``raw`` the whole row.

    Example::

        newest = [c for c in await session.list_session_checkpoints() if c.promotable][-1]
    """

    name: str
    session_id: str
    checkpoint_id: str
    checkpoint_type: str | None = None
    promotable: bool = False
    create_time: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> SessionCheckpoint:
        """Parse one listing row; :class:`FiretitanError` if it has no usable name."""
        name = row.get("name") if isinstance(row, dict) else None
        match = _NAME_RE.match(name) if isinstance(name, str) else None
        if match is None or not isinstance(row, dict):
            raise FiretitanError(f"malformed training-session checkpoint row: {row!r:.200}")
        kind, created = row.get("checkpointType"), row.get("createTime")
        return cls(
            name=str(name),
            session_id=match.group(2),
            checkpoint_id=match.group(3),
            checkpoint_type=kind if isinstance(kind, str) and kind else None,
            promotable=row.get("promotable") is True,
            create_time=created if isinstance(created, str) and created else None,
            raw=MappingProxyType(row),
        )


async def list_session_checkpoints(
    rest: RestCore, account: str, session_id: str, *, page_size: int = 200
) -> list[SessionCheckpoint]:
    """Every checkpoint of the session (all pages, oldest first)."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise InvalidInput("page_size", f"must be an int >= 1, got {page_size!r}")
    rows = await rest.list_all(
        paths.training_session_checkpoints(account, session_id),
        ("trainingSessionCheckpoints", "training_session_checkpoints", "checkpoints"),
        page_size=page_size,
        what=f"checkpoint listing of training session {session_id!r}",
    )
    return [SessionCheckpoint.from_row(row) for row in rows]


async def promote_session_checkpoint(
    rest: RestCore, name: str, output_model_id: str, base_model: str
) -> PromotedModel:
    """Promote the session checkpoint ``name`` (its full resource name) to a model."""
    match = _NAME_RE.match(name) if isinstance(name, str) else None
    if match is None:
        raise InvalidInput(
            "checkpoint",
            f"must be accounts/<account>/trainingSessions/<session>/checkpoints/<id>, got "
            f"{name!r}",
        )
    account, session_id, checkpoint_id = match.groups()
    body = promote_body(account, output_model_id, base_model)
    path = paths.training_session_checkpoint(account, session_id, checkpoint_id) + ":promote"
    result = await rest.call("POST", path, json_body=body, timeout=LONG_WRITE_TIMEOUT_S)
    if not isinstance(result, dict):
        raise FiretitanError(f"malformed promotion reply: {result!r:.200}")
    promoted = PromotedModel.from_record(result.get("model"))
    logger.info("promoted %s to %s (state %s)", name, promoted.name, promoted.state)
    return promoted


async def delete_training_session(rest: RestCore, account: str, session_id: str) -> None:
    """Close the session (idempotent: an unknown or deleted session is success)."""

    def gone(response: httpx.Response, _attempt: int) -> bool:
        return response.status_code == 404

    await rest.request(
        "DELETE",
        paths.training_session(account, session_id),
        timeout=READ_TIMEOUT_S,
        accept=gone,
    )
