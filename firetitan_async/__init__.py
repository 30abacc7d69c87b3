"""firetitan_async: an asyncio- and trio-native client for Tinker-protocol trainers."""

from __future__ import annotations

from .errors import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ReadinessTimeout,
    RequestFailedError,
    SessionClosed,
    TrainerJobFailed,
)

__all__ = [
    "APIStatusError",
    "FiretitanError",
    "InvalidInput",
    "ReadinessTimeout",
    "RequestFailedError",
    "SessionClosed",
    "TrainerJobFailed",
]
