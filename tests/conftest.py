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
import os
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from firetitan_async.local import LocalTrainer

# The suite's subprocesses (the CLI, the examples, the demo, benchmark workers and servers) run
# without torch: tinker imports torch whenever it is installed (its types try it), about 1.7 s
# of CPU a process, and none of them uses it. That was ~150 s of a 600 s suite. The torch tests
# (custom losses, the fidelity steps) run in this process, where torch imports as usual; a
# subprocess that needs torch (the tinker-cookbook venv) drops PYTHONPATH. The stand-in is a
# sitecustomize that marks torch as absent in sys.modules (tests/_no_torch).
_NO_TORCH = str(Path(__file__).resolve().parent / "_no_torch")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (_NO_TORCH, os.environ.get("PYTHONPATH")) if p
)


# A suite started in the background of a non-interactive shell (`pytest ... &`) inherits SIGINT
# ignored, and so does every `serve`/demo subprocess it starts: the tests that stop those with
# Ctrl-C then wait for a process that never stops. Python's own handler puts that right.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
