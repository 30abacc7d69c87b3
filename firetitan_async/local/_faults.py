"""``FaultInjector``: the transient faults the local trainer injects at ``fault_rate``.

Per data-plane request, with probability ``rate``, one fault is drawn among those that make
sense for the request:

* ``ERROR_503`` / ``ERROR_500``: an error reply before anything is applied;
* ``RATE_LIMIT_429``: 429 with ``Retry-After: 1`` and ``retry-after-ms: 50``, before applying;
* ``TIMEOUT_408``: 408 (``retrieve_future`` only);
* ``SLOW``: the reply is delayed by 100-300 ms;
* ``ERROR_500_AFTER``: the request is applied (and its reply kept for idempotent replay), then
  answered with 500;
* ``DROP_AFTER``: the request is applied, then the connection is dropped mid-reply.

The "after" faults are drawn only for requests a client can safely repeat: GETs,
``retrieve_future``, and POSTs carrying ``X-Idempotency-Key`` (which the server deduplicates).

Example::

    faults = FaultInjector(0.2, seed=0)
    faults.draw(retrieve=False, repeatable=True)   # a FaultKind, or None
"""

from __future__ import annotations

import enum
import random

__all__ = ["FaultInjector", "FaultKind"]


class FaultKind(enum.Enum):
    """One kind of injected fault (see the module docstring)."""

    ERROR_503 = "503"
    ERROR_500 = "500"
    RATE_LIMIT_429 = "429"
    TIMEOUT_408 = "408"
    SLOW = "slow"
    ERROR_500_AFTER = "500-after"
    DROP_AFTER = "drop-after"

    @property
    def after_apply(self) -> bool:
        """Whether the request is applied before the fault."""
        return self in (FaultKind.ERROR_500_AFTER, FaultKind.DROP_AFTER)


_BEFORE = (FaultKind.ERROR_503, FaultKind.ERROR_500, FaultKind.RATE_LIMIT_429, FaultKind.SLOW)
_AFTER = (FaultKind.ERROR_500_AFTER, FaultKind.DROP_AFTER)


class FaultInjector:
    """Draws faults with a seeded RNG (used from the server's event loop only)."""

    def __init__(self, rate: float, *, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {rate}")
        self.rate = rate
        self._rng = random.Random(seed)

    def draw(self, *, retrieve: bool, repeatable: bool) -> FaultKind | None:
        """A fault for this request, or ``None`` (most of the time)."""
        if self.rate <= 0.0 or self._rng.random() >= self.rate:
            return None
        kinds = list(_BEFORE)
        if retrieve:
            kinds.append(FaultKind.TIMEOUT_408)
        if repeatable:
            kinds.extend(_AFTER)
        return self._rng.choice(kinds)

    def slow_delay_s(self) -> float:
        """The extra delay of a ``SLOW`` reply: 100-300 ms."""
        return self._rng.uniform(0.1, 0.3)
