"""``FrontDoor``: the pure-ASGI layer in front of the local trainer's routes.

For every HTTP request, in order:

1. A job's data plane, ``/jobs/{job_id}/api/v1/...`` (its ``directRouteHandle``) or the
   trainer gateway ``/training/v1/rlorTrainerJobs/{account}/{job_id}/api/v1/...`` (what the
   Fireworks SDK uses), is rewritten to ``/api/v1/...`` with the job id kept in the scope
   (``JOB_SCOPE_KEY``); an unknown or deleted job (or another account) gets 404. The
   serverless gateway's ``/training/v1/serverless/api/v1/...`` is rewritten likewise, marked
   ``SERVERLESS_SCOPE_KEY`` (its ``retrieve_future`` answers the forced capacity 409s of
   ``/_local/serverless``).
2. The request is counted under its endpoint name (not ``/_local/*``).
3. Auth, when an API key is set, on both planes and the ``/_local/*`` test hooks:
   ``X-Api-Key: <key>`` or ``Authorization: Bearer <key>`` (every credential offered must be
   the key); anything else gets the same 401 (the key is never logged or echoed).
4. Warm-up: the job's data plane answers 503 while that job is not RUNNING (healthz too); the
   root data plane answers 503 while any job is CREATING or PENDING.
5. Fault injection (data plane only, ``FaultInjector``).
6. Idempotency: a POST with ``X-Idempotency-Key`` (other than the read-like
   ``retrieve_future``, heartbeat and telemetry) is answered once and replayed on repeats.
7. The reply is buffered, delayed by ``latency_s`` (plus a slow fault), then sent, or replaced
   by a 500 or a dropped connection for the "after applying" faults.

Example::

    app = FrontDoor(starlette_app, state)   # what uvicorn serves
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..wire import paths
from ._data_plane import JOB_SCOPE_KEY, SERVERLESS_SCOPE_KEY
from ._faults import FaultKind
from ._http_errors import ApiError
from ._idempotency import CachedReply, IdemKey
from ._server_state import ServerState

__all__ = [
    "DroppedConnection",
    "FrontDoor",
    "endpoint_name",
    "quiet_dropped_connections",
    "rpc_status",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

logger = logging.getLogger("firetitan_async.local")

#: A data-plane path starts with this (``/api/v1/``, from the route table).
DATA_PLANE = paths.PREFIX + "/"
_API = re.escape(DATA_PLANE)
#: A job's data plane (``/jobs/{job_id}/api/v1/...``): group 1 the job id, 2 the API path.
JOB_ROUTE = re.compile(rf"^/jobs/([^/]+)({_API}.*)$")
_GATEWAY_PREFIX = re.compile(rf"^/training/v1/rlorTrainerJobs/([^/]+)/([^/]+)({_API}.*)$")
_SERVERLESS_PREFIX = re.compile(rf"^{re.escape(paths.SERVERLESS_PREFIX)}({_API}.*)$")
_UNAUTHORIZED = "missing or invalid API key (send X-Api-Key: <key> or Authorization: Bearer <key>)"
# HTTP status → google.rpc code, for control-plane error bodies.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 405: 12, 409: 6, 412: 9, 429: 8, 501: 12, 503: 14}
_CONTROL_ENDPOINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/v1/accounts$"), "accounts.list"),
    (re.compile(r"^/v1/accounts/[^/]+/rlorTrainerJobs/[^/]+/checkpoints$"), "jobs.checkpoints"),
    (re.compile(r"^/v1/accounts/[^/]+/checkpoints/[^/]+:promote$"), "checkpoints.promote"),
    (re.compile(r"^/v1/accounts/[^/]+/operations/[^/]+$"), "operations.get"),
    (re.compile(r"^/v1/accounts/[^/]+/models/[^/]+$"), "models.get"),
    (re.compile(r"^/v1/accounts/[^/]+/trainingShapes/"), "shapes.get"),
    (re.compile(r"^/v1/accounts/[^/]+/trainingSessions/[^/]+/checkpoints$"),
     "sessions.checkpoints"),
    (re.compile(r"^/v1/accounts/[^/]+/trainingSessions/[^/]+/checkpoints/[^/]+:promote$"),
     "sessions.promote"),
    (re.compile(r"^/training/v1/serverless/inference/v1/completions$"), "serverless.completions"),
)
_TRAINING_SESSION = re.compile(r"^/v1/accounts/[^/]+/trainingSessions/[^/]+$")
_NOT_REPLAYED = frozenset({"retrieve_future", "session_heartbeat", "telemetry"})
_ENDPOINT_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^sessions/[^/]+/finish$"), "sessions/finish"),
    (re.compile(r"^samplers/[^/]+$"), "samplers"),
    (re.compile(r"^training_runs/[^/]+/checkpoints/.+/ttl$"), "checkpoint_ttl"),
    (re.compile(r"^training_runs/[^/]+/checkpoints/.+$"), "checkpoint"),
    (re.compile(r"^training_runs/[^/]+/checkpoints$"), "training_run_checkpoints"),
    (re.compile(r"^training_runs/[^/]+$"), "training_run"),
)


class DroppedConnection(Exception):
    """Raised after a partial reply to make the server drop the connection (a fault)."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


