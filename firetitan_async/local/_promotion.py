"""Control-plane checkpoints, promotion, operations and models of the local trainer.

* ``GET /v1/accounts/{a}/rlorTrainerJobs/{job}/checkpoints?pageSize=N&pageToken=T``: the
  job's checkpoints read from the checkpoint store, oldest first, as rows with ``name``
  (``accounts/{a}/rlorTrainerJobs/{job}/checkpoints/{c}``), ``createTime``, ``updateTime``,
  ``checkpointType`` and ``promotable`` (sampler snapshots that stand alone: ``base`` and
  ``merged_base``; training states and deltas are not promotable). Deleted jobs still list.
* ``POST /v1/accounts/{a}/checkpoints/{c}:promote`` with the SDK's snake_case body
  (``output_model``, ``trainer_job_id``, ``base_model``, optional ``hot_load_deployment_id``
  and ``async_promotion``) makes a model record. With ``async_promotion: true`` the reply is a
  long-running operation ``{"operation": {...}}`` polled at ``GET /v1/{operation}``; without
  it, ``{"model": {...}}``.
* ``GET /v1/accounts/{a}/models/{m}`` reads a promoted model, or a served base model's record
  (``baseModelDetails.moe``, ``contextLength``: what the Fireworks SDK's ``model_is_moe`` reads).
* A promoted full-parameter model (``kind: HF_BASE_MODEL``) is then served as a base model, as
  on the platform, where a promoted model can be the ``baseModel`` of the next job (SFT, then RL
  from the SFT model): new jobs, training clients and samplers of that name start from the
  promoted snapshot's weights. A LoRA job's promotion (``HF_PEFT_ADDON``) is not a base model.

Test knobs (``POST /_local/control_plane``): ``promote_pending_polls`` (how many operation
polls answer ``done: false`` first; 0, the default, finishes the operation in the POST
reply) and ``reject_async_promotion`` (answer a 400 about the unknown ``async_promotion``
field, as an older control plane would).

Example::

    models = ModelRegistry()
    routes = promotion_routes(jobs, checkpoints, lambda request: models)
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._checkpoint_store import CheckpointStore, rfc3339
from ._control_plane import FailedPrecondition, JobRegistry, check_account
from ._http_errors import ApiError
from ._json_body import read_json_object

__all__ = ["ModelRegistry", "checkpoint_kind", "promoted_model", "promotion_routes"]

_MODEL_ID_RE = re.compile(r"^[a-z0-9-]{1,63}$")
_PROMOTE_FIELDS = frozenset(
    {"output_model", "trainer_job_id", "base_model", "hot_load_deployment_id", "async_promotion"}
)
_MAX_PAGE = 1000


class ModelRegistry:
    """Promoted models, promotion operations and the promotion test knobs."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}
        self.pending_polls: dict[str, int] = {}
        self.promote_pending_polls = 0
        self.reject_async_promotion = False

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply the knobs of ``POST /_local/control_plane``; returns them all."""
        unknown = set(body) - {"promote_pending_polls", "reject_async_promotion"}
        if unknown:
            raise ApiError(400, f"unknown knobs {sorted(unknown)}")
        polls = body.get("promote_pending_polls", self.promote_pending_polls)
        if isinstance(polls, bool) or not isinstance(polls, int) or polls < 0:
            raise ApiError(400, f"promote_pending_polls must be an int >= 0, got {polls!r}")
        reject = body.get("reject_async_promotion", self.reject_async_promotion)
        if not isinstance(reject, bool):
            raise ApiError(400, f"reject_async_promotion must be a bool, got {reject!r}")
        self.promote_pending_polls, self.reject_async_promotion = polls, reject
        return {"promote_pending_polls": polls, "reject_async_promotion": reject}


def checkpoint_kind(meta: Mapping[str, Any], lora_rank: int) -> tuple[str, bool]:
    """A stored checkpoint's control-plane ``checkpointType`` and whether it is promotable
    (a full sampler snapshot is; a delta or a training state is not)."""
    if meta["checkpoint_type"] != "sampler":
        kind = "CHECKPOINT_TYPE_TRAINING_LORA" if lora_rank else "CHECKPOINT_TYPE_TRAINING"
        return kind, False
    if meta.get("snapshot_type") == "delta":
        return "CHECKPOINT_TYPE_INFERENCE_ARC_V2", False
    lora = lora_rank > 0
    return ("CHECKPOINT_TYPE_INFERENCE_LORA" if lora else "CHECKPOINT_TYPE_INFERENCE_BASE"), True


def promoted_model(
    name: str, model_id: str, base_model: str, lora_rank: int, source: str, tinker_path: Any
) -> dict[str, Any]:
    """The model record a promotion creates (``name`` is ``accounts/<a>/models/<id>``)."""
    model: dict[str, Any] = {
        "name": name,
        "displayName": model_id,
        "state": "READY",
        "kind": "HF_PEFT_ADDON" if lora_rank else "HF_BASE_MODEL",
        "createTime": rfc3339(time.time()),
        "baseModel": base_model,
        "sourceCheckpoint": source,
        "tinkerPath": tinker_path,
    }
    if lora_rank:
        model["peftDetails"] = {"baseModel": base_model, "r": lora_rank}
    return model


def _rows(jobs: JobRegistry, store: CheckpointStore, job_id: str) -> list[dict[str, Any]]:
    job = jobs.get(job_id)
    prefix = f"accounts/{jobs.account_id}/rlorTrainerJobs/{job_id}/checkpoints"
    rows = []
    for meta in reversed(store.list_all(job_id=job_id)):  # the store lists newest first
        name = str(meta["checkpoint_id"]).split("/", 1)[1]
        kind, promotable = checkpoint_kind(meta, job.lora_rank)
        rows.append(
            {
                "name": f"{prefix}/{name}",
                "createTime": meta["time"],
                "updateTime": meta["time"],
                "checkpointType": kind,
                "promotable": promotable,
                "_meta": meta,
            }
        )
    return rows


def _page(request: Request) -> tuple[int, int]:
    size_text = request.query_params.get("pageSize", "200")
    token = request.query_params.get("pageToken") or "0"
    if not size_text.isdigit():
        raise ApiError(400, f"pageSize must be an integer >= 0, got {size_text!r}")
    if not token.isdigit():
        raise ApiError(400, f"pageToken {token!r} is not a token this server gave out")
    size = min(int(size_text) or 200, _MAX_PAGE)
    return int(token), size


def _parse_resource(value: Any, field: str, pattern: str) -> tuple[str, str]:
    match = re.fullmatch(pattern, value) if isinstance(value, str) else None
    if match is None:
        raise ApiError(
            400, f"{field} must look like {pattern.replace('([^/]+)', '<id>')}, got {value!r}"
        )
    return match.group(1), match.group(2)


def promotion_routes(
    jobs: Callable[[Request], JobRegistry],
    checkpoints: Callable[[Request], CheckpointStore],
    models: Callable[[Request], ModelRegistry],
) -> list[Route]:
    """The checkpoint-listing, promotion, operation and model routes."""

    async def list_checkpoints(request: Request) -> Response:
        registry = jobs(request)
        check_account(registry, request.path_params["account_id"])
        offset, size = _page(request)
        rows = _rows(registry, checkpoints(request), request.path_params["job_id"])
        page = [
            {k: v for k, v in row.items() if k != "_meta"} for row in rows[offset : offset + size]
        ]
        after = offset + size
        return JSONResponse(
            {
                "checkpoints": page,
                "nextPageToken": str(after) if after < len(rows) else "",
                "totalSize": len(rows),
            }
        )

    async def promote(request: Request) -> Response:
        registry, store, reg = jobs(request), checkpoints(request), models(request)
        account = request.path_params["account_id"]
        check_account(registry, account)
        checkpoint_id, sep, action = request.path_params["checkpoint"].partition(":")
        if not sep or action != "promote":
            raise ApiError(404, f"unknown action {request.path_params['checkpoint']!r}")
        body = await read_json_object(request)
        if reg.reject_async_promotion and "async_promotion" in body:
            raise ApiError(400, 'unknown field "async_promotion" in PromoteCheckpointRequest')
        unknown = set(body) - _PROMOTE_FIELDS
        if unknown:
            raise ApiError(400, f"unknown fields {sorted(unknown)} (the body is snake_case)")
        model_account, model_id = _parse_resource(
            body.get("output_model"), "output_model", r"accounts/([^/]+)/models/([^/]+)"
        )
        job_account, job_id = _parse_resource(
            body.get("trainer_job_id"),
            "trainer_job_id",
            r"accounts/([^/]+)/rlorTrainerJobs/([^/]+)",
        )
        base_model = body.get("base_model")
        if not isinstance(base_model, str) or not base_model:
            raise ApiError(400, "base_model is required")
        if model_account != account or job_account != account:
            raise ApiError(400, f"output_model and trainer_job_id must be in account {account!r}")
        if not _MODEL_ID_RE.match(model_id):
            raise ApiError(400, f"model id {model_id!r}: 1-63 characters of a-z, 0-9 or '-'")
        deployment = body.get("hot_load_deployment_id")
        if deployment is not None:
            _parse_resource(
                deployment, "hot_load_deployment_id", r"accounts/([^/]+)/deployments/([^/]+)"
            )
        use_async = body.get("async_promotion", False)
        if not isinstance(use_async, bool):
            raise ApiError(400, f"async_promotion must be a bool, got {use_async!r}")
        name = f"accounts/{account}/models/{model_id}"
        if name in reg.models or any(
            op["_model"]["name"] == name for op in reg.operations.values()
        ):
            raise ApiError(409, f"model {name} already exists")
        job = registry.get(job_id)
        found = [
            r for r in _rows(registry, store, job_id) if r["name"].endswith(f"/{checkpoint_id}")
        ]
        if not found:
            raise ApiError(404, f"checkpoint {checkpoint_id!r} of trainer job {job_id!r} not found")
        row = next((r for r in found if r["promotable"]), None)
        if row is None:
            kind = found[0]["checkpointType"]
            raise FailedPrecondition(f"checkpoint {checkpoint_id!r} is not promotable: {kind}")
        model = promoted_model(
            name, model_id, base_model, job.lora_rank, row["name"], row["_meta"].get("tinker_path")
        )
        if not job.lora_rank and (served := registry.models.find(base_model)) is not None:
            # a full model has its base's architecture (what the SDK's model_is_moe reads)
            base_record = served.record()
            for key in ("contextLength", "baseModelDetails", "vocabSize"):
                model[key] = base_record[key]
        if not use_async:
            _publish(reg, registry, model)
            return JSONResponse({"model": model})
        op_name = f"accounts/{account}/operations/promote-{uuid.uuid4().hex[:12]}"
        reg.operations[op_name] = {"_model": model}
        reg.pending_polls[op_name] = reg.promote_pending_polls
        return JSONResponse({"operation": _operation(reg, registry, op_name)})

    async def get_operation(request: Request) -> Response:
        registry, reg = jobs(request), models(request)
        check_account(registry, request.path_params["account_id"])
        name = (
            f"accounts/{request.path_params['account_id']}/operations/{request.path_params['op']}"
        )
        if name not in reg.operations:
            raise ApiError(404, f"operation {name} not found")
        reg.pending_polls[name] = max(0, reg.pending_polls[name] - 1)
        return JSONResponse(_operation(reg, registry, name))

    async def get_model(request: Request) -> Response:
        registry, reg = jobs(request), models(request)
        name = f"accounts/{request.path_params['account_id']}/models/{request.path_params['model']}"
        base = registry.models.find(name)
        if name not in reg.models and base is not None:  # a configured base model
            return JSONResponse(base.record())
        check_account(registry, request.path_params["account_id"])
        if name not in reg.models:
            raise ApiError(404, f"model {name} not found")
        return JSONResponse(reg.models[name])

    account = "/v1/accounts/{account_id}"
    return [
        Route(account + "/rlorTrainerJobs/{job_id}/checkpoints", list_checkpoints, methods=["GET"]),
        Route(account + "/checkpoints/{checkpoint}", promote, methods=["POST"]),
        Route(account + "/operations/{op}", get_operation, methods=["GET"]),
        Route(account + "/models/{model}", get_model, methods=["GET"]),
    ]


def _publish(reg: ModelRegistry, jobs: JobRegistry, model: dict[str, Any]) -> None:
    """Record a promoted model; a full-parameter one (``HF_BASE_MODEL``) is also served as a
    base model from then on."""
    if model["name"] in reg.models:
        return
    reg.models[model["name"]] = model
    if model["kind"] == "HF_BASE_MODEL" and model.get("tinkerPath"):
        jobs.models.add_promoted(model["name"], model["baseModel"], model["tinkerPath"])


def _operation(reg: ModelRegistry, jobs: JobRegistry, name: str) -> dict[str, Any]:
    """The operation's public form; the model is created when it is first reported done."""
    model = reg.operations[name]["_model"]
    done = reg.pending_polls[name] == 0
    operation: dict[str, Any] = {
        "name": name,
        "done": done,
        "metadata": {"status_message": "promoted" if done else "copying the checkpoint"},
    }
    if done:
        _publish(reg, jobs, model)
        operation["response"] = {"@type": "type.googleapis.com/gateway.Model", **model}
    return operation
