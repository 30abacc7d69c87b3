"""Concurrency controllers for rollout sampling: a fixed window and an adaptive (AIMD) one.

One controller is shared by every caller of a ``DeploymentSampler`` (and may be shared by
several samplers): each attempt ``acquire``s a slot and ``release``s it with what it observed
(``Observation``: HTTP status, latency, the server's prefill-queue header). Waiters are served
first come, first served. Works under asyncio and trio (anyio events; no loop-bound state is
created before first use, no thread).

``AdaptiveConcurrency`` is additive-increase / multiplicative-decrease like the Fireworks SDK's
``AdaptiveConcurrencyController``:

* congestion (429, 503, or no reply) shrinks the window at once by ``decrease``, at most once
  per ``cooldown_s`` (one burst of rejections is one event);
* with the ``prefill-queue-duration`` header (dedicated deployments), every ``interval``
  replies the queue's EMA is compared with ``queue_target_s``: above it shrinks, below it grows
  by ``increase`` scaled by the headroom (at most 4x);
* without it, each clean 2xx that arrives while the window is full grows it by
  ``increase / window`` (one slot per window of clean replies; the SDK grows one slot per 32
  replies, also when the window is not in use), and with ``latency_target_s`` a reply slower
  than the target counts as congestion.

Example::

    window = AdaptiveConcurrency(initial=8, max_window=512)
    sampler = DeploymentSampler(url, model, concurrency=window)
    window.window, window.in_flight, window.stats()
"""

from __future__ import annotations

import collections
import time
from typing import Protocol, runtime_checkable

import anyio
import attrs

from ..errors import InvalidInput

__all__ = ["AdaptiveConcurrency", "ConcurrencyController", "FixedConcurrency", "Observation"]

_CONGESTION = frozenset({429, 503})


@attrs.frozen
class Observation:
    """What one attempt saw: ``status`` (None: no reply), ``latency_s``, and the server's
    prefill-queue wait ``queue_s`` when it sent one."""

    status: int | None
    latency_s: float = 0.0
    queue_s: float | None = None

    @property
    def congested(self) -> bool:
        """429, 503 or no reply."""
        return self.status is None or self.status in _CONGESTION


@runtime_checkable
class ConcurrencyController(Protocol):
    """What a sampler needs from a controller."""

    @property
    def window(self) -> int:
        """How many attempts may be in flight now."""
        ...

    async def acquire(self) -> None:
        """Wait for a slot."""
        ...

    def release(self, observation: Observation | None = None) -> None:
        """Give a slot back, with what the attempt observed."""
        ...


class _Gate:
    """The admission mechanics shared by both controllers: in-flight count, FIFO waiters."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._max_in_flight = 0
        self._waiters: collections.deque[anyio.Event] = collections.deque()

    @property
    def window(self) -> int:
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        """Attempts holding a slot now."""
        return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most attempts ever in flight at once."""
        return self._max_in_flight

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served). Cancellation is safe."""
        if not self._waiters and self._in_flight < self.window:
            self._take()
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():  # a slot was handed to us as we were cancelled: give it back
                self._in_flight -= 1
                self._wake()
            else:
                self._waiters.remove(event)
            raise

    def _take(self) -> None:
        self._in_flight += 1
        if self._in_flight > self._max_in_flight:
            self._max_in_flight = self._in_flight

    def _give_back(self) -> None:
        self._in_flight -= 1

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self.window:
            self._take()  # handed over: the waiter owns the slot once it wakes
            self._waiters.popleft().set()


class FixedConcurrency(_Gate):
    """At most ``limit`` attempts in flight.

    Example::

        sampler = DeploymentSampler(url, model, concurrency=FixedConcurrency(256))
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidInput("limit", f"must be an integer >= 1, got {limit!r}")
        super().__init__()
        self._limit = limit

    @property
    def window(self) -> int:
        """The fixed limit."""
        return self._limit

    def release(self, observation: Observation | None = None) -> None:
        """Give the slot back."""
        self._give_back()
        self._wake()

    def __repr__(self) -> str:
        return f"FixedConcurrency({self._limit}, in_flight={self._in_flight})"