_QUIET_DROPS = _QuietDrops()


def quiet_dropped_connections() -> None:
    """Keep uvicorn from logging the injected dropped connections as errors (idempotent)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)


def endpoint_name(method: str, path: str) -> str:
    """The stats name of a request: the path after ``/api/v1/`` (ids folded), e.g.
    ``forward_backward``, ``training_run_checkpoints``; ``jobs.create`` etc. for the control
    plane."""
    if path.startswith(DATA_PLANE):
        rest = path[len(DATA_PLANE) :]
        if "/" not in rest:  # every pattern has one
            return rest
        for pattern, name in _ENDPOINT_PATTERNS:
            if pattern.match(rest):
                return f"delete_{name}" if method == "DELETE" else name
        return rest
    for pattern, control_name in _CONTROL_ENDPOINTS:
        if pattern.match(path):
            return control_name
    if _TRAINING_SESSION.match(path):
        return "sessions.delete" if method == "DELETE" else "sessions.get"
    if path.startswith("/v1/accounts/"):
        parts = path.split("/")
        if len(parts) <= 5:
            return "jobs.create" if method == "POST" else "jobs.list"
        if parts[-1].endswith(":resume"):
            return "jobs.resume"
        return {"GET": "jobs.get", "DELETE": "jobs.delete"}.get(method, "jobs.other")
    return path.lstrip("/") or "/"


def rpc_status(status: int, message: str, code: int | None = None) -> dict[str, Any]:
    """A ``google.rpc.Status`` error body for an HTTP status (what the Fireworks SDK parses);
    ``code`` overrides the gRPC code the status maps to.

    Example::

        rpc_status(404, "trainer job 'x' not found")   # {"code": 5, "message": ..., "details": []}
    """
    if code is None:
        code = _GRPC_CODES.get(status, 13 if status >= 500 else 2)
    return {"code": code, "message": message, "details": []}


class FrontDoor:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not logger.isEnabledFor(logging.DEBUG):
            await self._handle(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._handle(scope, receive, logged_send)
        finally:
            logger.debug(
                "%s %s -> %s (%.1f ms)",
                scope["method"],
                scope["path"],
                status or "dropped",
                (time.perf_counter() - start) * 1000,
            )

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self.state
        path: str = scope["path"]
        method: str = scope["method"]
        job_id: str | None = None
        account: str | None = None
        match = JOB_ROUTE.match(path)
        gateway = _GATEWAY_PREFIX.match(path)
        if match or gateway:
            if gateway:
                account, job_id, path = gateway.group(1), gateway.group(2), gateway.group(3)
            else:
                assert match is not None
                job_id, path = match.group(1), match.group(2)
            scope = dict(scope)
            scope["path"] = path
            scope["raw_path"] = path.encode()
            scope[JOB_SCOPE_KEY] = job_id
        serverless = _SERVERLESS_PREFIX.match(path)
        if serverless:
            path = serverless.group(1)
            scope = dict(scope)
            scope["path"] = path
            scope["raw_path"] = path.encode()
            scope[SERVERLESS_SCOPE_KEY] = True
        if path.startswith("/_local/"):
            # The test hooks (fail a job, change knobs, read stats) need the key like every
            # other route when one is configured.
            api_key = state.config.api_key
            if api_key is not None and not _authorized(scope["headers"], api_key):
                await self._send_after_latency(
                    send, _json_reply(401, {"detail": _UNAUTHORIZED}), 0.0
                )
                return
            await self.app(scope, receive, send)
            return
        data_plane = path.startswith(DATA_PLANE)
        name = endpoint_name(method, path)
        state.stats.count_request(name)
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]

        problem = self._admission(job_id, account, data_plane, path, raw_headers)
        if problem is not None:
            await self._send_after_latency(send, problem, 0.0)
            return
        if serverless and name == "retrieve_future":
            conflict = state.serverless.take_capacity_409()  # the capacity-409 test knob
            if conflict is not None:
                await self._send_after_latency(send, _json_reply(409, conflict), 0.0)
                return

        fault = None
        extra_delay = 0.0
        idem_header = _header(raw_headers, b"x-idempotency-key")
        replayable = method == "POST" and bool(idem_header) and name not in _NOT_REPLAYED
        if data_plane:
            repeatable = method == "GET" or name == "retrieve_future" or replayable
            fault = state.faults.draw(retrieve=name == "retrieve_future", repeatable=repeatable)
            if fault is not None:
                state.stats.count_fault()
                if fault is FaultKind.SLOW:
                    extra_delay = state.faults.slow_delay_s()
                elif not fault.after_apply:
                    await self._send_after_latency(send, _fault_reply(fault), 0.0)
                    return

        key: IdemKey | None = (method, path, idem_header) if replayable and idem_header else None
        reply: CachedReply | None = None
        if key is not None:
            reply = await state.idempotency.begin(key)
        if reply is None:
            try:
                reply = await _run_buffered(self.app, scope, receive)
            except BaseException:
                if key is not None:
                    state.idempotency.abort(key)
                raise
            if key is not None:
                if reply.status < 500:
                    state.idempotency.finish(key, reply)
                else:
                    state.idempotency.abort(key)

        if fault is FaultKind.ERROR_500_AFTER:
            await self._send_after_latency(send, _fault_reply(fault), 0.0)
            return
        if fault is FaultKind.DROP_AFTER:
            await self._drop(send, reply)
            return
        await self._send_after_latency(send, reply, extra_delay)

    def _admission(
        self,
        job_id: str | None,
        account: str | None,
        data_plane: bool,
        path: str,
        raw_headers: list[tuple[bytes, bytes]],
    ) -> CachedReply | None:
        """A 401/404/503 reply if the request may not go on, else ``None``."""
        state = self.state
        key = state.config.api_key
        control_plane = path.startswith("/v1/")
        if key is not None and (data_plane or control_plane) and not _authorized(raw_headers, key):
            body = rpc_status(401, _UNAUTHORIZED) if control_plane else {"detail": _UNAUTHORIZED}
            return _json_reply(401, body)
        if not data_plane:
            return None
        if job_id is not None:
            try:
                if account is not None and account != state.jobs.account_id:
                    raise ApiError(404, f"account {account!r} not found")
                job = state.jobs.get_live(job_id)
            except ApiError as exc:
                return _json_reply(exc.status, {"detail": exc.detail})
            job_state = state.jobs.state(job)
            if job_state != "JOB_STATE_RUNNING":
                if job_state in ("JOB_STATE_CREATING", "JOB_STATE_PENDING"):
                    return _json_reply(503, {"detail": "trainer is warming up"})
                return _json_reply(
                    503, {"detail": f"trainer job {job_id} is not running ({job_state})"}
                )
        elif state.jobs.any_warming():
            return _json_reply(503, {"detail": "trainer is warming up"})
        return None

    async def _send_after_latency(self, send: Send, reply: CachedReply, extra: float) -> None:
        delay = self.state.config.latency_s + extra
        if delay > 0:
            await asyncio.sleep(delay)
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": list(reply.headers)}
        )
        await send({"type": "http.response.body", "body": reply.body, "more_body": False})

    async def _drop(self, send: Send, reply: CachedReply) -> None:
        headers = [(k, v) for k, v in reply.headers if k.lower() != b"content-length"]
        body = reply.body or b"{}"
        headers.append((b"content-length", str(len(body) + 16).encode()))
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
        )
        raise DroppedConnection("injected fault: connection dropped mid-reply")


def _header(raw_headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of header ``name`` (lower case; the last one if repeated), or ``None``."""
    value = None
    for k, v in raw_headers:
        if k.lower() == name:
            value = v.decode("latin-1")
    return value


