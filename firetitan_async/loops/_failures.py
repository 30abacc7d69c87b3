"""What :func:`run_rl` does when a rollout raises: retry the group with a fresh environment,
skip it, or fail the run; and a circuit breaker on consecutive failures.

Example::

    await run_rl(..., on_rollout_error=RetryGroup(times=2, max_consecutive_failures=8))
    await run_rl(..., on_rollout_error="skip")     # a failed group is left out of its step
    await run_rl(..., on_rollout_error="fail")     # the first failure cancels the run
"""

from __future__ import annotations

from typing import Literal

import attrs

from ..errors import InvalidInput, RolloutsFailing

__all__ = ["OnRolloutError", "RetryGroup"]


@attrs.frozen
class RetryGroup:
    """Retry a failed rollout up to ``times`` more times, each by calling the rollout
    function again (a fresh environment: nothing of the failed attempt is reused), then
    ``then``: ``"skip"`` leaves the group out of its step (the step trains on the others),
    ``"fail"`` raises the last error and cancels the run.

    ``max_consecutive_failures`` is the circuit breaker: that many failed attempts in a row
    (no rollout succeeding in between, whichever group they belong to) raise
    :class:`~firetitan_async.RolloutsFailing`, which cancels the run; None: no breaker.
    Only the failing group waits for its retries; the other rollouts and the trainer go on.

    Example::

        policy = RetryGroup(times=2, then="skip", max_consecutive_failures=10)
    """

    times: int = 2
    then: Literal["skip", "fail"] = "skip"
    max_consecutive_failures: int | None = 10

    def __attrs_post_init__(self) -> None:
        if self.times < 0:
            raise InvalidInput("times", f"must be >= 0, got {self.times!r}")
        if self.then not in ("skip", "fail"):
            raise InvalidInput("then", f"must be 'skip' or 'fail', got {self.then!r}")
        if self.max_consecutive_failures is not None and self.max_consecutive_failures < 1:
            raise InvalidInput(
                "max_consecutive_failures",
                f"must be >= 1 or None, got {self.max_consecutive_failures!r}",
            )


#: ``run_rl``'s ``on_rollout_error``: a :class:`RetryGroup`, ``"skip"`` (``RetryGroup(times=0)``)
#: or ``"fail"`` (the first failure is raised as is and cancels the run).
OnRolloutError = RetryGroup | Literal["skip", "fail"]


def rollout_policy(value: OnRolloutError) -> RetryGroup | None:
    """The policy ``value`` names; None for ``"fail"``."""
    if isinstance(value, RetryGroup):
        return value
    if value == "skip":
        return RetryGroup(times=0, then="skip")
    if value == "fail":
        return None
    raise InvalidInput("on_rollout_error", f"must be a RetryGroup, 'skip' or 'fail', got {value!r}")


class Breaker:
    """Counts failed rollout attempts in a row; opens at the policy's limit."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._count = 0

    def failed(self, cause: BaseException) -> None:
        """Count a failed attempt; raise :class:`RolloutsFailing` at the limit."""
        self._count += 1
        if self._limit is not None and self._count >= self._limit:
            raise RolloutsFailing(self._count, cause) from cause

    def succeeded(self) -> None:
        self._count = 0
