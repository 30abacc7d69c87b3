"""The deployments control plane of the local server: ``/v1/accounts/{a}/deployments``.

A deployment is created ``READY`` at once and serves its ``baseModel`` (any name the trainer
serves, each backed by the tiny model) at its hot-loaded weights (the untrained base weights
until the first hot-load). Routes, as the Fireworks SDK's
``DeploymentManager`` calls them:

* ``POST   /v1/accounts/{a}/deployments?deploymentId=ID[&skipShapeValidation=true…]`` (camelCase
  body; 409 if it exists);
* ``GET    /v1/accounts/{a}/deployments`` and ``/v1/accounts/{a}/deployments/{id}`` (404);
* ``PATCH  /v1/accounts/{a}/deployments/{id}[?updateMask=a,b]`` (snake_case mask; no mask
  replaces every field in the body);
* ``DELETE /v1/accounts/{a}/deployments/{id}[?ignoreChecks=true&hard=true]``.

Test hooks: ``POST /_local/inference/config`` (``{"latency_s", "max_concurrency",
"hotload_s"}``: the deployment's own reply latency, the concurrency above which completions get
429, and how long a hot-load takes), ``GET /_local/inference/stats``,
``POST /_local/deployments/{id}/fail_next_hotload`` and
``GET /_local/deployments/{id}/digest`` (``{"identity", "version", "sha256"}`` of the served
weights).

Example::

    routes = deployment_routes()   # registered by build_app; state at request.app.state.server
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._catalog import ModelCatalog
from ._checkpoint_store import rfc3339
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._server_state import ServerState

__all__ = [
    "Deployment",
    "DeploymentRegistry",
    "InferenceKnobs",
    "check_key",
    "deployment_routes",
    "weights_digest",
]

_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MUTABLE = {
    "description": "description",
    "min_replica_count": "minReplicaCount",
    "max_replica_count": "maxReplicaCount",
    "hot_load_trainer_job": "hotLoadTrainerJob",
    "hot_load_transition_type": "hotLoadTransitionType",
    "annotations": "annotations",
}
_CREATE_FIELDS = frozenset(
    {
        "baseModel", "description", "minReplicaCount", "maxReplicaCount", "enableHotLoad",
        "forTraining", "placement", "hotLoadBucketType", "hotLoadTrainerJob",
        "hotLoadTransitionType", "deploymentShape", "acceleratorType", "extraArgs",
        "extraValues", "annotations", "preemptible", "displayName",
    }
)


@attrs.define
class InferenceKnobs:
    """The deployment's own knobs (set through ``POST /_local/inference/config``)."""

    latency_s: float = 0.0
    max_concurrency: int | None = None
    hotload_s: float = 0.01


@attrs.define(eq=False)
class Deployment:
    """One deployment: its record and what it serves.

    ``identity`` is the last snapshot applied (None: the base model); ``weights`` the float32
    sampler weights served; ``base_path``/``base_weights`` the base snapshot the current chain
    starts from (a delta is XOR-ed onto it); ``version`` counts applied hot-loads; ``pod``
    counts serving pods: re-pointing the deployment at another trainer (a PATCH of
    ``hotLoadTrainerJob`` or ``hotLoadTransitionType``) rolls the pod, which starts again from
    the base weights, as a real deployment's does (SDK 1.2.9 waits for the new pod's identity).
    """

    deployment_id: str
    record: dict[str, Any]
    identity: str | None = None
    weights: dict[str, np.ndarray] | None = None
    base_path: str | None = None
    base_weights: dict[str, np.ndarray] | None = None
    version: int = 0
    stage: str = "done"
    target: str | None = None
    error: str | None = None
    fail_next: bool = False
    pod: int = 1

    @property
    def pod_identity(self) -> str:
        """The serving pod's identity (the hot-load status reports it as ``identity``)."""
        return f"{self.deployment_id}-pod-{self.pod}"

    def roll_pod(self) -> None:
        """A new serving pod: the base weights, nothing hot-loaded."""
        self.pod += 1
        self.identity = self.weights = self.base_path = self.base_weights = None

    @property
    def name(self) -> str:
        """``accounts/{a}/deployments/{id}``."""
        return str(self.record["name"])


