"""``Provisioning``: a billable resource being created, as an awaitable or an owner block.

``TrainerJobs.create_and_wait(...)`` and ``Deployments.create_or_get(...)`` return one. It is
both awaitable and an async context manager:

* ``await jobs.create_and_wait(config)``: the resource (a ``TrainerEndpoint``), which the
  caller then owns. If creation or the wait fails or is cancelled, what was created is
  released first (the caller never got a handle to it), unless ``keep=True``.
* ``async with jobs.create_and_wait(config) as endpoint:``: the block owns what was
  created. However the block exits (normally, by an error, by cancellation, or by SIGINT or
  SIGTERM under :func:`~firetitan_async.cleanup_on_signals`), it is released: a trainer job is
  deleted, a deployment deleted or scaled to zero. ``keep=True`` opts out.

Only what this call CREATED is released: an existing job or deployment that was adopted
(a ``requested_job_id`` that already existed, a healthy deployment ``create_or_get`` found) is
left alone. Release runs shielded from cancellation for at most ``grace_s`` seconds; if it
fails or runs out of time, the resource is named in a :class:`CleanupFailed` (raised when the
block had no error of its own, logged otherwise) so that nothing bills silently.

What an ``async with`` block creates is marked with :func:`owner_tag`
(``firetitan-async:<host>:<pid>``): a job's ``displayName`` when the config leaves it empty, a
deployment's ``displayName`` and its annotation ``firetitan-async/owner``.
``firetitan-async jobs list --orphans`` reads that mark. The plain ``await`` form writes no
mark: its requests are the Fireworks SDK's, byte for byte.

Example::

    async with TrainerJobs() as jobs, jobs.create_and_wait(config, grace_s=60) as endpoint:
        async with ServiceSession(endpoint.base_url) as session:
            ...                                  # the job is deleted when this block ends
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Generator
from types import TracebackType
from typing import Final, Generic, TypeVar

import anyio

from ..errors import CleanupFailed, FiretitanError, InvalidInput, UsageError

__all__ = [
    "DEFAULT_GRACE_S",
    "OWNER_ANNOTATION",
    "CleanupFailed",
    "Owner",
    "Provisioning",
    "owner_tag",
    "parse_owner_tag",
]

logger = logging.getLogger("firetitan_async.lifecycle")

T = TypeVar("T")

#: How long releasing what a block created may take (shielded from cancellation).
DEFAULT_GRACE_S: Final = 30.0
#: The deployment annotation that carries the owner tag.
OWNER_ANNOTATION: Final = "firetitan-async/owner"
_TAG_PREFIX: Final = "firetitan-async:"
_TAG_LIMIT: Final = 63  # a job's displayName must be fewer than 64 characters
_PID_RE: Final = re.compile(r"[0-9]{1,10}")



def owner_tag(*, host: str | None = None, pid: int | None = None) -> str:
    """``firetitan-async:<host>:<pid>`` for this process (fewer than 64 characters).

    Example::

        owner_tag()   # "firetitan-async:trainbox:4242"
    """
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname() if host is None else host
    room = _TAG_LIMIT - len(_TAG_PREFIX) - len(str(pid)) - 1
    return f"{_TAG_PREFIX}{host[:room]}:{pid}"


class Owner:
    """The process an owner tag names: ``host`` (possibly truncated) and ``pid``."""

    def __init__(self, host: str, pid: int) -> None:
        self.host = host
        self.pid = pid

    def __repr__(self) -> str:
        return f"Owner(host={self.host!r}, pid={self.pid})"

    def on_this_host(self) -> bool:
        """Whether the tag was written on this machine (same truncated host name)."""
        return owner_tag(pid=self.pid) == owner_tag(host=self.host, pid=self.pid)

    def alive(self) -> bool | None:
        """Whether the owning process still runs: None when it is on another host (unknown).

        A reused pid reads as alive: the check errs towards "owned", never towards deleting.
        """
        if not self.on_this_host():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user
            return True
        except OverflowError:  # not a pid this system can have: say nothing
            return None
        return True


def parse_owner_tag(text: object) -> Owner | None:
    """The owner an owner tag names, or None if ``text`` is not one.

    Example::

        parse_owner_tag("firetitan-async:box:42").pid   # 42
    """
    if not isinstance(text, str) or not text.startswith(_TAG_PREFIX):
        return None
    host, sep, pid = text[len(_TAG_PREFIX) :].rpartition(":")
    if not sep or not _PID_RE.fullmatch(pid):
        return None
    return Owner(host, int(pid))


class Claim:
    """What a provisioning step created, registered the moment it exists. ``block`` says
    whether an ``async with`` block owns it (only then is the owner tag written: a plain
    ``await`` sends exactly the Fireworks SDK's request)."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.block = False

    def own(self, resource_id: str) -> None:
        """Record that ``resource_id`` was created by this call (and is to be released)."""
        self.created.append(resource_id)


def check_grace(grace_s: object) -> float:
    """``grace_s`` as a float, or ``InvalidInput``."""
    if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or not grace_s > 0:
        raise InvalidInput("grace_s", f"must be a number of seconds > 0, got {grace_s!r}")
    return float(grace_s)


class Provisioning(Generic[T]):
    """A resource being created: ``await`` it, or own it with ``async with`` (see the module
    docstring). Made by ``TrainerJobs.create_and_wait`` and ``Deployments.create_or_get``;
    awaitable once, or entered once.

    Example::

        async with deployments.create_or_get(config, cleanup="scale_to_zero") as info:
            ...                                 # scaled to zero when the block ends
    """

    def __init__(
        self,
        kind: str,
        provision: Callable[[Claim], Awaitable[T]],
        release: Callable[[str], Awaitable[None]],
        *,
        keep: bool = False,
        grace_s: float = DEFAULT_GRACE_S,
    ) -> None:
        if not isinstance(keep, bool):
            raise InvalidInput("keep", f"must be a bool, got {keep!r}")
        self.kind = kind
        self.keep = keep
        self.grace_s = check_grace(grace_s)
        self._provision = provision
        self._release = release
        self._claim = Claim()
        self._used = False

    def __repr__(self) -> str:
        return f"Provisioning({self.kind}, created={self._claim.created!r}, keep={self.keep})"

    @property
    def created(self) -> list[str]:
        """The ids this call created so far (an adopted resource is not listed)."""
        return list(self._claim.created)

    def __await__(self) -> Generator[object, None, T]:
        return self._run().__await__()

    async def __aenter__(self) -> T:
        self._claim.block = True
        return await self._run()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._release_created(exc)

    async def _run(self) -> T:
        if self._used:
            raise UsageError("a Provisioning can be awaited or entered only once")
        self._used = True
        try:
            return await self._provision(self._claim)
        except BaseException as exc:
            await self._release_created(exc)
            raise

    async def _release_created(self, exc: BaseException | None) -> None:
        if self.keep or not self._claim.created:
            if self._claim.created:
                logger.info("keeping %s %s (keep=True)", self.kind, ", ".join(self._claim.created))
            return
        left = list(self._claim.created)
        problem = ""
        with anyio.move_on_after(self.grace_s, shield=True):
            for resource_id in list(left):
                try:
                    await self._release(resource_id)
                except FiretitanError as error:
                    problem = str(error)
                    continue
                left.remove(resource_id)
                logger.info("released %s %s", self.kind, resource_id)
        self._claim.created[:] = left
        if not left:
            return
        failure = CleanupFailed(
            [f"{self.kind} {r}" for r in left],
            problem or f"still running after the {self.grace_s:g}s grace period",
        )
        if exc is None:
            raise failure
        logger.error("%s (while handling %s)", failure, type(exc).__name__)
        exc.add_note(str(failure))
