"""The server's live objects: client sessions, training models and sampling sessions.

A session (``create_session``) owns training models (``"{session_id}:train:{n}"``) and
sampling sessions (``"{session_id}:sample:{n}"``). Each model has its ``TinyByteLM``, its
``OrderedExecutor`` and the weights of its last ``base`` sampler snapshot (for deltas). These
are mutated only from the server's event loop, except a model's ``TinyByteLM``, which only its
executor's operations touch.

Example::

    reg = Registry()
    session = reg.new_session(job_id=None, user_metadata={})
    reg.session(session.session_id)   # ApiError(404) if unknown
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ._checkpoint_store import RunInfo
from ._http_errors import ApiError
from ._model import TinyByteLM
from ._ordering import OrderedExecutor

__all__ = ["Registry", "SamplingSession", "Session", "TrainingModel"]


@attrs.define(eq=False)
class TrainingModel:
    """One training run being trained in this server."""

    run: RunInfo
    session_id: str
    model: TinyByteLM
    executor: OrderedExecutor
    last_request_s: float = attrs.field(factory=time.time)
    last_base_path: str | None = None
    last_base_weights: dict[str, np.ndarray] | None = None
    optimizer_config: Mapping[str, Any] = attrs.field(factory=lambda: {"type": "adamw"})
    base_only: bool = False
    adapter_loaded: bool = False

    @property
    def model_id(self) -> str:
        """The model id, equal to the training run id."""
        return self.run.training_run_id


@attrs.define(eq=False)
class SamplingSession:
    """Fixed weights to sample from (a saved path, the base model, or an ephemeral save)."""

    sampler_id: str
    base_model: str
    model_path: str | None
    weights: Mapping[str, np.ndarray]
    rng: np.random.Generator


@attrs.define(eq=False)
class Session:
    """A client session (``create_session``)."""

    session_id: str
    job_id: str | None
    user_metadata: Mapping[str, Any]
    created_s: float = attrs.field(factory=time.time)
    last_heartbeat_s: float = attrs.field(factory=time.time)
    finished: bool = False
    serverless: bool = False  # created through the serverless gateway (a ``ts-`` id)


class Registry:
    """Sessions, models and sampling sessions by id."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.models: dict[str, TrainingModel] = {}
        # Written from operation threads too (ephemeral sampler saves): single dict stores.
        self.samplers: dict[str, SamplingSession] = {}
        self.reserved_samplers: set[str] = set()
        self.unloaded: set[str] = set()

    def new_session(
        self, *, job_id: str | None, user_metadata: Mapping[str, Any], serverless: bool = False
    ) -> Session:
        """Create a session with a fresh, globally unique id (``ts-<hex>`` through the
        serverless gateway, as the Fireworks control plane mints them)."""
        prefix = "ts-" if serverless else "local-"
        session = Session(
            f"{prefix}{uuid.uuid4().hex[:16]}", job_id, dict(user_metadata), serverless=serverless
        )
        self.sessions[session.session_id] = session
        return session

    def session(self, session_id: object) -> Session:
        """The session, or ``ApiError(404)``."""
        if not isinstance(session_id, str) or session_id not in self.sessions:
            raise ApiError(404, f"unknown session_id {session_id!r}")
        return self.sessions[session_id]

    def model(self, model_id: object) -> TrainingModel:
        """The training model, or ``ApiError(404)``."""
        if isinstance(model_id, str) and model_id in self.unloaded:
            raise ApiError(404, f"model {model_id!r} was unloaded (unload_model)")
        if not isinstance(model_id, str) or model_id not in self.models:
            raise ApiError(404, f"unknown model_id {model_id!r} (create it with create_model)")
        return self.models[model_id]

    def sampler(self, sampler_id: object) -> SamplingSession:
        """The sampling session, or ``ApiError(404)``."""
        if not isinstance(sampler_id, str) or sampler_id not in self.samplers:
            raise ApiError(404, f"unknown sampling_session_id {sampler_id!r}")
        return self.samplers[sampler_id]