class DeploymentRegistry:
    """Every deployment of one server, the inference knobs and counters."""

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.deployments: dict[str, Deployment] = {}
        self.knobs = InferenceKnobs()
        self.in_flight = 0
        self.max_in_flight = 0
        self.completions = 0
        self.rejected_429 = 0
        self.hotloads = 0
        self.rng = np.random.default_rng([0, 7])

    def get(self, deployment_id: str) -> Deployment:
        """The deployment, or ``ApiError(404)``."""
        dep = self.deployments.get(deployment_id)
        if dep is None:
            raise ApiError(404, f"deployment {deployment_id!r} not found")
        return dep

    def by_name(self, name: str) -> Deployment:
        """The deployment ``accounts/{a}/deployments/{id}`` names, or ``ApiError(404)``."""
        prefix = f"accounts/{self.account_id}/deployments/"
        if not name.startswith(prefix):
            raise ApiError(404, f"model {name!r} not found (expected {prefix}<id>)")
        return self.get(name[len(prefix) :])

    def stats(self) -> dict[str, Any]:
        """Counters for tests and the benchmark."""
        return {
            "completions": self.completions,
            "rejected_429": self.rejected_429,
            "max_in_flight": self.max_in_flight,
            "hotloads": self.hotloads,
        }


def weights_digest(weights: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names and float32 bytes of ``weights`` (bit-exact comparisons)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(np.ascontiguousarray(weights[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def check_key(request: Request, state: ServerState) -> None:
    """401 unless ``Authorization: Bearer <key>`` or ``X-Api-Key`` carries the server's key."""
    key = state.config.api_key
    if key is None:
        return
    auth = request.headers.get("authorization", "")
    bearer = auth[len("bearer ") :] if auth.lower().startswith("bearer ") else ""
    for offered in (bearer, request.headers.get("x-api-key", "")):
        if offered and hmac.compare_digest(offered.encode(), key.encode()):
            return
    raise ApiError(401, "missing or invalid API key (Authorization: Bearer or X-Api-Key)")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _check_account(request: Request, reg: DeploymentRegistry) -> None:
    account = request.path_params["account_id"]
    if account != reg.account_id:
        raise ApiError(
            404, f"account {account!r} not found (this server serves {reg.account_id!r})"
        )


def _check_create_body(body: Mapping[str, Any], models: ModelCatalog) -> None:
    unknown = sorted(set(body) - _CREATE_FIELDS)
    if unknown:
        raise ApiError(400, f"unknown deployment fields: {unknown}")
    models.get(body.get("baseModel"), "baseModel")
    for name in ("minReplicaCount", "maxReplicaCount"):
        value = body.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ApiError(400, f"{name} must be an integer >= 0, got {value!r}")
    transition = body.get("hotLoadTransitionType")
    if transition is not None and transition not in ("ASYNC", "SYNC"):
        raise ApiError(400, f"hotLoadTransitionType must be ASYNC or SYNC, got {transition!r}")


def deployment_registry(request: Request) -> DeploymentRegistry:
    """The server's ``DeploymentRegistry`` (kept on its ``ServerState``: no global state)."""
    state = _state(request)
    if state.deployments is None:
        state.deployments = DeploymentRegistry(state.config.account_id)
    return state.deployments


def deployment_routes() -> list[Route]:
    """The deployments control plane, the hot-load and completions endpoints and the hooks,
    sharing one ``DeploymentRegistry`` (per app: no global state)."""
    from ._hotload import hotload_routes
    from ._inference import inference_routes

    def registry(request: Request) -> DeploymentRegistry:
        return deployment_registry(request)

    async def create(request: Request) -> Response:
        check_key(request, _state(request))
        reg = registry(request)
        _check_account(request, reg)
        dep_id = request.query_params.get("deploymentId", "")
        if not _ID_RE.fullmatch(dep_id):
            raise ApiError(400, f"deploymentId {dep_id!r} must be 1-63 of [a-z0-9-]")
        body = await read_json_object(request)
        _check_create_body(body, _state(request).models)
        if dep_id in reg.deployments:
            raise ApiError(409, f"deployment {dep_id!r} already exists")
        now = rfc3339(time.time())
        record = {
            "name": f"accounts/{reg.account_id}/deployments/{dep_id}",
            "state": "READY",
            "createTime": now,
            "updateTime": now,
            "hotLoadBucketUrl": f"local://{reg.account_id}/{dep_id}",
            **body,
        }
        reg.deployments[dep_id] = Deployment(dep_id, record)
        return JSONResponse(record)

    async def list_all(request: Request) -> Response:
        check_key(request, _state(request))
        reg = registry(request)
        _check_account(request, reg)
        return JSONResponse({"deployments": [d.record for d in reg.deployments.values()]})

    async def get(request: Request) -> Response:
        check_key(request, _state(request))
        reg = registry(request)
        _check_account(request, reg)
        return JSONResponse(reg.get(request.path_params["deployment_id"]).record)

    async def patch(request: Request) -> Response:
        check_key(request, _state(request))
        reg = registry(request)
        _check_account(request, reg)
        dep = reg.get(request.path_params["deployment_id"])
        body = await read_json_object(request)
        mask = request.query_params.get("updateMask")
        fields = [f for f in (mask or "").split(",") if f] if mask is not None else None
        allowed = set(_MUTABLE.values())
        if fields is None:
            unknown = sorted(set(body) - allowed)
            if unknown:
                raise ApiError(400, f"fields {unknown} cannot be updated")
            changes = dict(body)
        else:
            changes = {}
            for field in fields:
                camel = _MUTABLE.get(field)
                if camel is None:
                    raise ApiError(400, f"updateMask: {field!r} is not an updatable field")
                if camel not in body:
                    raise ApiError(400, f"updateMask names {field!r} but the body has no {camel}")
                changes[camel] = body[camel]
        merged = {**dep.record, **changes}
        _check_create_body(
            {k: v for k, v in merged.items() if k in _CREATE_FIELDS}, _state(request).models
        )
        rolls = ("hotLoadTrainerJob", "hotLoadTransitionType")
        if any(dep.record.get(k) != merged.get(k) for k in rolls):
            dep.roll_pod()
        dep.record = {**merged, "updateTime": rfc3339(time.time())}
        return JSONResponse(dep.record)

    async def delete(request: Request) -> Response:
        check_key(request, _state(request))
        reg = registry(request)
        _check_account(request, reg)
        dep = reg.get(request.path_params["deployment_id"])
        del reg.deployments[dep.deployment_id]
        return JSONResponse({})

    async def set_knobs(request: Request) -> Response:
        reg = registry(request)
        body = await read_json_object(request)
        knobs = reg.knobs
        for name in ("latency_s", "hotload_s"):
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ApiError(400, f"{name} must be a number >= 0")
                setattr(knobs, name, float(value))
        if "max_concurrency" in body:
            value = body["max_concurrency"]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ApiError(400, "max_concurrency must be null or an integer >= 1")
            knobs.max_concurrency = value
        return JSONResponse(attrs.asdict(knobs))

    async def stats(request: Request) -> Response:
        return JSONResponse(registry(request).stats())

    async def digest(request: Request) -> Response:
        dep = registry(request).get(request.path_params["deployment_id"])
        weights = dep.weights if dep.weights is not None else _state(request).base_weights()
        return JSONResponse(
            {"identity": dep.identity, "version": dep.version, "sha256": weights_digest(weights)}
        )

    async def fail_next(request: Request) -> Response:
        dep = registry(request).get(request.path_params["deployment_id"])
        dep.fail_next = True
        return JSONResponse({"fail_next_hotload": True})

    base = "/v1/accounts/{account_id}/deployments"
    return [
        Route(base, create, methods=["POST"]),
        Route(base, list_all, methods=["GET"]),
        Route(base + "/{deployment_id}", get, methods=["GET"]),
        Route(base + "/{deployment_id}", patch, methods=["PATCH"]),
        Route(base + "/{deployment_id}", delete, methods=["DELETE"]),
        *hotload_routes(registry),
        *inference_routes(registry),
        Route("/_local/inference/config", set_knobs, methods=["POST"]),
        Route("/_local/inference/stats", stats, methods=["GET"]),
        Route("/_local/deployments/{deployment_id}/fail_next_hotload", fail_next,
              methods=["POST"]),
        Route("/_local/deployments/{deployment_id}/digest", digest, methods=["GET"]),
    ]
