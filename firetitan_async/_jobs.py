"""``TrainerJobs``: the control-plane client for service-mode trainer jobs (async twin of
Fireworks' ``TrainerJobManager``), and the value types it returns.

The wire follows the Fireworks REST conventions: jobs live under
``{base_url}/v1/accounts/{account_id}/rlorTrainerJobs``, resource names are
``accounts/{account_id}/rlorTrainerJobs/{job_id}``, states are ``JOB_STATE_*`` (reported here
in short form, e.g. ``"RUNNING"``), the trainer's data-plane URL is ``directRouteHandle``, and
the key is sent as ``Authorization: Bearer <key>``.

Retries: idempotent requests (``GET``, ``DELETE``) are retried on connection errors, timeouts,
408/409/429 and 5xx, following :class:`~firetitan_async.RetryPolicy`. The two ``POST`` calls
(``create``, ``resume``) carry an ``X-Idempotency-Key`` and are retried only when the request
provably did not take effect: a connection that was never established, a 429, or a 5xx.

Example::

    async with TrainerJobs(account_id="my-account") as jobs:
        endpoint = await jobs.create_and_wait(
            TrainerJobConfig(base_model="accounts/fireworks/models/qwen3-8b", lora_rank=16)
        )
        print(endpoint.base_url)
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import anyio
import attrs
import httpx

from ._retry import RetryPolicy, retry_after_seconds
from ._transport import _is_loopback, check_url_security
from ._version import USER_AGENT
from .errors import APIStatusError, FiretitanError, InvalidInput, SessionClosed

__all__ = [
    "CreatedTrainerJob",
    "JobState",
    "TrainerEndpoint",
    "TrainerJob",
    "TrainerJobConfig",
    "TrainerJobs",
]

logger = logging.getLogger("firetitan_async.jobs")

_KEY_VAR: Final = "FIREWORKS_API_KEY"
_DEFAULT_BASE_URL: Final = "https://api.fireworks.ai"
_COLLECTION: Final = "rlorTrainerJobs"
_STATE_PREFIX: Final = "JOB_STATE_"
# Control-plane calls are small; a CLI or a poller should learn of an outage within a minute.
_DEFAULT_RETRY: Final = RetryPolicy(max_attempts=6, backoff_base_s=0.2, deadline_s=60.0)
# Connection errors that happen before a request reaches the server: safe to retry a POST.
_NOT_SENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class JobState:
    """Trainer-job state names (short form) and the helpers that classify them.

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
    CANCELLED: Final = "CANCELLED"
    EXPIRED: Final = "EXPIRED"
    DELETING: Final = "DELETING"
    #: Not a server state: the job vanished (HTTP 404) while we waited for it.
    DELETED: Final = "DELETED"
    UNSPECIFIED: Final = "UNSPECIFIED"

    #: States from which a job never becomes RUNNING again (without ``resume``).
    TERMINAL: Final = frozenset({COMPLETED, FAILED, CANCELLED, EXPIRED, DELETING, DELETED})

    @staticmethod
    def normalize(raw: object) -> str:
        """The short form of a wire state (``"JOB_STATE_FAILED"`` → ``"FAILED"``)."""
        if not isinstance(raw, str) or not raw:
            return JobState.UNSPECIFIED
        state = raw.upper()
        return state.removeprefix(_STATE_PREFIX) or JobState.UNSPECIFIED

    @staticmethod
    def is_terminal(state: str) -> bool:
        """Whether a (short or wire-form) state means the job will not become RUNNING."""
        return JobState.normalize(state) in JobState.TERMINAL


# -- value types ------------------------------------------------------------------------------


