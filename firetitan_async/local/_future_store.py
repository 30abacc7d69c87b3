"""``FutureStore``: server-side futures that ``retrieve_future`` long-polls.

Every submission gets a request id at once; the operation completes it later with a reply
(JSON or protobuf bytes) or a failure ``{"error", "category"}``. ``wait`` holds a poll until
the future is done or the hold time passes. All methods run on the server's event loop.

Example::

    fid = store.create("OptimStep")
    store.complete(fid, FutureReply.json({"metrics": {}}))
    reply = await store.wait(fid, timeout=30.0)   # FutureReply, or None if still pending
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import OrderedDict
from typing import Any, Literal

import attrs

__all__ = ["FutureReply", "FutureStore", "UnknownFuture"]

PROTO_MEDIA_TYPE = "application/x-protobuf"
JSON_MEDIA_TYPE = "application/json"


@attrs.frozen
class FutureReply:
    """The body ``retrieve_future`` returns for a finished operation."""

    body: bytes
    media_type: str
    json_form: bytes | None = None
    """The same result as JSON, for a protobuf reply whose poller prefers JSON."""

    def negotiate(self, prefer_json: bool) -> tuple[bytes, str]:
        """The body and media type to send, given the poller's preference."""
        if prefer_json and self.json_form is not None:
            return self.json_form, JSON_MEDIA_TYPE
        return self.body, self.media_type

    @classmethod
    def json(cls, payload: Any) -> FutureReply:
        """A JSON reply."""
        return cls(json.dumps(payload).encode(), JSON_MEDIA_TYPE)

    @classmethod
    def proto(cls, payload: bytes, *, json_form: bytes | None = None) -> FutureReply:
        """A protobuf reply (``ForwardBackwardOutput`` or ``SampleResponse``), optionally with
        its JSON rendering for pollers whose ``Accept`` prefers JSON."""
        return cls(payload, PROTO_MEDIA_TYPE, json_form)

    @classmethod
    def failure(cls, message: str, category: Literal["user", "server"]) -> FutureReply:
        """A failed operation: ``{"error": message, "category": category}``."""
        return cls.json({"error": message, "category": category})


class UnknownFuture(LookupError):
    """No future with that request id."""


class _Record:
    __slots__ = ("kind", "reply", "waiters")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.reply: FutureReply | None = None
        self.waiters: list[asyncio.Future[None]] | None = None  # held polls


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _release_all(record: _Record) -> None:
    waiters, record.waiters = record.waiters, None
    for waiter in waiters or ():
        _release(waiter)


class FutureStore:
    """Request ids → pending/finished replies; keeps the newest ``max_finished`` results."""

    def __init__(self, *, max_finished: int = 20_000) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = 0
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._max = max_finished
        self._closing = False  # wake_all: polls answer at once from now on

    def create(self, kind: str) -> str:
        """A new pending future of ``kind`` (e.g. ``"ForwardBackward"``); returns its id."""
        self._counter += 1
        request_id = f"req-{self._prefix}-{self._counter}"
        self._records[request_id] = _Record(kind)
        self._evict()
        return request_id

    def complete(self, request_id: str, reply: FutureReply) -> None:
        """Finish a future (first completion wins) and wake its pollers."""
        record = self._records.get(request_id)
        if record is None or record.reply is not None:
            return
        record.reply = reply
        _release_all(record)

    def kind(self, request_id: str) -> str:
        """The kind a future was created with; raises ``UnknownFuture``."""
        record = self._records.get(request_id)
        if record is None:
            raise UnknownFuture(request_id)
        return record.kind

    async def wait(self, request_id: str, timeout: float) -> FutureReply | None:
        """The reply once done, or ``None`` after ``timeout`` s; raises ``UnknownFuture``."""
        record = self._records.get(request_id)
        if record is None:
            raise UnknownFuture(request_id)
        if record.reply is None and not self._closing:
            # A bare future and a timer: asyncio.wait_for would wrap the wait in a task.
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            if record.waiters is None:
                record.waiters = []
            record.waiters.append(waiter)
            timer = loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                if record.waiters and waiter in record.waiters:
                    record.waiters.remove(waiter)
        return record.reply

    def wake_all(self) -> None:
        """Release every held poll (they answer ``try_again``): used when shutting down."""
        self._closing = True
        for record in self._records.values():
            _release_all(record)

    def _evict(self) -> None:
        # Drop the oldest finished futures, stopping as soon as enough are found: copying every
        # key on each create made it cost ~0.7 ms per future once the store was full.
        excess = len(self._records) - self._max
        if excess <= 0:
            return
        victims: list[str] = []
        for request_id, record in self._records.items():
            if record.reply is not None:
                victims.append(request_id)
                if len(victims) == excess:
                    break
        for request_id in victims:
            del self._records[request_id]