def _authorized(raw_headers: list[tuple[bytes, bytes]], key: str) -> bool:
    """Whether the request offers the key (as X-Api-Key or Bearer) and nothing else."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
    offered: list[str] = []
    if "x-api-key" in headers:
        offered.append(headers["x-api-key"])
    auth = headers.get("authorization")
    if auth is not None:
        offered.append(auth[len("bearer ") :] if auth.lower().startswith("bearer ") else "")
    return bool(offered) and all(hmac.compare_digest(o.encode(), key.encode()) for o in offered)


async def _run_buffered(app: ASGIApp, scope: Scope, receive: Receive) -> CachedReply:
    status = 500
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def capture(message: Message) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = int(message["status"])
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, capture)
    return CachedReply(status, tuple(headers), b"".join(chunks))


def _json_reply(
    status: int, payload: Any, extra_headers: tuple[tuple[bytes, bytes], ...] = ()
) -> CachedReply:
    body = json.dumps(payload).encode()
    headers = (
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra_headers,
    )
    return CachedReply(status, headers, body)


def _fault_reply(fault: FaultKind) -> CachedReply:
    detail = {"detail": f"injected fault ({fault.value})"}
    if fault is FaultKind.ERROR_503:
        return _json_reply(503, detail)
    if fault is FaultKind.RATE_LIMIT_429:
        return _json_reply(429, detail, ((b"retry-after", b"1"), (b"retry-after-ms", b"50")))
    if fault is FaultKind.TIMEOUT_408:
        return _json_reply(408, {**detail, "queue_state": "active"})
    return _json_reply(500, detail)
