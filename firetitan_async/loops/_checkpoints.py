"""Checkpoints of a run: periodic, rolling and final saves, a record beside the run, resume.

:class:`CheckpointManager` decides when a save is due (every N steps, N tokens or N seconds),
submits it without waiting (a save is an ordinary ordered operation, so it holds exactly the
weights of the steps submitted before it), and awaits it before the next save or at exit. Each
finished save is recorded in ``<run_dir>/checkpoints.json`` with its step, the data cursor,
whether the optimizer state is included, and the run's config. :meth:`CheckpointManager.resume`
restores weights, optimizer state and the cursor together, and refuses a record made with a
different config.

Where checkpoints live is behind :class:`CheckpointStore`: :class:`TrainerCheckpoints` saves
training state on the trainer (``save_state`` / ``load_state_with_optimizer``, deletion over
the data plane). Listing and promoting checkpoints through the Fireworks control plane is a
second store with the same three methods.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import attrs
from tinker import types

from .._clients._training import TrainingClient
from .._session._pending import Pending
from .._session._session import ServiceSession, client_side
from ..errors import InvalidInput

__all__ = ["CheckpointManager", "CheckpointStore", "SaveRecord", "TrainerCheckpoints"]

RECORD_FILE = "checkpoints.json"


class CheckpointStore(Protocol):
    """Where the manager's checkpoints live.

    ``save`` submits a save of the full training state (weights and optimizer) *at once*
    and returns an awaitable of its path; ``restore`` loads one into the trainer;
    ``delete`` removes one that rolled out of the window.
    """

    def save(self, name: str) -> Awaitable[str]: ...

    async def restore(self, path: str) -> None: ...

    async def delete(self, path: str) -> None: ...


class TrainerCheckpoints:
    """Training-state checkpoints on the trainer itself.

    Tinker dialect: the recorded path is the ``tinker://`` path ``save_state`` returned; it is
    loaded as is and deleted over the checkpoint REST route when it rolls out of the window.
    Fireworks dialect: the returned path is authoritative (a dedicated trainer may store the
    state under its own ``step-N`` name), and what is loaded is the logical name it ends with;
    a Fireworks trainer has no checkpoint deletion (retention is managed by the platform), so a
    checkpoint that rolls out of the window is only dropped from the record.

    Example::

        store = TrainerCheckpoints(session, client)
    """

    def __init__(self, session: ServiceSession, client: TrainingClient) -> None:
        self._session = session
        self._client = client

    def save(self, name: str) -> Awaitable[str]:
        return _SavedPath(self._client.save_state(name))  # submitted now, in call order

    async def restore(self, path: str) -> None:
        await self._client.load_state_with_optimizer(
            client_side(self._session).codec.checkpoint_load_reference(path)
        )

    async def delete(self, path: str) -> None:
        session = client_side(self._session)
        delete_path = session.codec.checkpoint_delete_path(path)
        if delete_path is not None:
            await session.transport.call("DELETE", delete_path)


class _SavedPath:
    """The path of a ``save_state`` result (awaitable any number of times, or never)."""

    def __init__(self, pending: Pending[types.SaveWeightsResponse]) -> None:
        self._pending = pending

    def __await__(self) -> Generator[Any, None, str]:
        saved = yield from self._pending.__await__()
        return saved.path


@attrs.frozen
class SaveRecord:
    """One finished save, as kept in ``checkpoints.json``.

    Example::

        record = await manager.resume()
        batches = batches[record.cursor:] if record else batches
    """

    name: str
    path: str
    step: int
    #: Where the data stands (any JSON value; e.g. the number of batches consumed).
    cursor: Any
    tokens: int
    #: The optimizer state is part of the checkpoint (always, for ``save_state``).
    optimizer_state: bool
    config: dict[str, Any]
    final: bool
    saved_at: float


class CheckpointManager:
    """Periodic, rolling and final checkpoints of one run, recorded in ``run_dir``.

    A save is due every ``every_steps`` steps, ``every_tokens`` tokens or ``every_seconds``
    seconds (whichever comes first); ``keep_last`` periodic saves are kept (older ones are
    deleted), final saves are never deleted. ``config`` is whatever defines the run (model,
    learning rate, data): resuming under a different one is refused.

    Example::

        async with CheckpointManager(
            TrainerCheckpoints(session, client), "runs/sft-1",
            config={"lr": 1e-2}, every_steps=100, keep_last=3,
        ) as ckpt:
            start = await ckpt.resume()        # None on a fresh run
            ...
            if ckpt.due(step, tokens):
                await ckpt.save(step, cursor=step, tokens=tokens)
    """

    def __init__(
        self,
        store: CheckpointStore,
        run_dir: str | os.PathLike[str],
        *,
        config: Mapping[str, Any],
        every_steps: int | None = None,
        every_tokens: int | None = None,
        every_seconds: float | None = None,
        keep_last: int | None = 3,
        prefix: str = "ckpt",
    ) -> None:
        for field, value in (
            ("every_steps", every_steps),
            ("every_tokens", every_tokens),
            ("every_seconds", every_seconds),
            ("keep_last", keep_last),
        ):
            if value is not None and not value > 0:
                raise InvalidInput(field, f"must be > 0 or None, got {value!r}")
        try:
            self._config: dict[str, Any] = json.loads(json.dumps(dict(config)))
        except (TypeError, ValueError) as exc:
            raise InvalidInput("config", f"must be JSON-serialisable: {exc}") from None
        self._store = store
        self._dir = Path(run_dir)
        self._every_steps = every_steps
        self._every_tokens = every_tokens
        self._every_seconds = every_seconds
        self._keep_last = keep_last
        self._prefix = prefix
        self._records: list[SaveRecord] = self._read()
        last = self._records[-1] if self._records else None
        self._last_step = last.step if last else 0
        self._last_tokens = last.tokens if last else 0
        self._last_time = time.monotonic()
        self._in_flight: tuple[Awaitable[str], SaveRecord] | None = None

    async def __aenter__(self) -> CheckpointManager:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.wait()

    @property
    def records(self) -> tuple[SaveRecord, ...]:
        """The finished saves, oldest first."""
        return tuple(self._records)

    def due(self, step: int, tokens: int = 0) -> bool:
        """Whether a periodic save is due at ``step`` (``tokens`` trained so far)."""
        return (
            (self._every_steps is not None and step - self._last_step >= self._every_steps)
            or (self._every_tokens is not None and tokens - self._last_tokens >= self._every_tokens)
            or (
                self._every_seconds is not None
                and time.monotonic() - self._last_time >= self._every_seconds
            )
        )

    async def save(self, step: int, *, cursor: Any, tokens: int = 0, final: bool = False) -> None:
        """Submit a save of the state after ``step``; the previous save is awaited first.

        Returns as soon as the save is submitted; :meth:`wait` (or leaving the ``async
        with``) waits for it and records it.
        """
        await self.wait()
        name = f"{self._prefix}-{step:07d}" + ("-final" if final else "")
        self._last_step, self._last_tokens, self._last_time = step, tokens, time.monotonic()
        record = SaveRecord(
            name=name,
            path="",
            step=step,
            cursor=json.loads(json.dumps(cursor)),
            tokens=tokens,
            optimizer_state=True,
            config=self._config,
            final=final,
            saved_at=0.0,
        )
        self._in_flight = (self._store.save(name), record)

    async def wait(self) -> SaveRecord | None:
        """Wait for the save in flight (if any), record it, and roll old saves out."""
        if self._in_flight is None:
            return None
        awaitable, record = self._in_flight
        self._in_flight = None
        path = await awaitable
        done = attrs.evolve(record, path=path, saved_at=time.time())
        self._records.append(done)
        self._write()
        if self._keep_last is not None:
            periodic = [r for r in self._records if not r.final]
            for old in periodic[: max(0, len(periodic) - self._keep_last)]:
                await self._store.delete(old.path)
                self._records.remove(old)
                self._write()
        return done

    async def resume(self) -> SaveRecord | None:
        """Restore the latest save (weights, optimizer state) and return its record.

        Returns None when the run has no save yet. Raises ``InvalidInput`` (field ``config``)
        when the record was made under a different config, before touching the trainer.
        """
        if not self._records:
            return None
        latest = self._records[-1]
        if latest.config != self._config:
            keys = sorted(
                k
                for k in latest.config.keys() | self._config.keys()
                if latest.config.get(k) != self._config.get(k)
            )
            raise InvalidInput(
                "config",
                f"differs from the config of the run in {self._dir} (keys: {', '.join(keys)})",
            )
        await self._store.restore(latest.path)
        return latest

    def _read(self) -> list[SaveRecord]:
        path = self._dir / RECORD_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        try:
            return [SaveRecord(**entry) for entry in json.loads(raw)["saves"]]
        except (ValueError, TypeError, KeyError) as exc:  # ValueError: not JSON (or UTF-8)
            raise InvalidInput(
                "run_dir", f"{path} is not a checkpoint record ({type(exc).__name__}: {exc})"
            ) from None

    def _write(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        tmp = self._dir / (RECORD_FILE + ".tmp")
        body = {"saves": [attrs.asdict(r) for r in self._records]}
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self._dir / RECORD_FILE)
