"""``ServerStats``: the local trainer's counters, read from any thread.

The server's event-loop thread and its compute threads update the counters; ``snapshot()``
(what ``LocalTrainer.stats()`` and ``GET /_local/stats`` return) may be called from any thread.

Example::

    stats = ServerStats()
    stats.count_request("forward_backward")
    stats.snapshot()["requests"]   # {"forward_backward": 1}
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

__all__ = ["ServerStats"]


class ServerStats:
    """Request counts per endpoint, injected faults, applied optimizer steps, compute time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._optim_steps: Counter[str] = Counter()
        self._faults = 0
        self._compute_s = 0.0

    def count_request(self, endpoint: str) -> None:
        """Count one request to ``endpoint`` (e.g. ``"forward_backward"``)."""
        with self._lock:
            self._requests[endpoint] += 1

    def count_fault(self) -> None:
        """Count one injected fault."""
        with self._lock:
            self._faults += 1

    def count_optim_step(self, model_id: str) -> None:
        """Count one optimizer step applied to ``model_id``."""
        with self._lock:
            self._optim_steps[model_id] += 1

    def add_compute(self, seconds: float) -> None:
        """Add wall time spent in model compute."""
        with self._lock:
            self._compute_s += seconds

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy: ``{"requests", "faults_injected", "optim_steps_applied",
        "compute_seconds"}``."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "faults_injected": self._faults,
                "optim_steps_applied": dict(self._optim_steps),
                "compute_seconds": self._compute_s,
            }
