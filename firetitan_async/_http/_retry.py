"""The one retry policy: which failures are retried, and how long to wait between attempts.

Every retry decision of the library is made here: the transport asks :meth:`RetryPolicy.retryable`
whether a reply or error may be tried again and :meth:`RetryPolicy.delay` how long to sleep.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping

import attrs

from ..errors import InvalidInput
from ..wire.fireworks_serverless import is_capacity_conflict
from ..wire.validation import validate_seconds

__all__ = ["RetryPolicy", "retry_after_seconds"]

# 4xx replies that mean "try again": request timeout, conflict (a concurrent duplicate), and
# rate limiting. Every other 4xx is the caller's mistake and is never retried.
_RETRYABLE_4XX = frozenset({408, 409, 429})
# 5xx replies that the same request will always get: not implemented (a web server that is
# not the API), HTTP version not supported, network authentication required (a captive portal).
_PERMANENT_5XX = frozenset({501, 505, 511})


@attrs.frozen
class RetryPolicy:
    """How transient failures are retried.

    A submission (and each poll) is retried on connection errors, timeouts, 408, 409, 429 and
    5xx (but 501, 505 and 511, which the same request always gets), at most ``max_attempts``
    times in all and never past ``deadline_s`` seconds after the first attempt (a wait is cut
    short to end at the deadline). A request that has met only connection failures (refused,
    unreachable, connect timeout) gives up after ``connect_deadline_s``: nothing listens there.
    The wait before attempt *n* (counting from 1 for the first retry) is
    ``min(backoff_cap_s, backoff_base_s * 2 ** (n - 1))`` spread by ``±jitter`` (a fraction),
    or the server's ``Retry-After`` when it asks for longer (capped at ``backoff_cap_s * 6``).
    Every field is checked at construction (:class:`~firetitan_async.InvalidInput` names it):
    the waits are finite and >= 0, ``jitter`` is in [0, 1], ``deadline_s`` and
    ``connect_deadline_s`` are None or > 0.

    Fireworks serverless: a 409 to a ``retrieve_future`` poll fails the operation, as in the
    Fireworks SDK, unless ``capacity_409=True`` (the SDK's opt-in
    ``_enable_serverless_supervised_409_retry``): then a 409 that says the trainer pool is
    out of capacity (or has no body) is retried like a 429; one naming a real conflict
    (``already exists``, ``idempotency``...) still fails.

    Example::

        ServiceSession(url, retry=RetryPolicy(max_attempts=20, deadline_s=600))
        # a trainer that takes a while to start listening:
        ServiceSession(url, retry=RetryPolicy(connect_deadline_s=60))
        # serverless SFT that waits out a full pool:
        ServiceSession(serverless_url, retry=RetryPolicy(capacity_409=True, deadline_s=1800))
    """

    max_attempts: int = attrs.field(default=10)
    backoff_base_s: float = attrs.field(default=0.1)
    backoff_cap_s: float = attrs.field(default=10.0)
    jitter: float = attrs.field(default=0.25)
    deadline_s: float | None = attrs.field(default=300.0)
    connect_deadline_s: float | None = attrs.field(default=4.0)
    capacity_409: bool = attrs.field(default=False)

    @max_attempts.validator
    def _check_attempts(self, _attr: attrs.Attribute[int], value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput("max_attempts", f"must be an int >= 1, got {value!r}")

    @backoff_base_s.validator
    @backoff_cap_s.validator
    def _check_backoff(self, attr: attrs.Attribute[float], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and value >= 0
        ):
            raise InvalidInput(attr.name, f"must be a finite number of seconds >= 0, got {value!r}")

    @jitter.validator
    def _check_jitter(self, _attr: attrs.Attribute[float], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidInput("jitter", f"must be a fraction in [0, 1], got {value!r}")

    @deadline_s.validator
    @connect_deadline_s.validator
    def _check_deadline(self, attr: attrs.Attribute[float | None], value: float | None) -> None:
        validate_seconds(value, attr.name, allow_none=True)

    @capacity_409.validator
    def _check_capacity(self, _attr: attrs.Attribute[bool], value: bool) -> None:
        if not isinstance(value, bool):
            raise InvalidInput("capacity_409", f"must be a bool, got {value!r}")

    def retryable_status(self, status_code: int) -> bool:
        """Whether an HTTP status is worth another attempt."""
        if status_code >= 500:
            return status_code not in _PERMANENT_5XX
        return status_code in _RETRYABLE_4XX

    def retryable_reply(self, status_code: int, body: str, *, serverless_poll: bool) -> bool:
        """Whether a reply is worth another attempt: :meth:`retryable_status`, except a 409 to
        a serverless ``retrieve_future`` poll (``serverless_poll``), retried only with
        ``capacity_409`` and a capacity ``body`` (see the class docstring)."""
        if status_code == 409 and serverless_poll:
            return self.capacity_409 and is_capacity_conflict(body)
        return self.retryable_status(status_code)

    def delay(
        self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        base = min(self.backoff_cap_s, self.backoff_base_s * (2.0 ** max(0, attempt - 1)))
        spread = float((rng or random).uniform(-self.jitter, self.jitter)) if self.jitter else 0.0
        wait = max(0.0, base * (1.0 + spread))
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.backoff_cap_s * 6))
        return wait


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's requested wait from ``retry-after-ms`` or ``retry-after`` (seconds), if any."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    seconds = headers.get("retry-after")
    if seconds is not None:
        try:
            return max(0.0, float(seconds))
        except ValueError:
            return None
    return None
