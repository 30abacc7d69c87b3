"""Every error a user sees is a ``FiretitanError`` (and the builtin type they would expect)."""

from __future__ import annotations

import pytest

import firetitan_async
from firetitan_async import (
    FiretitanError,
    InvalidInput,
    Pending,
    RetryPolicy,
    ServiceSession,
    UnsupportedAwaitable,
    UsageError,
    aresult,
)
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio


def test_every_exported_error_derives_from_firetitan_error() -> None:
    errors = [
        getattr(firetitan_async, name)
        for name in firetitan_async.__all__
        if isinstance(getattr(firetitan_async, name), type)
        and issubclass(getattr(firetitan_async, name), BaseException)
    ]
    assert {"ProtocolError", "UsageError", "UnsupportedAwaitable"} <= {e.__name__ for e in errors}
    assert all(issubclass(e, FiretitanError) for e in errors), errors


def test_plain_misuse_raises_firetitan_errors_of_the_expected_builtin_type() -> None:
    pending: Pending[int] = Pending("op")
    with pytest.raises(UsageError) as not_done:
        pending.result()
    assert isinstance(not_done.value, RuntimeError)
    with pytest.raises(InvalidInput, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidInput, match="base_url") as insecure:
        ServiceSession("http://example.com")
    assert isinstance(insecure.value, ValueError)


async def test_async_misuse_raises_firetitan_errors(local_trainer: LocalTrainer) -> None:
    with pytest.raises(UnsupportedAwaitable) as unsupported:
        await aresult(42)  # type: ignore[arg-type]
    assert isinstance(unsupported.value, TypeError)
    session = ServiceSession(local_trainer.base_url)
    async with session:
        with pytest.raises(UsageError, match="only once"):
            await session.__aenter__()
        await session.create_training_client("local/tiny-byte-lm", lora_rank=2)
        with pytest.raises(InvalidInput, match="already has a training client"):
            await session.create_training_client("local/tiny-byte-lm", lora_rank=2)
