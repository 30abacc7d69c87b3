"""Shared test configuration.

Every async test runs under both asyncio and trio: mark it with ``pytest.mark.anyio`` (or set
``pytestmark = pytest.mark.anyio`` in the module) and the ``anyio_backend`` fixture below
parametrises it over both backends.
"""

from __future__ import annotations

from collections.abc import Iterator

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