def _check_base_model(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("base_model", f"must be a non-empty model name, got {value!r}")


def _check_lora_rank(_inst: object, _attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("lora_rank", f"must be an int >= 0 (0 = full-parameter), got {value!r}")


def _check_learning_rate(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput("learning_rate", f"must be a finite number > 0, got {value!r}")


def _check_optional_name(_inst: object, attr: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidInput(attr.name, f"must be None or a non-empty string, got {value!r}")


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput("extra", f"must be a mapping, got {type(value).__name__}")
    return MappingProxyType(dict(value))


# Body keys that TrainerJobConfig's own fields produce; ``extra`` may not replace them.
_OWN_KEYS: Final = frozenset({"serviceMode", "displayName", "trainingShapeRef"})
_OWN_TRAINING_KEYS: Final = frozenset({"baseModel", "loraRank", "learningRate"})


@attrs.frozen
class TrainerJobConfig:
    """What to create: a service-mode trainer job's configuration.

    ``lora_rank=0`` asks for full-parameter training. ``extra`` holds further top-level fields of
    the REST body (camelCase, as the API spells them); an ``extra["trainingConfig"]`` mapping is
    merged into the body's ``trainingConfig``. Fields are checked on construction and raise
    :class:`~firetitan_async.InvalidInput` naming the field.

    Example::

        TrainerJobConfig(
            base_model="accounts/fireworks/models/qwen3-8b",
            training_shape_ref="accounts/fireworks/trainingShapes/qwen3-8b-128k-h200",
            lora_rank=0,
            learning_rate=1e-5,
            extra={"trainingConfig": {"maxContextLength": 8192}},
        )
    """

    base_model: str = attrs.field(validator=_check_base_model)
    lora_rank: int = attrs.field(default=0, validator=_check_lora_rank)
    learning_rate: float = attrs.field(default=1e-5, validator=_check_learning_rate)
    training_shape_ref: str | None = attrs.field(default=None, validator=_check_optional_name)
    display_name: str | None = attrs.field(default=None, validator=_check_optional_name)
    extra: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, eq=False, hash=False
    )

    def __attrs_post_init__(self) -> None:
        for key, value in self.extra.items():
            if not isinstance(key, str) or not key:
                raise InvalidInput("extra", f"keys must be non-empty strings, got {key!r}")
            if key in _OWN_KEYS:
                raise InvalidInput(f"extra.{key}", "is set by TrainerJobConfig's own fields")
            if key == "trainingConfig":
                if not isinstance(value, Mapping):
                    raise InvalidInput("extra.trainingConfig", "must be a mapping")
                for sub in value:
                    if sub in _OWN_TRAINING_KEYS:
                        raise InvalidInput(
                            f"extra.trainingConfig.{sub}", "is set by TrainerJobConfig's own fields"
                        )
        try:
            json.dumps(dict(self.extra))
        except (TypeError, ValueError) as exc:
            raise InvalidInput("extra", f"must be JSON-serialisable ({exc})") from None

    def to_body(self) -> dict[str, Any]:
        """The JSON body of the create request.

        Example::

            TrainerJobConfig(base_model="m").to_body()["trainingConfig"]["loraRank"]   # 0
        """
        extra = dict(self.extra)
        training: dict[str, Any] = dict(extra.pop("trainingConfig", None) or {})
        training.update(
            baseModel=self.base_model,
            loraRank=self.lora_rank,
            learningRate=float(self.learning_rate),
        )
        body: dict[str, Any] = {"serviceMode": True, "trainingConfig": training}
        if self.display_name is not None:
            body["displayName"] = self.display_name
        if self.training_shape_ref is not None:
            body["trainingShapeRef"] = self.training_shape_ref
        body.update(extra)
        return body


@attrs.frozen
class CreatedTrainerJob:
    """A job that was just created (it is usually still CREATING or PENDING).

    Example::

        created = await jobs.create(config)
        created.job_id, created.job_name   # "abc123", "accounts/me/rlorTrainerJobs/abc123"
    """

    job_id: str
    job_name: str


@attrs.frozen
class TrainerEndpoint:
    """A RUNNING job and its trainer's data-plane URL (what a ``ServiceSession`` connects to).

    Example::

        endpoint = await jobs.wait_for_ready(job_id)
        async with ServiceSession(endpoint.base_url) as session: ...
    """

    job_id: str
    job_name: str
    base_url: str


@attrs.frozen
class TrainerJob:
    """One job record as the control plane reports it.

    ``state`` is the short form (``"RUNNING"``, ``"PENDING"``, ``"FAILED"``, …, see
    :class:`JobState`); ``base_url`` is the record's ``directRouteHandle`` (``None`` until the
    job runs); ``raw`` is the whole record, unknown fields included.

    Example::

        job = await jobs.get(job_id)
        if job.state == "RUNNING" and job.base_url:
            print(job.base_url, job.raw.get("createTime"))
    """

    job_id: str
    job_name: str
    state: str
    base_url: str | None = None
    status_message: str | None = None
    display_name: str | None = None
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @property
    def is_terminal(self) -> bool:
        """Whether the job reached a state from which it will not become RUNNING."""
        return JobState.is_terminal(self.state)

    def endpoint(self) -> TrainerEndpoint | None:
        """The job's endpoint when it is RUNNING with a trainer URL, else ``None``."""
        if self.state != JobState.RUNNING or not self.base_url:
            return None
        return TrainerEndpoint(self.job_id, self.job_name, self.base_url)

    @classmethod
    def from_record(cls, record: Any) -> TrainerJob:
        """Parse a REST job record; raises :class:`FiretitanError` if it has no usable name.

        Example::

            TrainerJob.from_record({"name": "accounts/a/rlorTrainerJobs/j1",
                                    "state": "JOB_STATE_PENDING"}).state       # "PENDING"
        """
        if not isinstance(record, dict):
            raise FiretitanError(
                f"malformed trainer job record: expected an object, got {record!r}"
            )
        name = record.get("name")
        if not isinstance(name, str) or f"/{_COLLECTION}/" not in name:
            raise FiretitanError(f"malformed trainer job record: bad name {name!r}")
        job_id = name.rsplit("/", 1)[1]
        if not job_id:
            raise FiretitanError(f"malformed trainer job record: bad name {name!r}")
        status = record.get("status")
        message = status.get("message") if isinstance(status, dict) else None
        handle = record.get("directRouteHandle")
        display = record.get("displayName")
        return cls(
            job_id=job_id,
            job_name=name,
            state=JobState.normalize(record.get("state")),
            base_url=handle.rstrip("/") if isinstance(handle, str) and handle else None,
            status_message=message if isinstance(message, str) and message else None,
            display_name=display if isinstance(display, str) and display else None,
            raw=MappingProxyType(record),
        )


# -- auth -------------------------------------------------------------------------------------


class _BearerAuth(httpx.Auth):
    """``Authorization: Bearer <key>`` per request; the key never sits in default headers."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._api_key}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(api_key=<redacted>)"


class _DataPlaneAuth(httpx.Auth):
    """The data plane's credential header (``X-API-Key``, as the tinker SDK sends it)."""

    def __init__(self, api_key: str | None) -> None:
        self._api_key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._api_key:
            request.headers["X-API-Key"] = self._api_key
        yield request

    def __repr__(self) -> str:
        return "_DataPlaneAuth(api_key=<redacted>)"


# -- the client -------------------------------------------------------------------------------


class TrainerJobs:
    """Create, inspect, wait for, resume and delete service-mode trainer jobs.

    ``api_key`` defaults to ``$FIREWORKS_API_KEY``. A key is required for any host that is not
    loopback; against a loopback server (the local trainer) a missing key is accepted and no
    ``Authorization`` header is sent. The key is never logged, shown in a repr or put in an
    exception. Plain ``http://`` is refused for non-loopback hosts unless
    ``allow_insecure_http=True``. ``transport`` replaces the network (tests).

    Use it as ``async with TrainerJobs(...) as jobs:`` (asyncio or trio); it owns one
    ``httpx.AsyncClient``, closed on exit (or by :meth:`aclose`).

    Example::

        async with TrainerJobs(account_id="my-account") as jobs:
            config = TrainerJobConfig(base_model="accounts/fireworks/models/qwen3-8b")
            created = await jobs.create(config)
            endpoint = await jobs.wait_for_ready(created.job_id, timeout_s=1800)
            ...
            await jobs.delete(created.job_id)
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        account_id: str,
        base_url: str = _DEFAULT_BASE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        if not isinstance(account_id, str) or not account_id or "/" in account_id:
            raise InvalidInput("account_id", f"must be a bare account id, got {account_id!r}")
        self.account_id = account_id
        self.base_url = check_url_security(base_url, allow_insecure_http=allow_insecure_http)
        key = api_key if api_key is not None else os.environ.get(_KEY_VAR)
        self._api_key = key or None
        if self._api_key is None and not _is_loopback_url(self.base_url):
            raise FiretitanError(
                f"no API key for {self.base_url}: pass api_key=... or set {_KEY_VAR}"
            )
        self._allow_insecure_http = allow_insecure_http
        self.retry = retry or _DEFAULT_RETRY
        self._collection = f"/v1/accounts/{quote(account_id, safe='')}/{_COLLECTION}"
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_BearerAuth(self._api_key) if self._api_key else None,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        self._closed = False

    def __repr__(self) -> str:
        key = "<redacted>" if self._api_key else None
        return (
            f"TrainerJobs(account_id={self.account_id!r}, base_url={self.base_url!r}, "
            f"api_key={key})"
        )

    async def __aenter__(self) -> TrainerJobs:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client; later calls raise :class:`SessionClosed`."""
        self._closed = True
        await self._client.aclose()

    def job_name(self, job_id: str) -> str:
        """The resource name of ``job_id``: ``accounts/{account_id}/rlorTrainerJobs/{job_id}``."""
        return f"accounts/{self.account_id}/{_COLLECTION}/{self._job_id(job_id)}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(
        self, config: TrainerJobConfig, *, job_id: str | None = None
    ) -> CreatedTrainerJob:
        """Create a service-mode trainer job and return at once (it is not RUNNING yet).

        ``job_id`` asks for a specific id (else the server picks one).

        Example::

            created = await jobs.create(TrainerJobConfig(base_model="local/tiny-byte-lm"))
        """
        if not isinstance(config, TrainerJobConfig):
            raise InvalidInput("config", f"must be a TrainerJobConfig, got {type(config).__name__}")
        params = {"rlorTrainerJobId": self._job_id(job_id)} if job_id is not None else None
        record = await self._request(
            "POST", self._collection, json_body=config.to_body(), params=params
        )
        job = TrainerJob.from_record(record)
        logger.info("created trainer job %s (%s)", job.job_name, job.state)
        return CreatedTrainerJob(job.job_id, job.job_name)

    async def get(self, job_id: str) -> TrainerJob:
        """The job's current record.

        Example::

            job = await jobs.get(created.job_id)
            print(job.state, job.base_url)
        """
        return TrainerJob.from_record(await self._request("GET", self._path(job_id)))

    async def list_jobs(self, *, page_size: int = 200) -> list[TrainerJob]:
        """Every trainer job of the account (all pages).

        Example::

            running = [j for j in await jobs.list_jobs() if j.state == "RUNNING"]
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidInput("page_size", f"must be an int >= 1, got {page_size!r}")
        found: list[TrainerJob] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        while True:
            params: dict[str, str | int] = {"pageSize": page_size}
            if token:
                params["pageToken"] = token
            reply = await self._request("GET", self._collection, params=params)
            if not isinstance(reply, dict):
                raise FiretitanError(f"malformed trainer job listing: {reply!r:.200}")
            found.extend(TrainerJob.from_record(r) for r in reply.get(_COLLECTION) or [])
            token = reply.get("nextPageToken") or None
            if not isinstance(token, str) or token in seen_tokens:
                return found
            seen_tokens.add(token)

    async def wait_for_ready(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 900.0,
        probe_data_plane: bool = True,
    ) -> TrainerEndpoint:
        """Poll until the job is RUNNING and its trainer answers; return its endpoint.

        Raises :class:`~firetitan_async.TrainerJobFailed` as soon as the job reaches a terminal
        state (or disappears) and :class:`~firetitan_async.ReadinessTimeout` after
        ``timeout_s``. For a progress callback use :class:`ReadinessPoller` directly.

        Example::

            endpoint = await jobs.wait_for_ready(created.job_id, poll_interval_s=10)
        """
        from ._readiness import ReadinessPoller

        poller = ReadinessPoller(
            self,
            job_id,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
            probe_data_plane=probe_data_plane,
        )
        await poller.run()
        return await poller.wait()

    async def create_and_wait(
        self, config: TrainerJobConfig, *, poll_interval_s: float = 5.0, timeout_s: float = 900.0
    ) -> TrainerEndpoint:
        """:meth:`create` then :meth:`wait_for_ready`.

        Example::

            endpoint = await jobs.create_and_wait(TrainerJobConfig(base_model=model, lora_rank=8))
        """
        created = await self.create(config)
        return await self.wait_for_ready(
            created.job_id, poll_interval_s=poll_interval_s, timeout_s=timeout_s
        )

    async def resume(self, job_id: str) -> TrainerJob:
        """Resume a stopped job (e.g. one that FAILED or EXPIRED); returns its new record.

        Example::

            job = await jobs.resume(job_id)
            endpoint = await jobs.wait_for_ready(job.job_id)
        """
        record = await self._request("POST", f"{self._path(job_id)}:resume", json_body={})
        return TrainerJob.from_record(record)

    async def delete(self, job_id: str) -> None:
        """Delete the job (its trainer stops). A job already gone after a retry counts as deleted.

        Example::

            await jobs.delete(created.job_id)
        """
        await self._request("DELETE", self._path(job_id))

    # -- data-plane probe (used by the readiness poller) -------------------------------------

    async def probe_trainer(self, base_url: str, *, timeout_s: float = 5.0) -> bool:
        """Whether the trainer at ``base_url`` answers ``GET /api/v1/healthz``.

        True for 2xx, and also for a 4xx other than 408/429 (the trainer is up and answers; the
        session will report what it objects to). False while it warms up (5xx, 408, 429) or
        refuses connections. Never raises for network errors.

        Example::

            if await jobs.probe_trainer(job.base_url): ...
        """
        self._check_open()
        url = check_url_security(base_url, allow_insecure_http=self._allow_insecure_http)
        try:
            response = await self._client.get(
                f"{url}/api/v1/healthz", auth=_DataPlaneAuth(self._api_key), timeout=timeout_s
            )
        except httpx.TransportError as exc:
            logger.debug("probe %s: %s", url, _describe(exc))
            return False
        status = response.status_code
        if response.is_success:
            return True
        if status >= 500 or status in (408, 429):
            return False
        logger.warning("trainer at %s answered its health probe with HTTP %d", url, status)
        return True

    # -- plumbing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("this TrainerJobs has been closed")

    def _job_id(self, job_id: str | None) -> str:
        """Accept a bare id or this account's full resource name; return the bare id."""
        if not isinstance(job_id, str) or not job_id:
            raise InvalidInput("job_id", f"must be a non-empty job id, got {job_id!r}")
        prefix = f"accounts/{self.account_id}/{_COLLECTION}/"
        bare = job_id.removeprefix(prefix)
        if not bare or any(c in bare for c in "/?#:") or any(c.isspace() for c in bare):
            raise InvalidInput(
                "job_id", f"must be a job id or a name starting {prefix!r}, got {job_id!r}"
            )
        return bare

    def _path(self, job_id: str) -> str:
        return f"{self._collection}/{quote(self._job_id(job_id), safe='')}"

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> Any:
        """One JSON call with the retry rules of the module docstring; returns the parsed body."""
        self._check_open()
        idempotent = method in ("GET", "DELETE")
        headers = {}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        if not idempotent:
            headers["X-Idempotency-Key"] = f"firetitan-{uuid.uuid4()}"
        content = None if json_body is None else json.dumps(json_body).encode()
        deadline = (
            None if self.retry.deadline_s is None else time.monotonic() + self.retry.deadline_s
        )
        attempt = 0
        while True:
            attempt += 1
            give_up = attempt >= self.retry.max_attempts or (
                deadline is not None and time.monotonic() >= deadline
            )
            try:
                response = await self._client.request(
                    method, path, content=content, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                if give_up or not (idempotent or isinstance(exc, _NOT_SENT_ERRORS)):
                    raise self._transport_error(method, path, exc, attempt) from None
                delay = self.retry.delay(attempt)
                logger.debug("%s %s: %s; retry in %.2fs", method, path, _describe(exc), delay)
                await anyio.sleep(delay)
                continue
            status = response.status_code
            if response.is_success:
                return _json_or_empty(response)
            if method == "DELETE" and status == 404 and attempt > 1:
                return {}  # an earlier attempt deleted it and the reply was lost
            retryable = self.retry.retryable_status(status) and (
                idempotent or status == 429 or status >= 500
            )
            if give_up or not retryable:
                raise self._status_error(response)
            delay = self.retry.delay(attempt, retry_after_seconds(response.headers))
            logger.debug("%s %s: HTTP %d; retry in %.2fs", method, path, status, delay)
            await anyio.sleep(delay)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "<redacted>") if self._api_key else text

    def _status_error(self, response: httpx.Response) -> APIStatusError:
        body: Any
        try:
            body = _redact_json(response.json(), self._redact)
        except ValueError:
            body = self._redact(response.text)
        return APIStatusError(
            response.status_code,
            body,
            method=response.request.method,
            path=response.request.url.path,
        )

    def _transport_error(
        self, method: str, path: str, exc: httpx.TransportError, attempts: int
    ) -> FiretitanError:
        outcome = (
            " (the request may have been applied: check with get/list_jobs)"
            if method == "POST" and not isinstance(exc, _NOT_SENT_ERRORS)
            else ""
        )
        return FiretitanError(
            f"{method} {self.base_url}{path} failed after {attempts} attempt(s): "
            f"{self._redact(_describe(exc))}{outcome}"
        )


def _json_or_empty(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError as exc:
        raise FiretitanError(
            f"{response.request.method} {response.request.url.path}: expected JSON, got "
            f"{response.headers.get('content-type', 'no content type')}"
        ) from exc


def _redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_json(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v, redact) for v in value]
    return value


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_loopback_url(url: str) -> bool:
    return _is_loopback(urlsplit(url).hostname or "")
