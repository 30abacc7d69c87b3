"""``IdempotencyCache``: replies of submissions by ``X-Idempotency-Key``, for exact replay.

A request whose key was seen gets the original reply (same status, same body, so the same
request id) and is never applied twice. A repeat that arrives while the original is still
being handled waits for it. Keys are scoped by method and path; the newest ``max_entries``
replies are kept.

Example::

    cache = IdempotencyCache()
    slot = cache.begin(("POST", "/api/v1/optim_step", key))   # None: first time, handle it
    cache.finish(("POST", "/api/v1/optim_step", key), reply)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import attrs

__all__ = ["CachedReply", "IdemKey", "IdempotencyCache"]

IdemKey = tuple[str, str, str]


@attrs.frozen
class CachedReply:
    """A complete HTTP reply: status, headers (raw ASGI pairs) and body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


class IdempotencyCache:
    """Replies by (method, path, key); used from the server's event loop only."""

    def __init__(self, *, max_entries: int = 200_000) -> None:
        self._done: OrderedDict[IdemKey, CachedReply] = OrderedDict()
        self._inflight: dict[IdemKey, asyncio.Future[CachedReply | None]] = {}
        self._max = max_entries

    async def begin(self, key: IdemKey) -> CachedReply | None:
        """The stored reply for ``key``, or ``None`` if the caller must handle the request
        (it then calls ``finish`` or ``abort``). Waits while the same key is in flight."""
        while True:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
            pending = self._inflight.get(key)
            if pending is None:
                self._inflight[key] = asyncio.get_running_loop().create_future()
                return None
            await asyncio.shield(pending)

    def finish(self, key: IdemKey, reply: CachedReply) -> None:
        """Store the reply of a handled request and release waiting repeats."""
        self._done[key] = reply
        while len(self._done) > self._max:
            self._done.popitem(last=False)
        self._release(key, reply)

    def abort(self, key: IdemKey) -> None:
        """The request was not applied (e.g. an injected error): forget the key."""
        self._release(key, None)

    def _release(self, key: IdemKey, reply: CachedReply | None) -> None:
        pending = self._inflight.pop(key, None)
        if pending is not None and not pending.done():
            pending.set_result(reply)
