"""``StallInjector``: operations that never finish, and result bodies that stop half-way.

Two faults a real trainer shows and a client's deadlines must catch (both from the issue
threads: a ``sample_async`` stuck for five minutes; a result body that stalls after its
headers). :class:`StallPlan` picks operations by the endpoint they were submitted to and
holds back the first ``count`` of them:

* ``stall_s``: the operation is accepted (and runs on the model, so later operations of the
  same model are not wedged), but ``retrieve_future`` answers ``try_again`` (queue state
  ``active``) for ``stall_s`` seconds — ``math.inf``: forever;
* ``body_stall_s``: when its result is fetched, the reply's headers and the first half of its
  body are sent, then nothing for ``body_stall_s`` seconds (``math.inf``: until the client
  gives up), then the rest.

It wraps the whole app (outside the ``FrontDoor``), and only when a plan is active.

Example::

    LocalTrainer(stall_s=math.inf, stall_endpoint="forward_backward")   # the first one hangs
    firetitan-async serve --stall-s inf --stall-endpoint forward_backward --stall-count 2
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import attrs

from ._front import DATA_PLANE, JOB_ROUTE, ASGIApp, Message, Receive, Scope, Send, endpoint_name
from ._server_state import ServerState

__all__ = ["StallInjector", "StallPlan"]

def _seconds(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0 (math.inf: forever), got {value!r}")


@attrs.frozen
class StallPlan:
    """Which operations stall, and how (see the module docstring).

    ``endpoint`` is the stats name of the submission endpoint (``forward_backward``,
    ``optim_step``, ``asample``, ``save_weights``, …; ``None``: any); ``count`` how many
    matching operations stall (``0``: all of them).
    """

    stall_s: float = attrs.field(default=0.0, validator=_seconds)
    body_stall_s: float = attrs.field(default=0.0, validator=_seconds)
    endpoint: str | None = None
    count: int = 1

    @property
    def active(self) -> bool:
        """Whether anything stalls at all."""
        return self.stall_s > 0 or self.body_stall_s > 0


class StallInjector:
    """The ASGI wrapper that carries out a :class:`StallPlan`."""

    def __init__(self, app: ASGIApp, state: ServerState, plan: StallPlan) -> None:
        self.app = app
        self.state = state
        self.plan = plan
        self._chosen = 0
        self._stalled: dict[str, float] = {}  # request id -> loop time its result is released

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        match = JOB_ROUTE.match(path)
        name = endpoint_name(scope["method"], match.group(2) if match else path)
        if name == "retrieve_future":
            await self._retrieve(scope, receive, send)
        elif scope["method"] == "POST" and DATA_PLANE in path and self._wants(name):
            await self.app(scope, receive, self._note_request_id(send))
        else:
            await self.app(scope, receive, send)

    def _wants(self, name: str) -> bool:
        plan = self.plan
        if plan.endpoint is not None and name != plan.endpoint:
            return False
        return plan.count == 0 or self._chosen < plan.count

    def _note_request_id(self, send: Send) -> Send:
        status = 0

        async def noting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and status == 200:
                try:
                    request_id = json.loads(message.get("body", b"")).get("request_id")
                except (ValueError, AttributeError):
                    request_id = None
                if isinstance(request_id, str) and self._wants_more():
                    self._chosen += 1
                    loop = asyncio.get_running_loop()
                    self._stalled[request_id] = loop.time() + self.plan.stall_s
            await send(message)

        return noting

    def _wants_more(self) -> bool:
        return self.plan.count == 0 or self._chosen < self.plan.count

    async def _retrieve(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, replay = await _read_body(receive)
        try:
            request_id = json.loads(body).get("request_id")
        except (ValueError, AttributeError):
            request_id = None
        release = self._stalled.get(request_id) if isinstance(request_id, str) else None
        if release is None:
            await self.app(scope, replay, send)
            return
        loop = asyncio.get_running_loop()
        left = release - loop.time()
        if left > 0:
            if await _wait_disconnect(receive, min(left, self.state.config.long_poll_s)):
                return
            if release - loop.time() > 0:
                self.state.stats.count_request("retrieve_future")
                await _send_json(
                    send, {"type": "try_again", "request_id": request_id, "queue_state": "active"}
                )
                return
        if self.plan.body_stall_s > 0:
            send = self._stall_body(send, receive)
        await self.app(scope, replay, send)

    def _stall_body(self, send: Send, receive: Receive) -> Send:
        async def stalling(message: Message) -> None:
            body = message.get("body", b"")
            if message["type"] != "http.response.body" or len(body) < 2 or message.get(
                "more_body", False
            ):
                await send(message)
                return
            half = len(body) // 2
            await send({"type": "http.response.body", "body": body[:half], "more_body": True})
            if await _wait_disconnect(receive, self.plan.body_stall_s):
                return
            await send({**message, "body": body[half:]})

        return stalling


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The request body, and a ``receive`` that replays it and then goes on as before."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


async def _wait_disconnect(receive: Receive, timeout: float) -> bool:
    """Wait up to ``timeout`` s (``inf``: forever); True if the client went away first."""

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), None if math.isinf(timeout) else timeout)
    except TimeoutError:
        return False
    return True


async def _send_json(send: Send, payload: Any) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
