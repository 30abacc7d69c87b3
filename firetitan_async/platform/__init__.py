"""The Fireworks control plane: accounts, trainer jobs, checkpoints, training shapes.

``_rest.RestCore`` is the shared HTTP core (headers, account resolution, timeouts, the one
retry loop, ``google.rpc`` errors); the public classes are re-exported from
``firetitan_async``.
"""

from __future__ import annotations

from ._deployments import (
    DeploymentConfig,
    DeploymentFailed,
    DeploymentInfo,
    Deployments,
    HotloadStatus,
)
from ._publisher import PublishedVersion, WeightPublisher
from ._rest import DEFAULT_BASE_URL, RestCore
from ._rpc_status import PlatformAPIError

__all__ = [
    "DEFAULT_BASE_URL",
    "DeploymentConfig",
    "DeploymentFailed",
    "DeploymentInfo",
    "Deployments",
    "HotloadStatus",
    "PlatformAPIError",
    "PublishedVersion",
    "RestCore",
    "WeightPublisher",
]
