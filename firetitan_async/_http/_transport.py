"""The transport: one HTTP transport per session, with the key, timeouts and retries.

This is the only module that performs data-plane HTTP. It knows three kinds of exchange:

* :meth:`Transport.call` — a JSON request/response (bootstrap, direct replies, listings);
* :meth:`Transport.submit` — a POST that starts a server-side operation and returns its
  :class:`~firetitan_async.wire.futures.Accepted` future id; the idempotency key is fixed for
  all retries of one submission, so a submission whose reply was lost is never applied twice;
* :meth:`Transport.retrieve` — the long-poll of ``retrieve_future`` until the result exists.

Every request is built by :meth:`Transport._request` (the fixed headers, the key attached
there only) and sent by :meth:`Transport.send` straight to the session's
``httpx.AsyncBaseTransport`` (ours, httpx's for HTTP/2 or a proxy, or the caller's): one send
path, no ``httpx.AsyncClient`` layer. Every request goes through the one retry loop
(:func:`~firetitan_async._http._send.send_with_retry`, decisions from
:class:`~firetitan_async._http._retry.RetryPolicy`) and every server or exception text
that becomes an error or a log line through the session's one
:class:`~firetitan_async._http._redact.Redactor`. With our own HTTP/1.1 transport an exchange holds
a CPU turn (:mod:`~firetitan_async._http._cpu_turns`) while it computes and gives it back while it
waits. Environment proxies (``HTTPS_PROXY``, ``NO_PROXY``, …) apply as httpx applies them.
Settings and failure messages: ``docs/transport.md``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._version import USER_AGENT
from ..errors import APIStatusError, FiretitanError, InvalidInput, RequestFailedError
from ..wire import WireRequest, paths
from ..wire.futures import (
    Accepted,
    Done,
    Failed,
    MetadataOnly,
    TryAgain,
    classify_retrieve_reply,
    parse_accepted,
    retrieve_future_body,
)
from ._cpu_turns import CpuTurns, Turn, hold_turn, sleep_off_turn
from ._http11_transport import DEFAULT_KEEPALIVE_EXPIRY_S, TURN_EXTENSION, Http11Transport
from ._progress import current_tracker
from ._redact import Redactor
from ._retry import RetryPolicy
from ._send import ErrorFactory, redacted_body, send_with_retry

__all__ = ["Transport", "check_url_security", "is_loopback_url"]

logger = logging.getLogger("firetitan_async.transport")

_JSON = "application/json"
# How long the client lets one retrieve_future long-poll run (the server holds it ~30 s).
_LONG_POLL_TIMEOUT_S = 45.0
# A try_again faster than this is treated as "the server does not long-poll": back off a little.
_FAST_TRY_AGAIN_S = 0.5
_FAST_TRY_AGAIN_MAX_SLEEP_S = 0.5
_LONG_POLL_TIMEOUTS = httpx.Timeout(_LONG_POLL_TIMEOUT_S, connect=10.0, pool=None).as_dict()


def check_url_security(base_url: str, *, allow_insecure_http: bool) -> str:
    """Validate ``base_url`` and return it without a trailing slash.

    Plain ``http://`` is refused for any host that is not loopback, unless
    ``allow_insecure_http`` is set, so an API key is never sent in clear over a network.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput("base_url", f"must be an http(s) URL with a host, got {base_url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise InvalidInput(
            "base_url",
            f"refusing plain http:// to non-loopback host {parts.hostname!r}: use https://, "
            "or pass allow_insecure_http=True if you really mean it"
        )
    return base_url.rstrip("/")


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is a loopback address (``localhost``, ``127.0.0.1``, ``::1``).

    Example::

        is_loopback_url("http://127.0.0.1:8000")  # True
    """
    return _is_loopback(urlsplit(url).hostname or "")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transport:
    """One HTTP transport, its retry policy and its credentials. Closed with :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        http2: bool = False,
        max_connections: int = 4096,
        trust_env: bool = True,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        before_retry: Callable[[httpx.Response], Awaitable[None]] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # Awaited with each reply about to be retried (see send_with_retry); may raise.
        self._before_retry = before_retry
        self.retry = retry
        # A Fireworks serverless gateway: its retrieve_future 409s follow retry.capacity_409.
        self.serverless = self.base_url.endswith(paths.SERVERLESS_PREFIX)
        self._timeout = timeout
        self._connect_hint = (
            f"is a trainer listening at {self.base_url}? `firetitan-async serve` starts a "
            "local one"
        )
        # Every server text and exception text becomes an error or a log line through this.
        self._redact = Redactor.of(api_key)
        # CPU turns only with our own transport, which gives the turn back around its network
        # waits; a caller's transport (a mock, HTTP/2, a proxy's) runs unbounded.
        self._turns: CpuTurns | None = None
        proxy = _env_proxy(self.base_url) if trust_env else None
        if transport is None and not http2 and proxy is None:
            # Our own HTTP/1.1 transport: httpcore's pool costs O(requests in flight) per
            # request and reply, which dominated the client's CPU at hundreds in flight. Its
            # TLS context is built off the event loop on the first https:// connection.
            self._turns = CpuTurns()
            transport = Http11Transport(
                max_connections=max_connections,
                keepalive_expiry=keepalive_expiry,
                turns=self._turns,
            )
        elif transport is None:
            # HTTP/2, or behind HTTP(S)_PROXY / ALL_PROXY (not excluded by NO_PROXY): httpx's
            # own transport, as on the control plane.
            transport = httpx.AsyncHTTPTransport(
                http2=http2,
                proxy=proxy,
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=min(512, max_connections),
                    keepalive_expiry=keepalive_expiry,
                ),
            )
        # The one send path: every request is built here (_request) and handed to this
        # transport (send). httpx.AsyncClient's layer (header and URL merging, the auth flow,
        # redirects, hooks, the cookie jar on every reply) cost ~55 us a request, as much as
        # our transport's whole exchange, and does nothing a data-plane request needs.
        self._transport = transport
        # Cookies a reply sets (a load balancer's stickiness) go back with later requests.
        self._cookies = httpx.Cookies()
        self._urls: dict[str, httpx.URL] = {}
        # The fixed headers of every request; the key is attached here and nowhere else.
        self._headers: list[tuple[bytes, bytes]] = [
            (b"Accept", _JSON.encode()),
            (b"Accept-Encoding", b"gzip, deflate"),
            (b"Connection", b"keep-alive"),
            (b"User-Agent", USER_AGENT.encode()),
        ]
        if api_key:
            self._headers.append((b"X-API-Key", api_key.encode()))
        self._header_at = {name.lower(): at for at, (name, _) in enumerate(self._headers)}
        self._timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0), pool=None).as_dict()

    def _url(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(self.base_url + path)
        return url

    @property
    def redactor(self) -> Redactor:
        """The redactor of this transport's key: what a client scrubs server text with."""
        return self._redact

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        """Close the transport and its connections."""
        await self._transport.aclose()

    # -- plain JSON calls -------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        retry: bool = True,
    ) -> Any:
        """A JSON request whose reply is JSON; retried on transient failures."""
        async with self._hold() as turn:
            content = None if json_body is None else _dumps(json_body)
            headers = {"Content-Type": _JSON} if content is not None else {}
            if method != "GET":
                headers["X-Idempotency-Key"] = _idempotency_key()
            response = await self._send(
                method,
                path,
                content=content,
                headers=headers,
                params=params,
                timeout=timeout,
                max_attempts=self.retry.max_attempts if retry else 1,
                turn=turn,
            )
            return _json_of(response, self._redact)

    # -- operations: submit, then retrieve -------------------------------------------------

    async def submit(
        self,
        path: str | None = None,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str = _JSON,
        headers: Mapping[str, str] | None = None,
        build: Callable[[], WireRequest] | None = None,
    ) -> Accepted:
        """POST a submission and return the server's future id.

        Either ``path`` with its body (``json_body``, or ``content`` of ``content_type``), or
        ``build``, which encodes the request (path, body, headers) when called: it runs while
        this exchange holds its CPU turn, so a burst of operations encodes a few per loop turn
        instead of every one in the turn they all start in.

        The ``X-Idempotency-Key`` is generated once and reused for every retry, so the server
        applies the operation at most once however many times the request is sent.
        """
        if (tracker := current_tracker()) is not None:
            tracker.submitting()
        async with self._hold() as turn:
            if build is not None:
                request = build()
                path, body = request.path, request.content
                content_type, headers = request.content_type, request.headers
            else:
                body = content if content is not None else _dumps(json_body)
            assert path is not None, "submit needs a path or a build"
            all_headers = {"Content-Type": content_type, "X-Idempotency-Key": _idempotency_key()}
            if headers:
                all_headers.update(headers)
            response = await self._send(
                "POST",
                path,
                content=body,
                headers=all_headers,
                max_attempts=self.retry.max_attempts,
                turn=turn,
            )
            accepted = parse_accepted(_json_of(response, self._redact))
        if (tracker := current_tracker()) is not None:
            tracker.accepted(accepted.request_id)
        return accepted

    async def retrieve(self, request_id: str, *, request_type: str, accept: str = _JSON) -> Done:
        """Long-poll ``retrieve_future`` until the operation's result is available.

        ``accept`` is the ``Accept`` header of the polls (the result forms the caller decodes).

        Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried with backoff,
        counting consecutive failures against the retry policy; a ``try_again`` reply re-polls at
        once, since the server already held the request. A failed operation raises
        :class:`RequestFailedError`.
        """
        async with self._hold() as turn:
            return await self._retrieve(
                request_id, request_type=request_type, accept=accept, turn=turn
            )

    async def _retrieve(
        self, request_id: str, *, request_type: str, accept: str, turn: Turn | None
    ) -> Done:
        tracker = current_tracker()
        extensions: dict[str, Any] = {TURN_EXTENSION: turn}
        if tracker is not None:
            extensions["firetitan.reply_started"] = tracker.reply_started
        allow_metadata_only = True
        iteration = 0
        fast_sleep = 0.0
        headers = {
            "Content-Type": _JSON,
            "Accept": accept,
            "X-Tinker-Request-Type": request_type,
        }

        def error(response: httpx.Response, redactor: Redactor) -> FiretitanError:
            if response.status_code == 410:
                return RequestFailedError(
                    "the server no longer holds this operation's result (promise expired)",
                    category="server",
                    request_id=request_id,
                )
            return self._status_error(response, request_id=request_id)

        while True:
            # One poll; its transient failures are retried (the same request, as the tinker
            # SDK's HTTP client re-sends it) by the one retry loop.
            headers["X-Tinker-Request-Iteration"] = str(iteration)
            iteration += 1
            started = time.monotonic()
            body = _dumps(retrieve_future_body(request_id, allow_metadata_only=allow_metadata_only))
            if tracker is not None:
                tracker.polling(request_type)
            request = self._request(
                "POST",
                paths.RETRIEVE_FUTURE,
                content=body,
                headers=headers,
                timeouts=_LONG_POLL_TIMEOUTS,
                extensions=extensions,
            )
            response = await self._send_with_retry(
                request, turn, error=error, serverless_poll=self.serverless
            )
            content_type = response.headers.get("content-type", "")
            content = response.content
            if "json" in content_type:  # redacted where it enters: ids, reasons, messages
                content = self._redact.json_bytes(content)
            else:  # protobuf: masked in place, so its length prefixes still hold
                content = self._redact.binary_bytes(content)
            outcome = classify_retrieve_reply(content_type, content)
            if tracker is not None:
                if isinstance(outcome, TryAgain):
                    tracker.try_again(outcome.queue_state, outcome.queue_state_reason)
                elif isinstance(outcome, Done | MetadataOnly):
                    tracker.result_ready(final=isinstance(outcome, Done))
            if isinstance(outcome, Done):
                return outcome
            if isinstance(outcome, Failed):
                raise RequestFailedError(
                    self._redact.text(outcome.message),
                    category=outcome.category,
                    request_id=request_id,
                )
            if isinstance(outcome, MetadataOnly):
                allow_metadata_only = False
                continue
            assert isinstance(outcome, TryAgain)
            if time.monotonic() - started < _FAST_TRY_AGAIN_S:
                # The server answered try_again without holding the poll: don't spin.
                fast_sleep = min(_FAST_TRY_AGAIN_MAX_SLEEP_S, max(0.005, fast_sleep * 2))
                await self._sleep(fast_sleep, turn)
            else:
                fast_sleep = 0.0

    # -- the retry loop: the one in _send.py ---------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        params: Mapping[str, str | int] | None = None,
        timeout: float | None = None,
        max_attempts: int,
        turn: Turn | None,
    ) -> httpx.Response:
        timeouts = None
        if timeout is not None:
            timeouts = httpx.Timeout(timeout).as_dict()
        request = self._request(
            method,
            path,
            content=content,
            headers=headers,
            params=params,
            timeouts=timeouts,
            extensions={TURN_EXTENSION: turn},
        )
        return await self._send_with_retry(request, turn, max_attempts=max_attempts)

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None,
        headers: Mapping[str, str],
        timeouts: dict[str, float | None] | None,
        extensions: dict[str, Any],
        params: Mapping[str, str | int] | None = None,
    ) -> httpx.Request:
        """A request with the fixed headers (a request's own header of the same name replaces
        the fixed one in place, as httpx merges them), its timeouts and the jar's cookies."""
        raw = [*self._headers]
        for key, value in headers.items():
            name = key.encode()
            at = self._header_at.get(name.lower())
            if at is None:
                raw.append((name, value.encode()))
            else:
                raw[at] = (name, value.encode())
        url = self._url(path)
        if params:
            url = url.copy_merge_params(params)
        request = httpx.Request(
            method,
            url,
            headers=raw,
            content=content,
            extensions={**extensions, "timeout": timeouts or self._timeouts},
        )
        if self._cookies:
            self._cookies.set_cookie_header(request)
        return request

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send one attempt and read its reply (the one data-plane send path)."""
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        if "set-cookie" in response.headers:
            self._cookies.extract_cookies(response)
        return response

    async def _send_with_retry(
        self,
        request: httpx.Request,
        turn: Turn | None,
        *,
        max_attempts: int | None = None,
        error: ErrorFactory | None = None,
        serverless_poll: bool = False,
    ) -> httpx.Response:
        """Every data-plane request carries an idempotency key or is a read: replay-safe."""
        return await send_with_retry(
            self,
            request,
            policy=self.retry,
            redactor=self._redact,
            replay_safe=True,
            max_attempts=max_attempts,
            error=error or (lambda response, _redactor: self._status_error(response)),
            log=logger,
            sleep=partial(self._sleep, turn=turn),
            on_retry=_tell_tracker,
            before_retry=None if self._before_retry is None else partial(self._check, turn=turn),
            connect_hint=self._connect_hint,
            serverless_poll=serverless_poll,
        )

    async def _check(self, response: httpx.Response, turn: Turn | None) -> None:
        """The ``before_retry`` hook, run with the CPU turn given back (it may do I/O)."""
        assert self._before_retry is not None
        if self._turns is None:
            await self._before_retry(response)
            return
        async with self._turns.yielded(turn):
            await self._before_retry(response)

    # -- errors: every server text and exception text redacted ------------------------------

    def _status_error(
        self, response: httpx.Response, *, request_id: str | None = None
    ) -> APIStatusError:
        return APIStatusError(
            response.status_code,
            redacted_body(response, self._redact),
            method=response.request.method,
            path=response.request.url.path,
            request_id=request_id,
        )

    # -- CPU turns -------------------------------------------------------------------------

    async def cpu_gate(self) -> None:
        """Wait for a CPU turn and give it back: an operation's task calls this first.

        Of a burst of operations started together, only a few pass in each loop iteration,
        so their first CPU segments (encoding the request) do not all run in one iteration.
        """
        if self._turns is not None:
            async with self._turns.hold():
                pass

    def _hold(self) -> AbstractAsyncContextManager[Turn | None]:
        """A CPU turn for one exchange (None with a caller's transport: no bound)."""
        return hold_turn(self._turns)

    async def _sleep(self, seconds: float, turn: Turn | None) -> None:
        await sleep_off_turn(self._turns, seconds, turn)


def _env_proxy(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``ALL_PROXY``, excluded by ``NO_PROXY``), or None: the standard library's reading of the
    same variables httpx reads (tests/http/test_proxy.py checks the behaviour)."""
    proxies = urllib.request.getproxies_environment()
    url = httpx.URL(base_url)
    proxy = proxies.get(url.scheme) or proxies.get("all")
    # With proxy variables set, proxy_bypass reads NO_PROXY (on every platform).
    if not proxy or urllib.request.proxy_bypass(url.host):
        return None
    return proxy


def _idempotency_key() -> str:
    return f"firetitan-{uuid.uuid4()}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_of(response: httpx.Response, redactor: Redactor) -> Any:
    """A JSON reply, every secret in it redacted before it is parsed (Redactor.json_bytes)."""
    try:
        return json.loads(redactor.json_bytes(response.content))
    except ValueError as exc:
        raise FiretitanError(
            f"{response.request.method} {response.request.url.path}: expected JSON, got "
            f"{response.headers.get('content-type', 'no content type')}"
        ) from exc


def _tell_tracker(what: str) -> None:
    """A retry, told to the operation being tracked (its events and stall reports)."""
    if (tracker := current_tracker()) is not None:
        tracker.retried(what)
