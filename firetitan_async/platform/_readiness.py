"""The readiness poller: wait for a trainer job to be RUNNING and its trainer to answer.

The rules are the Fireworks SDK's ``TrainerJobManager.wait_for_ready`` (study §2.5):

* each poll reads the job; a job that is gone (404) or a tombstone (``DELETED``,
  ``ARCHIVED``) fails at once, and so does ``FAILED`` (with the record's status message);
* a stopped state (``CANCELLING``, ``CANCELLED``, ``COMPLETED``, ``EARLY_STOPPED``,
  ``DELETING``, ``EXPIRED``) fails only once ``stopped_settle_s`` (30 s) have passed since the
  wait began, because a resume flips the state asynchronously;
* ``RUNNING`` is ready when ``GET {gateway}/api/v1/healthz`` answers HTTP 200, and only 200;
* while the job is ``PENDING`` (waiting for capacity) the budget is ``pending_timeout_s``
  (48 h), counted from the start; the readiness budget ``timeout_s`` starts at the first poll
  that is not ``PENDING``.

A :class:`ReadinessPoller` splits the wait in two so it can live in a task group:
:meth:`ReadinessPoller.run` polls and records the outcome (it never raises, except on
cancellation) and :meth:`ReadinessPoller.wait` waits for that outcome and raises on failure.

Example::

    poller = ReadinessPoller(jobs, job_id, on_progress=print)
    async with anyio.create_task_group() as tg:
        tg.start_soon(poller.run)
        endpoint = await poller.wait()
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Final, Protocol, TypedDict

import anyio
import attrs

from .._session._boundary import trim_internal_frames
from ..errors import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ReadinessTimeout,
    SessionClosed,
    TrainerJobFailed,
    UsageError,
)
from ._records import JobState, TrainerEndpoint, TrainerJob

__all__ = ["ReadinessOptions", "ReadinessPoller", "ReadinessProgress"]

logger = logging.getLogger("firetitan_async.readiness")

_JITTER: Final = 0.2
# Replies that will not change by polling again: stop at once and report them.
_FATAL_STATUS: Final = frozenset({400, 401, 403})
#: The SDK's 48 h capacity wait (``DEFAULT_TRAINER_PENDING_TIMEOUT_S``).
DEFAULT_PENDING_TIMEOUT_S: Final = 48 * 60 * 60.0
#: How long a stopped state is taken for a stale pre-resume read (``_TRAINER_STOPPED_SETTLE_S``).
DEFAULT_STOPPED_SETTLE_S: Final = 30.0


class _JobSource(Protocol):
    """What the poller needs of :class:`~firetitan_async.TrainerJobs` (no import circle)."""

    def bare_job_id(self, job_id: str) -> str: ...

    async def get(self, job_id: str) -> TrainerJob: ...

    async def probe_trainer(self, base_url: str) -> bool: ...


@attrs.frozen
class ReadinessProgress:
    """One poll's view of the job, handed to ``on_progress``.

    ``state`` is the job's short state (``"PENDING"``, ``"RUNNING"``, …), ``elapsed_s`` the
    seconds since the poller started, ``attempt`` the poll number (from 1) and ``message`` the
    server's status message or what the poller is waiting for.

    Example::

        def show(p: ReadinessProgress) -> None:
            print(f"{p.state:<9} {p.elapsed_s:6.1f}s  {p.message or ''}")
    """

    job_id: str
    state: str
    elapsed_s: float
    attempt: int
    message: str | None = None


class ReadinessOptions(TypedDict, total=False):
    """How a readiness wait polls: the keywords of :class:`ReadinessPoller` and of the
    ``TrainerJobs`` waits (``wait_for_ready``, ``create_and_wait``, ``resume_and_wait``), in one
    place. Defaults (the poller's): ``poll_interval_s`` 5.0, ``timeout_s`` 900.0,
    ``pending_timeout_s`` 48 h, ``stopped_settle_s`` 30.0, ``on_progress`` None,
    ``probe_data_plane`` True; what they mean: the module docstring and
    :class:`ReadinessPoller`.

    Example::

        options: ReadinessOptions = {"poll_interval_s": 10.0, "timeout_s": 1800.0}
        endpoint = await jobs.wait_for_ready(job_id, **options)
    """

    poll_interval_s: float
    timeout_s: float
    pending_timeout_s: float
    stopped_settle_s: float
    on_progress: Callable[[ReadinessProgress], None] | None
    probe_data_plane: bool


class ReadinessPoller:
    """Poll a trainer job until it is ready, failed, or out of time (rules: module docstring).

    Polls are ``poll_interval_s`` apart, spread by ±20%. Failure ends the wait with
    :class:`~firetitan_async.TrainerJobFailed` (state ``"DELETED"`` for a job that vanished,
    ``"NOT_FOUND"`` for one never seen),
    :class:`~firetitan_async.ReadinessTimeout` (a budget ran out), or the control plane's
    :class:`~firetitan_async.APIStatusError` for a rejected key (401/403). Other transient
    control-plane failures are retried for up to ``timeout_s``. With
    ``probe_data_plane=False`` a RUNNING job is ready without the health probe.

    ``on_progress`` is called after every poll (from the polling task; keep it quick). State
    changes are logged at INFO on ``firetitan_async.readiness``.

    Example::

        poller = ReadinessPoller(jobs, job_id, poll_interval_s=2.0, on_progress=print)
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.run)
            endpoint = await poller.wait()     # TrainerJobFailed / ReadinessTimeout on failure
    """

    def __init__(
        self,
        jobs: _JobSource,
        job_id: str,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 900.0,
        pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S,
        stopped_settle_s: float = DEFAULT_STOPPED_SETTLE_S,
        on_progress: Callable[[ReadinessProgress], None] | None = None,
        probe_data_plane: bool = True,
    ) -> None:
        _check_positive("poll_interval_s", poll_interval_s)
        _check_positive("timeout_s", timeout_s)
        _check_positive("pending_timeout_s", pending_timeout_s)
        if (
            isinstance(stopped_settle_s, bool)
            or not isinstance(stopped_settle_s, int | float)
            or (not math.isfinite(stopped_settle_s) or stopped_settle_s < 0)
        ):
            raise InvalidInput(
                "stopped_settle_s", f"must be a number >= 0, got {stopped_settle_s!r}"
            )
        self._jobs = jobs
        self.job_id = jobs.bare_job_id(job_id)
        self.poll_interval_s = float(poll_interval_s)
        self.timeout_s = float(timeout_s)
        self.pending_timeout_s = float(pending_timeout_s)
        self.stopped_settle_s = float(stopped_settle_s)
        self._on_progress = on_progress
        self._probe = probe_data_plane
        self._rng = random.Random()
        self._started = False
        self._done: anyio.Event | None = None  # made on first use: needs a running event loop
        self._endpoint: TrainerEndpoint | None = None
        self._error: BaseException | None = None
        self._last_state: str | None = None

    def __repr__(self) -> str:
        if self._endpoint:
            outcome = "ready"
        elif self._error:
            outcome = type(self._error).__name__
        else:
            outcome = "running" if self._started else "new"
        return (
            f"ReadinessPoller(job_id={self.job_id!r}, last_state={self._last_state!r}, {outcome})"
        )

    @property
    def endpoint(self) -> TrainerEndpoint | None:
        """The trainer's endpoint once the job is ready, else ``None``."""
        return self._endpoint

    @property
    def last_state(self) -> str | None:
        """The job state seen by the latest successful poll (``None`` before the first)."""
        return self._last_state

    def done(self) -> bool:
        """Whether the outcome (ready or failed) is known."""
        return self._endpoint is not None or self._error is not None

    async def run(self) -> None:
        """Poll until ready, failed or timed out, and record the outcome.

        Never raises except on cancellation (so it can run in a task group); if it is cancelled
        before an outcome, :meth:`wait` raises :class:`~firetitan_async.FiretitanError`. Can be
        called once.
        """
        if self._started:
            raise UsageError("ReadinessPoller.run() can be called only once")
        self._started = True
        done = self._event()
        try:
            outcome = await self._poll(anyio.current_time())
            if isinstance(outcome, TrainerEndpoint):
                self._endpoint = outcome
            else:
                self._error = outcome
                if isinstance(outcome, ReadinessTimeout):
                    logger.warning("trainer job %s: %s", self.job_id, outcome)
        finally:
            if not self.done():
                self._error = FiretitanError(
                    f"the readiness poll of trainer job {self.job_id!r} stopped before an outcome"
                )
            done.set()

    async def wait(self) -> TrainerEndpoint:
        """Wait for :meth:`run`'s outcome: the endpoint, or the failure raised.

        Raises :class:`~firetitan_async.TrainerJobFailed`,
        :class:`~firetitan_async.ReadinessTimeout`, or the control plane's
        :class:`~firetitan_async.APIStatusError` for a rejected key. Cancelling the wait does not
        stop :meth:`run`. Waits forever if :meth:`run` is never started.
        """
        await self._event().wait()
        if self._endpoint is not None:
            return self._endpoint
        assert self._error is not None
        raise trim_internal_frames(self._error)

    # -- internals -------------------------------------------------------------------------

    def _event(self) -> anyio.Event:
        if self._done is None:
            self._done = anyio.Event()
        return self._done

    async def _poll(self, start: float) -> TrainerEndpoint | BaseException:
        attempt = 0
        ready_deadline: float | None = None
        failing_since: float | None = None
        while True:
            attempt += 1
            job = await self._get_job()
            now = anyio.current_time()
            if isinstance(job, BaseException):
                return job
            if job is None:  # a transient control-plane failure
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.timeout_s:
                    return ReadinessTimeout(self.job_id, self.timeout_s, self._last_state)
            else:
                failing_since = None
                outcome = await self._assess(job, now - start, attempt)
                if outcome is not None:
                    return outcome
                if job.state == JobState.PENDING:
                    if now - start >= self.pending_timeout_s:
                        return ReadinessTimeout(self.job_id, self.pending_timeout_s, job.state)
                elif ready_deadline is None:
                    ready_deadline = now + self.timeout_s
                elif now >= ready_deadline:
                    return ReadinessTimeout(self.job_id, self.timeout_s, job.state)
            await anyio.sleep(self._next_delay())

    async def _get_job(self) -> TrainerJob | BaseException | None:
        """The job, a fatal error to report, or None (a transient failure: poll again)."""
        try:
            return await self._jobs.get(self.job_id)
        except APIStatusError as exc:
            if exc.status_code == 404:
                if self._last_state is None:  # never seen: a mistyped id, not a deletion
                    return TrainerJobFailed(
                        self.job_id,
                        "NOT_FOUND",
                        "the control plane knows no such id in this account (HTTP 404)",
                    )
                self._last_state = JobState.DELETED
                return TrainerJobFailed(
                    self.job_id, JobState.DELETED, "the job vanished (HTTP 404)"
                )
            if exc.status_code in _FATAL_STATUS:
                return exc
            logger.warning("trainer job %s: polling failed (%s); will retry", self.job_id, exc)
        except (InvalidInput, SessionClosed) as exc:
            return exc
        except FiretitanError as exc:
            logger.warning("trainer job %s: polling failed (%s); will retry", self.job_id, exc)
        return None

    async def _assess(
        self, job: TrainerJob, elapsed: float, attempt: int
    ) -> TrainerEndpoint | BaseException | None:
        """Report one poll; return the outcome if this poll decides it."""
        if job.state != self._last_state:
            logger.info(
                "trainer job %s: %s after %.1fs%s",
                self.job_id,
                job.state,
                elapsed,
                f" ({job.status_message})" if job.status_message else "",
            )
        self._last_state = job.state
        message = job.status_message
        outcome: TrainerEndpoint | BaseException | None = None
        if job.is_tombstone:
            outcome = TrainerJobFailed(
                self.job_id,
                job.state,
                message or "the job was deleted (its id cannot be used for a new job)",
            )
        elif job.state in JobState.STOPPED:
            if elapsed >= self.stopped_settle_s:
                outcome = TrainerJobFailed(
                    self.job_id, job.state, message or "it stopped before it became ready"
                )
            else:
                message = f"{job.state} (may be stale after a resume; settling)"
        elif job.state == JobState.FAILED:
            outcome = TrainerJobFailed(self.job_id, job.state, message)
        elif (endpoint := job.endpoint()) is not None:
            try:
                ready = not self._probe or await self._jobs.probe_trainer(endpoint.base_url)
            except ValueError as exc:  # an insecure trainer URL: refuse to send the key there
                outcome = FiretitanError(f"trainer job {self.job_id!r}: {exc}")
            else:
                if ready:
                    outcome = endpoint
                else:
                    message = "waiting for the trainer's health check (HTTP 200)"
        self._report(ReadinessProgress(self.job_id, job.state, elapsed, attempt, message))
        return outcome

    def _report(self, progress: ReadinessProgress) -> None:
        if self._on_progress is None:
            return
        try:
            self._on_progress(progress)
        except Exception:
            # A broken progress display must not break the wait it displays.
            logger.exception("readiness on_progress callback failed")

    def _next_delay(self) -> float:
        return self.poll_interval_s * self._rng.uniform(1.0 - _JITTER, 1.0 + _JITTER)


def _check_positive(field: str, value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput(field, f"must be a finite number > 0, got {value!r}")
