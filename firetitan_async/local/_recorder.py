"""A recording reverse proxy: what a client really puts on the wire, decoded.

:class:`Recorder` listens on loopback, forwards every request unchanged to a target base URL
(usually a :class:`~firetitan_async.local.LocalTrainer`) and records one
:class:`RecordedExchange` per request: method, path, query, the headers that carry meaning, the
decoded body (JSON, or the protobuf ``ForwardBackwardRequest`` as a dict, zstd-decompressed
first when the body is encoded), and the reply's status and decoded body. Point the tinker SDK
and ``firetitan_async`` at two recorders and compare what they sent; that is how
``tests/conformance/test_wire_fidelity.py`` holds our wire to the SDK's.

The proxy is a small Starlette app served by uvicorn on its own thread and event loop (like the
local trainer), so it never depends on the client's event loop or backend.

Example::

    with LocalTrainer() as trainer, Recorder(trainer.base_url) as rec:
        async with ServiceSession(rec.base_url) as session:   # (in your async code)
            ...
        for ex in rec.records:
            print(ex.describe())   # e.g. "POST /api/v1/forward_backward -> 200 [protobuf]"
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qsl

import attrs
import httpx
import uvicorn
import zstandard
from google.protobuf import json_format  # type: ignore[import-untyped]
from google.protobuf.message import DecodeError, Message  # type: ignore[import-untyped]
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tinker.proto import tinker_public_pb2 as pb

from ..wire import paths
from ._lifetime import PromptServer, ThreadedServerLifetime, bind_listener

__all__ = ["BodyFormat", "RecordedExchange", "Recorder", "decode_body"]

BodyFormat = Literal["empty", "json", "protobuf", "bytes"]

# Headers recorded with their value.
_VALUE_HEADERS = frozenset(
    {"content-type", "content-encoding", "accept", "fireworks-model", "fireworks-deployment"}
)
_VALUE_HEADER_PREFIXES = ("x-tinker-", "x-fireworks-hot-load-")
# Headers recorded only as present: credentials (never stored) and per-request random keys.
_PRESENCE_HEADERS = frozenset(
    {"x-idempotency-key", "x-api-key", "authorization", "cf-access-client-secret"}
)
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "cf-access-client-secret"})
PRESENT = "<present>"
REDACTED = "<redacted>"

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy recomputes.
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Protobuf request bodies by the endpoint's last path segment.
_PROTO_REQUESTS: Mapping[str, type[Message]] = MappingProxyType(
    {"forward_backward": pb.ForwardBackwardRequest}
)
# Protobuf replies of retrieve_future by the request's X-Tinker-Request-Type.
_PROTO_REPLIES: Mapping[str, type[Message]] = MappingProxyType(
    {
        "Forward": pb.ForwardBackwardOutput,
        "ForwardBackward": pb.ForwardBackwardOutput,
        "Sample": pb.SampleResponse,
    }
)

_UPSTREAM_TIMEOUT_S = 120.0  # longer than any long-poll hold (the SDK allows 45 s)
_START_TIMEOUT_S = 10.0


@attrs.frozen
class RecordedExchange:
    """One request as it arrived at the recorder, and the reply it got.

    ``headers`` holds, under lower-case names, the value of ``content-type``,
    ``content-encoding``, ``accept``, every ``x-tinker-*`` header and the hot-load routing
    headers (``fireworks-model``, ``fireworks-deployment``, ``x-fireworks-hot-load-*``), and
    ``"<present>"`` for
    ``x-idempotency-key`` and credentials (never their value); ``header_names`` lists every
    header name that arrived. ``body`` is the decoded request body: a JSON value, the protobuf
    message as a ``json_format`` dict (field names as in the ``.proto``, bytes in base64,
    default values omitted as on the wire), ``None`` when empty, or ``{"<bytes>": hex}``.
    ``reply`` is decoded the same way (protobuf replies by ``X-Tinker-Request-Type``).

    Example::

        ex = rec.records[0]
        assert (ex.method, ex.path, ex.status) == ("POST", "/api/v1/client/config", 200)
    """

    index: int
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    header_names: frozenset[str]
    idempotency_key: str | None
    body_format: BodyFormat
    body: Any
    status: int
    reply_format: BodyFormat
    reply: Any
    started_s: float
    finished_s: float

    @property
    def endpoint(self) -> str:
        """The path under ``/api/v1/`` (e.g. ``"forward_backward"``), or the whole path."""
        prefix = paths.PREFIX + "/"
        return self.path[len(prefix) :] if self.path.startswith(prefix) else self.path

    def describe(self) -> str:
        """A one-line summary, e.g. ``POST /api/v1/optim_step -> 200 [json]``."""
        query = "?" + "&".join(f"{k}={v}" for k, v in self.query) if self.query else ""
        return f"{self.method} {self.path}{query} -> {self.status} [{self.body_format}]"


class Recorder(ThreadedServerLifetime):
    """A recording reverse proxy in front of ``target_url``, on ``127.0.0.1``.

    Use it as ``with Recorder(url) as rec:`` (sync) or ``async with`` (asyncio or trio); point
    the client at ``rec.base_url``. ``rec.records`` is every completed exchange in arrival
    order; :meth:`take` returns them and starts afresh (handy to cut a script into steps).
    A request the target cannot answer (connection refused or dropped) gets a 502 JSON reply
    and is recorded with that status.

    ``client_config`` plays a server with other feature flags: its keys are merged into every
    ``client/config`` reply (e.g. ``{"proto_compress_fwdbwd": True, "fwdbwd_max_chunk_len": 8}``
    makes clients compress and chunk ``forward_backward`` bodies). It is the only reply the
    recorder ever changes; the record shows the reply as the client got it.

    Example::

        with Recorder(trainer.base_url) as rec:
            client = tinker.ServiceClient(base_url=rec.base_url, api_key="tml-local")
            ...
            bootstrap = rec.take()
    """

    def __init__(
        self,
        target_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        client_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.target_url = target_url.rstrip("/")
        self._client_config = dict(client_config or {})
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._records: list[RecordedExchange] = []
        self._next_index = 0
        self._server: PromptServer | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None
        self._sock: socket.socket | None = None

    def __repr__(self) -> str:
        state = "running" if self._thread is not None else "stopped"
        return f"Recorder(target_url={self.target_url!r}, {state})"

    # -- lifetime ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The URL clients use instead of the target's, e.g. ``http://127.0.0.1:53001``."""
        if self._bound_port is None:
            raise RuntimeError("the recorder is not running: start() it first")
        return f"http://{self._host}:{self._bound_port}"

    def start(self) -> None:
        """Bind, start serving on a background thread, and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("the recorder is already running")
        sock = bind_listener(self._host, self._port, backlog=128)
        self._bound_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self._app(),
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        server = PromptServer(config)
        thread = threading.Thread(
            target=server.run,
            kwargs={"sockets": [sock]},
            name=f"firetitan-recorder-{self._bound_port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError("the recorder did not start")
            time.sleep(0.005)
        self._sock = sock

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (in-flight requests get ~2 s)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.stop_soon()
        if thread is not None:
            thread.join(timeout=10.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._bound_port = None

    # -- the records ---------------------------------------------------------------------------

    @property
    def records(self) -> tuple[RecordedExchange, ...]:
        """Every completed exchange not yet taken, in order of arrival."""
        with self._lock:
            return tuple(sorted(self._records, key=lambda r: r.index))

    def take(self) -> tuple[RecordedExchange, ...]:
        """Return the completed exchanges (in order of arrival) and forget them."""
        with self._lock:
            taken, self._records = self._records, []
        return tuple(sorted(taken, key=lambda r: r.index))

    def clear(self) -> None:
        """Forget every record so far."""
        with self._lock:
            self._records = []

    def _arrived(self) -> int:
        with self._lock:
            index = self._next_index
            self._next_index += 1
            return index

    def _add(self, exchange: RecordedExchange) -> None:
        with self._lock:
            self._records.append(exchange)

    # -- the proxy ---------------------------------------------------------------------------

    def _app(self) -> Starlette:
        state: dict[str, httpx.AsyncClient] = {}

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(_UPSTREAM_TIMEOUT_S, connect=10.0),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
                follow_redirects=False,
                trust_env=False,
            ) as client:
                state["client"] = client
                yield

        async def proxy(request: Request) -> Response:
            return await self._forward(state["client"], request)

        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan)

    async def _forward(self, client: httpx.AsyncClient, request: Request) -> Response:
        index = self._arrived()
        started = time.monotonic()
        body = await request.body()
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query = request.url.query
        url = self.target_url + raw_path.decode("latin-1") + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in request.headers.items() if k not in _NOT_FORWARDED]
        try:
            upstream = await client.send(
                client.build_request(request.method, url, content=body, headers=headers),
                stream=True,
            )
            try:
                reply = b"".join([chunk async for chunk in upstream.aiter_raw()])
            finally:
                await upstream.aclose()
            status = upstream.status_code
            reply_headers = [
                (k, v) for k, v in upstream.headers.multi_items() if k not in _NOT_FORWARDED
            ]
            if self._client_config and request.url.path.endswith(paths.CLIENT_CONFIG):
                reply, reply_headers = self._override_config(status, reply, reply_headers)
        except httpx.HTTPError as exc:
            status = 502
            detail = f"recorder: the target failed to answer: {type(exc).__name__}"
            reply = json.dumps({"detail": detail}).encode()
            reply_headers = [("content-type", "application/json")]
        secrets = [v for k, v in request.headers.items() if k in _SECRET_HEADERS and v]
        reply_type = _header(reply_headers, "content-type")
        request_type = request.headers.get("x-tinker-request-type", "")
        body_format, decoded = decode_body(
            body,
            content_type=request.headers.get("content-type", ""),
            content_encoding=request.headers.get("content-encoding", ""),
            proto_type=_PROTO_REQUESTS.get(request.url.path.rsplit("/", 1)[-1]),
            secrets=secrets,
        )
        reply_format, reply_decoded = decode_body(
            reply,
            content_type=reply_type,
            content_encoding=_header(reply_headers, "content-encoding"),
            proto_type=_PROTO_REPLIES.get(request_type),
            secrets=secrets,
        )
        self._add(
            RecordedExchange(
                index=index,
                method=request.method,
                path=request.url.path,
                query=tuple(parse_qsl(query, keep_blank_values=True)),
                headers=MappingProxyType(_meaningful_headers(request.headers.items())),
                header_names=frozenset(request.headers.keys()),
                idempotency_key=request.headers.get("x-idempotency-key"),
                body_format=body_format,
                body=decoded,
                status=status,
                reply_format=reply_format,
                reply=reply_decoded,
                started_s=started,
                finished_s=time.monotonic(),
            )
        )
        response = Response(content=reply, status_code=status)
        response.raw_headers = [
            *(
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in reply_headers
                if k != "content-length"
            ),
            (b"content-length", str(len(reply)).encode()),
        ]
        return response

    def _override_config(
        self, status: int, reply: bytes, headers: list[tuple[str, str]]
    ) -> tuple[bytes, list[tuple[str, str]]]:
        if status != 200 or _header(headers, "content-encoding"):
            return reply, headers
        try:
            config = json.loads(reply)
        except ValueError:
            return reply, headers
        if not isinstance(config, dict):
            return reply, headers
        config.update(self._client_config)
        kept = [(k, v) for k, v in headers if k.lower() != "content-type"]
        return json.dumps(config).encode(), [*kept, ("content-type", "application/json")]


def _header(headers: list[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def _meaningful_headers(items: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in _PRESENCE_HEADERS:
            out[key] = PRESENT
        elif key in _VALUE_HEADERS or key.startswith(_VALUE_HEADER_PREFIXES):
            out[key] = value
    return dict(sorted(out.items()))


def decode_body(
    raw: bytes,
    *,
    content_type: str,
    content_encoding: str = "",
    proto_type: type[Message] | None = None,
    secrets: list[str] | tuple[str, ...] = (),
) -> tuple[BodyFormat, Any]:
    """Decode a request or reply body for the record.

    ``zstd``, ``gzip`` and ``deflate`` content encodings are undone first. JSON becomes its
    value (any string equal to one of ``secrets`` is replaced by ``"<redacted>"``); protobuf of
    ``proto_type`` becomes a ``json_format`` dict; anything else ``{"<bytes>": hex}``.

    Example::

        decode_body(b'{"a": 1}', content_type="application/json")  # ("json", {"a": 1})
    """
    try:
        data = _decompress(raw, content_encoding)
    except (zstandard.ZstdError, zlib.error) as exc:
        return "bytes", {"<undecodable>": f"{content_encoding}: {exc}", "<bytes>": raw.hex()}
    if not data:
        return "empty", None
    if "protobuf" in content_type and proto_type is not None:
        message = proto_type()
        try:
            message.ParseFromString(data)
        except DecodeError as exc:
            return "bytes", {
                "<undecodable>": f"{proto_type.__name__}: {exc}",
                "<bytes>": data.hex(),
            }
        return "protobuf", json_format.MessageToDict(message, preserving_proto_field_name=True)
    if "json" in content_type or (not content_type and data[:1] in (b"{", b"[")):
        try:
            value = json.loads(data)
        except ValueError:
            return "bytes", {"<bytes>": data.hex()}
        return "json", _redact(value, frozenset(secrets))
    return "bytes", {"<bytes>": data.hex()}


def _decompress(raw: bytes, content_encoding: str) -> bytes:
    data = raw
    for coding in reversed([c.strip().lower() for c in content_encoding.split(",") if c.strip()]):
        if coding == "zstd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        elif coding in ("gzip", "x-gzip"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            data = zlib.decompress(data)
        elif coding != "identity":
            raise zlib.error(f"unsupported content-encoding {coding!r}")
    return data


def _redact(value: Any, secrets: frozenset[str]) -> Any:
    if not secrets:
        return value
    if isinstance(value, str):
        return REDACTED if value in secrets else value
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    return value
