"""Control-plane checkpoints: list a job's checkpoints (all pages) and promote one to a model.

The wire is the Fireworks SDK's ``FireworksClient.list_checkpoints`` / ``promote_checkpoint``
(study §2.2): ``GET /v1/accounts/{a}/rlorTrainerJobs/{job}/checkpoints?pageSize=N[&pageToken=…]``
(rows under ``checkpoints`` or ``rlorTrainerJobCheckpoints``, oldest first) and
``POST /v1/accounts/{a}/checkpoints/{c}:promote`` with a snake_case body and
``"async_promotion": true``; a server that does not know that field (a 400 naming it) gets
the same body without it. A long-running-operation reply is polled at ``GET /v1/{operation}``.

Example::

    rows = await jobs.list_checkpoints(job_id)
    model = await jobs.promote_checkpoint(
        name=[r for r in rows if r.promotable][-1].name,
        output_model_id="my-model", base_model="accounts/fireworks/models/qwen3-8b",
    )
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote

import anyio
import attrs
import httpx

from ..errors import APIStatusError, FiretitanError, InvalidInput
from ..wire.promotion import promote_body
from ._records import COLLECTION
from ._rest import LONG_WRITE_TIMEOUT_S, RestCore
from ._rpc_status import platform_error

__all__ = [
    "JobCheckpoint",
    "PromotedModel",
    "list_job_checkpoints",
    "parse_checkpoint_name",
    "promote_checkpoint",
]

logger = logging.getLogger("firetitan_async.platform")

_CHECKPOINT_NAME_RE: Final = re.compile(
    r"^accounts/([^/]+)/rlorTrainerJobs/([^/]+)/checkpoints/([^/]+)$"
)


@attrs.frozen
class JobCheckpoint:
    """One row of a job's control-plane checkpoint listing.

    ``name`` is the full resource name (``accounts/<a>/rlorTrainerJobs/<job>/checkpoints/<c>``),
    ``checkpoint_id`` its last segment; ``checkpoint_type`` the server's enum string (e.g.
    ``"CHECKPOINT_TYPE_INFERENCE_BASE"``, opaque); ``promotable`` is authoritative: true iff
    :meth:`TrainerJobs.promote_checkpoint` will accept the row. ``create_time`` and
    ``update_time`` are RFC 3339 strings when the server sent them; ``raw`` is the whole row.

    Example::

        newest = [c for c in await jobs.list_checkpoints(job_id) if c.promotable][-1]
    """

    name: str
    job_id: str
    checkpoint_id: str
    checkpoint_type: str | None = None
    promotable: bool = False
    create_time: str | None = None
    update_time: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @classmethod
    def from_row(cls, row: Any) -> JobCheckpoint:
        """Parse one listing row; :class:`FiretitanError` if it has no usable name."""
        name = row.get("name") if isinstance(row, dict) else None
        parsed = parse_checkpoint_name(name) if isinstance(name, str) else None
        if parsed is None or not isinstance(row, dict):
            raise FiretitanError(f"malformed checkpoint row: {row!r:.200}")

        def text(key: str) -> str | None:
            value = row.get(key)
            return value if isinstance(value, str) and value else None

        return cls(
            name=str(name),
            job_id=parsed[1],
            checkpoint_id=parsed[2],
            checkpoint_type=text("checkpointType"),
            promotable=row.get("promotable") is True,
            create_time=text("createTime"),
            update_time=text("updateTime"),
            raw=MappingProxyType(row),
        )


@attrs.frozen
class PromotedModel:
    """The model a promotion produced: ``name`` is ``accounts/<a>/models/<id>``.

    Example::

        model = await jobs.promote_checkpoint(name=row.name, output_model_id="m", base_model=b)
        model.model_id, model.state       # "m", "READY"
    """

    name: str
    model_id: str
    state: str | None = None
    kind: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @classmethod
    def from_record(cls, record: Any) -> PromotedModel:
        """Parse a model record; :class:`FiretitanError` if it has no name."""
        name = record.get("name") if isinstance(record, dict) else None
        if not isinstance(record, dict) or not isinstance(name, str) or "/models/" not in name:
            raise FiretitanError(f"malformed model record: {record!r:.200}")
        record = {k: v for k, v in record.items() if k != "@type"}
        state, kind = record.get("state"), record.get("kind")
        return cls(
            name=name,
            model_id=name.rsplit("/", 1)[1],
            state=state if isinstance(state, str) else None,
            kind=kind if isinstance(kind, str) else None,
            raw=MappingProxyType(record),
        )


def parse_checkpoint_name(name: str) -> tuple[str, str, str] | None:
    """``(account, job_id, checkpoint_id)`` of a full checkpoint name, else ``None``.

    Example::

        parse_checkpoint_name("accounts/a/rlorTrainerJobs/j/checkpoints/c")   # ("a", "j", "c")
    """
    match = _CHECKPOINT_NAME_RE.match(name)
    return (match.group(1), match.group(2), match.group(3)) if match else None


async def list_job_checkpoints(
    rest: RestCore, account: str, job_id: str, *, page_size: int = 200
) -> list[JobCheckpoint]:
    """Every checkpoint of ``job_id`` (all pages, in the server's order: oldest first)."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise InvalidInput("page_size", f"must be an int >= 1, got {page_size!r}")
    path = (
        f"/v1/accounts/{quote(account, safe='')}/{COLLECTION}/{quote(job_id, safe='')}/checkpoints"
    )
    rows = await rest.list_all(
        path,
        ("checkpoints", "rlorTrainerJobCheckpoints"),
        page_size=page_size,
        what=f"checkpoint listing of {job_id!r}",
    )
    return [JobCheckpoint.from_row(row) for row in rows]


async def promote_checkpoint(
    rest: RestCore,
    *,
    account: str,
    job_id: str,
    checkpoint_id: str,
    output_model_id: str,
    base_model: str,
    hot_load_deployment_id: str | None = None,
    poll_interval_s: float = 10.0,
    timeout_s: float = 7200.0,
) -> PromotedModel:
    """Promote one checkpoint; waits for the promotion operation if the server starts one."""
    body = promote_body(
        account,
        output_model_id,
        base_model,
        trainer_job=f"accounts/{account}/{COLLECTION}/{job_id}",
        hot_load_deployment=None
        if hot_load_deployment_id is None
        else f"accounts/{account}/deployments/{hot_load_deployment_id}",
    )
    checkpoint = quote(checkpoint_id, safe="")
    path = f"/v1/accounts/{quote(account, safe='')}/checkpoints/{checkpoint}:promote"

    def bad_request(response: httpx.Response, _attempt: int) -> bool:
        return response.status_code == 400

    response = await rest.request(
        "POST",
        path,
        json_body={**body, "async_promotion": True},
        timeout=LONG_WRITE_TIMEOUT_S,
        accept=bad_request,
    )
    if response.status_code == 400:
        error = platform_error(response, rest.redactor)
        said = error.message.lower()
        if "async_promotion" not in said and "asyncpromotion" not in said:
            raise error
        logger.info("the server does not know async_promotion; promoting synchronously")
        response = await rest.request("POST", path, json_body=body, timeout=LONG_WRITE_TIMEOUT_S)
    result = rest.json_of(response)
    if not isinstance(result, dict):
        raise FiretitanError(f"malformed promotion reply: {result!r:.200}")
    operation = result.get("operation")
    if operation:
        done = await _wait_for_operation(rest, operation, poll_interval_s, timeout_s)
        model = done.get("response") or result.get("model")
        if not model:
            raise FiretitanError(
                f"promotion of {checkpoint_id!r}: the operation finished without a model"
            )
    else:
        model = result.get("model")
    promoted = PromotedModel.from_record(model)
    logger.info("promoted %s to %s (state %s)", checkpoint_id, promoted.name, promoted.state)
    return promoted


async def _wait_for_operation(
    rest: RestCore, operation: Any, poll_interval_s: float, timeout_s: float
) -> dict[str, Any]:
    name = operation.get("name") if isinstance(operation, dict) else None
    if not isinstance(name, str) or not name:
        raise FiretitanError(f"the promotion operation has no name: {operation!r:.200}")
    current: dict[str, Any] = operation
    last_status: object = None
    with anyio.move_on_after(timeout_s) as scope:
        while not current.get("done", False):
            metadata = current.get("metadata") or {}
            status = metadata.get("status_message") or metadata.get("statusMessage")
            if status and status != last_status:
                logger.info("operation %s: %s", name, status)
                last_status = status
            await anyio.sleep(poll_interval_s)
            try:
                reply = await rest.call("GET", f"/v1/{name}")
            except APIStatusError as exc:
                if not rest.retry.retryable_status(exc.status_code):
                    raise
                logger.warning("polling operation %s failed (%s); will retry", name, exc)
                continue
            if not isinstance(reply, dict):
                raise FiretitanError(f"malformed operation {name}: {reply!r:.200}")
            current = reply
    if scope.cancelled_caught:
        raise FiretitanError(f"operation {name} did not finish within {timeout_s:g}s")
    error = current.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        raise FiretitanError(f"operation {name} failed: {message or error}")
    return current
