"""``Deadlines``: how long each phase of an operation may take, and which budget applies.

An operation goes through four phases, each with its own budget:

* ``submit`` — from the call until the server accepts the request (retries included);
* ``queue`` — while the server says the operation waits for capacity
  (``try_again`` with ``queue_state`` ``paused_capacity`` or ``paused_rate_limit``);
* ``compute`` — while the server holds the operation and has not said it is paused;
* ``transfer`` — while a reply's body is being read (a body that stalls half-way counts here).

A budget is the total time the operation may spend in that phase; ``None`` means no limit.
Blowing one fails the operation's ``Pending`` with :class:`~firetitan_async.OperationTimeout`.

Example::

    ServiceSession(url, deadlines=Deadlines(compute_s=600, stall_warning_s=60))
    ServiceSession(url, deadlines={"default": Deadlines(), "save_state": Deadlines(compute_s=7200)})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ..errors import InvalidInput

__all__ = ["DEFAULT_DEADLINES", "PHASES", "DeadlinePolicy", "Deadlines", "Phase", "call_deadlines"]

Phase = Literal["submit", "queue", "compute", "transfer"]
PHASES: tuple[Phase, ...] = ("submit", "queue", "compute", "transfer")


def _budget(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(attribute.name, f"must be seconds > 0 or None, got {value!r}")


@attrs.frozen
class Deadlines:
    """Per-phase time budgets of an operation, in seconds (``None``: no limit).

    The defaults fit a large model on a shared cluster, where a legitimate step is slow:

    * ``submit_s=600`` — a multi-megabyte batch with retries through a busy gateway; the retry
      policy's own 300 s deadline usually ends a dead submission first, with its own error;
    * ``queue_s=3600`` — capacity pauses on a shared trainer last minutes, sometimes most of an
      hour (the tinker SDK only starts logging them after 15 minutes);
    * ``compute_s=3600`` — one step of a 100B+ model on a long batch can take many minutes;
      Fireworks raised its own default from 600 s to 3600 s for this reason;
    * ``transfer_s=300`` — even a large result body arrives in seconds: one that takes minutes
      is stalled (the Fireworks SDK bounds each body read at 45 s and re-polls);
    * ``stall_warning_s=300`` — five minutes without progress is worth a warning long before
      any deadline (a stall report is only logged and emitted, it never fails anything).

    Saving and loading state get ``compute_s=7200`` by default (see :data:`DEFAULT_DEADLINES`).

    A blown deadline never cancels the operation on the server, unless ``cancel_on_timeout``
    is set *and* the operation is a ``sample`` in the tinker dialect: then the client also
    sends ``cancel_future`` for it (best effort; a server without sampling cancel ignores it).
    Training operations cannot be cancelled on either wire: the server runs a model's
    operations in sequence-id order and cannot skip one.

    Example::

        Deadlines(compute_s=120, stall_warning_s=30)       # a small model: fail fast
        Deadlines(queue_s=None)                            # wait for capacity forever
    """

    submit_s: float | None = attrs.field(default=600.0, validator=_budget)
    queue_s: float | None = attrs.field(default=3600.0, validator=_budget)
    compute_s: float | None = attrs.field(default=3600.0, validator=_budget)
    transfer_s: float | None = attrs.field(default=300.0, validator=_budget)
    stall_warning_s: float | None = attrs.field(default=300.0, validator=_budget)
    cancel_on_timeout: bool = False

    def budget(self, phase: Phase) -> float | None:
        """The budget of ``phase`` in seconds (``None``: no limit).

        Example::

            Deadlines().budget("compute")   # 3600.0
        """
        value: float | None = getattr(self, f"{phase}_s")
        return value


# Operation names as the user writes them (method names) -> the names operations carry.
_ALIASES: Mapping[str, str] = {
    "save_state": "save_weights",
    "load_state": "load_weights",
    "load_state_with_optimizer": "load_weights",
    "save_weights_and_get_sampling_client": "save_weights_for_sampler",
}
_KNOWN = frozenset(
    {
        "default",
        "forward",
        "forward_backward",
        "forward_backward_custom",
        "optim_step",
        "save_weights",
        "load_weights",
        "save_weights_for_sampler",
        "save_weights_for_sampler_ext",
        "sample",
        "compute_logprobs",
        "unload_model",
        "load_adapter",
        "weight_sync",
        *_ALIASES,
    }
)
_SLOW = Deadlines(compute_s=7200.0)

#: The built-in budgets: :class:`Deadlines` () for every operation, and ``compute_s=7200`` for
#: saving and loading state (a full checkpoint of a large model with its optimizer state).
DEFAULT_DEADLINES: Mapping[str, Deadlines] = {
    "default": Deadlines(),
    "save_weights": _SLOW,
    "load_weights": _SLOW,
    "save_weights_for_sampler": _SLOW,
    "save_weights_for_sampler_ext": _SLOW,
}


class DeadlinePolicy:
    """Which :class:`Deadlines` an operation gets: the per-call value, else the session's
    value for its kind, else the session's ``"default"``, else :data:`DEFAULT_DEADLINES`.

    ``deadlines`` is one :class:`Deadlines` for every operation, or a mapping from operation
    names (method names such as ``"save_state"``, or ``"default"``) to :class:`Deadlines`.
    """

    def __init__(self, deadlines: Deadlines | Mapping[str, Deadlines] | None = None) -> None:
        table = dict(DEFAULT_DEADLINES)
        if isinstance(deadlines, Deadlines):
            table = {"default": deadlines}
        elif deadlines is not None:
            if not isinstance(deadlines, Mapping):
                raise InvalidInput(
                    "deadlines", f"must be a Deadlines or a mapping of them, got {deadlines!r}"
                )
            for name, value in deadlines.items():
                if name not in _KNOWN:
                    raise InvalidInput(
                        "deadlines", f"unknown operation {name!r} (known: {sorted(_KNOWN)})"
                    )
                if not isinstance(value, Deadlines):
                    raise InvalidInput(
                        f"deadlines[{name!r}]", f"must be a Deadlines, got {value!r}"
                    )
                table[_ALIASES.get(name, name)] = value
        self._table = table

    def for_operation(self, name: str, override: Deadlines | None = None) -> Deadlines:
        """The budgets of one operation named ``name``."""
        if override is not None:
            return override
        return self._table.get(name) or self._table.get("default") or Deadlines()


def call_deadlines(value: object) -> Deadlines | None:
    """A per-call ``deadlines=`` argument, checked before anything is sent.

    Example::

        call_deadlines(Deadlines(compute_s=30))   # returned as is; None too
    """
    if value is None or isinstance(value, Deadlines):
        return value
    raise InvalidInput("deadlines", f"must be a Deadlines or None, got {value!r}")
