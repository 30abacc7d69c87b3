"""The Fireworks control plane: accounts, trainer jobs, readiness, checkpoints, training shapes.

``_rest.RestCore`` is the shared HTTP core (SDK headers, account resolution, timeouts, the one
retry loop, ``google.rpc`` errors); ``TrainerJobs`` and its value types are built on it. The
public names are re-exported from ``firetitan_async``.

May import: :mod:`firetitan_async._http`, :mod:`firetitan_async.wire` (paths), ``errors``;
of the session and clients only ``_session._pending``, ``_session._boundary``,
``_clients._snapshots`` and, for the managed setup, ``_clients._deployment_sampler`` and
``_session._ordered_ops`` (``_clients._training`` for types only).

Example::

    from firetitan_async import TrainerJobConfig, TrainerJobs

    async with TrainerJobs() as jobs:
        endpoint = await jobs.create_and_wait(TrainerJobConfig(base_model=model))
"""

from __future__ import annotations

from ._checkpoints import JobCheckpoint, PromotedModel
from ._config import TrainerJobConfig
from ._deployments import (
    DeploymentConfig,
    DeploymentFailed,
    DeploymentInfo,
    Deployments,
    HotloadStatus,
)
from ._jobs import TrainerJobs
from ._lifecycle import CleanupFailed, Provisioning
from ._managed import Cleanup, ManagedConfig, ManagedSetup
from ._orphans import LiveResource, live_resources
from ._publisher import PublishedVersion, WeightPublisher
from ._readiness import ReadinessOptions, ReadinessPoller, ReadinessProgress
from ._records import CreatedTrainerJob, JobState, TrainerEndpoint, TrainerJob
from ._rest import DEFAULT_BASE_URL, RestCore
from ._rpc_status import PlatformAPIError
from ._shapes import TrainingShapeProfile
from ._training_sessions import SessionCheckpoint

__all__ = [
    "DEFAULT_BASE_URL",
    "Cleanup",
    "CleanupFailed",
    "CreatedTrainerJob",
    "DeploymentConfig",
    "DeploymentFailed",
    "DeploymentInfo",
    "Deployments",
    "HotloadStatus",
    "JobCheckpoint",
    "JobState",
    "LiveResource",
    "ManagedConfig",
    "ManagedSetup",
    "PlatformAPIError",
    "PromotedModel",
    "Provisioning",
    "PublishedVersion",
    "ReadinessOptions",
    "ReadinessPoller",
    "ReadinessProgress",
    "RestCore",
    "SessionCheckpoint",
    "TrainerEndpoint",
    "TrainerJob",
    "TrainerJobConfig",
    "TrainerJobs",
    "TrainingShapeProfile",
    "WeightPublisher",
    "live_resources",
]
