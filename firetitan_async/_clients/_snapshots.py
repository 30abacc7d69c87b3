"""Sampler snapshots and checkpoint listings: ``SamplerSnapshot``, ``CheckpointEntry`` and
session-scoped snapshot names."""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "CheckpointEntry",
    "CheckpointType",
    "SamplerSnapshot",
    "session_suffix",
    "snapshot_name",
]

CheckpointType = Literal["base", "delta", "merged_base"]


@attrs.frozen
class SamplerSnapshot:
    """A saved sampler snapshot (the result of ``save_weights_for_sampler_ext``).

    ``snapshot_name`` is the name you gave, qualified with a session-scoped suffix (e.g.
    ``step-0001-a1b2c3d4``), so two runs never overwrite each other's snapshots: in the
    fireworks dialect a random 8-hex drawn per training client (as the Fireworks SDK), in the
    tinker dialect one derived from the session id. ``path`` is what the trainer returned (the
    path to sample from or promote); ``checkpoint_type`` is ``"base"`` (full weights),
    ``"delta"`` (a diff against the previous base; much smaller) or ``"merged_base"`` (LoRA
    merged into the base, fireworks dialect).

    Example::

        snap = await client.save_weights_for_sampler_ext("step-0001")
        sampler = await session.create_sampling_client(model_path=snap.path)
    """

    snapshot_name: str
    path: str
    checkpoint_type: CheckpointType


@attrs.frozen
class CheckpointEntry:
    """One row of ``TrainingClient.list_checkpoints()``, the same type in both dialects.

    ``name`` is always set. The other fields are ``None`` when the trainer did not send them (a
    Fireworks trainer lists names only): nothing is invented. ``raw`` is the row as received.

    Example::

        for ckpt in await client.list_checkpoints():
            print(ckpt.name, ckpt.path or "(no path listed)")
    """

    name: str
    path: str | None = None
    checkpoint_type: str | None = None
    time: _dt.datetime | None = None
    expires_at: _dt.datetime | None = None
    size_bytes: int | None = None
    raw: Mapping[str, Any] | str = attrs.field(factory=dict, eq=False, repr=False)

    @property
    def checkpoint_id(self) -> str:
        """The tinker-style id (``weights/<name>`` or ``sampler_weights/<name>``) when known,
        else the name."""
        if isinstance(self.raw, Mapping) and isinstance(self.raw.get("checkpoint_id"), str):
            return str(self.raw["checkpoint_id"])
        return self.name

    @property
    def tinker_path(self) -> str | None:
        """Alias of :attr:`path` (the tinker SDK's field name)."""
        return self.path


def session_suffix(session_id: str) -> str:
    """Eight hex digits derived from the session id."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:8]


def snapshot_name(name: str, session_id: str) -> str:
    """``name`` qualified with the session's suffix."""
    return f"{name}-{session_suffix(session_id)}"
