"""Shared test configuration.

Every async test runs under both asyncio and trio: mark it with ``pytest.mark.anyio`` (or set
``pytestmark = pytest.mark.anyio`` in the module) and the ``anyio_backend`` fixture below
parametrises it over both backends.
"""

from __future__ import annotations

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
