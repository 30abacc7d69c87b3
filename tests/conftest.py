"""Shared test configuration and fixture factories.

Every async test runs under both asyncio and trio: mark it with ``pytest.mark.anyio`` (or set
``pytestmark = pytest.mark.anyio`` in the module) and the ``anyio_backend`` fixture below
parametrises it over both backends.

Local trainers: ``local_trainer`` is a fresh one per test (seed 0); ``trainer`` is one per test
module, built with the module's ``TRAINER_OPTIONS`` (``LocalTrainer`` keywords), e.g.
``TRAINER_OPTIONS = {"seed": 7}``. ``free_port()`` is a free loopback port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from firetitan_async.local import LocalTrainer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def local_trainer() -> Iterator[LocalTrainer]:
    """A fresh local trainer (seed 0) on loopback for one test; see ``firetitan_async.local``."""
    with LocalTrainer(seed=0) as trainer:
        yield trainer


@pytest.fixture(scope="module")
def trainer(request: pytest.FixtureRequest) -> Iterator[LocalTrainer]:
    """One local trainer for the test module, built with its ``TRAINER_OPTIONS``."""
    options: dict[str, Any] = getattr(request.module, "TRAINER_OPTIONS", {})
    with LocalTrainer(**options) as lt:
        yield lt


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
