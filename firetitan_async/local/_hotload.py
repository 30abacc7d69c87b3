"""Hot-loading sampler snapshots onto a local deployment: ``/hot_load/v1/models/hot_load``.

``POST`` (headers ``fireworks-deployment: accounts/{a}/deployments/{id}`` and
``fireworks-model: <the deployment's baseModel>``; body ``{"identity", ["reset_prompt_cache"],
["incremental_snapshot_metadata": {"previous_snapshot_identity", "compression_format",
"checksum_format"}]}``) loads the sampler snapshot named ``identity`` (a snapshot name as
``save_weights_for_sampler`` wrote it, or its ``tinker://`` path) from the trainer's checkpoint
store, exactly:

* a ``base`` snapshot is loaded whole and must come without incremental metadata;
* a ``delta`` snapshot needs the metadata, its ``previous_snapshot_identity`` must be the
  deployment's current snapshot and its base must be the base the deployment's chain started
  from; the served weights are then that base XOR the delta bits (bit for bit what the trainer
  saved). Anything else is refused with 400 and changes nothing.

The load then takes ``hotload_s`` (stage ``loading``; the old weights keep serving) and
completes (stage ``done``; with ``hotload_s`` 0, before the reply), or fails (stage ``error``)
after the ``fail_next_hotload`` hook.
``GET`` reports ``{"replicas": [{"identity" (the serving pod's), "current_snapshot_identity",
"readiness", "loading_state":
{"stage", "target_snapshot_identity"}, "loaded_adapters": []}]}`` (no replicas when scaled to
zero), which is what the SDK's ``wait_for_hotload`` polls.

Example::

    routes = hotload_routes(registry_of)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._deployments import Deployment, DeploymentRegistry, check_key
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._server_state import ServerState

__all__ = ["hotload_routes"]

_BODY_FIELDS = frozenset({"identity", "reset_prompt_cache", "incremental_snapshot_metadata"})
_META_FIELDS = frozenset({"previous_snapshot_identity", "compression_format", "checksum_format"})


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _target(request: Request, reg: DeploymentRegistry) -> Deployment:
    name = request.headers.get("fireworks-deployment")
    if not name:
        raise ApiError(400, "the fireworks-deployment header is required")
    dep = reg.by_name(name)
    model = request.headers.get("fireworks-model")
    if model != dep.record.get("baseModel"):
        raise ApiError(
            400, f"fireworks-model {model!r} does not match the deployment's baseModel "
            f"{dep.record.get('baseModel')!r}"
        )
    if not dep.record.get("enableHotLoad", True):
        raise ApiError(400, f"deployment {dep.deployment_id!r} is not hot-load enabled")
    return dep


def _find_snapshot(state: ServerState, dep: Deployment, identity: str) -> dict[str, Any]:
    if identity.startswith("tinker://"):
        return state.checkpoints.meta(identity)
    job = dep.record.get("hotLoadTrainerJob")
    job_id = str(job).rsplit("/", 1)[-1] if job else None
    for meta in state.checkpoints.list_all(job_id=job_id):  # newest first
        if meta["checkpoint_id"] == f"sampler_weights/{identity}":
            return meta
    raise ApiError(404, f"snapshot {identity!r} not found in the trainer's checkpoint store")


def _weights_to_load(
    state: ServerState, dep: Deployment, identity: str, metadata: dict[str, Any] | None
) -> tuple[dict[str, np.ndarray], str, dict[str, np.ndarray]]:
    """The weights to serve, and the chain's base path and weights afterwards."""
    meta = _find_snapshot(state, dep, identity)
    path = str(meta["tinker_path"])
    if meta.get("snapshot_type") != "delta":
        if metadata is not None:
            raise ApiError(400, f"snapshot {identity!r} is a base snapshot: send it without "
                           "incremental_snapshot_metadata")
        weights = state.checkpoints.load_sampler_weights(path)
        return weights, path, weights
    if metadata is None:
        raise ApiError(400, f"snapshot {identity!r} is a delta: incremental_snapshot_metadata "
                       "is required")
    previous = metadata.get("previous_snapshot_identity")
    if previous != dep.identity:
        raise ApiError(
            400, f"incremental_snapshot_metadata.previous_snapshot_identity {previous!r} is "
            f"not the deployment's current snapshot {dep.identity!r}; hot-load a base first"
        )
    if dep.base_path is None or dep.base_weights is None or meta.get("base_path") != dep.base_path:
        raise ApiError(
            400, f"delta {identity!r} was taken against {meta.get('base_path')!r}, but the "
            f"deployment's chain starts from {dep.base_path!r}; hot-load a base first"
        )
    xor_bits = state.checkpoints.load_arrays(path)
    base = dep.base_weights
    weights = {
        k: np.bitwise_xor(np.ascontiguousarray(base[k]).view(np.uint32), v).view(np.float32)
        for k, v in xor_bits.items()
    }
    return weights, dep.base_path, base


