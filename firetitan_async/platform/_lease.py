"""``JobLease``: what :meth:`TrainerJobs.create_and_wait` returns — awaitable, or a context
manager that deletes the job it created however its block is left.

A trainer job bills while it runs. ``await jobs.create_and_wait(config)`` creates one and
leaves it running (as before). ``async with jobs.create_and_wait(config) as endpoint:`` owns
it: leaving the block — normally, by an error, by cancellation (``Ctrl-C`` under
``anyio.run`` arrives as one) — deletes the job, shielded from the cancellation and bounded
by ``grace_s``. If the job was created but never became ready (timeout, failure,
cancellation while waiting), it is deleted before the error propagates, also when awaited
(unlike the Fireworks SDK, which leaves it). ``keep=True`` never deletes anything.

Example::

    async with TrainerJobs() as jobs:
        async with jobs.create_and_wait(TrainerJobConfig(base_model=model)) as endpoint:
            async with ServiceSession(endpoint.base_url, dialect="fireworks") as session: ...
        # the job is deleted here, whatever happened inside
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import FiretitanError, InvalidInput

if TYPE_CHECKING:
    from ._config import TrainerJobConfig
    from ._jobs import TrainerJobs
    from ._records import TrainerEndpoint

__all__ = ["JobLease"]

logger = logging.getLogger("firetitan_async.platform")


class JobLease:
    """A trainer job being created: ``await`` it for its endpoint (the job keeps running),
    or use it as ``async with`` to delete the job when the block ends (unless ``keep``).

    Example::

        async with jobs.create_and_wait(config, grace_s=30) as endpoint:
            print(endpoint.job_id, endpoint.base_url)
    """

    def __init__(
        self,
        jobs: TrainerJobs,
        config: TrainerJobConfig,
        wait: Callable[[str], Coroutine[Any, Any, TrainerEndpoint]],
        *,
        keep: bool,
        grace_s: float,
    ) -> None:
        if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or grace_s <= 0:
            raise InvalidInput("grace_s", f"must be a number of seconds > 0, got {grace_s!r}")
        self._jobs = jobs
        self._config = config
        self._wait = wait
        self.keep = keep
        self.grace_s = grace_s
        #: The job's id once it has been created.
        self.job_id: str | None = None
        self._used = False

    def __await__(self) -> Generator[Any, None, TrainerEndpoint]:
        return self._create_and_wait().__await__()

    async def __aenter__(self) -> TrainerEndpoint:
        return await self._create_and_wait()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.keep:
            await self._delete()

    async def _create_and_wait(self) -> TrainerEndpoint:
        if self._used:
            raise RuntimeError("a JobLease can be awaited or entered only once")
        self._used = True
        created = await self._jobs.create(self._config)
        self.job_id = created.job_id
        try:
            return await self._wait(created.job_id)
        except BaseException:
            if not self.keep:
                await self._delete()  # never ready: nothing will use it, and it bills
            raise

    async def _delete(self) -> None:
        if self.job_id is None:
            return
        with anyio.move_on_after(self.grace_s, shield=True) as scope:
            try:
                await self._jobs.delete(self.job_id)
            except FiretitanError as exc:
                logger.warning("could not delete trainer job %s: %s", self.job_id, exc)
                return
        if scope.cancelled_caught:
            logger.warning(
                "trainer job %s was not deleted within %gs: delete it yourself",
                self.job_id,
                self.grace_s,
            )
        else:
            logger.info("deleted trainer job %s", self.job_id)

    def __repr__(self) -> str:
        return f"<JobLease job_id={self.job_id} keep={self.keep}>"
