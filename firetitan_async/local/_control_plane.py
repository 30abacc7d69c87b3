"""The Fireworks trainer-job control plane: ``/v1/accounts/{account_id}/rlorTrainerJobs``.

A job's state is computed from the clock when read: it spends the first half of ``warmup_s``
in ``JOB_STATE_CREATING``, the second half in ``JOB_STATE_PENDING``, then is
``JOB_STATE_RUNNING`` with ``directRouteHandle`` = ``{root}/jobs/{job_id}`` (where the data
plane is also mounted). ``fail`` (the test hook) drives a job to ``JOB_STATE_FAILED``;
``:resume`` warms a failed or cancelled job up again; ``DELETE`` removes it.

Example::

    jobs = JobRegistry(account_id="local", warmup_s=2.0)
    job = jobs.create({"trainingConfig": {"baseModel": "local/tiny-byte-lm"}}, job_id=None)
    jobs.state(job)   # "JOB_STATE_CREATING" for the first second
"""

from __future__ import annotations

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

from ._checkpoint_store import rfc3339
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._model import MODEL_NAME

__all__ = ["Job", "JobRegistry", "control_plane_routes"]

_JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_TERMINAL = frozenset(
    {
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
        "JOB_STATE_COMPLETED",
        "JOB_STATE_EXPIRED",
        "JOB_STATE_DELETING",
    }
)


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

    @property
    def base_model(self) -> str:
        """``trainingConfig.baseModel``."""
        return str(self.training_config.get("baseModel", ""))

    @property
    def lora_rank(self) -> int:
        """``trainingConfig.loraRank`` (0 = full-parameter)."""
        return int(self.training_config.get("loraRank") or 0)


