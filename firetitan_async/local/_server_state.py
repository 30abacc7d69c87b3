"""``ServerState``: everything one local trainer server holds, shared by its routes.

Example::

    state = ServerState(ServerConfig(seed=0), checkpoint_root=Path("/tmp/ckpt"))
    state.stats.snapshot()
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from ._catalog import DEFAULT_MODELS, ModelCatalog, ServedModel
from ._checkpoint_store import CheckpointStore
from ._control_plane import JobRegistry
from ._faults import FaultInjector
from ._future_store import FutureStore
from ._idempotency import IdempotencyCache
from ._model import VOCAB_SIZE, TinyByteLM
from ._serverless_state import ServerlessState
from ._sessions import Registry
from ._signed_urls import UrlSigner
from ._stats import ServerStats

if TYPE_CHECKING:
    from ._deployments import DeploymentRegistry

__all__ = ["ServerConfig", "ServerState", "TaskSpawner"]


@attrs.frozen
class ServerConfig:
    """The knobs of ``LocalTrainer`` (the API key is never shown in a repr)."""

    latency_s: float = 0.0
    warmup_s: float = 0.0
    fault_rate: float = 0.0
    seed: int = 0
    api_key: str | None = attrs.field(default=None, repr=False)
    long_poll_s: float = 30.0
    account_id: str = "local"
    forward_backward_logprobs: bool = True
    checkpoint_step_names: bool = False
    checkpoint_list_details: bool = True
    models: tuple[ServedModel, ...] = DEFAULT_MODELS


class TaskSpawner:
    """Background tasks of the server loop (operation drains, samplers), cancelled on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task on the running loop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Cancel every task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ServerState:
    """Config, served models, stats, futures, sessions/models, checkpoints, jobs, faults,
    idempotency."""

    def __init__(self, config: ServerConfig, *, checkpoint_root: Path) -> None:
        self.config = config
        self.root_url = ""  # set once the socket is bound
        self.stats = ServerStats()
        self.futures = FutureStore()
        self.registry = Registry()
        self.checkpoints = CheckpointStore(checkpoint_root)
        self.models = ModelCatalog(config.models)
        self.jobs = JobRegistry(
            account_id=config.account_id, warmup_s=config.warmup_s, models=self.models
        )
        self.faults = FaultInjector(config.fault_rate, seed=config.seed)
        self.idempotency = IdempotencyCache()
        self.tasks = TaskSpawner()
        self.url_signer = UrlSigner()  # external-weights download URLs
        self.sampling_rng = np.random.default_rng([config.seed, 1])
        self._base_weights: dict[int, dict[str, np.ndarray]] = {}
        self.deployments: DeploymentRegistry | None = None  # made by the deployments routes
        self.serverless = ServerlessState()

    def live(self) -> dict[str, int]:
        """What still runs, as a platform would bill it: trainer jobs CREATING, PENDING or
        RUNNING; client sessions not finished whose job (if opened through one) is live (the
        Fireworks wire never finishes a session: deleting its job ends it); deployments not
        deleted."""
        jobs = self.jobs
        sessions = list(self.registry.sessions.values())  # one C-level copy: any thread
        return {
            "jobs": jobs.live_count(),
            "sessions": sum(
                not s.finished and (s.job_id is None or jobs.is_live(s.job_id)) for s in sessions
            ),
            "deployments": len(self.deployments.deployments) if self.deployments else 0,
        }

    def base_weights(self, vocab_size: int = VOCAB_SIZE) -> dict[str, np.ndarray]:
        """Sampler weights of the untrained base model of a vocabulary size (the same for
        every model of this seed and size)."""
        weights = self._base_weights.get(vocab_size)
        if weights is None:
            model = TinyByteLM(seed=self.config.seed, vocab_size=vocab_size)
            weights = self._base_weights[vocab_size] = model.sampler_weights()
        return weights
