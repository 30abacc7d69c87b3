"""Trainer-job value types: ``JobState``, ``TrainerJob``, ``CreatedTrainerJob``,
``TrainerEndpoint``, and the record parsing the Fireworks SDK does (study §2.4).

Example::

    job = TrainerJob.from_record({"name": "accounts/a/rlorTrainerJobs/j1",
                                  "state": "JOB_STATE_PENDING"})
    job.state, job.job_id          # ("PENDING", "j1")
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import attrs

from ..errors import FiretitanError

__all__ = ["COLLECTION", "CreatedTrainerJob", "JobState", "TrainerEndpoint", "TrainerJob"]

COLLECTION: Final = "rlorTrainerJobs"
_STATE_PREFIX: Final = "JOB_STATE_"
# gRPC code names as the REST gateway serialises them (protojson enum names).
_GRPC_CODES: Final = {
    name: code
    for code, name in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}


class JobState:
    """Trainer-job state names (short form) and the classes the readiness rules use.

    The control plane reports ``JOB_STATE_RUNNING`` and friends; :class:`TrainerJob` keeps the
    part after ``JOB_STATE_``. States this library does not know are passed through unchanged.

    Example::

        JobState.normalize("JOB_STATE_RUNNING")   # "RUNNING"
        JobState.is_terminal("FAILED")            # True
    """

    CREATING: Final = "CREATING"
    PENDING: Final = "PENDING"
    RUNNING: Final = "RUNNING"
    COMPLETED: Final = "COMPLETED"
    FAILED: Final = "FAILED"
    CANCELLING: Final = "CANCELLING"
    CANCELLED: Final = "CANCELLED"
    EARLY_STOPPED: Final = "EARLY_STOPPED"
    PAUSED: Final = "PAUSED"
    EXPIRED: Final = "EXPIRED"
    DELETING: Final = "DELETING"
    #: A tombstone: the job was deleted; its row stays for checkpoint recovery.
    DELETED: Final = "DELETED"
    ARCHIVED: Final = "ARCHIVED"
    UNSPECIFIED: Final = "UNSPECIFIED"

    #: Deleted jobs: never ready again, and their id cannot be reused.
    TOMBSTONES: Final = frozenset({DELETED, ARCHIVED})
    #: States a job does not leave on its own (a resume flips them asynchronously, so the
    #: readiness wait reports them only after a settle window).
    STOPPED: Final = frozenset({CANCELLING, CANCELLED, COMPLETED, EARLY_STOPPED, DELETING, EXPIRED})
    #: States ``reconnect_and_wait`` resumes from.
    RESUMABLE: Final = frozenset({FAILED, CANCELLED, PAUSED, COMPLETED})
    #: States from which a job never becomes RUNNING again (without ``resume``).
    TERMINAL: Final = frozenset({FAILED} | STOPPED | TOMBSTONES)

    @staticmethod
    def normalize(raw: object) -> str:
        """The short form of a wire state (``"JOB_STATE_FAILED"`` → ``"FAILED"``)."""
        if not isinstance(raw, str) or not raw:
            return JobState.UNSPECIFIED
        return raw.upper().removeprefix(_STATE_PREFIX) or JobState.UNSPECIFIED

    @staticmethod
    def is_terminal(state: str) -> bool:
        """Whether a (short or wire-form) state means the job will not become RUNNING."""
        return JobState.normalize(state) in JobState.TERMINAL


@attrs.frozen
class CreatedTrainerJob:
    """A job that was just created (or adopted after a 409): usually not RUNNING yet.

    Example::

        created = await jobs.create(config)
        created.job_id, created.job_name   # "training-api-service-1a2b3c4d", "accounts/…/…"
    """

    job_id: str
    job_name: str


@attrs.frozen
class TrainerEndpoint:
    """A ready job: its trainer's data-plane URL (the gateway URL) and context length.

    Example::

        endpoint = await jobs.wait_for_ready(job_id)
        async with ServiceSession(endpoint.base_url) as session: ...
    """

    job_id: str
    job_name: str
    base_url: str
    max_context_length: int | None = None


@attrs.frozen
class TrainerJob:
    """One job record as the control plane reports it.

    ``state`` is the short form (see :class:`JobState`); ``base_url`` the trainer's gateway URL
    once the job is RUNNING (else ``None``); ``status_message`` the record's status detail (the
    SDK's lookup order: ``statusMessage``, ``message``, ``status.message`` …); ``status_code``
    the ``google.rpc`` code of ``status.code`` (names mapped to numbers); ``raw`` the whole
    record, unknown fields included.

    Example::

        job = await jobs.get(job_id)
        if job.state == "FAILED":
            print(job.status_message, job.status_code)
    """

    job_id: str
    job_name: str
    state: str
    base_url: str | None = None
    status_message: str | None = None
    status_code: int | None = None
    display_name: str | None = None
    max_context_length: int | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """Whether the job reached a state from which it will not become RUNNING."""
        return JobState.is_terminal(self.state)

    @property
    def is_tombstone(self) -> bool:
        """Whether the job was deleted (``DELETED``/``ARCHIVED``)."""
        return self.state in JobState.TOMBSTONES

    def endpoint(self) -> TrainerEndpoint | None:
        """The job's endpoint when it is RUNNING with a trainer URL, else ``None``."""
        if self.state != JobState.RUNNING or not self.base_url:
            return None
        return TrainerEndpoint(self.job_id, self.job_name, self.base_url, self.max_context_length)

    @classmethod
    def from_record(cls, record: Any, *, gateway_url: str | None = None) -> TrainerJob:
        """Parse a REST job record; raises :class:`FiretitanError` if it has no usable name.

        ``gateway_url`` is the job's trainer URL, reported as ``base_url`` while RUNNING.

        Example::

            TrainerJob.from_record({"name": "accounts/a/rlorTrainerJobs/j1",
                                    "state": "JOB_STATE_PENDING"}).state       # "PENDING"
        """
        if not isinstance(record, dict):
            raise FiretitanError(
                f"malformed trainer job record: expected an object, got {record!r:.200}"
            )
        name = record.get("name")
        if not isinstance(name, str) or f"/{COLLECTION}/" not in name:
            raise FiretitanError(f"malformed trainer job record: bad name {name!r}")
        job_id = name.rsplit("/", 1)[1]
        if not job_id:
            raise FiretitanError(f"malformed trainer job record: bad name {name!r}")
        state = JobState.normalize(record.get("state"))
        display = record.get("displayName")
        return cls(
            job_id=job_id,
            job_name=name,
            state=state,
            base_url=gateway_url if state == JobState.RUNNING else None,
            status_message=status_message(record) or None,
            status_code=_status_code(record),
            display_name=display if isinstance(display, str) and display else None,
            max_context_length=_max_context_length(record),
            raw=MappingProxyType(record),
        )


def status_message(record: Mapping[str, Any]) -> str:
    """A job record's status detail, looked up as the SDK does (``""`` if none)."""
    for key in ("statusMessage", "message"):
        if value := record.get(key):
            return str(value)
    status = record.get("status")
    if isinstance(status, dict):
        for key in ("message", "statusMessage", "detail", "details"):
            if value := status.get(key):
                return str(value)
        return ""
    return str(status) if status else ""


def _status_code(record: Mapping[str, Any]) -> int | None:
    status = record.get("status")
    code = status.get("code") if isinstance(status, dict) else None
    if isinstance(code, str):
        code = _GRPC_CODES.get(code.strip().upper())
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 16:
        return code
    return None


def _max_context_length(record: Mapping[str, Any]) -> int | None:
    config = record.get("trainingConfig")
    value = config.get("maxContextLength") if isinstance(config, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
