"""Loop stalls for the benchmarks: a 1 ms :class:`Ticker` and the collector's pauses.

:class:`Ticker` records the largest gap between its wake-ups (per named phase too);
:class:`GcPauses` (in ``gc.callbacks``) says how much of a gap the interpreter's collector
took, so a stall is reported with and without it. The stall and the rollout scenarios both
measure with these.

Example::

    with GcPauses.installed() as pauses:
        ticker = Ticker(pauses)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            ...                                  # the measured run
            ticker.stop()
    ticker.max_gap_s, ticker.max_gap_beside_gc_s, ticker.max_gap_cpu_beside_gc_s, pauses.max_s
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

__all__ = ["GcPauses", "Ticker"]

_TICK_S = 0.001


class GcPauses:
    """The longest and the total garbage-collector pause while installed."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self.total_s = 0.0
        self._started = 0.0

    @classmethod
    @contextmanager
    def installed(cls) -> Iterator[GcPauses]:
        """A gauge in ``gc.callbacks`` for the block."""
        pauses = cls()
        gc.callbacks.append(pauses)
        try:
            yield pauses
        finally:
            gc.callbacks.remove(pauses)

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._started = now
        else:
            self.max_s = max(self.max_s, now - self._started)
            self.total_s += now - self._started


class Ticker:
    """A task that wakes every 1 ms and records the largest gap between its wake-ups.

    The measured run is split into named phases (:meth:`phase`); each phase also keeps the
    largest part of a gap that fell inside it, so a stall can be traced to where it happened.
    """

    def __init__(self, gc_pauses: GcPauses | None = None) -> None:
        """``gc_pauses``: an installed gauge, for :attr:`max_gap_beside_gc_s`."""
        self.max_gap_s = 0.0
        # The largest gap less the garbage collector's pauses inside it (the loop's own work).
        self.max_gap_beside_gc_s = 0.0
        # The most CPU this thread spent in one gap, less the collector's pauses: where a gap
        # is much longer than this, the thread was waiting (descheduled by the OS for another
        # process, such as a busy trainer on the same cores), not working.
        self.max_gap_cpu_beside_gc_s = 0.0
        self._cpu_at_last = time.thread_time()
        self._gc = gc_pauses
        self._gc_at_last = 0.0
        self.ticks = 0
        self.by_phase: dict[str, float] = {}
        self._phase = "idle"
        self._phase_start = self._last = time.perf_counter()
        self._running = True

    def phase(self, name: str) -> None:
        """Enter phase ``name`` (the gap in progress counts up to now for the old phase)."""
        now = time.perf_counter()
        self._note_phase(now)
        self._phase, self._phase_start = name, now

    def _note_phase(self, now: float) -> None:
        part = now - max(self._last, self._phase_start)
        self.by_phase[self._phase] = max(self.by_phase.get(self._phase, 0.0), part)

    async def run(self) -> None:
        """Tick until :meth:`stop` (run it in a task group)."""
        self._last = time.perf_counter()
        self._cpu_at_last = time.thread_time()
        self._gc_at_last = 0.0 if self._gc is None else self._gc.total_s
        while self._running:
            await anyio.sleep(_TICK_S)
            now = time.perf_counter()
            if not self._running:
                break
            self._note_phase(now)
            self._note_gap(now)
            self.ticks += 1
            self._last = now

    def _note_gap(self, now: float) -> None:
        gap = now - self._last
        cpu_now = time.thread_time()
        cpu, self._cpu_at_last = cpu_now - self._cpu_at_last, cpu_now
        self.max_gap_s = max(self.max_gap_s, gap)
        if self._gc is not None:
            in_gc, self._gc_at_last = self._gc.total_s - self._gc_at_last, self._gc.total_s
            self.max_gap_beside_gc_s = max(self.max_gap_beside_gc_s, gap - in_gc)
            cpu -= in_gc
        self.max_gap_cpu_beside_gc_s = max(self.max_gap_cpu_beside_gc_s, cpu)

    def restart(self) -> None:
        """Forget the gaps so far (a warm-up); the gap in progress still counts."""
        self.max_gap_s = self.max_gap_beside_gc_s = self.max_gap_cpu_beside_gc_s = 0.0

    def stop(self) -> None:
        """Stop measuring now; the gap in progress counts up to this moment."""
        if self._running:
            now = time.perf_counter()
            self._note_phase(now)
            self._note_gap(now)
            self._running = False
