"""Training-loop primitives: an RL pipeline, pipelined SFT, checkpoints and resume.

* :func:`run_rl`: rollout producers → a bounded stream → the trainer, in one task group, with
  staleness bounded by pacing; weights published through a :class:`Publisher`
  (:class:`TrainerSampler` here; a deployment publisher plugs in the same way).
* :func:`sft_steps`: ``async for step in sft_steps(client, batches, depth=k, ...)``.
* :class:`CheckpointManager`: periodic, rolling and final saves recorded beside the run;
  ``resume()``.
* :class:`RayRollouts` (extra ``ray``): rollouts in Ray actor workers, fed by
  :class:`TrainerSamplerHandle` values.

Works under asyncio and trio (Ray: the driver may run either).

Example::

    from firetitan_async.loops import TrainerSampler, run_rl

    result = await run_rl(client, TrainerSampler(session, client), prompts, rollout, to_datums,
                          adam=types.AdamParams(learning_rate=1e-2), groups_per_step=8)
"""

from __future__ import annotations

from ._checkpoints import CheckpointManager, CheckpointStore, SaveRecord, TrainerCheckpoints
from ._policy import Publisher, SamplerHandle, TrainerSampler, TrainerSamplerHandle
from ._ray import RayRollouts
from ._rl import RLResult, RLStep, Rollout, run_rl
from ._sft import SFTStep, sft_steps

__all__ = [
    "CheckpointManager",
    "CheckpointStore",
    "Publisher",
    "RLResult",
    "RLStep",
    "RayRollouts",
    "Rollout",
    "SFTStep",
    "SamplerHandle",
    "SaveRecord",
    "TrainerCheckpoints",
    "TrainerSampler",
    "TrainerSamplerHandle",
    "run_rl",
    "sft_steps",
]
