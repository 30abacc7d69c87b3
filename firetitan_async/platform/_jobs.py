"""``TrainerJobs``: the control-plane client for service-mode trainer jobs (the async twin of
the Fireworks SDK's ``TrainerJobManager``).

It speaks the wire of ``fireworks.training.sdk`` 1.2.30 (study §2): ``X-Api-Key`` (no Bearer)
on ``/v1/accounts/{account}/rlorTrainerJobs``, the account resolved from the key when not
given, a client-chosen job id (``training-api-service-<8 hex>``) so a retried create is
idempotent and a 409 adopts the existing job, and the trainer reached through the gateway URL
``{trainer_gateway_url}/training/v1/rlorTrainerJobs/{account}/{job}`` (``directRouteHandle``
is not used). Where the SDK is sloppy this client is stricter: ``delete`` raises on real
errors (a 404 after a retried DELETE counts as done), retries honour ``Retry-After`` with
jitter, and every error is a :class:`~firetitan_async.FiretitanError` with the key redacted.

Example::

    async with TrainerJobs() as jobs:                      # key from $FIREWORKS_API_KEY
        endpoint = await jobs.create_and_wait(
            TrainerJobConfig(base_model="accounts/fireworks/models/qwen3-8b", lora_rank=16)
        )
        print(endpoint.base_url)
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Final, Unpack
from urllib.parse import quote

import anyio
import attrs

from .._http._environment import TRAINER_GATEWAY_URL_VAR, resolve_setting
from .._http._transport import check_url_security
from ..errors import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ProtocolError,
    TrainerJobFailed,
)
from ..wire import paths
from ._checkpoints import (
    JobCheckpoint,
    PromotedModel,
    list_job_checkpoints,
    parse_checkpoint_name,
)
from ._checkpoints import promote_checkpoint as _promote
from ._config import TrainerJobConfig
from ._lifecycle import DEFAULT_GRACE_S, Claim, Provisioning, owner_tag
from ._readiness import DEFAULT_PENDING_TIMEOUT_S, ReadinessOptions, ReadinessPoller
from ._records import COLLECTION, CreatedTrainerJob, JobState, TrainerEndpoint, TrainerJob
from ._rest import WRITE_TIMEOUT_S, RestClient, RestCore, RestOptions
from ._rpc_status import platform_error
from ._shapes import TrainingShapeProfile, resolve_training_profile

__all__ = ["TrainerJobs"]

logger = logging.getLogger("firetitan_async.jobs")

_JOB_ID_PREFIX: Final = "training-api-service"
_NAME_RE: Final = re.compile(rf"^accounts/([^/]+)/{COLLECTION}/([^/]+)$")


def new_job_id() -> str:
    """A fresh client-chosen job id, as the SDK makes one: ``training-api-service-<8 hex>``."""
    return f"{_JOB_ID_PREFIX}-{uuid.uuid4().hex[:8]}"


class TrainerJobs(RestClient):
    """Create, inspect, wait for, resume and delete service-mode trainer jobs; list and
    promote their checkpoints; resolve training shapes.

    ``api_key`` defaults to ``$FIREWORKS_API_KEY`` (required unless ``base_url`` is loopback)
    and is never logged, shown in a repr or put in an exception. ``account_id=None`` resolves
    the account from the key (``GET /v1/accounts?pageSize=2``; zero or several accounts
    raise). ``trainer_gateway_url`` defaults to ``$FIREWORKS_TRAINER_GATEWAY_URL``, then
    ``base_url``. Plain ``http://`` is refused for non-loopback hosts unless
    ``allow_insecure_http=True``. ``transport`` replaces the network (tests).

    Use it as ``async with TrainerJobs(...) as jobs:`` (asyncio or trio); it owns one
    ``httpx.AsyncClient``, closed on exit (or by :meth:`aclose`).

    Example::

        async with TrainerJobs(base_url=lt.control_plane_url) as jobs:
            created = await jobs.create(TrainerJobConfig(base_model="local/tiny-byte-lm"))
            endpoint = await jobs.wait_for_ready(created.job_id, poll_interval_s=0.5)
            await jobs.delete(created.job_id)
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        trainer_gateway_url: str | None = None,
        **options: Unpack[RestOptions],
    ) -> None:
        super().__init__(RestCore(api_key, **options))
        allow_insecure_http = self._rest.allow_insecure_http
        gateway = resolve_setting(
            trainer_gateway_url, TRAINER_GATEWAY_URL_VAR, self._rest.base_url
        )
        try:
            self.trainer_gateway_url = check_url_security(
                gateway, allow_insecure_http=allow_insecure_http
            )
        except ValueError as exc:
            raise InvalidInput("trainer_gateway_url", str(exc)) from None
        self.retry = self._rest.retry

    def __repr__(self) -> str:
        key = "<redacted>" if self._rest.api_key else None
        return (
            f"TrainerJobs(base_url={self.base_url!r}, account_id="
            f"{self._rest.known_account_id!r}, api_key={key})"
        )

    @property
    def has_api_key(self) -> bool:
        """Whether requests carry an API key (a loopback server may need none)."""
        return self._rest.api_key is not None

    async def account_id(self) -> str:
        """The account: as given, or resolved from the key on first use.

        Example::

            print(await jobs.account_id())
        """
        return await self._rest.account_id()

    async def job_name(self, job_id: str) -> str:
        """``accounts/{account}/rlorTrainerJobs/{job_id}``."""
        return f"accounts/{await self._account_for(job_id)}/{COLLECTION}/{self.bare_job_id(job_id)}"

    async def gateway_url(self, job_id: str) -> str:
        """The job's trainer URL: ``{trainer_gateway_url}/training/v1/rlorTrainerJobs/{a}/{job}``.

        Example::

            async with ServiceSession(await jobs.gateway_url(job_id)) as session: ...
        """
        account = await self._account_for(job_id)
        bare = self.bare_job_id(job_id)
        return f"{self.trainer_gateway_url}/training/v1/{COLLECTION}/{account}/{bare}"

    # -- lifecycle ---------------------------------------------------------------------------

    async def create(self, config: TrainerJobConfig) -> CreatedTrainerJob:
        """Create a service-mode trainer job and return at once (it is not RUNNING yet).

        The job id is ``config.requested_job_id`` or a fresh ``training-api-service-<8 hex>``
        chosen before sending, so retries of this call cannot create two jobs. A 409 (the id
        exists) adopts that job, unless it is a deleted tombstone
        (:class:`~firetitan_async.TrainerJobFailed`).

        Example::

            created = await jobs.create(TrainerJobConfig(base_model="local/tiny-byte-lm"))
        """
        if not isinstance(config, TrainerJobConfig):
            raise InvalidInput("config", f"must be a TrainerJobConfig, got {type(config).__name__}")
        account = await self._rest.account_id()
        if config.disable_inactivity_cleanup and account != "fireworks":
            raise InvalidInput(
                "disable_inactivity_cleanup",
                "is only supported for trainers in the fireworks account",
            )
        if config.hot_load_deployment_id:
            logger.warning(
                "hot_load_deployment_id is deprecated: create the trainer first, then pass its "
                "job name as the deployment's hot_load_trainer_job"
            )
        job_id = self.bare_job_id(config.requested_job_id or new_job_id())
        response = await self._rest.request(
            "POST",
            self._collection(account),
            json_body=config.to_body(),
            params=config.query(job_id),
            timeout=WRITE_TIMEOUT_S,
            replay_safe=True,  # the client-chosen id makes a re-sent create a 409
            accept=lambda r, _attempt: r.status_code == 409,
        )
        if response.status_code == 409:
            existing = await self.try_get(job_id)
            if existing is None:
                raise platform_error(response, self._rest.redactor)
            if existing.is_tombstone:
                raise TrainerJobFailed(
                    job_id,
                    existing.state,
                    "the job was deleted and its id cannot be reused: create with a new id",
                )
            logger.info("trainer job %s already exists (409): adopting it", job_id)
            job = existing
        else:
            job = TrainerJob.from_record(self._rest.json_of(response))
        _warn_backend_message(job)
        logger.info("created trainer job %s (%s)", job.job_name, job.state)
        return CreatedTrainerJob(job.job_id, job.job_name)

    async def get(self, job_id: str) -> TrainerJob:
        """The job's current record; :class:`~firetitan_async.APIStatusError` 404 if unknown.

        Example::

            job = await jobs.get(created.job_id)
            print(job.state, job.status_message)
        """
        account = await self._account_for(job_id)
        record = await self._rest.call("GET", self._path(account, job_id))
        return await self._job(record)

    async def try_get(self, job_id: str) -> TrainerJob | None:
        """The job's record, or ``None`` if there is no such job (HTTP 404).

        Example::

            if (job := await jobs.try_get(job_id)) is None: ...
        """
        account = await self._account_for(job_id)
        response = await self._rest.request(
            "GET", self._path(account, job_id), accept=lambda r, _n: r.status_code == 404
        )
        if response.status_code == 404:
            return None
        return await self._job(self._rest.json_of(response))

    async def list_jobs(self, *, page_size: int = 200) -> list[TrainerJob]:
        """Every trainer job of the account (all pages).

        Example::

            running = [j for j in await jobs.list_jobs() if j.state == "RUNNING"]
        """
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidInput("page_size", f"must be an int >= 1, got {page_size!r}")
        account = await self._rest.account_id()
        records = await self._rest.list_all(
            self._collection(account), (COLLECTION,), page_size=page_size,
            what="trainer job listing",
        )
        return [await self._job(record) for record in records]

    async def wait_for_ready(
        self, job_id: str, **options: Unpack[ReadinessOptions]
    ) -> TrainerEndpoint:
        """Poll until the job is RUNNING and its trainer's healthz answers 200.

        The SDK's rules (see :class:`ReadinessPoller`): ``FAILED``, a tombstone or a vanished
        job raise :class:`~firetitan_async.TrainerJobFailed` at once, a stopped state after
        ``stopped_settle_s``; ``pending_timeout_s`` bounds the wait for capacity (PENDING) and
        ``timeout_s`` the rest (:class:`~firetitan_async.ReadinessTimeout`). The keywords and
        their defaults (``poll_interval_s=5.0``, ``timeout_s=900.0``, ...):
        :class:`~firetitan_async.platform.ReadinessOptions`.

        Example::

            endpoint = await jobs.wait_for_ready(created.job_id, poll_interval_s=10)
        """
        poller = ReadinessPoller(self, job_id, **options)
        await poller.run()
        return await poller.wait()

    def create_and_wait(
        self,
        config: TrainerJobConfig,
        *,
        keep: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
        **options: Unpack[ReadinessOptions],
    ) -> Provisioning[TrainerEndpoint]:
        """:meth:`create`, then :meth:`wait_for_ready` (with ``options``): ``await`` it for the
        endpoint, or use it as ``async with`` to delete the job when the block exits, however it
        exits (see :class:`~firetitan_async.Provisioning`; ``keep=True`` opts out, ``grace_s``
        bounds the deletion). A failed or cancelled wait deletes the job it created in both
        forms. A job that already existed (``requested_job_id``) is adopted and never deleted.
        In the ``async with`` form a config without ``display_name`` gets the owner tag
        (``firetitan-async:<host>:<pid>``) that ``firetitan-async jobs list --orphans`` reads.

        Example::

            endpoint = await jobs.create_and_wait(TrainerJobConfig(base_model=model, lora_rank=8))
            async with jobs.create_and_wait(TrainerJobConfig(base_model=model)) as endpoint:
                ...                                  # deleted at the end of the block
        """
        if not isinstance(config, TrainerJobConfig):
            raise InvalidInput("config", f"must be a TrainerJobConfig, got {type(config).__name__}")

        async def provision(claim: Claim) -> TrainerEndpoint:
            existing = None
            if config.requested_job_id is not None:
                existing = await self.try_get(config.requested_job_id)
            tagged = config
            if claim.block and config.display_name is None:
                tagged = attrs.evolve(config, display_name=owner_tag())
            created = await self.create(tagged)
            if existing is None:
                claim.own(created.job_id)
            return await self.wait_for_ready(created.job_id, **options)

        async def release(job_id: str) -> None:
            try:
                await self.delete(job_id)
            except APIStatusError as exc:
                if exc.status_code != 404:  # already deleted (e.g. by the block) is done
                    raise

        return Provisioning("trainer job", provision, release, keep=keep, grace_s=grace_s)

    async def resume(self, job_id: str) -> TrainerJob:
        """Resume a stopped job (``POST …:resume``, no body); returns its new record.

        Example::

            job = await jobs.resume(job_id)
        """
        account = await self._account_for(job_id)
        record = await self._rest.call(
            "POST", f"{self._path(account, job_id)}:resume", timeout=WRITE_TIMEOUT_S
        )
        logger.info("resumed trainer job %s", self.bare_job_id(job_id))
        return await self._job(record)

    async def resume_and_wait(
        self,
        job_id: str,
        **options: Unpack[ReadinessOptions],
    ) -> TrainerEndpoint:
        """:meth:`resume`, then :meth:`wait_for_ready` (with ``options``).

        Example::

            endpoint = await jobs.resume_and_wait(job_id)
        """
        await self.resume(job_id)
        return await self.wait_for_ready(job_id, **options)

    async def reconnect_and_wait(
        self,
        job_id: str,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 600.0,
        max_wait_for_resumable_s: float = 120.0,
        pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S,
        resumable_poll_s: float = 10.0,
    ) -> TrainerEndpoint:
        """Reconnect to a preempted or failed job: wait for it if it is RUNNING (or on its way
        up: CREATING, PENDING; the SDK polls those as "not resumable" and gives up after
        ``max_wait_for_resumable_s``), resume it if it is FAILED, CANCELLED, PAUSED or
        COMPLETED, and otherwise (e.g. CANCELLING, DELETING) re-read it every
        ``resumable_poll_s`` (tolerating errors) for up to ``max_wait_for_resumable_s``.

        Example::

            endpoint = await jobs.reconnect_and_wait(job_id)
        """
        start = anyio.current_time()
        while True:
            try:
                job = await self.get(job_id)
            except FiretitanError as exc:
                if anyio.current_time() - start > max_wait_for_resumable_s:
                    raise
                logger.warning("reconnect: reading job %s failed (%s); retrying", job_id, exc)
                await anyio.sleep(resumable_poll_s)
                continue
            logger.info("reconnect: job %s is %s", job.job_id, job.state)
            if job.state in (JobState.RUNNING, JobState.CREATING, JobState.PENDING):
                return await self.wait_for_ready(
                    job_id,
                    poll_interval_s=poll_interval_s,
                    timeout_s=timeout_s,
                    pending_timeout_s=pending_timeout_s,
                )
            if job.state in JobState.RESUMABLE:
                return await self.resume_and_wait(
                    job_id,
                    poll_interval_s=poll_interval_s,
                    timeout_s=timeout_s,
                    pending_timeout_s=pending_timeout_s,
                )
            if job.is_tombstone or anyio.current_time() - start > max_wait_for_resumable_s:
                raise TrainerJobFailed(
                    job.job_id,
                    job.state,
                    job.status_message or f"not resumable after {max_wait_for_resumable_s:g}s",
                )
            await anyio.sleep(resumable_poll_s)

    async def delete(self, job_id: str) -> None:
        """Delete the job. Raises on a real error (unlike the SDK, which only logs it); a 404
        after a retried DELETE means an earlier attempt deleted it, and counts as done.

        Example::

            await jobs.delete(created.job_id)
        """
        account = await self._account_for(job_id)
        await self._rest.request(
            "DELETE",
            self._path(account, job_id),
            accept=lambda r, attempt: r.status_code == 404 and attempt > 1,
        )
        logger.info("deleted trainer job %s", self.bare_job_id(job_id))

    # -- checkpoints and shapes ---------------------------------------------------------------

    async def list_checkpoints(self, job_id: str, *, page_size: int = 200) -> list[JobCheckpoint]:
        """Every control-plane checkpoint of the job (all pages, oldest first), in any job
        state, deleted jobs included while their rows are kept.

        Example::

            promotable = [c for c in await jobs.list_checkpoints(job_id) if c.promotable]
        """
        account = await self._account_for(job_id)
        return await list_job_checkpoints(
            self._rest, account, self.bare_job_id(job_id), page_size=page_size
        )

    async def promote_checkpoint(
        self,
        *,
        output_model_id: str,
        base_model: str,
        name: str | None = None,
        job_id: str | None = None,
        checkpoint_id: str | None = None,
        hot_load_deployment_id: str | None = None,
        poll_interval_s: float = 10.0,
        timeout_s: float = 7200.0,
    ) -> PromotedModel:
        """Promote a checkpoint to a model (``accounts/<a>/models/<output_model_id>``).

        Name the checkpoint by ``name`` (a :class:`JobCheckpoint`'s full name) or by
        ``job_id`` and ``checkpoint_id``. A long-running promotion is polled every
        ``poll_interval_s`` for up to ``timeout_s``.

        Example::

            row = [c for c in await jobs.list_checkpoints(job_id) if c.promotable][-1]
            model = await jobs.promote_checkpoint(
                name=row.name, output_model_id="my-model", base_model=base_model
            )
        """
        if name is not None:
            if checkpoint_id is not None:
                raise InvalidInput("checkpoint_id", "pass either name= or checkpoint_id, not both")
            parsed = parse_checkpoint_name(name) if isinstance(name, str) else None
            if parsed is None:
                raise InvalidInput(
                    "name",
                    f"must be accounts/<a>/rlorTrainerJobs/<job>/checkpoints/<id>, got {name!r}",
                )
            account, parsed_job, checkpoint = parsed
            if job_id is not None and self.bare_job_id(job_id) != parsed_job:
                raise InvalidInput(
                    "job_id", f"{job_id!r} conflicts with the job in name ({parsed_job!r})"
                )
            job = parsed_job
        else:
            if not job_id or not checkpoint_id:
                raise InvalidInput("name", "pass name=, or both job_id and checkpoint_id")
            account = await self._account_for(job_id)
            job, checkpoint = self.bare_job_id(job_id), checkpoint_id
        return await _promote(
            self._rest,
            account=account,
            job_id=job,
            checkpoint_id=checkpoint,
            output_model_id=output_model_id,
            base_model=base_model,
            hot_load_deployment_id=hot_load_deployment_id,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
        )

    async def resolve_training_profile(self, shape: str) -> TrainingShapeProfile:
        """The profile of a training shape's latest validated version (or a pinned version).

        Example::

            profile = await jobs.resolve_training_profile("accounts/fireworks/trainingShapes/s")
        """
        return await resolve_training_profile(self._rest, shape)

    async def model_is_moe(self, model: str) -> bool:
        """Whether ``model`` (``accounts/{a}/models/{m}``) is a mixture-of-experts model, from
        its record's ``baseModelDetails.moe``: the SDK's ``model_is_moe`` (``GET /v1/{model}``),
        which recipes ask before turning on router replay (R3). ``PlatformAPIError`` when the
        record cannot be read (its ``status_code``: 403/404 for a model this key cannot see),
        ``ProtocolError`` when it does not say (never a guess: a wrong answer changes what
        training computes).

        Example::

            if await jobs.model_is_moe("accounts/fireworks/models/qwen3-30b-a3b"):
                sampler_kwargs["include_routing_matrix"] = True
        """
        if not isinstance(model, str) or not model.strip("/") or "?" in model or "#" in model:
            raise InvalidInput("model", f"must be a model resource name, got {model!r}")
        record = await self._rest.call("GET", f"/v1/{model.lstrip('/')}", timeout=30.0)
        if not isinstance(record, dict):
            raise ProtocolError(f"model record of {model!r}", "expected a JSON object")
        details = record.get("baseModelDetails") or record.get("base_model_details") or {}
        moe = details.get("moe") if isinstance(details, dict) else None
        if not isinstance(moe, bool):
            raise ProtocolError(f"model record of {model!r}",
                                "baseModelDetails.moe is missing or not a boolean")
        return moe

    # -- the readiness probe ------------------------------------------------------------------

    async def probe_trainer(self, base_url: str) -> bool:
        """Whether ``GET {base_url}/api/v1/healthz`` answers HTTP 200 (and only 200), sent
        with ``X-Api-Key`` and ``Authorization: Bearer`` as the SDK sends it. Never raises for
        network errors.

        Example::

            if await jobs.probe_trainer(endpoint.base_url): ...
        """
        return await self._rest.probe(f"{base_url.rstrip('/')}{paths.HEALTHZ}") == 200

    # -- plumbing ----------------------------------------------------------------------------

    def bare_job_id(self, job_id: str) -> str:
        """A bare job id from a bare id or a full ``accounts/…/rlorTrainerJobs/…`` name."""
        if not isinstance(job_id, str) or not job_id:
            raise InvalidInput("job_id", f"must be a non-empty job id, got {job_id!r}")
        match = _NAME_RE.match(job_id)
        bare = match.group(2) if match else job_id
        if any(c in bare for c in "/?#:") or any(c.isspace() for c in bare):
            raise InvalidInput(
                "job_id", f"must be a job id or accounts/<a>/{COLLECTION}/<id>, got {job_id!r}"
            )
        return bare

    async def _account_for(self, job_id: str) -> str:
        """The account of a job reference (a full name must name this client's account)."""
        self.bare_job_id(job_id)
        account = await self._rest.account_id()
        match = _NAME_RE.match(job_id)
        if match and match.group(1) != account:
            raise InvalidInput(
                "job_id", f"{job_id!r} belongs to account {match.group(1)!r}, not {account!r}"
            )
        return account

    def _collection(self, account: str) -> str:
        return f"/v1/accounts/{quote(account, safe='')}/{COLLECTION}"

    def _path(self, account: str, job_id: str) -> str:
        return f"{self._collection(account)}/{quote(self.bare_job_id(job_id), safe='')}"

    async def _job(self, record: object) -> TrainerJob:
        job = TrainerJob.from_record(record)  # redacted by json_of
        return TrainerJob.from_record(record, gateway_url=await self.gateway_url(job.job_id))


def _warn_backend_message(job: TrainerJob) -> None:
    if job.status_message and job.status_message.strip().startswith("Warning:"):
        logger.warning("%s", job.status_message.strip())