class AdaptiveConcurrency(_Gate):
    """An AIMD window between ``min_window`` and ``max_window`` (see the module docstring)."""

    def __init__(
        self,
        *,
        initial: int = 8,
        min_window: int = 1,
        max_window: int = 256,
        increase: float = 1.0,
        decrease: float = 0.5,
        cooldown_s: float = 1.0,
        queue_target_s: float = 0.5,
        latency_target_s: float | None = None,
        interval: int = 32,
        ema_alpha: float = 0.3,
    ) -> None:
        if not 1 <= min_window <= max_window:
            raise InvalidInput("min_window", "need 1 <= min_window <= max_window")
        if not 0.0 < decrease < 1.0 or increase <= 0 or interval < 1:
            raise InvalidInput("decrease", "need 0 < decrease < 1, increase > 0 and interval >= 1")
        super().__init__()
        self._min, self._max = float(min_window), float(max_window)
        self._window = min(self._max, max(self._min, float(initial)))
        self._increase, self._decrease = increase, decrease
        self._cooldown_s = cooldown_s
        self._queue_target_s = queue_target_s
        self._latency_target_s = latency_target_s
        self._interval = interval
        self._alpha = ema_alpha
        self._queue_samples: list[float] = []
        self._queue_ema: float | None = None
        self._last_shrink = float("-inf")
        self._shrinks = 0
        self._congested = 0
        self._replies = 0
        self._peak_window = self._window

    @property
    def window(self) -> int:
        """The current window (whole slots)."""
        return int(self._window)

    def release(self, observation: Observation | None = None) -> None:
        """Give the slot back and adjust the window from ``observation``."""
        self._give_back()
        if observation is not None:
            self._observe(observation)
        self._wake()

    def _observe(self, obs: Observation) -> None:
        self._replies += 1
        slow = (
            self._latency_target_s is not None
            and obs.status is not None
            and 200 <= obs.status < 300
            and obs.latency_s > self._latency_target_s
        )
        if obs.congested or slow:
            self._congested += 1
            now = time.monotonic()
            if now - self._last_shrink >= self._cooldown_s:
                self._last_shrink = now
                self._shrinks += 1
                self._resize(self._window * self._decrease)
            return
        if obs.queue_s is not None:
            self._queue_samples.append(obs.queue_s)
            if len(self._queue_samples) >= self._interval:
                avg = sum(self._queue_samples) / len(self._queue_samples)
                self._queue_samples.clear()
                ema = avg if self._queue_ema is None else (
                    self._alpha * avg + (1 - self._alpha) * self._queue_ema
                )
                self._queue_ema = ema
                if ema > self._queue_target_s:
                    self._resize(self._window * self._decrease)
                else:
                    headroom = min(self._queue_target_s / max(ema, 1e-3), 4.0)
                    self._resize(self._window + self._increase * headroom)
            return
        limited = self._in_flight + 1 >= int(self._window)  # was the window in use?
        if obs.status is not None and 200 <= obs.status < 300 and limited:
            self._resize(self._window + self._increase / self._window)

    def _resize(self, value: float) -> None:
        self._window = min(self._max, max(self._min, value))
        self._peak_window = max(self._peak_window, self._window)

    def stats(self) -> dict[str, float]:
        """``window`` and ``peak_window`` (whole slots), ``in_flight``, ``max_in_flight``,
        ``replies``, ``congested`` and ``shrinks`` (congestion events acted on)."""
        return {
            "window": float(self.window),
            "peak_window": float(int(self._peak_window)),  # whole slots, as ``window``
            "in_flight": float(self._in_flight),
            "max_in_flight": float(self._max_in_flight),
            "replies": float(self._replies),
            "congested": float(self._congested),
            "shrinks": float(self._shrinks),
        }

    def __repr__(self) -> str:
        return f"AdaptiveConcurrency(window={self.window}, in_flight={self._in_flight})"
