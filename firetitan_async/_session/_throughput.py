"""``Throughput``: steps/s, tokens/s and samples/s, measured from operation events.

Example::

    meter = session.throughput(window_s=60)
    ...  # train
    snap = meter.snapshot()
    print(f"{snap.steps_per_s:.2f} steps/s, {snap.tokens_per_s:.0f} tokens/s")
"""

from __future__ import annotations

import collections
import time

import attrs

from ..errors import InvalidInput
from ._events import OperationEvent

__all__ = ["Throughput", "ThroughputSnapshot"]

_TOKEN_OPS = frozenset({"forward", "forward_backward", "forward_backward_custom"})


@attrs.frozen
class ThroughputSnapshot:
    """Throughput over the last ``window_s`` seconds (or since the meter was made).

    ``steps`` counts finished ``optim_step`` operations, ``tokens`` the input tokens of finished
    ``forward``/``forward_backward`` operations and ``samples`` the finished ``sample``
    operations within the window.
    """

    window_s: float
    steps: int
    tokens: int
    samples: int
    steps_per_s: float
    tokens_per_s: float
    samples_per_s: float


class Throughput:
    """An event hook that counts finished operations; :meth:`snapshot` gives the rates.

    Get one with :meth:`ServiceSession.throughput` (already hooked to the session), or hook
    it yourself with ``session.add_event_hook(meter)``.

    Example::

        meter = session.throughput()
        for batch in batches:
            await client.forward_backward(batch, "cross_entropy")
            await client.optim_step(adam)
        print(meter.snapshot())
    """

    def __init__(self, window_s: float | None = None) -> None:
        if window_s is not None and (
            isinstance(window_s, bool) or not isinstance(window_s, int | float) or window_s <= 0
        ):
            raise InvalidInput("window_s", f"must be > 0 or None, got {window_s!r}")
        self.window_s = window_s
        self._since = time.time()
        # (wall time, steps, tokens, samples) of each counted operation
        self._done: collections.deque[tuple[float, int, int, int]] = collections.deque()

    def __call__(self, event: OperationEvent) -> None:
        if event.kind != "finished":
            return
        if event.operation == "optim_step":
            self._done.append((event.wall_time, 1, 0, 0))
        elif event.operation in _TOKEN_OPS:
            self._done.append((event.wall_time, 0, event.tokens or 0, 0))
        elif event.operation == "sample":
            self._done.append((event.wall_time, 0, 0, 1))
        else:
            return
        self._trim(event.wall_time)

    def _trim(self, now: float) -> None:
        if self.window_s is not None:
            while self._done and self._done[0][0] < now - self.window_s:
                self._done.popleft()

    def snapshot(self) -> ThroughputSnapshot:
        """The counts and rates now.

        Example::

            meter.snapshot().tokens_per_s
        """
        now = time.time()
        self._trim(now)
        span = now - self._since
        if self.window_s is not None:
            span = min(span, self.window_s)
        span = max(span, 1e-9)
        steps = sum(d[1] for d in self._done)
        tokens = sum(d[2] for d in self._done)
        samples = sum(d[3] for d in self._done)
        return ThroughputSnapshot(
            window_s=span,
            steps=steps,
            tokens=tokens,
            samples=samples,
            steps_per_s=steps / span,
            tokens_per_s=tokens / span,
            samples_per_s=samples / span,
        )
