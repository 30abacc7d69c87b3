"""The garbage collector's pauses, measured from ``gc.callbacks``, for the stall figures.

A loop-stall ticker sees a gap; :class:`GcPauses` says how much of it the interpreter's
collector took, so a figure can be reported with and without it.

Example::

    with GcPauses.installed() as pauses:
        ...                                  # the measured run
    pauses.max_s, pauses.total_s
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["GcPauses"]


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
