"""Shared test configuration and fixture factories.

Every async test runs under both asyncio and trio: mark it with ``pytest.mark.anyio`` (or set
``pytestmark = pytest.mark.anyio`` in the module) and the ``anyio_backend`` fixture below
parametrises it over both backends.

Local trainers: ``local_trainer`` is a fresh one per test (seed 0, plus the module's
``LOCAL_TRAINER_OPTIONS``), for tests that count what the server holds; ``trainer`` is one per
test module, built with the module's ``TRAINER_OPTIONS`` (``LocalTrainer`` keywords), e.g.
``TRAINER_OPTIONS = {"seed": 7}``; ``make_trainer(**options)`` starts more in one test (each
stopped when the test ends). ``free_port()`` is a free loopback port.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from firetitan_async.local import LocalTrainer


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def local_trainer(request: pytest.FixtureRequest) -> Iterator[LocalTrainer]:
    """A fresh local trainer on loopback for one test: seed 0 and the module's
    ``LOCAL_TRAINER_OPTIONS`` (e.g. ``{"warmup_s": 0.05}``); see ``firetitan_async.local``."""
    options: dict[str, Any] = {"seed": 0, **getattr(request.module, "LOCAL_TRAINER_OPTIONS", {})}
    with LocalTrainer(**options) as trainer:
        yield trainer


@pytest.fixture
def make_trainer() -> Iterator[Callable[..., LocalTrainer]]:
    """A factory of started local trainers (``LocalTrainer`` keywords), all stopped at the end
    of the test.

    Example::

        def test_x(make_trainer):
            guarded = make_trainer(api_key="the-right-key")
    """
    with contextlib.ExitStack() as stack:

        def make(**options: Any) -> LocalTrainer:
            return stack.enter_context(LocalTrainer(**options))

        yield make


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
