"""Fireworks sampler snapshots: ``SamplerSnapshot`` and session-scoped snapshot names."""

from __future__ import annotations

import hashlib
from typing import Literal

import attrs

__all__ = ["CheckpointType", "SamplerSnapshot", "session_suffix", "snapshot_name"]

CheckpointType = Literal["base", "delta"]


@attrs.frozen
class SamplerSnapshot:
    """A saved sampler snapshot (the result of ``save_weights_for_sampler_ext``).

    ``snapshot_name`` is the name you gave, qualified with a suffix derived from the session
    (e.g. ``step-0001-a1b2c3d4``): stable within a session, different across sessions, so two
    runs never overwrite each other's snapshots. ``path`` is the ``tinker://`` path to sample
    from or promote; ``checkpoint_type`` is ``"base"`` (full weights, promotable) or
    ``"delta"`` (XOR against the previous base; about 10x smaller, not promotable).

    Example::

        snap = await client.save_weights_for_sampler_ext("step-0001")
        sampler = await session.create_sampling_client(model_path=snap.path)
    """

    snapshot_name: str
    path: str
    checkpoint_type: CheckpointType


def session_suffix(session_id: str) -> str:
    """Eight hex digits derived from the session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:8]


def snapshot_name(name: str, session_id: str) -> str:
    """``name`` qualified with the session's suffix."""
    return f"{name}-{session_suffix(session_id)}"