class JobRegistry:
    """The account's jobs; thread-safe (the ``fail`` hook is called from test threads)."""

    def __init__(self, *, account_id: str, warmup_s: float) -> None:
        self.account_id = account_id
        self.warmup_s = warmup_s
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def create(self, body: Mapping[str, Any], job_id: str | None) -> Job:
        """Create a job from a request body; ``ApiError`` 400/409 on bad input."""
        config = body.get("trainingConfig")
        if not isinstance(config, Mapping):
            raise ApiError(400, "trainingConfig is required (an object with baseModel)")
        base_model = config.get("baseModel")
        if not isinstance(base_model, str) or not base_model:
            raise ApiError(400, "trainingConfig.baseModel is required")
        if base_model != MODEL_NAME:
            raise ApiError(
                400,
                f"trainingConfig.baseModel {base_model!r} is not supported "
                f"(the local trainer serves {MODEL_NAME!r})",
            )
        rank = config.get("loraRank", 0)
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ApiError(400, f"trainingConfig.loraRank must be an integer >= 0, got {rank!r}")
        display = body.get("displayName")
        if display is not None and not isinstance(display, str):
            raise ApiError(400, "displayName must be a string")
        if job_id is None:
            job_id = f"job-{uuid.uuid4().hex[:12]}"
        elif not _JOB_ID_RE.fullmatch(job_id):
            raise ApiError(
                400,
                f"rlorTrainerJobId {job_id!r} is invalid (1-63 letters, digits, '.', '_', '-')",
            )
        extra = {k: v for k, v in body.items() if k not in ("trainingConfig", "displayName")}
        job = Job(job_id, display or job_id, dict(config), extra)
        with self._lock:
            if job_id in self._jobs:
                raise ApiError(409, f"trainer job {job_id!r} already exists")
            self._jobs[job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        """The job, or ``ApiError(404)``."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"trainer job {job_id!r} not found")
        return job

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created_s)

    def delete(self, job_id: str) -> None:
        """Remove a job; ``ApiError(404)`` if unknown."""
        with self._lock:
            if self._jobs.pop(job_id, None) is None:
                raise ApiError(404, f"trainer job {job_id!r} not found")

    def fail(self, job_id: str, message: str) -> Job:
        """Drive a job to ``JOB_STATE_FAILED`` with ``message`` (test hook)."""
        job = self.get(job_id)
        with self._lock:
            job.forced_state = "JOB_STATE_FAILED"
            job.message = message
        return job

    def resume(self, job_id: str) -> Job:
        """Warm a job up again (clears a failed/cancelled state)."""
        job = self.get(job_id)
        with self._lock:
            job.forced_state = None
            job.message = ""
            job.warm_start_s = time.monotonic()
        return job

    def state(self, job: Job) -> str:
        """The job's state now."""
        if job.forced_state is not None:
            return job.forced_state
        elapsed = time.monotonic() - job.warm_start_s
        if elapsed >= self.warmup_s:
            return "JOB_STATE_RUNNING"
        return "JOB_STATE_CREATING" if elapsed < self.warmup_s / 2 else "JOB_STATE_PENDING"

    def any_warming(self) -> bool:
        """Whether some job is still CREATING or PENDING."""
        return any(self.state(j) in ("JOB_STATE_CREATING", "JOB_STATE_PENDING") for j in self.all())

    def record(self, job: Job, root_url: str) -> dict[str, Any]:
        """The job's REST record."""
        state = self.state(job)
        if state == "JOB_STATE_FAILED":
            status = {"code": "INTERNAL", "message": job.message or "the trainer failed"}
        elif state == "JOB_STATE_RUNNING":
            status = {"code": "OK", "message": "trainer is ready"}
        elif state in _TERMINAL:
            status = {"code": "OK", "message": job.message}
        else:
            status = {"code": "OK", "message": "trainer is warming up"}
        record: dict[str, Any] = {
            **job.extra,
            "name": f"accounts/{self.account_id}/rlorTrainerJobs/{job.job_id}",
            "displayName": job.display_name,
            "createTime": rfc3339(job.created_s),
            "state": state,
            "status": status,
            "trainingConfig": job.training_config,
            "serviceMode": True,
        }
        if state == "JOB_STATE_RUNNING":
            record["directRouteHandle"] = f"{root_url}/jobs/{job.job_id}"
        return record


def control_plane_routes(
    jobs: Callable[[Request], JobRegistry], root_url: Callable[[Request], str]
) -> list[Route]:
    """Starlette routes of the control plane (auth is checked by the front middleware)."""

    def _check_account(request: Request) -> JobRegistry:
        registry = jobs(request)
        account = request.path_params["account_id"]
        if account != registry.account_id:
            raise ApiError(
                404, f"account {account!r} not found (this trainer's account is "
                f"{registry.account_id!r})"
            )
        return registry

    async def create(request: Request) -> Response:
        registry = _check_account(request)
        body = await read_json_object(request)
        job = registry.create(body, request.query_params.get("rlorTrainerJobId") or None)
        return JSONResponse(registry.record(job, root_url(request)))

    async def list_jobs(request: Request) -> Response:
        registry = _check_account(request)
        records = [registry.record(j, root_url(request)) for j in registry.all()]
        return JSONResponse(
            {"rlorTrainerJobs": records, "nextPageToken": "", "totalSize": len(records)}
        )

    async def get(request: Request) -> Response:
        registry = _check_account(request)
        job_id = request.path_params["job_id"]
        if job_id.endswith(":resume"):
            raise ApiError(405, "use POST for :resume")
        return JSONResponse(registry.record(registry.get(job_id), root_url(request)))

    async def post_action(request: Request) -> Response:
        registry = _check_account(request)
        job_id, sep, action = request.path_params["job_id"].partition(":")
        if not sep or action != "resume":
            raise ApiError(404, f"unknown action {request.path_params['job_id']!r}")
        return JSONResponse(registry.record(registry.resume(job_id), root_url(request)))

    async def delete(request: Request) -> Response:
        registry = _check_account(request)
        registry.delete(request.path_params["job_id"])
        return JSONResponse({})

    base = "/v1/accounts/{account_id}/rlorTrainerJobs"
    return [
        Route(base, create, methods=["POST"]),
        Route(base, list_jobs, methods=["GET"]),
        Route(base + "/{job_id}", get, methods=["GET"]),
        Route(base + "/{job_id}", post_action, methods=["POST"]),
        Route(base + "/{job_id}", delete, methods=["DELETE"]),
    ]
