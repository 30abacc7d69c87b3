"""The readiness poller: wait for a trainer job to be RUNNING and its trainer to answer.

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

import anyio
import attrs

from ._jobs import JobState, TrainerEndpoint, TrainerJob, TrainerJobs
from .errors import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ReadinessTimeout,
    SessionClosed,
    TrainerJobFailed,
)

__all__ = ["ReadinessPoller", "ReadinessProgress"]

logger = logging.getLogger("firetitan_async.readiness")

_JITTER = 0.2
# Replies that will not change by polling again: stop at once and report them.
_FATAL_STATUS = frozenset({400, 401, 403})


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


class ReadinessPoller:
    """Poll a trainer job until it is ready, failed, or out of time.

    Ready means RUNNING with a ``directRouteHandle`` and, when ``probe_data_plane`` is set,
    a trainer there that answers ``GET /api/v1/healthz`` (see
    :meth:`TrainerJobs.probe_trainer`). Polls are ``poll_interval_s`` apart, spread by ±20%.
    A terminal state (or the job disappearing, reported as state ``"DELETED"``) ends the wait
    at once with :class:`~firetitan_async.TrainerJobFailed`; ``timeout_s`` after :meth:`run`
    starts it ends with :class:`~firetitan_async.ReadinessTimeout`. A rejected key (HTTP 401/403)
    ends it with that :class:`~firetitan_async.APIStatusError`; other transient control-plane
    failures are retried until the timeout.

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
        jobs: TrainerJobs,
        job_id: str,
        *,
        poll_interval_s: float = 5.0,
        timeout_s: float = 900.0,
        on_progress: Callable[[ReadinessProgress], None] | None = None,
        probe_data_plane: bool = True,
    ) -> None:
        _check_positive("poll_interval_s", poll_interval_s)
        _check_positive("timeout_s", timeout_s)
        self._jobs = jobs
        self.job_id = jobs._job_id(job_id)
        self.poll_interval_s = float(poll_interval_s)
        self.timeout_s = float(timeout_s)
        self._on_progress = on_progress
        self._probe = probe_data_plane
        self._rng = random.Random()
        self._started = False
        self._done: anyio.Event | None = None  # made on first use: needs a running event loop
        self._endpoint: TrainerEndpoint | None = None
        self._error: BaseException | None = None
        self._last_state: str | None = None

    def __repr__(self) -> str:
        outcome = (
            "ready"
            if self._endpoint
            else (
                type(self._error).__name__ if self._error else "running" if self._started else "new"
            )
        )
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
            raise RuntimeError("ReadinessPoller.run() can be called only once")
        self._started = True
        done = self._event()
        start = anyio.current_time()
        try:
            with anyio.move_on_after(self.timeout_s) as scope:
                outcome = await self._poll(start)
                if isinstance(outcome, TrainerEndpoint):
                    self._endpoint = outcome
                else:
                    self._error = outcome
            if scope.cancelled_caught:
                self._error = ReadinessTimeout(self.job_id, self.timeout_s, self._last_state)
                logger.warning("trainer job %s: %s", self.job_id, self._error)
        finally:
            if not self.done():
                self._error = FiretitanError(
                    f"the readiness poll of trainer job {self.job_id!r} stopped before an outcome"
                )
            done.set()

    async def wait(self) -> TrainerEndpoint:
        """Wait for :meth:`run`'s outcome: the endpoint, or the failure raised.

        Raises :class:`~firetitan_async.TrainerJobFailed` (terminal state, or ``"DELETED"``),
        :class:`~firetitan_async.ReadinessTimeout`, or the control plane's
        :class:`~firetitan_async.APIStatusError` for a rejected key. Cancelling the wait does not
        stop :meth:`run`. Waits forever if :meth:`run` is never started.
        """
        await self._event().wait()
        if self._endpoint is not None:
            return self._endpoint
        assert self._error is not None
        raise self._error

    # -- internals -------------------------------------------------------------------------

    def _event(self) -> anyio.Event:
        if self._done is None:
            self._done = anyio.Event()
        return self._done

    async def _poll(self, start: float) -> TrainerEndpoint | BaseException:
        attempt = 0
        while True:
            attempt += 1
            job = await self._get_job()
            if isinstance(job, BaseException):
                return job
            if job is not None:
                outcome = await self._assess(job, start, attempt)
                if outcome is not None:
                    return outcome
            await anyio.sleep(self._next_delay())

    async def _get_job(self) -> TrainerJob | BaseException | None:
        """The job, a fatal error to report, or None (a transient failure: poll again)."""
        try:
            return await self._jobs.get(self.job_id)
        except APIStatusError as exc:
            if exc.status_code == 404:
                self._last_state = JobState.DELETED
                return TrainerJobFailed(
                    self.job_id, JobState.DELETED, "the job does not exist (HTTP 404)"
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
        self, job: TrainerJob, start: float, attempt: int
    ) -> TrainerEndpoint | BaseException | None:
        """Report one poll; return the outcome if this poll decides it."""
        if job.state != self._last_state:
            logger.info(
                "trainer job %s: %s after %.1fs%s",
                self.job_id,
                job.state,
                anyio.current_time() - start,
                f" ({job.status_message})" if job.status_message else "",
            )
        self._last_state = job.state
        message = job.status_message
        outcome: TrainerEndpoint | BaseException | None = None
        if job.is_terminal:
            outcome = TrainerJobFailed(self.job_id, job.state, job.status_message)
        elif (endpoint := job.endpoint()) is not None:
            try:
                ready = not self._probe or await self._jobs.probe_trainer(endpoint.base_url)
            except ValueError as exc:  # an insecure trainer URL: refuse to send the key there
                outcome = FiretitanError(f"trainer job {self.job_id!r}: {exc}")
            else:
                if ready:
                    outcome = endpoint
                else:
                    message = "waiting for the trainer to answer"
        elif job.state == JobState.RUNNING:
            message = "RUNNING without a trainer URL yet"
        self._report(
            ReadinessProgress(
                self.job_id, job.state, anyio.current_time() - start, attempt, message
            )
        )
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
