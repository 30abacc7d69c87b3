"""Summaries of repeated measurements: median with min–max, and ratios of medians.

Example::

    s = summarize([1.0, 3.0, 2.0])      # Summary(median=2.0, low=1.0, high=3.0, n=3)
    ratio(s, summarize([1.0]))          # 2.0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import attrs

__all__ = ["Summary", "ratio", "summarize"]


@attrs.frozen
class Summary:
    """Median, minimum and maximum of ``n`` repeated measurements of one figure.

    Example::

        summarize([0.2, 0.1, 0.3]).as_dict()  # {"median": 0.2, "min": 0.1, "max": 0.3, "n": 3}
    """

    median: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """The JSON form: ``{"median", "min", "max", "n"}``."""
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. seconds to milliseconds)."""
        return Summary(self.median * factor, self.low * factor, self.high * factor, self.n)

    def text(self, fmt: str = ".3g") -> str:
        """``"median (min–max)"``, e.g. ``"12.3 (11.9–13.0)"``."""
        if self.n <= 1:
            return format(self.median, fmt)
        return f"{self.median:{fmt}} ({self.low:{fmt}}–{self.high:{fmt}})"


def summarize(values: Sequence[float]) -> Summary:
    """Summarize repeated measurements (at least one, all finite).

    Example::

        summarize([5.0, 1.0, 4.0]).median  # 4.0
    """
    if not values:
        raise ValueError("nothing to summarize")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite measurement in {list(values)!r}")
    return Summary(
        median=float(statistics.median(values)),
        low=float(min(values)),
        high=float(max(values)),
        n=len(values),
    )


def ratio(numerator: Summary, denominator: Summary) -> float:
    """The ratio of two medians (``nan`` if the denominator's median is zero).

    Example::

        ratio(summarize([4.0]), summarize([2.0]))  # 2.0
    """
    if denominator.median == 0:
        return math.nan
    return numerator.median / denominator.median
