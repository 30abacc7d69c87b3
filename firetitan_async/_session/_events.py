"""Operation events: what happened to each operation, when, and how long each phase took.

Every operation emits, in order::

    submitted → accepted → started → [queued → started]… → finished | failed

plus ``retried`` (a submission or poll attempt failed transiently and is tried again) and
``stalled`` (no progress for ``stall_warning_s``) at any point. ``started`` means the server
holds the operation and has not said it is paused (the wire has no "running" signal);
``queued`` means it said it waits for capacity.

A session delivers them to callback hooks (called inline, so keep them quick) and to
:class:`EventStream` async iterators, each with its own bounded buffer: when a stream's reader
falls behind, its oldest events are dropped (counted in :attr:`EventStream.dropped`) so an
operation never waits for a reader.

Example::

    async with session.events() as events:
        async for event in events:
            print(event.kind, event.operation, event.seq_id, f"{event.elapsed_s:.3f}s")
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Literal

import anyio
import attrs

__all__ = ["EventHook", "EventHub", "EventKind", "EventStream", "OperationEvent"]

logger = logging.getLogger("firetitan_async.events")

EventKind = Literal[
    "submitted", "accepted", "queued", "started", "retried", "stalled", "finished", "failed"
]


@attrs.frozen
class OperationEvent:
    """One thing that happened to one operation.

    ``op_id`` ties the events of one operation together (unique within a session). ``time`` is
    ``time.monotonic()`` and ``wall_time`` the Unix time;
    ``elapsed_s`` counts from ``submitted`` and ``phase_s`` holds the seconds spent so far in
    each phase (``submit``, ``queue``, ``compute``, ``transfer``). ``queue_state`` and
    ``request_type`` are what the server last said and the ``X-Tinker-Request-Type`` polled;
    ``retries`` counts transient failures so far; ``tokens`` is the number of input tokens of a
    ``forward``/``forward_backward`` (else ``None``); ``detail`` says why (``retried``,
    ``stalled``, ``failed``).

    Example::

        def on_event(event: OperationEvent) -> None:
            if event.kind == "finished":
                print(event.operation, event.phase_s["compute"])
    """

    kind: EventKind
    operation: str
    op_id: int
    seq_id: int | None
    request_id: str | None
    time: float
    wall_time: float
    elapsed_s: float
    phase: str | None
    phase_s: Mapping[str, float]
    queue_state: str | None = None
    request_type: str | None = None
    retries: int = 0
    tokens: int | None = None
    detail: str | None = None


EventHook = Callable[[OperationEvent], None]


class EventStream:
    """An async iterator over a session's operation events, with a bounded buffer.

    Get one from :meth:`ServiceSession.events`; it sees the events emitted after it was made.
    When ``max_buffer`` events are waiting, the oldest is dropped and :attr:`dropped` grows.
    Iteration ends when the session closes. Use it as ``async with`` to stop receiving events
    when the block exits (else it is detached when the session closes).

    Example::

        async with session.events(max_buffer=100) as events:
            async for event in events:
                if event.kind == "stalled":
                    print(event.detail)
    """

    def __init__(self, hub: EventHub, max_buffer: int) -> None:
        self._hub = hub
        self._buffer: collections.deque[OperationEvent] = collections.deque(maxlen=max_buffer)
        self._wake: anyio.Event | None = None
        self._closed = False
        #: How many events were dropped because the buffer was full.
        self.dropped = 0

    def _push(self, event: OperationEvent) -> None:
        if len(self._buffer) == self._buffer.maxlen:
            self.dropped += 1
        self._buffer.append(event)
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """Stop receiving events; iteration ends once the buffered ones are read."""
        self._closed = True
        self._hub._streams.discard(self)
        if self._wake is not None:
            self._wake.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> OperationEvent:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._wake = anyio.Event()
            await self._wake.wait()
        return self._buffer.popleft()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EventStream buffered={len(self._buffer)} dropped={self.dropped}>"


class EventHub:
    """Fans events out to hooks and streams (one per session)."""

    def __init__(self) -> None:
        self._hooks: list[EventHook] = []
        self._streams: set[EventStream] = set()
        self._failing: set[int] = set()

    @property
    def listening(self) -> bool:
        """Whether anyone receives events (else emitting is skipped)."""
        return bool(self._hooks or self._streams)

    def add_hook(self, hook: EventHook) -> Callable[[], None]:
        """Call ``hook(event)`` for every event; returns a function that removes it."""
        if not callable(hook):
            from ..errors import InvalidInput

            raise InvalidInput("hook", f"must be callable, got {hook!r}")
        self._hooks.append(hook)

        def remove() -> None:
            if hook in self._hooks:
                self._hooks.remove(hook)

        return remove

    def stream(self, max_buffer: int) -> EventStream:
        """A new :class:`EventStream` receiving every later event."""
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int) or max_buffer < 1:
            from ..errors import InvalidInput

            raise InvalidInput("max_buffer", f"must be an int >= 1, got {max_buffer!r}")
        stream = EventStream(self, max_buffer)
        self._streams.add(stream)
        return stream

    def emit(self, event: OperationEvent) -> None:
        """Deliver ``event``; a hook that raises is logged (once) and kept."""
        for hook in tuple(self._hooks):
            try:
                hook(event)
            except Exception:
                if id(hook) not in self._failing:
                    self._failing.add(id(hook))
                    logger.exception("event hook %r raised (logged once per hook)", hook)
        for stream in tuple(self._streams):
            stream._push(event)

    def close(self) -> None:
        """End every stream (the session is closing)."""
        for stream in tuple(self._streams):
            stream.close()
