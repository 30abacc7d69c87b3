"""``ServiceSession``: owns the HTTP client, the server-side session, its heartbeat and tasks."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote

import anyio
import anyio.abc
import httpx
import pydantic
from tinker import types

from .._http._environment import resolve_api_key
from .._http._http11_transport import DEFAULT_KEEPALIVE_EXPIRY_S
from .._http._redact import Redactor
from .._http._retry import RetryPolicy
from .._http._transport import Transport, check_url_security
from ..errors import (
    FiretitanError,
    InvalidInput,
    ProtocolError,
    SessionClosed,
    TrainerJobFailed,
    UsageError,
)
from ..wire import (
    Dialect,
    DialectName,
    ModelSpec,
    dialect_named,
    job_dialect,
    paths,
    resolve_dialect,
)
from ..wire.fireworks_serverless import (
    is_serverless_url,
    is_training_session_id,
    serverless_choice,
)
from ..wire.futures import decode_json_result, validate_reply
from ..wire.validation import (
    validate_keepalive_expiry,
    validate_seconds,
    validate_tinker_path,
    validate_ttl,
)
from ._deadlines import DeadlinePolicy, Deadlines
from ._events import EventHook, EventHub, EventStream
from ._launcher import Launcher
from ._pending import Pending
from ._protocol import ClientSession
from ._serverless import ServerlessSide
from ._throughput import Throughput
from ._tracking import OperationMonitor

if TYPE_CHECKING:
    from tinker import LossHandle

    from .._clients._concurrency import ConcurrencyController
    from .._clients._deployment_sampler import DeploymentSampler
    from .._clients._loss_handles import LossHandles
    from .._clients._sampling import SamplingClient
    from .._clients._tokenizer import TokenizerCache
    from .._clients._training import TrainingClient
    from ..platform import ReadinessPoller, TrainerJobs
    from ..platform._checkpoints import PromotedModel
    from ..platform._managed import ManagedConfig, ManagedSetup
    from ..platform._training_sessions import SessionCheckpoint

__all__ = ["ServiceSession", "client_side"]

T = TypeVar("T")
_M = TypeVar("_M", bound=pydantic.BaseModel)

logger = logging.getLogger("firetitan_async.session")

_HEARTBEAT_PERIOD_S = 10.0
_FinishStatus = Literal["success", "errored", "interrupted"]
_FINISH_TIMEOUT_S = 5.0
# A from_job session asks the control plane about its job at most this often while its
# trainer answers 503 (a failed job's gateway says 503 "not running" to every call).
_JOB_CHECK_INTERVAL_S = 1.0



def _finish_status(exc_type: type[BaseException] | None) -> _FinishStatus:
    """How the server-side session ended, as the tinker SDK reports it."""
    if exc_type is None:
        return "success"
    if issubclass(exc_type, KeyboardInterrupt | anyio.get_cancelled_exc_class()):
        return "interrupted"
    return "errored"


class ServiceSession:
    """A connection to one trainer: the HTTP client, the server-side session and its tasks.

    Use it only as ``async with``; it works under asyncio and trio. Inside the block, create
    training and sampling clients; leaving the block waits (up to ``timeout`` seconds) for
    operations still in flight, ends the server-side session, stops the heartbeat and closes
    the HTTP client. After that every call raises :class:`SessionClosed`.

    ``api_key`` defaults to ``FIREWORKS_API_KEY``, then ``TINKER_API_KEY``; it is sent as
    ``X-API-Key`` and never logged or shown. ``dialect`` picks the wire: ``"fireworks"`` (the
    Fireworks Training SDK's), ``"tinker"`` (the tinker SDK 0.38's) or ``"auto"`` (tinker for a
    ``tml-`` key or Tinker's hosted URLs, fireworks otherwise; :meth:`from_job` is always
    fireworks). A call the dialect cannot express raises :class:`InvalidInput` before
    anything is sent. ``serverless`` (default: whether ``base_url`` ends with
    ``/training/v1/serverless``) speaks to a Fireworks serverless gateway: ``serverless=True``
    adds that suffix to ``base_url`` if it is missing, and the dialect is fireworks (see
    ``docs/serverless.md``). Plain ``http://`` is refused for non-loopback
    hosts unless ``allow_insecure_http=True``. ``transport`` replaces the network (e.g.
    ``httpx.MockTransport`` in tests). Environment proxies (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY``, ``NO_PROXY``) apply as httpx applies them; ``trust_env=False`` ignores
    them (as ``httpx.AsyncClient(trust_env=False)``). An idle pooled connection is reused for
    ``keepalive_expiry`` seconds (below the idle timeouts of common load balancers), then
    closed; see ``docs/transport.md``.

    ``deadlines`` bounds every operation's phases (a :class:`Deadlines` for all operations,
    or a mapping from operation names such as ``"save_state"`` and ``"default"`` to them; see
    :class:`Deadlines` for the defaults); ``on_event`` is called with every
    :class:`OperationEvent` (see also :meth:`events` and :meth:`add_event_hook`). Leaving the
    block, however it is left (error, cancellation), unloads the models it created and ends
    the server-side session.

    Example::

        async with ServiceSession("http://127.0.0.1:8080") as session:
            client = await session.create_training_client("local/tiny-byte-lm", lora_rank=8)
            fb = client.forward_backward(batch, "cross_entropy")
            step = client.optim_step(types.AdamParams(learning_rate=1e-3))
            print((await fb).metrics["loss:sum"]); await step
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        user_metadata: dict[str, str] | None = None,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        dialect: Literal["auto", "fireworks", "tinker"] = "auto",
        allow_insecure_http: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        http2: bool = False,
        trust_env: bool = True,
        deadlines: Deadlines | Mapping[str, Deadlines] | None = None,
        on_event: EventHook | None = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        serverless: bool | None = None,
    ) -> None:
        validate_seconds(timeout, "timeout")
        base_url, dialect = serverless_choice(base_url, dialect, serverless)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInput("retry", f"must be a RetryPolicy, got {type(retry).__name__}")
        self._keepalive_expiry = validate_keepalive_expiry(keepalive_expiry)
        self._base_url: str | None = (
            check_url_security(base_url, allow_insecure_http=allow_insecure_http)
            if base_url
            else None
        )
        self._api_key = resolve_api_key(api_key)
        self._serverless: ServerlessSide | None = None
        if self._base_url is not None and is_serverless_url(self._base_url):
            self._serverless = ServerlessSide(
                self._base_url,
                self._api_key,
                transport=transport,
                allow_insecure_http=allow_insecure_http,
            )
        self._codec: Dialect = dialect_named(
            resolve_dialect(dialect, base_url or "", self._api_key)
        )
        self._user_metadata = dict(user_metadata) if user_metadata else None
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._allow_insecure_http = allow_insecure_http
        self._http_transport = transport
        self._http2 = http2
        self._trust_env = trust_env
        self._poller: ReadinessPoller | None = None
        self._jobs: TrainerJobs | None = None  # from_job: the job watched for failure
        self._job_failure: tuple[str, str, str | None] | None = None  # (job id, state, message)
        self._next_job_check = 0.0

        self._transport: Transport | None = None
        self._session_id: str | None = None
        # The server's client/config reply (feature flags, chunking limits; {} in the
        # fireworks dialect, which never asks).
        self._client_config: dict[str, Any] = {}
        self._client_side = _ClientSide(self)  # what the clients see of the session
        self._task_group: anyio.abc.TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._entered = False
        self._closed = False
        self._bootstrap_lock: anyio.Lock | None = None
        self._active_ops = 0
        self._idle: anyio.Event | None = None
        self._launcher = Launcher()
        # Operations whose task was started but has not run yet: a task started in a
        # cancelled task group may never run a line, so closing fails these itself.
        self._unstarted: set[Pending[Any]] = set()
        self._training_keys: set[ModelSpec] = set()
        # create_serverless_sampler(tokenizer_model=...)'s loads, shared by its samplers
        self._tokenizers: TokenizerCache | None = None
        self._model_seq = 0
        self._sampling_seq = 0
        self._model_ids: list[str] = []
        self._loss_handles: LossHandles | None = None  # create_custom_loss's, made on first use
        # The first serverless sampler create_sampling_client made: the others share its
        # connections, CPU turns and concurrency window.
        self._serverless_sampling: DeploymentSampler | None = None
        # The managed setup this session belongs to (ServiceSession.managed), if any.
        self._managed_setup: ManagedSetup[ServiceSession] | None = None
        self._events = EventHub()
        if on_event is not None:
            self._events.add_hook(on_event)
        # Server text and exception text become error or log text through this one redactor.
        self._redactor = Redactor.of(self._api_key)
        self._monitor = OperationMonitor(
            self._events,
            DeadlinePolicy(deadlines),
            self._redactor,
            cancel=self._cancel_on_server,
        )

    @classmethod
    def from_job(
        cls,
        jobs: TrainerJobs,
        job_id: str,
        *,
        api_key: str | None = None,
        poll_interval_s: float = 5.0,
        timeout_s: float = 900.0,
        **session_kwargs: Any,
    ) -> ServiceSession:
        """A session for a Fireworks trainer job that may still be warming up.

        Entering the session starts a readiness poller on the job (in the session's task
        group) and returns at once. :meth:`create_training_client` waits until the job is
        RUNNING and its healthz answers 200 (the rules of :meth:`TrainerJobs.wait_for_ready`) —
        raising :class:`TrainerJobFailed` at once if it fails and :class:`ReadinessTimeout`
        after ``timeout_s`` — then talks to the trainer through the job's gateway URL, retrying
        creation while the trainer still warms up (503, connection refused). ``api_key``
        defaults to the key ``jobs`` uses.

        If the job fails (or stops) while the session is open, the gateway answers 503 to every
        call; the session then asks the control plane about the job (at most once a second)
        and fails that call, each operation in flight at its next exchange with the trainer,
        and every later call at call time with :class:`TrainerJobFailed`, instead of retrying
        503s until the policy runs out. Such a session stays failed: after
        :meth:`TrainerJobs.resume_and_wait`, open a new one.

        Example::

            async with TrainerJobs() as jobs:  # the account comes from the key
                model = "accounts/fireworks/models/qwen3-8b"
                created = await jobs.create(TrainerJobConfig(base_model=model))
                async with ServiceSession.from_job(jobs, created.job_id) as session:
                    client = await session.create_training_client(model)
        """
        from ..platform import ReadinessPoller

        session_kwargs["dialect"] = job_dialect(session_kwargs.get("dialect", "auto"))
        if api_key is None:  # the gateway takes the control plane's key
            api_key = jobs.api_key
        session = cls("", api_key=api_key, **session_kwargs)
        session._poller = ReadinessPoller(
            jobs, job_id, poll_interval_s=poll_interval_s, timeout_s=timeout_s
        )
        session._jobs = jobs
        return session

    @classmethod
    def managed(
        cls,
        config: ManagedConfig,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        inference_url: str | None = None,
        **options: Any,
    ) -> ManagedSetup[ServiceSession]:
        """The managed setup (the Fireworks SDK's ``from_firetitan_config``): a policy trainer,
        an optional reference trainer and an optional deployment, provisioned or re-attached
        by id from one :class:`ManagedConfig`, waited for concurrently and owned by the
        returned :class:`ManagedSetup` (``async with``; the config's ``cleanup`` policy is
        applied on exit, on error and on cancellation). ``api_key`` and ``base_url`` are the
        control plane's (defaults as :class:`TrainerJobs`); ``inference_url`` the deployment's
        (default: ``base_url``); ``options`` go to ``TrainerJobs``/``Deployments``
        (``account_id``, ``transport``, ...). Sessions on the trainers send the same key.

        Example::

            config = ManagedConfig(base_model=model, lora_rank=8, reference=True)
            async with ServiceSession.managed(config) as setup:
                client = await setup.training_client()
                reference = await setup.reference_client()
        """
        from ..platform._managed import ManagedSetup

        def open_session(url: str) -> ServiceSession:
            session = cls(url, api_key=setup.jobs.api_key or "", dialect="fireworks")
            # create_sampling_client samples through the setup's deployment (the SDK's
            # managed sampler backend)
            session._managed_setup = setup
            return session

        setup: ManagedSetup[ServiceSession] = ManagedSetup(
            config, open_session, api_key=api_key, base_url=base_url,
            inference_url=inference_url, **options,
        )
        return setup

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._entered else "new")
        return (
            f"ServiceSession(base_url={self._base_url!r}, dialect={self.dialect!r}, "
            f"session_id={self._session_id!r}, "
            f"api_key={'<redacted>' if self._api_key else None}, {state})"
        )

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> ServiceSession:
        if self._entered:
            raise UsageError("a ServiceSession can be entered only once")
        self._entered = True
        self._bootstrap_lock = anyio.Lock()
        self._idle = anyio.Event()
        self._idle.set()
        stack = AsyncExitStack()
        self._task_group = await stack.enter_async_context(anyio.create_task_group())
        self._task_group.start_soon(self._monitor.watch)
        self._task_group.start_soon(
            self._launcher.run, self._start_operation, self._abandon_operation
        )
        try:
            if self._poller is not None:
                self._task_group.start_soon(self._poller.run)
            else:
                await self._bootstrap()
        except BaseException:
            # Unwind by hand so the error propagates as itself, not in an ExceptionGroup.
            self._closed = True
            self._task_group.cancel_scope.cancel()
            await stack.aclose()
            with anyio.CancelScope(shield=True):
                await self._finish()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None and self._task_group is not None
        try:
            if exc_type is None and self._idle is not None:
                with anyio.move_on_after(self._timeout):
                    await self._idle.wait()
        finally:
            self._closed = True
            self._task_group.cancel_scope.cancel()
            try:
                # The body's own exception is not handed to the task group: it propagates
                # unchanged (not wrapped in an ExceptionGroup) once the tasks have ended.
                await self._stack.__aexit__(None, None, None)
            finally:
                unstarted, self._unstarted = self._unstarted, set()
                for pending in unstarted:  # their tasks were cancelled before they ran
                    pending._set_exception(SessionClosed(f"{pending.name} never started"))
                with anyio.CancelScope(shield=True):
                    await self._finish(_finish_status(exc_type))
        return None

    async def _finish(self, status: _FinishStatus = "errored") -> None:
        self._events.close()
        transport = self._transport
        if transport is None:
            return
        try:
            # The Fireworks SDK's unload_model; a serverless session is released with
            # delete_training_session (and the gateway's idle expiry) instead, as the SDK's.
            if self._codec.unloads_models_on_close and self._serverless is None:
                with anyio.move_on_after(_FINISH_TIMEOUT_S):
                    await self._unload_models(transport)
            # The Fireworks SDK never ends its session; a Fireworks trainer may not know how.
            if self._session_id is not None and self._codec.finishes_session:
                with anyio.move_on_after(_FINISH_TIMEOUT_S):
                    await transport.call(
                        "POST",
                        paths.session_finish(self._session_id),
                        json_body=self._codec.finish_session_body(self._session_id, status),
                        retry=False,
                    )
        except FiretitanError as exc:
            logger.warning("could not finish session %s: %s", self._session_id, exc)
        finally:
            await transport.aclose()
            if self._serverless is not None:
                await self._serverless.aclose()

    async def _unload_models(self, transport: Transport) -> None:
        """Ask the trainer to unload every model this session created (best effort: a server
        without ``unload_model`` releases them when the session ends)."""
        for model_id in self._model_ids:
            try:
                await transport.call(
                    "POST",
                    paths.UNLOAD_MODEL,
                    json_body=self._codec.unload_model_body(model_id=model_id),
                    retry=False,
                )
            except FiretitanError as exc:
                logger.debug("could not unload model %s: %s", model_id, exc)

    async def _cancel_on_server(self, pending: Pending[Any]) -> None:
        """Best-effort ``cancel_future`` for a timed-out ``sample`` (tinker dialect only: no
        wire can cancel a training operation, and the Fireworks SDK has no cancel)."""
        if (
            pending.name != "sample"
            or pending.request_id is None
            or not self._codec.cancels_timed_out_samples
        ):
            return
        try:
            await self._open_transport.call(
                "POST",
                paths.CANCEL_FUTURE,
                json_body=self._codec.cancel_future_body(pending.request_id),
                retry=False,
            )
        except FiretitanError as exc:
            logger.debug("could not cancel %s on the server: %s", pending.request_id, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed("this ServiceSession has been closed")
        if not self._entered:
            raise SessionClosed("use the ServiceSession in an `async with` block first")
        if self._job_failure is not None:
            raise TrainerJobFailed(*self._job_failure)

    async def _check_job(self, response: httpx.Response) -> None:
        """``before_retry`` of a from_job session: on a 503, ask the control plane (at most
        every ``_JOB_CHECK_INTERVAL_S``) whether the job still runs; raise
        :class:`TrainerJobFailed` once it has failed or stopped."""
        from ..platform import JobState

        if response.status_code != 503 or self._jobs is None or self._poller is None:
            return
        now = anyio.current_time()
        if self._job_failure is None and now >= self._next_job_check:
            self._next_job_check = now + _JOB_CHECK_INTERVAL_S
            try:
                job = await self._jobs.get(self._poller.job_id)
            except FiretitanError as exc:  # the control plane is down too: keep retrying
                logger.debug("could not check trainer job %s: %s", self._poller.job_id, exc)
                return
            if job.is_tombstone or job.state == JobState.FAILED or job.state in JobState.STOPPED:
                message = self._redactor.text(
                    job.status_message or "it stopped while the session was open"
                )
                self._job_failure = (self._poller.job_id, job.state, message)
                logger.error("trainer job %s is %s: %s", self._poller.job_id, job.state, message)
        if self._job_failure is not None:
            raise TrainerJobFailed(*self._job_failure)

    # -- the clients' interface (private; :class:`_ClientSide` hands it to the clients) -------

    def _spawn_operation(
        self, fn: Callable[[], Awaitable[None]], pending: Pending[Any] | None = None
    ) -> None:
        """Run an operation's task in the session's task group (counted until it ends)."""
        self._check_open()
        assert self._task_group is not None and self._idle is not None
        self._active_ops += 1
        if self._idle.is_set():
            self._idle = anyio.Event()
        if self._launcher.running:
            self._launcher.launch(fn, pending)  # started a few per loop turn, in call order
        else:
            self._start_operation(fn, pending)

    def _start_operation(
        self, fn: Callable[[], Awaitable[None]], pending: Pending[Any] | None
    ) -> None:
        assert self._task_group is not None
        if pending is not None:
            self._unstarted.add(pending)
        self._task_group.start_soon(self._run_counted, fn, pending)

    def _abandon_operation(self, pending: Pending[Any]) -> None:
        """An operation still queued when the session closed: it never started."""
        pending._set_exception(
            SessionClosed(f"{pending.name} had not started when its session closed")
        )
        self._active_ops -= 1
        if self._active_ops == 0 and self._idle is not None:
            self._idle.set()

    # -- events ------------------------------------------------------------------------------

    def events(self, max_buffer: int = 1024) -> EventStream:
        """An async iterator over the :class:`OperationEvent` of every later operation.

        Each stream buffers up to ``max_buffer`` events; when its reader falls behind, the
        oldest are dropped (``stream.dropped`` counts them), so operations never wait for a
        reader. It ends when the session closes; ``async with`` detaches it earlier.

        Example::

            async with session.events() as events:
                async for event in events:
                    print(event.kind, event.operation, event.seq_id, event.phase_s)
        """
        return self._events.stream(max_buffer)

    def add_event_hook(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook(event)`` for every :class:`OperationEvent`; returns a remover.

        The hook runs inline in the operation's task: keep it quick and non-blocking. An
        exception it raises is logged once and ignored.

        Example::

            remove = session.add_event_hook(lambda e: print(e.kind, e.operation))
            ...
            remove()
        """
        return self._events.add_hook(hook)

    def throughput(self, window_s: float | None = None) -> Throughput:
        """A :class:`Throughput` meter fed by this session's events from now on.

        Example::

            meter = session.throughput()
            ...  # train
            print(meter.snapshot().tokens_per_s, meter.snapshot().steps_per_s)
        """
        meter = Throughput(window_s=window_s)
        self._events.add_hook(meter)
        return meter

    def _reply(self, model_cls: type[_M], reply: Any, what: str) -> _M:
        """A JSON reply as a tinker type; a malformed one is a redacted ProtocolError."""
        try:
            return validate_reply(model_cls, reply, what)
        except ProtocolError as exc:
            raise self._redactor.scrubbed(exc) from None

    async def _run_counted(
        self, fn: Callable[[], Awaitable[None]], pending: Pending[Any] | None
    ) -> None:
        try:
            if self._transport is not None:
                await self._transport.cpu_gate()  # a burst starts a few per loop turn
            if pending is not None:
                self._unstarted.discard(pending)  # from here fn's own handlers settle it
            await fn()
        finally:
            self._active_ops -= 1
            if self._active_ops == 0 and self._idle is not None:
                self._idle.set()

    # -- bootstrap -------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The server-side session id (known once the session is entered and ready)."""
        if self._session_id is None:
            raise FiretitanError(
                "the session has no server-side id yet: enter it, and for a session made by "
                "from_job() await session.wait_for_ready() first"
            )
        return self._session_id

    @property
    def dialect(self) -> DialectName:
        """The wire dialect this session speaks: ``"fireworks"`` or ``"tinker"``."""
        return self._codec.name

    @property
    def base_url(self) -> str | None:
        """The trainer's data-plane URL (None until a from_job session is ready)."""
        return self._base_url

    @property
    def _open_transport(self) -> Transport:
        """The session's transport (for the clients; raises if the session is not ready)."""
        self._check_open()
        if self._transport is None:
            raise FiretitanError("the session is not ready yet: await session.wait_for_ready()")
        return self._transport

    async def wait_for_ready(self) -> None:
        """Wait until the trainer is ready and the server-side session exists.

        For a plain session this returns at once. For one made by :meth:`from_job` it waits for
        the job to be RUNNING, then opens the server-side session.
        """
        self._check_open()
        assert self._bootstrap_lock is not None
        async with self._bootstrap_lock:
            if self._session_id is None:
                if self._poller is not None:
                    endpoint = await self._poller.wait()
                    self._base_url = check_url_security(
                        endpoint.base_url, allow_insecure_http=self._allow_insecure_http
                    )
                await self._bootstrap()

    async def wait_ready(self) -> None:
        """Deprecated alias of :meth:`wait_for_ready` (the library's one waiting verb); it
        warns and goes away in the next release.

        Example::

            await session.wait_for_ready()   # not session.wait_ready()
        """
        warnings.warn(
            "ServiceSession.wait_ready() is deprecated; use wait_for_ready()",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.wait_for_ready()

    async def _bootstrap(self) -> None:
        assert self._base_url is not None
        if self._transport is None:
            self._transport = Transport(
                self._base_url,
                self._api_key,
                timeout=self._timeout,
                retry=self._retry,
                transport=self._http_transport,
                http2=self._http2,
                trust_env=self._trust_env,
                keepalive_expiry=self._keepalive_expiry,
                before_retry=self._check_job if self._jobs is not None else None,
            )
        if self._codec.fetches_client_config:
            config = await self._transport.call(
                "POST", paths.CLIENT_CONFIG, json_body=self._codec.client_config_body()
            )
            self._client_config = config if isinstance(config, dict) else {}
        reply = await self._transport.call(
            "POST",
            paths.CREATE_SESSION,
            json_body=self._codec.create_session_body(user_metadata=self._user_metadata),
        )
        self._session_id = self._reply(
            types.CreateSessionResponse, reply, "create_session reply"
        ).session_id
        assert self._task_group is not None
        self._task_group.start_soon(self._heartbeat)

    async def _heartbeat(self) -> None:
        assert self._transport is not None and self._session_id is not None
        while True:
            await anyio.sleep(_HEARTBEAT_PERIOD_S)
            try:
                await self._transport.call(
                    "POST",
                    paths.SESSION_HEARTBEAT,
                    json_body=self._codec.session_heartbeat_body(self._session_id),
                    timeout=10.0,
                    retry=False,
                )
            except Exception as exc:  # a missed heartbeat is only worth a warning
                logger.warning("session heartbeat failed: %s", exc)

    # -- clients ---------------------------------------------------------------------------

    async def create_training_client(
        self,
        base_model: str,
        lora_rank: int = 0,
        *,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        lora_alpha: int = 32,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingClient:
        """Create the training client for ``base_model`` on this session.

        ``lora_rank=0`` trains all parameters; ``lora_rank > 0`` trains a LoRA adapter
        (``lora_alpha``, fireworks dialect only, defaults to 32 as the Fireworks SDK). A
        second client with the same arguments on one session raises ``ValueError`` before
        any request is sent.

        Example::

            client = await session.create_training_client("local/tiny-byte-lm", lora_rank=8)
        """
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 0:
            raise InvalidInput("lora_rank", f"must be an int >= 0, got {lora_rank!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidInput("seed", f"must be an int or None, got {seed!r}")
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, int) or lora_alpha <= 0:
            raise InvalidInput("lora_alpha", f"must be an int > 0, got {lora_alpha!r}")
        spec = ModelSpec(
            base_model=base_model,
            lora_rank=lora_rank,
            seed=seed,
            train_mlp=bool(train_mlp),
            train_attn=bool(train_attn),
            train_unembed=bool(train_unembed),
            lora_alpha=lora_alpha if lora_rank > 0 else 32,
        )
        return await self._create_model(spec, user_metadata)

    async def create_base_training_client(self, base_model: str) -> TrainingClient:
        """A frozen, base-only reference model (``create_model`` with ``base_only``; fireworks
        dialect only): forward passes for reference logprobs, no training.

        Example::

            reference = await session.create_base_training_client("local/tiny-byte-lm")
            ref = await reference.forward(batch, "cross_entropy")
        """
        return await self._create_model(ModelSpec(base_model=base_model, base_only=True), None)

    async def _create_model(
        self, spec: ModelSpec, user_metadata: dict[str, str] | None
    ) -> TrainingClient:
        from .._clients._training import TrainingClient

        self._check_open()
        if not isinstance(spec.base_model, str) or not spec.base_model:
            raise InvalidInput("base_model", "must be a non-empty string")
        codec = self._codec
        # Refuse what the dialect cannot express before anything is sent.
        codec.create_model_body(spec, session_id="", model_seq_id=0, user_metadata=user_metadata)
        if spec in self._training_keys:
            raise InvalidInput(
                "base_model",
                f"this session already has a training client for base_model="
                f"{spec.base_model!r}, lora_rank={spec.lora_rank} with these settings; reuse it"
            )
        self._training_keys.add(spec)
        try:
            await self.wait_for_ready()
            transport = self._open_transport
            model_seq_id = self._model_seq
            self._model_seq += 1
            accepted = await transport.submit(
                paths.CREATE_MODEL,
                json_body=codec.create_model_body(
                    spec,
                    session_id=self.session_id,
                    model_seq_id=model_seq_id,
                    user_metadata=user_metadata,
                ),
            )
            done = await transport.retrieve(accepted.request_id, request_type="CreateModel")
            created = decode_json_result(types.CreateModelResponse, done.payload)
            self._model_ids.append(created.model_id)
            info = None
            if codec.fetches_info:
                info = self._reply(
                    types.GetInfoResponse,
                    await transport.call(
                        "POST",
                        paths.GET_INFO,
                        json_body=self._codec.get_info_body(created.model_id),
                    ),
                    "get_info reply",
                )
        except BaseException as exc:
            self._training_keys.discard(spec)
            self._redactor.scrubbed(exc)  # in place: it returns exc itself
            raise
        return TrainingClient(
            self._client_side,
            model_id=created.model_id,
            spec=spec,
            info=info,
            capabilities=_capabilities(done.payload),
        )

    async def create_training_client_from_state(
        self,
        path: str | types.SaveWeightsResponse,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingClient:
        """A new training client loaded from a training checkpoint's weights; the optimizer
        starts fresh (tinker 0.38's ``ServiceClient.create_training_client_from_state``).

        ``path`` is a ``tinker://…/weights/…`` path or what ``save_state`` returned. The
        checkpoint decides the LoRA rank; ``base_model`` overrides its base model (it must be
        compatible). As in the SDK, one ``load_weights`` creates the model (its first
        operation) and ``get_info`` describes it. On a serverless Fireworks session it is the
        Fireworks SDK's sequence: ``weights_info``, a client with those settings, then
        ``load_state``. A dedicated Fireworks trainer raises ``InvalidInput`` (create the
        client, then ``load_state(saved)``), as the Fireworks SDK 1.2.30 does there.

        Example::

            saved = await client.save_state("step-100")
            fresh = await session.create_training_client_from_state(saved.path)
        """
        return await self._create_from_state(path, False, base_model, user_metadata)

    async def create_training_client_from_state_with_optimizer(
        self,
        path: str | types.SaveWeightsResponse,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
    ) -> TrainingClient:
        """As :meth:`create_training_client_from_state`, restoring the optimizer state too
        (Adam moments), to resume a run exactly where it stopped.

        Example::

            resumed = await session.create_training_client_from_state_with_optimizer(saved)
        """
        return await self._create_from_state(path, True, base_model, user_metadata)

    async def _create_from_state(
        self,
        path: str | types.SaveWeightsResponse,
        optimizer: bool,
        base_model: str | None,
        user_metadata: dict[str, str] | None,
    ) -> TrainingClient:
        from .._clients._training import TrainingClient
        from ..wire.validation import validate_user_metadata

        self._check_open()
        codec = self._codec
        checked = codec.check_load_path(path)
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise InvalidInput("base_model", "must be a non-empty string or None")
        metadata = validate_user_metadata(user_metadata)
        if self.serverless:  # the Fireworks SDK's way: weights_info, a new client, a load
            return await self._serverless_from_state(path, optimizer, base_model, metadata)
        # Refuse what the dialect cannot express before anything is sent.
        codec.create_from_state_body(
            session_id="",
            model_seq_id=0,
            path=checked,
            optimizer=optimizer,
            base_model=base_model,
            user_metadata=metadata,
        )
        try:
            await self.wait_for_ready()
            transport = self._open_transport
            model_seq_id = self._model_seq
            self._model_seq += 1
            accepted = await transport.submit(
                paths.operation("load_weights"),
                json_body=codec.create_from_state_body(
                    session_id=self.session_id,
                    model_seq_id=model_seq_id,
                    path=checked,
                    optimizer=optimizer,
                    base_model=base_model,
                    user_metadata=metadata,
                ),
            )
            done = await transport.retrieve(
                accepted.request_id, request_type=codec.request_type("load_weights")
            )
            decode_json_result(types.LoadWeightsResponse, done.payload)
            # The model id the server derives from (session, model_seq_id), as the SDK has it.
            model_id = accepted.model_id or f"{self.session_id}:train:{model_seq_id}"
            self._model_ids.append(model_id)
            info = self._reply(
                types.GetInfoResponse,
                await transport.call(
                    "POST", paths.GET_INFO, json_body=codec.get_info_body(model_id)
                ),
                "get_info reply",
            )
        except BaseException as exc:
            self._redactor.scrubbed(exc)  # in place: it returns exc itself
            raise
        name = info.model_name or info.model_data.model_name or base_model
        if not name:
            raise self._redactor.scrubbed(
                ProtocolError("get_info reply", "names no base model for the loaded checkpoint")
            )
        spec = ModelSpec(base_model=name, lora_rank=int(info.lora_rank or 0))
        return TrainingClient(self._client_side, model_id=model_id, spec=spec, info=info)

    async def create_sampling_client(
        self,
        model_path: str | None = None,
        base_model: str | None = None,
        *,
        deployment_sampler: DeploymentSampler | None = None,
    ) -> SamplingClient:
        """A sampling client for saved sampler weights (``model_path``) or a base model.

        Tinker dialect: a sampling session on the trainer (``create_sampling_session``).
        Fireworks dialect, as the Fireworks SDK's ``create_sampling_client``: a trainer has no
        sampling sessions, so the client samples through a completions endpoint. On a
        serverless session that is the gateway's (the model is the session's checkpoint or
        base weights; a standalone route is bound first where the SDK binds one, as
        :meth:`create_serverless_sampler`); on a session of a :meth:`managed` setup with a
        deployment it is the deployment's sampler, after hot-loading ``model_path`` onto it.
        Any other Fireworks session raises :class:`UsageError` before anything is sent (the
        SDK's ``NotImplementedError``). A serverless sampling client's connections close
        with the session. ``deployment_sampler`` (any dialect, as the SDK's argument) wraps a
        :class:`DeploymentSampler` you made (and close) as it is: nothing is sent here, and
        ``model_path``/``base_model`` are only recorded on the client.

        Example::

            sampler = await session.create_sampling_client(model_path=snapshot.path)
            out = await sampler.sample(prompt, 4, types.SamplingParams(max_tokens=16))
        """
        from .._clients._sampling import SamplingClient
        from ..wire.validation import validate_tinker_path

        self._check_open()
        if deployment_sampler is not None:
            from .._clients._deployment_sampler import DeploymentSampler

            if not isinstance(deployment_sampler, DeploymentSampler):
                raise InvalidInput(
                    "deployment_sampler",
                    f"must be a DeploymentSampler, got {type(deployment_sampler).__name__}",
                )
            return SamplingClient(
                self._client_side, model_path=model_path, base_model=base_model,
                deployment_sampler=deployment_sampler,
            )
        if (model_path is None) == (base_model is None):
            raise InvalidInput("model_path", "give exactly one of model_path or base_model")
        if not self._codec.has_sampling_sessions:
            return await self._completions_sampling_client(model_path, base_model)
        if model_path is not None:
            # A sampler path is what the trainer returned (tinker:// on the local trainer).
            validate_tinker_path(model_path, field="model_path")
        await self.wait_for_ready()
        seq = self._next_sampling_session_seq_id()
        reply = await self._open_transport.call(
            "POST",
            paths.CREATE_SAMPLING_SESSION,
            json_body=self._codec.create_sampling_session_body(
                session_id=self.session_id,
                sampling_session_seq_id=seq,
                model_path=model_path,
                base_model=base_model,
            ),
        )
        sampling_session_id = self._reply(
            types.CreateSamplingSessionResponse, reply, "create_sampling_session reply"
        ).sampling_session_id
        return SamplingClient(
            self._client_side, sampling_session_id, model_path=model_path, base_model=base_model
        )

    def _check_samples_snapshots(self) -> None:
        """Raise what ``create_sampling_client(model_path=...)`` would raise, before anything
        is saved, unless the session has somewhere to sample a snapshot."""
        if self._codec.has_sampling_sessions or self._serverless is not None:
            return
        setup = self._managed_setup
        if setup is None or setup.sampler is None:
            raise UsageError(
                "a Fireworks trainer has no sampling sessions, so create_sampling_client needs "
                "somewhere to sample: a serverless session (ServiceSession(url, "
                "serverless=True)), a ServiceSession.managed(...) setup with a deployment "
                "(or its setup.create_deployment_sampler(...)), or a DeploymentSampler on "
                "your own deployment"
            )

    async def _completions_sampling_client(
        self, model_path: str | None, base_model: str | None
    ) -> SamplingClient:
        """``create_sampling_client`` where the trainer has no sampling sessions (the Fireworks
        SDK's ``_create_sampling_client``): the serverless gateway's completions, or the
        managed setup's deployment; otherwise ``UsageError`` before anything is sent."""
        from .._clients._deployment_sampler import sampler_sharing
        from .._clients._sampling import SamplingClient

        self._check_samples_snapshots()  # a serverless session, or a setup's sampler
        if self._serverless is not None:
            # One set of connections for every sampling client of the session: a sampler
            # per publication (a long RL run) would each keep a pool of idle sockets open.
            first = self._serverless_sampling
            if first is None:
                sampler = await self.create_serverless_sampler(model_path, base_model=base_model)
                assert self._stack is not None  # open: _check_open passed
                self._stack.push_async_callback(sampler.aclose)
                self._serverless_sampling = sampler
            else:
                model = await self._serverless_model(model_path, base_model)
                sampler = sampler_sharing(first, model)
        else:
            setup = self._managed_setup
            assert setup is not None and setup.sampler is not None  # checked above
            if model_path is not None:
                await setup.hotload_sampler_snapshot(model_path)
            sampler = setup.sampler  # the setup's: it closes it
        return SamplingClient(
            self._client_side,
            model_path=model_path,
            base_model=base_model,
            deployment_sampler=sampler,
        )

    async def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        """The models the trainer serves (``supported_models``: name, max context length,
        trainable, sampleable): ``GET /api/v1/get_server_capabilities``, as both SDKs ask it
        (tinker's ``RestClient.get_server_capabilities``, the Fireworks SDK's
        ``FiretitanServiceClient.get_server_capabilities``). A serverless Fireworks endpoint
        has no server-wide capabilities: there ``UsageError``, before sending (the SDK's
        ``NotImplementedError``); read the training client's ``capabilities`` instead.

        Example::

            caps = await session.get_server_capabilities()
            print([m.model_name for m in caps.supported_models])
        """
        self._check_open()
        await self.wait_for_ready()
        if self.serverless:
            raise UsageError(
                "a serverless endpoint has no server-wide capabilities: use the training "
                "client's `capabilities` (its create_model reply)"
            )
        reply = await self._open_transport.call("GET", paths.GET_SERVER_CAPABILITIES)
        return self._reply(
            types.GetServerCapabilitiesResponse, reply, "get_server_capabilities reply"
        )

    async def create_custom_loss(
        self, fn: Callable[..., Any], input_ranks: Mapping[str, int]
    ) -> LossHandle:
        """A custom loss for :meth:`TrainingClient.forward_backward_custom`, traced once
        (tinker 0.38's ``ServiceClient.create_custom_loss``; needs torch).

        ``fn(logprobs, *inputs) -> (loss, metrics)`` runs once per datum on torch tensors and
        the per-datum losses are summed: ``logprobs`` are the datum's target logprobs, then
        one parameter per ``loss_fn_inputs`` key it reads. ``metrics`` are scalar tensors
        keyed ``custom/<name>:sum`` or ``custom/<name>:mean``. ``input_ranks`` gives each
        parameter's rank (0 scalar, 1 ``[T]``, 2 ``[T, K]``). The function is traced with
        ``torch.fx`` by the tinker SDK's own rules (torch and math only, no branching on
        values, no captured tensors); one it refuses raises ``InvalidInput`` with its reason.
        The handle works with this session's clients only, and runs client-side (see
        ``docs/coming-from-tinker.md``).

        Example::

            def neg_ll(logprobs, weights):
                loss = -(logprobs * weights).sum()
                return loss, {"custom/neg_ll:sum": loss}

            handle = await session.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1})
            out = await client.forward_backward_custom(batch, handle)
            out.metrics["custom/neg_ll:sum"]
        """
        from .._clients._loss_handles import LossHandles

        self._check_open()
        await self.wait_for_ready()
        if self._loss_handles is None:
            self._loss_handles = LossHandles()
        return self._loss_handles.create(fn, input_ranks, session_id=self.session_id)

    # -- checkpoints (tinker's RestClient) -------------------------------------------------

    async def list_user_checkpoints(
        self, limit: int = 100, offset: int = 0
    ) -> types.CheckpointsListResponse:
        """One page of all your checkpoints, across training runs, newest first (tinker's
        ``RestClient.list_user_checkpoints``: ``GET /api/v1/checkpoints``). ``cursor`` says
        how many there are in all. Expired checkpoints are not listed.

        Example::

            page = await session.list_user_checkpoints(limit=50)
            for ckpt in page.checkpoints:
                print(ckpt.tinker_path, ckpt.expires_at, ckpt.user_metadata)
        """
        for name, value, least in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise InvalidInput(name, f"must be an int >= {least}, got {value!r}")
        await self.wait_for_ready()
        reply = await self._open_transport.call(
            "GET", paths.CHECKPOINTS, params={"limit": limit, "offset": offset}
        )
        return self._reply(types.CheckpointsListResponse, reply, "checkpoint listing")

    async def list_checkpoints(self, training_run_id: str) -> types.CheckpointsListResponse:
        """The checkpoints of one training run (a training client's ``model_id``), training
        and sampler ones alike (tinker's ``RestClient.list_checkpoints``).

        Example::

            listing = await session.list_checkpoints(client.model_id)
            names = [c.checkpoint_id for c in listing.checkpoints]   # "weights/step-1", …
        """
        if not isinstance(training_run_id, str) or not training_run_id or "/" in training_run_id:
            raise InvalidInput("training_run_id", f"must be a run id, got {training_run_id!r}")
        await self.wait_for_ready()
        reply = await self._open_transport.call(
            "GET", paths.run_checkpoints(quote(training_run_id, safe=":"))
        )
        return self._reply(types.CheckpointsListResponse, reply, "checkpoint listing")

    async def delete_checkpoint_from_tinker_path(self, tinker_path: str) -> None:
        """Delete a checkpoint (tinker's ``RestClient.delete_checkpoint_from_tinker_path``:
        ``DELETE /api/v1/training_runs/{run}/checkpoints/{id}``). Tinker dialect; the
        fireworks dialect raises ``InvalidInput`` (the platform manages retention).

        Example::

            await session.delete_checkpoint_from_tinker_path(saved.path)
        """
        validate_tinker_path(tinker_path, field="tinker_path")
        delete_path = self._codec.checkpoint_delete_path(tinker_path)
        if delete_path is None:
            raise InvalidInput(
                "tinker_path",
                "the fireworks dialect cannot delete checkpoints (the platform manages their "
                "retention); delete_checkpoint_from_tinker_path is the tinker dialect's",
            )
        await self.wait_for_ready()
        await self._open_transport.call("DELETE", delete_path)

    async def set_checkpoint_ttl_from_tinker_path(
        self, tinker_path: str, ttl_seconds: int | None
    ) -> None:
        """Make a checkpoint expire ``ttl_seconds`` from now, or never (``None``) (tinker's
        ``RestClient.set_checkpoint_ttl_from_tinker_path``: ``PUT …/checkpoints/{id}/ttl``).
        The tinker service accepts 1 hour to 10 years. Tinker dialect; the fireworks dialect
        raises ``InvalidInput`` (Fireworks does not support checkpoint TTLs).

        Example::

            await session.set_checkpoint_ttl_from_tinker_path(saved.path, 7 * 86400)  # extend
            await session.set_checkpoint_ttl_from_tinker_path(saved.path, None)       # keep
        """
        validate_tinker_path(tinker_path, field="tinker_path")
        validate_ttl(ttl_seconds)
        ttl_path = self._codec.checkpoint_ttl_path(tinker_path)
        await self.wait_for_ready()
        await self._open_transport.call(
            "PUT", ttl_path, json_body=self._codec.checkpoint_ttl_body(ttl_seconds)
        )

    async def get_external_weights_urls(
        self, tinker_path: str
    ) -> types.ExternalWeightsUrlsResponse:
        """Signed download URLs, one per file, of a checkpoint that
        :meth:`TrainingClient.save_weights_external` made (tinker's
        ``RestClient.get_external_weights_urls``); ``urls`` maps each file's path to its URL,
        valid until ``expires``. Downloading needs no API key: each URL carries its own
        signature, so treat it as a secret until it expires.

        Example::

            export = await client.save_weights_external("final")
            signed = await session.get_external_weights_urls(export.path)
            for file_name, url in signed.urls.items():
                ...  # e.g. httpx.get(url).content
        """
        urls_path = self._codec.external_weights_urls_path(tinker_path)
        await self.wait_for_ready()
        reply = await self._open_transport.call("GET", urls_path)
        return self._reply(types.ExternalWeightsUrlsResponse, reply, "external_weights_urls reply")

    def _next_sampling_session_seq_id(self) -> int:
        """Reserve the next sampling-session sequence number of this session."""
        seq = self._sampling_seq
        self._sampling_seq += 1
        return seq

    # -- Fireworks serverless ----------------------------------------------------------------

    @property
    def serverless(self) -> bool:
        """Whether this session speaks to a Fireworks serverless gateway."""
        return self._serverless is not None

    @property
    def training_session_id(self) -> str | None:
        """The serverless training session id (``ts-…``), or None (not serverless, or the
        session is not open yet)."""
        if self._serverless is None or not is_training_session_id(self._session_id):
            return None
        return self._session_id

    def _serverless_side(self) -> tuple[ServerlessSide, str]:
        """The serverless side and the training session id; InvalidInput if not serverless."""
        self._check_open()
        if self._serverless is None or self.training_session_id is None:
            raise InvalidInput(
                "serverless",
                "this call needs a serverless session: ServiceSession(url, serverless=True) or "
                "a base_url ending with /training/v1/serverless",
            )
        return self._serverless, self.training_session_id

    async def training_session_name(self) -> str:
        """The full name of the serverless training session,
        ``accounts/<account>/trainingSessions/<ts>`` (the account is resolved from the key).

        Example::

            name = await session.training_session_name()
        """
        side, session_id = self._serverless_side()
        return f"accounts/{await side.account_id()}/trainingSessions/{session_id}"

    async def _serverless_from_state(
        self,
        path: str | types.SaveWeightsResponse,
        optimizer: bool,
        base_model: str | None,
        user_metadata: dict[str, str] | None,
    ) -> TrainingClient:
        """``create_training_client_from_state(_with_optimizer)`` on a serverless session, as
        the Fireworks SDK does it: read the checkpoint's settings (``weights_info``), create a
        client with them, then load the state into it."""
        info = await self.weights_info(path if isinstance(path, str) else path.path)
        client = await self.create_training_client(
            base_model or info.base_model,
            lora_rank=(info.lora_rank or 0) if info.is_lora else 0,
            train_mlp=info.train_mlp is not False,
            train_attn=info.train_attn is not False,
            train_unembed=info.train_unembed is not False,
            user_metadata=user_metadata,
        )
        await (client.load_state_with_optimizer if optimizer else client.load_state)(path)
        return client

    async def weights_info(self, path: str) -> types.WeightsInfoResponse:
        """What a saved checkpoint is (base model, LoRA rank and settings), read from the
        serverless gateway, as the Fireworks SDK does before loading one
        (``create_training_client_from_state``).

        Example::

            info = await session.weights_info(saved.path)
            client = await session.create_training_client(info.base_model,
                                                          lora_rank=info.lora_rank or 0)
            await client.load_state(saved.path)
        """
        side, _ = self._serverless_side()
        if not isinstance(path, str) or not path.strip():
            raise InvalidInput("path", f"must be a non-empty checkpoint path, got {path!r}")
        return await side.weights_info(self._open_transport, path)

    async def create_serverless_sampler(
        self,
        model_path: str | None = None,
        *,
        base_model: str | None = None,
        concurrency: ConcurrencyController | int | None = None,
        timeout_s: float = 600.0,
        tokenizer: Any = None,
        tokenizer_model: str | None = None,
    ) -> DeploymentSampler:
        """A :class:`DeploymentSampler` on the serverless completions endpoint, for a saved
        sampler checkpoint (``model_path``, what ``save_weights_for_sampler`` returned, or
        ``accounts/<a>/trainingSessions/<ts>/checkpoints/<c>`` of any session) or the base
        weights (``base_model``). As the Fireworks SDK's ``create_sampling_client``: a
        checkpoint of a run this session did not create, or a base model before the session
        has a model, is first bound with ``create_sampling_route``. Close it (``async with``).
        ``tokenizer`` decodes token-id stops; or ``tokenizer_model`` (a Hugging Face name or a
        local directory) is loaded the first time the sampler needs it, in a worker thread,
        once per session and name.

        Example::

            saved = await client.save_weights_for_sampler("step-1")
            async with await session.create_serverless_sampler(saved.path) as sampler:
                out = await sampler.sample(prompt_tokens, max_tokens=32, temperature=1.0)
        """
        from .._clients._deployment_sampler import DeploymentSampler

        validate_seconds(timeout_s, "timeout_s")
        if tokenizer_model is not None and (
            not isinstance(tokenizer_model, str) or not tokenizer_model.strip()
        ):
            raise InvalidInput("tokenizer_model", f"must be a non-empty str, got "
                               f"{tokenizer_model!r}")
        model = await self._serverless_model(model_path, base_model)
        assert self._base_url is not None
        return DeploymentSampler(
            self._base_url,
            model,
            self._api_key,
            concurrency=concurrency,
            timeout_s=timeout_s,
            transport=self._http_transport,
            allow_insecure_http=self._allow_insecure_http,
            tokenizer=tokenizer,
            load_tokenizer=None if tokenizer_model is None
            else partial(self._load_tokenizer, tokenizer_model, model),
        )

    async def _serverless_model(self, model_path: str | None, base_model: str | None) -> str:
        """The completions ``model`` of a checkpoint or the base weights on this serverless
        session (bound with ``create_sampling_route`` first where the SDK binds it)."""
        side, session_id = self._serverless_side()
        if (model_path is None) == (base_model is None):
            raise InvalidInput("model_path", "give exactly one of model_path or base_model")
        if model_path is not None and (
            not isinstance(model_path, str) or not model_path.strip("/ ")
        ):
            raise InvalidInput("model_path", f"must be a checkpoint path, got {model_path!r}")
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise InvalidInput("base_model", f"must be a non-empty string, got {base_model!r}")
        return await side.sampling_model(
            self._open_transport, session_id, self._model_ids, model_path, base_model
        )

    async def _load_tokenizer(self, tokenizer_model: str, model: str) -> Any:
        """A serverless sampler's tokenizer, by name (the session's cache: one load each)."""
        from .._clients._tokenizer import TokenizerCache

        if self._tokenizers is None:
            self._tokenizers = TokenizerCache()
        return await self._tokenizers.get(names_tokenizer=False, tokenizer_model=tokenizer_model,
                                          model_name=model, tokenizer_id=None)

    async def list_session_checkpoints(self, *, page_size: int = 200) -> list[SessionCheckpoint]:
        """Every checkpoint of this serverless training session (oldest first), from the
        control plane: sampler snapshots (``promotable``) and training states.

        Example::

            rows = await session.list_session_checkpoints()
            newest = [r for r in rows if r.promotable][-1]
        """
        side, session_id = self._serverless_side()
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise InvalidInput("page_size", f"must be an int >= 1, got {page_size!r}")
        return await side.list_checkpoints(session_id, page_size)

    async def promote_session_checkpoint(
        self, checkpoint: SessionCheckpoint | str, output_model_id: str, base_model: str
    ) -> PromotedModel:
        """Promote a checkpoint of this session (a listed row, its name or its id) to the
        model ``accounts/<account>/models/<output_model_id>``.

        Example::

            model = await session.promote_session_checkpoint(newest, "my-model", base_model)
        """
        side, session_id = self._serverless_side()
        return await side.promote(session_id, checkpoint, output_model_id, base_model)

    async def delete_training_session(self) -> None:
        """Close this serverless training session on the control plane, releasing its slot
        at once (idempotent; a no-op for a session that is not serverless, as in the SDK).
        The session stays usable for reads of what it saved; new operations may fail.

        Example::

            async with ServiceSession(url, serverless=True) as session:
                ...
                await session.delete_training_session()
        """
        self._check_open()
        if self._serverless is None or self.training_session_id is None:
            return
        await self._serverless.delete_session(self.training_session_id)


def _capabilities(payload: bytes) -> dict[str, Any]:
    """The ``create_model`` result's fields besides ``model_id`` (Fireworks capabilities)."""
    try:
        obj = json.loads(payload)
    except ValueError:
        return {}
    if not isinstance(obj, dict):
        return {}
    return {k: v for k, v in obj.items() if k not in ("model_id", "type")}


class _ClientSide:
    """The session as its clients see it (:class:`~._protocol.ClientSession`): the session's
    private interface under public names, on an object users never hold, so the session's own
    public surface stays free of plumbing and no client reads a session's private member.
    """

    __slots__ = ("_session",)

    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def __repr__(self) -> str:
        return f"<client side of {self._session!r}>"

    @property
    def codec(self) -> Dialect:
        return self._session._codec

    @property
    def transport(self) -> Transport:
        return self._session._open_transport

    @property
    def client_config(self) -> Mapping[str, Any]:
        return self._session._client_config

    @property
    def session_id(self) -> str:
        return self._session.session_id

    def check_open(self) -> None:
        self._session._check_open()

    def next_sampling_session_seq_id(self) -> int:
        return self._session._next_sampling_session_seq_id()

    def check_samples_snapshots(self) -> None:
        self._session._check_samples_snapshots()

    def spawn_operation(
        self, fn: Callable[[], Awaitable[None]], pending: Pending[Any] | None = None
    ) -> None:
        self._session._spawn_operation(fn, pending)

    def track_operation(
        self,
        pending: Pending[Any],
        work: Callable[[], Awaitable[T]],
        *,
        deadlines: Deadlines | None = None,
        tokens: int | None = None,
    ) -> Awaitable[T]:
        return self._session._monitor.track(pending, work, deadlines=deadlines, tokens=tokens)


def client_side(session: ServiceSession) -> ClientSession:
    """What the clients (and the loops) use of ``session``: :class:`~._protocol.ClientSession`.

    Example::

        client_side(session).transport  # the open transport, for a loop's own request
    """
    return session._client_side
