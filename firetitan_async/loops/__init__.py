"""Training-loop primitives: an RL pipeline, pipelined SFT, checkpoints and resume.

* :func:`run_rl`: rollout producers → a bounded stream → the trainer, in one task group, with
  staleness bounded by pacing; weights published through a :class:`Publisher`:
  :class:`TrainerPolicy` (rollouts sampled by the trainer) or :class:`DeploymentPolicy`
  (hot-loaded into an inference deployment, rollouts from its completions API).
* :func:`sft_steps`: ``async for step in sft_steps(client, batches, depth=k, ...)``.
* :class:`CheckpointManager`: periodic, rolling and final saves recorded beside the run;
  ``resume()`` (``sft_steps`` and ``run_rl`` both resume from it).
* Learning-rate schedules (:func:`linear`, :func:`cosine`, :func:`warmup_stable_decay`,
  :func:`constant`) for ``lr_schedule=``; :class:`RetryGroup` for ``on_rollout_error=``;
  :class:`KLPenalty` for ``kl=``.
* :class:`RayRollouts` (extra ``ray``): rollouts in Ray actor workers, fed by
  :class:`TrainerSamplerHandle` values.

Works under asyncio and trio (Ray: the driver may run either).

May import: everything below it (the clients, the session, ``platform``, ``wire``); nothing
but the CLI imports it.

Example::

    from firetitan_async.loops import TrainerPolicy, run_rl

    result = await run_rl(client, TrainerPolicy(session, client), prompts, rollout, to_datums,
                          adam=types.AdamParams(learning_rate=1e-2), groups_per_step=8)
"""

from __future__ import annotations

import warnings

from ..errors import RolloutsFailing
from ._checkpoints import CheckpointManager, CheckpointStore, SaveRecord, TrainerCheckpoints
from ._deployment import DeploymentPolicy, DeploymentPolicySampler
from ._failures import RetryGroup
from ._kl import KLPenalty
from ._policy import Publisher, SamplerHandle, TrainerPolicy, TrainerSamplerHandle
from ._ray import RayRollouts
from ._rl import RLResult, RLStep, Rollout, run_rl
from ._schedules import LRSchedule, constant, cosine, linear, warmup_stable_decay
from ._sft import SFTStep, sft_steps

# Old name -> new name: kept one release, they warn (DeprecationWarning) when looked up.
_DEPRECATED = {"TrainerSampler": "TrainerPolicy"}

__all__ = [
    "CheckpointManager",
    "CheckpointStore",
    "DeploymentPolicy",
    "DeploymentPolicySampler",
    "KLPenalty",
    "LRSchedule",
    "Publisher",
    "RLResult",
    "RLStep",
    "RayRollouts",
    "RetryGroup",
    "Rollout",
    "RolloutsFailing",
    "SFTStep",
    "SamplerHandle",
    "SaveRecord",
    "TrainerCheckpoints",
    "TrainerPolicy",
    "TrainerSamplerHandle",
    "constant",
    "cosine",
    "linear",
    "run_rl",
    "sft_steps",
    "warmup_stable_decay",
]


def __getattr__(name: str) -> object:
    """``TrainerSampler``: the old name of :class:`TrainerPolicy` (it publishes policy
    versions, like :class:`DeploymentPolicy`); it warns and goes away in the next release.

    Example::

        from firetitan_async.loops import TrainerPolicy   # not TrainerSampler
    """
    new = _DEPRECATED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"firetitan_async.loops.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2
    )
    return globals()[new]
