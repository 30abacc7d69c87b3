"""Learning-rate schedules: ``step -> learning rate`` for :func:`run_rl` and :func:`sft_steps`.

A schedule is any callable from the 1-based optimizer step to either a float (the learning
rate, put into the loop's base ``AdamParams``) or a whole ``AdamParams`` (used as is). The
helpers here build the common shapes with the semantics of the Fireworks SDK's
``training_spec.compute_lr`` (step 1 is the first optimizer step; warmup ramps linearly to
the full rate at step ``warmup_steps``; the decay runs from the end of the warmup, or over
the last ``decay_ratio`` of the run, down to ``min_lr_ratio`` at step ``total_steps``).
tinker-cookbook's ``lr_scheduling`` draws the same linear and cosine curves (no warmup, no
floor) on the 0-based step, so its first step trains at the full rate: to keep a ported
recipe's curve exactly, pass ``lambda step: linear(lr, n)(step - 1)``.

Example::

    schedule = warmup_stable_decay(3e-4, total_steps=1000, warmup_steps=50, decay_ratio=0.2)
    schedule(1), schedule(50), schedule(900)   # 6e-06, 0.0003, 0.00015
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import attrs
from tinker import types

from ..errors import InvalidInput

__all__ = ["LRSchedule", "adam_at", "constant", "cosine", "linear", "warmup_stable_decay"]

#: What a loop's ``lr_schedule`` is: the 1-based step to a learning rate or to ``AdamParams``.
Schedule = Callable[[int], "float | types.AdamParams"]


@attrs.frozen
class LRSchedule:
    """A warmup-then-decay learning-rate curve (build one with :func:`linear`,
    :func:`cosine`, :func:`warmup_stable_decay` or :func:`constant`).

    Example::

        schedule = cosine(1e-3, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
        [round(schedule(s), 6) for s in (1, 10, 55, 100)]   # [0.0001, 0.001, 0.00055, 0.0001]
    """

    learning_rate: float
    total_steps: int | None
    shape: Literal["constant", "linear", "cosine", "sqrt"]
    warmup_steps: int = 0
    warmup_ratio: float | None = None
    #: None: decay from the end of the warmup; else over the last ``decay_ratio`` of the run.
    decay_ratio: float | None = None
    min_lr_ratio: float = 0.0

    def __attrs_post_init__(self) -> None:
        if not self.learning_rate >= 0:
            raise InvalidInput("learning_rate", f"must be >= 0, got {self.learning_rate!r}")
        if self.total_steps is not None and self.total_steps < 1:
            raise InvalidInput("total_steps", f"must be >= 1, got {self.total_steps!r}")
        if self.shape != "constant" and self.total_steps is None:
            raise InvalidInput("total_steps", f"a {self.shape} decay needs total_steps")
        if self.warmup_steps < 0:
            raise InvalidInput("warmup_steps", f"must be >= 0, got {self.warmup_steps!r}")
        if self.warmup_ratio is not None:
            if self.warmup_steps:
                raise InvalidInput("warmup_ratio", "give warmup_steps or warmup_ratio, not both")
            if not 0 <= self.warmup_ratio < 1 or self.total_steps is None:
                raise InvalidInput("warmup_ratio", "must be in [0, 1), with total_steps")
        if self.decay_ratio is not None and not 0 < self.decay_ratio <= 1:
            raise InvalidInput("decay_ratio", f"must be in (0, 1], got {self.decay_ratio!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise InvalidInput("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio!r}")

    def _warmup(self) -> int:
        if self.warmup_ratio is not None and self.total_steps is not None:
            return max(0, round(self.warmup_ratio * self.total_steps))
        return self.warmup_steps

    def __call__(self, step: int) -> float:
        """The learning rate of 1-based optimizer step ``step``."""
        base = self.learning_rate
        warmup = self._warmup()
        if warmup > 0 and step <= warmup:
            return base * (step / warmup)
        if self.shape == "constant" or self.total_steps is None:
            return base
        end = self.total_steps
        if self.decay_ratio is None:
            start = warmup
        else:
            start = max(warmup, end - max(1, round(self.decay_ratio * end)))
        if step <= start:
            return base
        floor = self.min_lr_ratio
        if step >= end:
            return base * floor
        progress = (step - start) / max(1, end - start)
        if self.shape == "linear":
            return base * (1.0 - progress * (1.0 - floor))
        if self.shape == "cosine":
            return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))
        return base * max(floor, 1.0 - math.sqrt(progress) * (1.0 - floor))  # "sqrt"


def constant(
    learning_rate: float,
    *,
    warmup_steps: int = 0,
    total_steps: int | None = None,
    warmup_ratio: float | None = None,
) -> LRSchedule:
    """The same rate throughout, after an optional linear warmup.

    Example::

        constant(1e-3, warmup_steps=10)(5)   # 0.0005
    """
    return LRSchedule(learning_rate, total_steps, "constant", warmup_steps, warmup_ratio)


def linear(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
    decay_ratio: float | None = None,
    min_lr_ratio: float = 0.0,
) -> LRSchedule:
    """Warmup, then a straight line down to ``min_lr_ratio`` of the rate at ``total_steps``.

    Example::

        linear(1e-3, total_steps=100)(50)   # 0.0005
    """
    return LRSchedule(
        learning_rate, total_steps, "linear", warmup_steps, warmup_ratio, decay_ratio, min_lr_ratio
    )


def cosine(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
    decay_ratio: float | None = None,
    min_lr_ratio: float = 0.0,
) -> LRSchedule:
    """Warmup, then a half cosine down to ``min_lr_ratio`` of the rate at ``total_steps``.

    Example::

        cosine(1e-3, total_steps=100)(50)   # 0.0005
    """
    return LRSchedule(
        learning_rate, total_steps, "cosine", warmup_steps, warmup_ratio, decay_ratio, min_lr_ratio
    )


def warmup_stable_decay(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    warmup_ratio: float | None = None,
    decay_ratio: float = 0.1,
    decay_type: Literal["linear", "cosine", "sqrt"] = "linear",
    min_lr_ratio: float = 0.0,
) -> LRSchedule:
    """Warmup, a stable stretch at the full rate, and a decay over the last ``decay_ratio``
    of the run (``linear``, ``cosine`` or ``sqrt``), as the SDK's ``WSDSchedule``.

    Example::

        wsd = warmup_stable_decay(1e-3, total_steps=100, warmup_steps=10, decay_ratio=0.2)
        wsd(50), wsd(90)   # 0.001, 0.0005
    """
    if decay_type not in ("linear", "cosine", "sqrt"):
        raise InvalidInput("decay_type", f"must be linear, cosine or sqrt, got {decay_type!r}")
    return LRSchedule(
        learning_rate,
        total_steps,
        decay_type,
        warmup_steps,
        warmup_ratio,
        decay_ratio,
        min_lr_ratio,
    )


def adam_at(schedule: Schedule | None, step: int, base: types.AdamParams) -> types.AdamParams:
    """The optimizer parameters of ``step``: ``base``, or the schedule's value at ``step``
    (a float replaces ``base.learning_rate``; an ``AdamParams`` is used as is).

    Example::

        adam_at(linear(1e-3, 10), 5, types.AdamParams(learning_rate=1.0)).learning_rate  # 5e-4
    """
    if schedule is None:
        return base
    value = schedule(step)
    if isinstance(value, types.AdamParams):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise InvalidInput(
            "lr_schedule", f"must return a learning rate >= 0 or AdamParams, got {value!r}"
        )
    return base.model_copy(update={"learning_rate": float(value)})
