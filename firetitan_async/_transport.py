"""The transport: one ``httpx.AsyncClient`` per session, with auth, timeouts and retries.

This is the only module that performs data-plane HTTP. It knows three kinds of exchange:

* :meth:`Transport.call` — a JSON request/response (bootstrap, direct replies, listings);
* :meth:`Transport.submit` — a POST that starts a server-side operation and returns its
  :class:`~firetitan_async.wire.futures.Accepted` future id; the idempotency key is fixed for
  all retries of one submission, so a submission whose reply was lost is never applied twice;
* :meth:`Transport.retrieve` — the long-poll of ``retrieve_future`` until the result exists.

Every retry decision comes from :class:`~firetitan_async._retry.RetryPolicy`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Generator, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from ._h11_transport import H11Transport
from ._retry import RetryPolicy, retry_after_seconds
from ._tracking import current_tracker
from ._version import USER_AGENT
from .errors import APIStatusError, FiretitanError, RequestFailedError
from .wire.futures import (
    Accepted,
    Done,
    Failed,
    MetadataOnly,
    TryAgain,
    classify_retrieve_reply,
    parse_accepted,
)
from .wire.tinker import retrieve_future_body

__all__ = ["Transport", "check_url_security"]

logger = logging.getLogger("firetitan_async.transport")

_JSON = "application/json"
# How long the client lets one retrieve_future long-poll run (the server holds it ~30 s).
_LONG_POLL_TIMEOUT_S = 45.0
# A try_again faster than this is treated as "the server does not long-poll": back off a little.
_FAST_TRY_AGAIN_S = 0.5
_FAST_TRY_AGAIN_MAX_SLEEP_S = 0.5


class _ApiKeyAuth(httpx.Auth):
    """Adds ``X-API-Key`` per request, so the key never sits in the client's default headers."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["X-API-Key"] = self._api_key
        yield request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(api_key=<redacted>)"


