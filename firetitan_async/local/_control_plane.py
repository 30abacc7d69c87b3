"""The Fireworks trainer-job control plane: accounts and ``/v1/accounts/{a}/rlorTrainerJobs``.

What the Fireworks SDK 1.2.30 sends (study §2), served for the one local account:

* ``GET /v1/accounts?pageSize=N`` lists the account the key belongs to;
* ``POST …/rlorTrainerJobs?rlorTrainerJobId=&trainingShape=&skipValidations=&deploymentId=``
  with the camelCase body of study §2.3 creates a job (a reused id, tombstones included,
  gets 409); ``GET`` reads it, ``POST …/{job}:resume`` (no body) warms a stopped job up again,
  ``DELETE`` turns it into a ``JOB_STATE_DELETED`` tombstone (its row and checkpoints stay
  readable; a second DELETE is 404);
* records carry ``state`` (``JOB_STATE_*``), ``statusMessage`` and ``status.code`` /
  ``status.message`` (gRPC code names, as protojson writes them).

A job's state is computed from the clock when read: the first half of ``warmup_s`` in
``JOB_STATE_CREATING``, the second half in ``JOB_STATE_PENDING``, then ``JOB_STATE_RUNNING``.
``fail`` (the test hook) drives a job to ``JOB_STATE_FAILED``. Bad requests are refused with
a 400 that names the field, before any state changes.

Example::

    jobs = JobRegistry(account_id="local", warmup_s=2.0)
    job = jobs.create({"trainingConfig": {"baseModel": "local/tiny-byte-lm"}}, job_id=None)
    jobs.state(job)   # "JOB_STATE_CREATING" for the first second
"""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._catalog import DEFAULT_MODELS, ModelCatalog
from ._checkpoint_store import rfc3339
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._shapes import find_shape

__all__ = ["FailedPrecondition", "Job", "JobRegistry", "control_plane_routes"]

_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_DURATION_RE = re.compile(r"^(\d+)(\.\d{1,9})?s$")
_MAX_INACTIVITY_S = 3 * 60 * 60
_STOPPED = frozenset(
    {
        "JOB_STATE_CANCELLED",
        "JOB_STATE_COMPLETED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_PAUSED",
        "JOB_STATE_EARLY_STOPPED",
    }
)
_LIVE = frozenset({"JOB_STATE_CREATING", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"})
_RESUMABLE = frozenset({"JOB_STATE_FAILED"} | _STOPPED)
# Known body fields and the JSON types they must have (unknown fields are kept as they are).
_BODY_TYPES: dict[str, tuple[type, ...]] = {
    "serviceMode": (bool,),
    "keepAlive": (bool,),
    "dataset": (str,),
    "displayName": (str,),
    "useReservation": (bool,),
    "reservationTarget": (str,),
    "nodeCount": (int,),
    "trainerReplicaCount": (int,),
    "hotLoadDeploymentId": (str,),
    "extraValues": (dict,),
    "forwardOnly": (bool,),
    "purpose": (str,),
    "preemptible": (bool,),
    "managedBy": (str,),
    "inactivityTimeout": (str,),
    "disableInactivityCleanup": (bool,),
}
_TRAINING_TYPES: dict[str, tuple[type, ...]] = {
    "baseModel": (str,),
    "loraRank": (int,),
    "learningRate": (int, float),
    "maxContextLength": (int,),
    "projectionHeadDim": (int,),
    "customImageTag": (str,),
    "acceleratorType": (str,),
    "acceleratorCount": (int,),
    "region": (str,),
    "extraArgs": (list,),
}


class FailedPrecondition(ApiError):
    """A 400 whose ``google.rpc`` code is ``FAILED_PRECONDITION`` (9): the request is well
    formed but the resource is not in a state that allows it (e.g. resuming a RUNNING job)."""

    grpc_code = 9

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


@attrs.define(eq=False)
class Job:
    """One trainer job (its record fields and lifecycle clock)."""

    job_id: str
    display_name: str
    training_config: dict[str, Any]
    extra: dict[str, Any]
    created_s: float = attrs.field(factory=time.time)
    warm_start_s: float = attrs.field(factory=time.monotonic)
    forced_state: str | None = None
    message: str = ""
    deleted: bool = False

    @property
    def base_model(self) -> str:
        """``trainingConfig.baseModel``."""
        return str(self.training_config.get("baseModel", ""))

    @property
    def lora_rank(self) -> int:
        """``trainingConfig.loraRank`` (0 = full-parameter)."""
        return int(self.training_config.get("loraRank") or 0)


def _check_types(
    where: str, values: Mapping[str, Any], types: Mapping[str, tuple[type, ...]]
) -> None:
    for key, allowed in types.items():
        if key not in values:
            continue
        value = values[key]
        wrong_bool = isinstance(value, bool) and bool not in allowed
        if wrong_bool or not isinstance(value, allowed):
            names = " or ".join("number" if t is float else t.__name__ for t in allowed)
            raise ApiError(400, f"{where}{key} must be a {names}, got {value!r}")


def _check_body(body: Mapping[str, Any], models: ModelCatalog) -> dict[str, Any]:
    """The validated ``trainingConfig`` of a create body; ``ApiError(400)`` naming the field."""
    config = body.get("trainingConfig")
    if not isinstance(config, Mapping):
        raise ApiError(400, "trainingConfig is required (an object with baseModel)")
    _check_types("", body, _BODY_TYPES)
    _check_types("trainingConfig.", config, _TRAINING_TYPES)
    if body.get("serviceMode") is False:
        raise ApiError(400, "serviceMode must be true: the local trainer runs service-mode jobs")
    base_model = config.get("baseModel")
    if not base_model:
        raise ApiError(400, "trainingConfig.baseModel is required")
    models.get(base_model, "trainingConfig.baseModel")
    for key in ("loraRank", "nodeCount", "maxContextLength", "projectionHeadDim"):
        source = config if key in config else body
        value = source.get(key)
        if value is not None and value < 0:
            where = "trainingConfig." if source is config else ""
            raise ApiError(400, f"{where}{key} must be >= 0, got {value!r}")
    rate = config.get("learningRate")
    if rate is not None and (not math.isfinite(rate) or rate <= 0):
        raise ApiError(
            400, f"trainingConfig.learningRate must be a finite number > 0, got {rate!r}"
        )
    display = body.get("displayName")
    if display is not None and len(display) >= 64:
        raise ApiError(400, "displayName must be fewer than 64 characters")
    timeout = body.get("inactivityTimeout")
    if timeout is not None:
        match = _DURATION_RE.match(timeout)
        if not match:
            raise ApiError(400, f"inactivityTimeout {timeout!r} is not a duration like '1800s'")
        if float(timeout[:-1]) > _MAX_INACTIVITY_S:
            raise ApiError(400, "inactivityTimeout must be at most 3 hours")
    args = config.get("extraArgs")
    if args is not None and not all(isinstance(a, str) for a in args):
        raise ApiError(400, "trainingConfig.extraArgs must be a list of strings")
    return dict(config)


class JobRegistry:
    """The account's jobs; thread-safe (the ``fail`` hook is called from test threads)."""

    def __init__(
        self, *, account_id: str, warmup_s: float, models: ModelCatalog | None = None
    ) -> None:
        self.account_id = account_id
        self.warmup_s = warmup_s
        self.models = models or ModelCatalog(DEFAULT_MODELS)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(
        self,
        body: Mapping[str, Any],
        job_id: str | None,
        *,
        shape: str | None = None,
        deployment_id: str | None = None,
    ) -> Job:
        """Create a job from a request body; ``ApiError`` 400/409 on bad input."""
        config = _check_body(body, self.models)
        if job_id is None:
            job_id = f"job-{uuid.uuid4().hex[:12]}"
        elif not _JOB_ID_RE.fullmatch(job_id):
            raise ApiError(
                400,
                f"rlorTrainerJobId {job_id!r} is invalid (1-63 letters, digits, '.', '_', '-')",
            )
        extra = {k: v for k, v in body.items() if k not in ("trainingConfig", "displayName")}
        if shape is not None:
            version = find_shape(self.account_id, shape)
            snapshot = version["snapshot"]
            lora = snapshot["trainerMode"] == "LORA_TRAINER"
            if lora != (int(config.get("loraRank") or 0) > 0):
                raise ApiError(
                    400,
                    f"training shape {shape!r} is a {snapshot['trainerMode']}: loraRank "
                    f"{config.get('loraRank', 0)!r} does not fit it",
                )
            config["maxContextLength"] = snapshot["maxSupportedContextLength"]
            extra["trainingShapeRef"] = version["name"]
        elif not config.get("maxContextLength"):  # the SDKs read it from every job
            config["maxContextLength"] = self.models.get(
                config["baseModel"], "trainingConfig.baseModel"
            ).max_context_length
        if deployment_id is not None:
            extra.setdefault("hotLoadDeploymentId", deployment_id)
        display = body.get("displayName")
        job = Job(job_id, display or job_id, config, extra)
        with self._lock:
            if job_id in self._jobs:
                raise ApiError(409, f"trainer job {job_id!r} already exists")
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        """The job (tombstones included), or ``ApiError(404)``."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"trainer job {job_id!r} not found")
        return job

    def get_live(self, job_id: str) -> Job:
        """The job unless it is unknown or deleted (``ApiError(404)``)."""
        job = self.get(job_id)
        if job.deleted:
            raise ApiError(404, f"trainer job {job_id!r} was deleted")
        return job

    def all(self) -> list[Job]:
        """Every job, tombstones included, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_s)

    def delete(self, job_id: str) -> None:
        """Turn a job into a tombstone; ``ApiError(404)`` if unknown or already deleted."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.deleted:
                raise ApiError(404, f"trainer job {job_id!r} not found")
            job.deleted = True
            job.message = "the job was deleted"

    def fail(self, job_id: str, message: str) -> Job:
        """Drive a job to ``JOB_STATE_FAILED`` with ``message`` (test hook)."""
        job = self.get_live(job_id)
        with self._lock:
            job.forced_state = "JOB_STATE_FAILED"
            job.message = message
        return job

    def resume(self, job_id: str) -> Job:
        """Warm a stopped or failed job up again; ``ApiError(400)`` for any other state."""
        job = self.get_live(job_id)
        state = self.state(job)
        if state not in _RESUMABLE:
            raise FailedPrecondition(
                f"trainer job {job_id!r} is {state}: only a failed or stopped job can be resumed"
            )
        with self._lock:
            job.forced_state = None
            job.message = ""
            job.warm_start_s = time.monotonic()
        return job

    def state(self, job: Job) -> str:
        """The job's state now."""
        if job.deleted:
            return "JOB_STATE_DELETED"
        if job.forced_state is not None:
            return job.forced_state
        elapsed = time.monotonic() - job.warm_start_s
        if elapsed >= self.warmup_s:
            return "JOB_STATE_RUNNING"
        return "JOB_STATE_CREATING" if elapsed < self.warmup_s / 2 else "JOB_STATE_PENDING"

    def live_count(self) -> int:
        """Jobs CREATING, PENDING or RUNNING (not deleted, stopped or failed)."""
        return sum(self.state(j) in _LIVE for j in self.all())

    def is_live(self, job_id: str) -> bool:
        """Whether the job exists and is CREATING, PENDING or RUNNING."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job is not None and self.state(job) in _LIVE

    def any_warming(self) -> bool:
        """Whether some job is still CREATING or PENDING."""
        return any(self.state(j) in ("JOB_STATE_CREATING", "JOB_STATE_PENDING") for j in self.all())

    def record(self, job: Job, root_url: str) -> dict[str, Any]:
        """The job's REST record."""
        state = self.state(job)
        if state == "JOB_STATE_FAILED":
            code, message = "INTERNAL", job.message or "the trainer failed"
        elif state == "JOB_STATE_RUNNING":
            code, message = "OK", "trainer is ready"
        elif state == "JOB_STATE_DELETED" or state in _STOPPED:
            code, message = "OK", job.message
        else:
            code, message = "OK", "trainer is warming up"
        record: dict[str, Any] = {
            **job.extra,
            "name": f"accounts/{self.account_id}/rlorTrainerJobs/{job.job_id}",
            "displayName": job.display_name,
            "createTime": rfc3339(job.created_s),
            "state": state,
            "statusMessage": message,
            "status": {"code": code, "message": message},
            "trainingConfig": job.training_config,
            "serviceMode": True,
        }
        if state == "JOB_STATE_RUNNING":
            record["directRouteHandle"] = f"{root_url}/jobs/{job.job_id}"
        return record


def check_account(registry: JobRegistry, account: str) -> None:
    """``ApiError(404)`` unless ``account`` is this trainer's account."""
    if account != registry.account_id:
        raise ApiError(
            404,
            f"account {account!r} not found (this trainer's account is {registry.account_id!r})",
        )


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise ApiError(400, f"query parameter {name} must be true or false, got {value!r}")


def control_plane_routes(
    jobs: Callable[[Request], JobRegistry], root_url: Callable[[Request], str]
) -> list[Route]:
    """Starlette routes of accounts and jobs (auth is checked by the front middleware)."""

    def _registry(request: Request) -> JobRegistry:
        registry = jobs(request)
        check_account(registry, request.path_params["account_id"])
        return registry

    async def list_accounts(request: Request) -> Response:
        registry = jobs(request)
        size = request.query_params.get("pageSize", "50")
        if not size.isdigit() or int(size) < 0:
            raise ApiError(400, f"pageSize must be an integer >= 0, got {size!r}")
        account = {"name": f"accounts/{registry.account_id}", "displayName": "local trainer"}
        return JSONResponse({"accounts": [account], "nextPageToken": "", "totalSize": 1})

    async def create(request: Request) -> Response:
        registry = _registry(request)
        body = await read_json_object(request)
        _flag(request, "skipValidations")
        job = registry.create(
            body,
            request.query_params.get("rlorTrainerJobId") or None,
            shape=request.query_params.get("trainingShape") or None,
            deployment_id=request.query_params.get("deploymentId") or None,
        )
        return JSONResponse(registry.record(job, root_url(request)))

    async def list_jobs(request: Request) -> Response:
        registry = _registry(request)
        size_text = request.query_params.get("pageSize", "50")
        token = request.query_params.get("pageToken") or "0"
        if not size_text.isdigit() or not token.isdigit():
            raise ApiError(400, f"bad pageSize {size_text!r} or pageToken {token!r}")
        start, size = int(token), int(size_text) or 50
        jobs_now = registry.all()
        records = [registry.record(j, root_url(request)) for j in jobs_now[start : start + size]]
        after = start + size
        return JSONResponse(
            {
                "rlorTrainerJobs": records,
                "nextPageToken": str(after) if after < len(jobs_now) else "",
                "totalSize": len(jobs_now),
            }
        )

    async def get(request: Request) -> Response:
        registry = _registry(request)
        job_id = request.path_params["job_id"]
        if job_id.endswith(":resume"):
            raise ApiError(405, "use POST for :resume")
        return JSONResponse(registry.record(registry.get(job_id), root_url(request)))

    async def post_action(request: Request) -> Response:
        registry = _registry(request)
        job_id, sep, action = request.path_params["job_id"].partition(":")
        if not sep or action != "resume":
            raise ApiError(404, f"unknown action {request.path_params['job_id']!r}")
        body = await read_json_object(request)
        if body:
            raise ApiError(400, f":resume takes no body, got fields {sorted(body)}")
        return JSONResponse(registry.record(registry.resume(job_id), root_url(request)))

    async def delete(request: Request) -> Response:
        registry = _registry(request)
        registry.delete(request.path_params["job_id"])
        return JSONResponse({})

    base = "/v1/accounts/{account_id}/rlorTrainerJobs"
    return [
        Route("/v1/accounts", list_accounts, methods=["GET"]),
        Route(base, create, methods=["POST"]),
        Route(base, list_jobs, methods=["GET"]),
        Route(base + "/{job_id}", get, methods=["GET"]),
        Route(base + "/{job_id}", post_action, methods=["POST"]),
        Route(base + "/{job_id}", delete, methods=["DELETE"]),
    ]
