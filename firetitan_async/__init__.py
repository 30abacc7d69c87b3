"""firetitan_async: an asyncio- and trio-native client for Tinker-protocol trainers.

Fine-tuning services (Thinking Machines' Tinker API and Fireworks' service-mode RLOR
trainers) return a future for every training step; this package awaits them natively under
asyncio and trio, with no hidden thread and no blocked event loop.

Example::

    import anyio
    from tinker import types
    from firetitan_async import ServiceSession

    async def main() -> None:
        async with ServiceSession("http://127.0.0.1:8080") as session:
            client = await session.create_training_client("local/tiny-byte-lm", lora_rank=8)
            fb = client.forward_backward(batch, "cross_entropy")
            step = client.optim_step(types.AdamParams(learning_rate=1e-3))
            print((await fb).metrics["loss:sum"])
            await step

    anyio.run(main)              # or anyio.run(main, backend="trio")
"""

from __future__ import annotations

from ._adapters import aresult, as_awaitable
from ._clients._concurrency import (
    AdaptiveConcurrency,
    ConcurrencyController,
    FixedConcurrency,
    Observation,
)
from ._clients._custom_loss import CustomLoss, TorchLoss
from ._clients._deployment_sampler import DeploymentSampler, SampledCompletion
from ._clients._sampling import SamplingClient
from ._clients._snapshots import CheckpointEntry, SamplerSnapshot
from ._clients._training import TrainingClient
from ._http._retry import RetryPolicy
from ._session._deadlines import Deadlines
from ._session._events import EventStream, OperationEvent
from ._session._otel import OtelExporter
from ._session._pending import Pending
from ._session._session import ServiceSession
from ._session._throughput import Throughput, ThroughputSnapshot
from ._signals import Interrupted, cleanup_on_signals
from ._version import __version__
from .errors import (
    APIStatusError,
    FiretitanError,
    HotloadFailed,
    InvalidInput,
    NotAwaited,
    OperationTimeout,
    ProtocolError,
    ReadinessTimeout,
    ReplyTooLarge,
    RequestFailedError,
    RolloutsFailing,
    SamplingError,
    SessionClosed,
    SubmissionLost,
    TrainerJobFailed,
    UnsupportedAwaitable,
    UsageError,
)
from .platform import (
    Cleanup,
    CleanupFailed,
    CreatedTrainerJob,
    DeploymentConfig,
    DeploymentFailed,
    DeploymentInfo,
    Deployments,
    HotloadStatus,
    JobCheckpoint,
    JobState,
    LiveResource,
    ManagedConfig,
    ManagedSetup,
    PlatformAPIError,
    PromotedModel,
    Provisioning,
    PublishedVersion,
    ReadinessPoller,
    ReadinessProgress,
    SessionCheckpoint,
    TrainerEndpoint,
    TrainerJob,
    TrainerJobConfig,
    TrainerJobs,
    TrainingShapeProfile,
    WeightPublisher,
    live_resources,
)
from .wire.completions import StreamDelta

__all__ = [
    "APIStatusError",
    "AdaptiveConcurrency",
    "CheckpointEntry",
    "Cleanup",
    "CleanupFailed",
    "ConcurrencyController",
    "CreatedTrainerJob",
    "CustomLoss",
    "Deadlines",
    "DeploymentConfig",
    "DeploymentFailed",
    "DeploymentInfo",
    "DeploymentSampler",
    "Deployments",
    "EventStream",
    "FiretitanError",
    "FixedConcurrency",
    "HotloadFailed",
    "HotloadStatus",
    "Interrupted",
    "InvalidInput",
    "JobCheckpoint",
    "JobState",
    "LiveResource",
    "ManagedConfig",
    "ManagedSetup",
    "NotAwaited",
    "Observation",
    "OperationEvent",
    "OperationTimeout",
    "OtelExporter",
    "Pending",
    "PlatformAPIError",
    "PromotedModel",
    "ProtocolError",
    "Provisioning",
    "PublishedVersion",
    "ReadinessPoller",
    "ReadinessProgress",
    "ReadinessTimeout",
    "ReplyTooLarge",
    "RequestFailedError",
    "RetryPolicy",
    "RolloutsFailing",
    "SampledCompletion",
    "SamplerSnapshot",
    "SamplingClient",
    "SamplingError",
    "ServiceSession",
    "SessionCheckpoint",
    "SessionClosed",
    "StreamDelta",
    "SubmissionLost",
    "Throughput",
    "ThroughputSnapshot",
    "TorchLoss",
    "TrainerEndpoint",
    "TrainerJob",
    "TrainerJobConfig",
    "TrainerJobFailed",
    "TrainerJobs",
    "TrainingClient",
    "TrainingShapeProfile",
    "UnsupportedAwaitable",
    "UsageError",
    "WeightPublisher",
    "__version__",
    "aresult",
    "as_awaitable",
    "cleanup_on_signals",
    "live_resources",
]