def _check_body(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    for field in sorted(set(body) - _BODY_FIELDS):
        raise ApiError(400, f"Extra inputs are not permitted, field: '{field}'")
    identity = body.get("identity")
    if not isinstance(identity, str) or not identity:
        raise ApiError(400, "identity must be a non-empty string")
    reset = body.get("reset_prompt_cache", True)
    if not isinstance(reset, bool):
        raise ApiError(400, "reset_prompt_cache must be a boolean")
    metadata = body.get("incremental_snapshot_metadata")
    if metadata is None:
        return identity, None
    if not isinstance(metadata, dict):
        raise ApiError(400, "incremental_snapshot_metadata must be an object")
    for field in sorted(set(metadata) - _META_FIELDS):
        raise ApiError(400, f"incremental_snapshot_metadata: unknown field {field!r}")
    if metadata.get("compression_format") != "arc_v2":
        raise ApiError(400, "incremental_snapshot_metadata.compression_format must be 'arc_v2'")
    if metadata.get("checksum_format") != "alder32":
        raise ApiError(400, "incremental_snapshot_metadata.checksum_format must be 'alder32'")
    if not isinstance(metadata.get("previous_snapshot_identity"), str):
        raise ApiError(400, "incremental_snapshot_metadata.previous_snapshot_identity is required")
    return identity, metadata


def _status(dep: Deployment) -> dict[str, Any]:
    if not dep.record.get("maxReplicaCount", 1):
        return {"replicas": []}
    return {
        "replicas": [
            {
                "identity": dep.pod_identity,
                "current_snapshot_identity": dep.identity,
                "readiness": dep.stage != "loading",
                "loading_state": {"stage": dep.stage, "target_snapshot_identity": dep.target},
                "loaded_adapters": [],
                **({"error": dep.error} if dep.error else {}),
            }
        ]
    }


def hotload_routes(registry: Callable[[Request], DeploymentRegistry]) -> list[Route]:
    """``POST`` and ``GET /hot_load/v1/models/hot_load``."""

    async def post(request: Request) -> Response:
        state = _state(request)
        check_key(request, state)
        reg = registry(request)
        dep = _target(request, reg)
        identity, metadata = _check_body(await read_json_object(request))
        if dep.stage == "loading":
            raise ApiError(409, f"deployment {dep.deployment_id!r} is loading {dep.target!r}")
        dep.target, dep.error = identity, None
        if dep.fail_next:
            dep.fail_next = False
            dep.stage, dep.error = "error", f"injected failure loading {identity!r}"
            return JSONResponse({"identity": identity})
        weights, base_path, base_weights = _weights_to_load(state, dep, identity, metadata)
        dep.stage = "loading"

        def apply() -> None:
            dep.weights, dep.base_path, dep.base_weights = weights, base_path, base_weights
            dep.identity, dep.stage = identity, "done"
            dep.version += 1
            reg.hotloads += 1

        async def commit() -> None:
            await asyncio.sleep(reg.knobs.hotload_s)
            apply()

        if reg.knobs.hotload_s > 0:
            state.tasks.spawn(commit())
        else:
            # An instant load is done when the reply leaves: as a task it could lose the race
            # with the status poll that follows, and the Fireworks SDK's waiter then sleeps 5 s.
            apply()
        return JSONResponse({"identity": identity})

    async def get(request: Request) -> Response:
        check_key(request, _state(request))
        return JSONResponse(_status(_target(request, registry(request))))

    path = "/hot_load/v1/models/hot_load"
    return [Route(path, post, methods=["POST"]), Route(path, get, methods=["GET"])]