def check_url_security(base_url: str, *, allow_insecure_http: bool) -> str:
    """Validate ``base_url`` and return it without a trailing slash.

    Plain ``http://`` is refused for any host that is not loopback, unless
    ``allow_insecure_http`` is set, so an API key is never sent in clear over a network.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ValueError(
            f"refusing plain http:// to non-loopback host {parts.hostname!r}: use https://, "
            "or pass allow_insecure_http=True if you really mean it"
        )
    return base_url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Transport:
    """One HTTP client, its retry policy and its credentials. Closed with :meth:`aclose`."""

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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry
        self._timeout = timeout
        if transport is None and not http2:
            # Our own HTTP/1.1 transport: httpcore's pool costs O(requests in flight) per
            # request and reply, which dominated the client's CPU at hundreds in flight.
            transport = H11Transport(
                max_connections=max_connections, ssl_context=httpx.create_ssl_context()
            )
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=_ApiKeyAuth(api_key) if api_key else None,
            headers={"User-Agent": USER_AGENT, "Accept": _JSON},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0), pool=None),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=min(512, max_connections)
            ),
            transport=transport,
            http2=http2,
        )

    def __repr__(self) -> str:
        return f"Transport(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()

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
        )
        return _json_of(response)

    # -- operations: submit, then retrieve -------------------------------------------------

    async def submit(
        self,
        path: str,
        *,
        json_body: Any = None,
        content: bytes | None = None,
        content_type: str = _JSON,
        headers: Mapping[str, str] | None = None,
    ) -> Accepted:
        """POST a submission and return the server's future id.

        The ``X-Idempotency-Key`` is generated once and reused for every retry, so the server
        applies the operation at most once however many times the request is sent.
        """
        if (tracker := current_tracker()) is not None:
            tracker.submitting()
        body = content if content is not None else _dumps(json_body)
        all_headers = {"Content-Type": content_type, "X-Idempotency-Key": _idempotency_key()}
        if headers:
            all_headers.update(headers)
        response = await self._send(
            "POST", path, content=body, headers=all_headers, max_attempts=self.retry.max_attempts
        )
        accepted = parse_accepted(_json_of(response))
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
        tracker = current_tracker()
        extensions = {} if tracker is None else {"firetitan.reply_started": tracker.reply_started}
        allow_metadata_only = True
        iteration = 0
        failures = 0
        fast_sleep = 0.0
        headers = {
            "Content-Type": _JSON,
            "Accept": accept,
            "X-Tinker-Request-Type": request_type,
        }
        while True:
            headers["X-Tinker-Request-Iteration"] = str(iteration)
            iteration += 1
            started = time.monotonic()
            body = _dumps(retrieve_future_body(request_id, allow_metadata_only=allow_metadata_only))
            if tracker is not None:
                tracker.polling(request_type)
            try:
                response = await self._client.post(
                    "/api/v1/retrieve_future",
                    content=body,
                    headers=headers,
                    timeout=httpx.Timeout(_LONG_POLL_TIMEOUT_S, connect=10.0, pool=None),
                    extensions=extensions,
                )
            except httpx.TransportError as exc:
                failures += 1
                await self._backoff_or_raise(failures, None, exc, "retrieve_future")
                continue
            status = response.status_code
            if status != 200:
                if status == 410:
                    raise RequestFailedError(
                        "the server no longer holds this operation's result (promise expired)",
                        category="server",
                        request_id=request_id,
                    )
                if not self.retry.retryable_status(status):
                    raise _status_error(response, request_id=request_id)
                failures += 1
                await self._backoff_or_raise(
                    failures,
                    retry_after_seconds(response.headers),
                    _status_error(response, request_id=request_id),
                    "retrieve_future",
                )
                continue
            failures = 0
            outcome = classify_retrieve_reply(
                response.headers.get("content-type", ""), response.content
            )
            if tracker is not None:
                if isinstance(outcome, TryAgain):
                    tracker.try_again(outcome.queue_state, outcome.queue_state_reason)
                elif isinstance(outcome, Done | MetadataOnly):
                    tracker.result_ready(final=isinstance(outcome, Done))
            if isinstance(outcome, Done):
                return outcome
            if isinstance(outcome, Failed):
                raise RequestFailedError(
                    outcome.message, category=outcome.category, request_id=request_id
                )
            if isinstance(outcome, MetadataOnly):
                allow_metadata_only = False
                continue
            assert isinstance(outcome, TryAgain)
            if time.monotonic() - started < _FAST_TRY_AGAIN_S:
                # The server answered try_again without holding the poll: don't spin.
                fast_sleep = min(_FAST_TRY_AGAIN_MAX_SLEEP_S, max(0.005, fast_sleep * 2))
                await anyio.sleep(fast_sleep)
            else:
                fast_sleep = 0.0

    # -- the retry loop ----------------------------------------------------------------------

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
    ) -> httpx.Response:
        deadline = (
            None if self.retry.deadline_s is None else time.monotonic() + self.retry.deadline_s
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._client.request(
                    method,
                    path,
                    content=content,
                    headers=headers,
                    params=params,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
            except httpx.TransportError as exc:
                if attempt >= max_attempts or _past(deadline):
                    raise _transport_error(method, path, exc, attempt) from exc
                delay = self.retry.delay(attempt)
                logger.debug(
                    "%s %s: %s; retry %d in %.3fs", method, path, _describe(exc), attempt, delay
                )
                if (tracker := current_tracker()) is not None:
                    tracker.retried(f"{method} {path}: {type(exc).__name__}")
                await anyio.sleep(delay)
                continue
            if response.is_success:
                return response
            if (
                not self.retry.retryable_status(response.status_code)
                or attempt >= max_attempts
                or _past(deadline)
            ):
                raise _status_error(response)
            delay = self.retry.delay(attempt, retry_after_seconds(response.headers))
            if (tracker := current_tracker()) is not None:
                tracker.retried(f"{method} {path}: HTTP {response.status_code}")
            logger.debug(
                "%s %s: HTTP %d; retry %d in %.3fs",
                method,
                path,
                response.status_code,
                attempt,
                delay,
            )
            await anyio.sleep(delay)

    async def _backoff_or_raise(
        self, failures: int, retry_after: float | None, error: Exception, what: str
    ) -> None:
        if failures >= self.retry.max_attempts:
            if isinstance(error, httpx.TransportError):
                raise _transport_error("POST", f"/api/v1/{what}", error, failures) from error
            raise error
        delay = self.retry.delay(failures, retry_after)
        logger.debug("%s: %s; retry %d in %.3fs", what, _describe(error), failures, delay)
        if (tracker := current_tracker()) is not None:
            tracker.retried(f"{what}: {_short(error)}")
        await anyio.sleep(delay)


def _idempotency_key() -> str:
    return f"firetitan-{uuid.uuid4()}"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _json_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise FiretitanError(
            f"{response.request.method} {response.request.url.path}: expected JSON, got "
            f"{response.headers.get('content-type', 'no content type')}"
        ) from exc


def _status_error(response: httpx.Response, *, request_id: str | None = None) -> APIStatusError:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return APIStatusError(
        response.status_code,
        body,
        method=response.request.method,
        path=response.request.url.path,
        request_id=request_id,
    )


def _transport_error(method: str, path: str, exc: httpx.TransportError, attempts: int) -> Exception:
    return FiretitanError(f"{method} {path} failed after {attempts} attempt(s): {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(error: Exception) -> str:
    if isinstance(error, APIStatusError):
        return f"HTTP {error.status_code}"
    return type(error).__name__


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline
