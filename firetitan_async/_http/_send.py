"""``send_with_retry``: the one send-classify-back-off-raise loop for HTTP requests.

Every request that may be retried goes through :func:`send_with_retry`: it sends the request,
classifies the outcome with the one :class:`~firetitan_async.RetryPolicy` (connection errors,
timeouts, 408/409/429, 5xx), waits as the policy says (honouring ``Retry-After`` and
``retry-after-ms``), and raises a :class:`~firetitan_async.FiretitanError` whose text went
through the one :class:`~firetitan_async._http._redact.Redactor`.

Whether a request may be sent again after it *may* have reached the server is the caller's
call (``replay_safe``): a GET, a DELETE, a POST with an idempotency key or a client-chosen
resource id are replay-safe; a plain POST is retried only when it provably never left (the
connection was never established) or the server asked for a retry (429, 503) before doing
anything. The control plane (``platform/_rest.py``), the data-plane transport
(``_transport.py``) and the rollout sampler (``_deployment_sampler.py``, which sends through
its own :class:`Sender` that holds a concurrency slot per attempt) all use this loop.

Example::

    request = client.build_request("GET", "/v1/accounts", params={"pageSize": 2})
    response = await send_with_retry(
        client, request, policy=RetryPolicy(), redactor=Redactor.of(key), replay_safe=True
    )
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import httpx

from ..errors import APIStatusError, FiretitanError
from ._redact import Redactor
from ._retry import RetryPolicy, retry_after_seconds

__all__ = [
    "NOT_SENT_ERRORS",
    "ErrorFactory",
    "Sender",
    "redacted_body",
    "send_with_retry",
    "status_error",
]

logger = logging.getLogger("firetitan_async.send")

#: Transport errors raised before a request reached the server: any request may be re-sent.
NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Statuses a server sends before doing anything: safe to retry even a non-replayable request.
_REFUSED_STATUSES = frozenset({429, 503})
# Failures to reach the server at all (``RetryPolicy.connect_deadline_s`` bounds their retries).
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)


class Sender(Protocol):
    """What sends one attempt: an ``httpx.AsyncClient``, or anything with its ``send``."""

    async def send(self, request: httpx.Request) -> httpx.Response: ...


#: Builds the exception raised for a final non-2xx reply (the body must be redacted with it).
ErrorFactory = Callable[[httpx.Response, Redactor], FiretitanError]


def status_error(response: httpx.Response, redactor: Redactor) -> FiretitanError:
    """The default error of a non-2xx reply: :class:`APIStatusError` with a redacted body.

    Example::

        raise status_error(response, Redactor.of(api_key))
    """
    return APIStatusError(
        response.status_code,
        redacted_body(response, redactor),
        method=response.request.method,
        path=response.request.url.path,
    )


def redacted_body(
    response: httpx.Response, redactor: Redactor, *, max_text: int | None = None
) -> Any:
    """A reply's body for an error: its JSON, else its text (cut to ``max_text``), redacted.

    Example::

        body = redacted_body(response, Redactor.of(api_key))
    """
    try:
        return redactor.value(response.json())
    except ValueError:
        text = redactor.text(response.text)  # before the cut: a cut key is not recognised
        return text if max_text is None else text.strip()[:max_text]


async def send_with_retry(
    client: Sender,
    request: httpx.Request,
    *,
    policy: RetryPolicy,
    redactor: Redactor,
    replay_safe: bool,
    max_attempts: int | None = None,
    accept: Callable[[httpx.Response, int], bool] | None = None,
    not_yet: Callable[[httpx.Response], float | None] | None = None,
    before_retry: Callable[[httpx.Response], Awaitable[None]] | None = None,
    error: ErrorFactory = status_error,
    log: logging.Logger = logger,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    on_retry: Callable[[str], None] | None = None,
    connect_hint: str | None = None,
    serverless_poll: bool = False,
) -> httpx.Response:
    """Send ``request`` until it succeeds, fails for good, or the policy runs out.

    Returns the 2xx reply, or a reply for which ``accept(response, attempt)`` is true (e.g. a
    404 to a DELETE that an earlier, lost attempt already applied, or a 409 the caller
    resolves itself). Any other final reply raises ``error(response, redactor)``; a transport
    failure raises :class:`~firetitan_async.FiretitanError` naming the method, the path and
    the attempts. ``max_attempts`` caps ``policy.max_attempts`` (``1``: no retry). The request
    body must be bytes (it is re-sent as is). ``sleep`` waits between attempts (the data plane
    gives its CPU turn back meanwhile). ``not_yet(response)`` may call a reply "not yet" (a
    deployment still hot-loading answers 404/425): it returns the seconds to wait before the
    same request is sent again, which spends no attempt of the policy, or None (the reply is
    then judged as usual); it keeps its own count. ``before_retry(response)`` is awaited with
    every reply of a retryable status (before the wait, or before the final error) and may
    raise to stop at once (a session whose trainer job has failed raises
    :class:`~firetitan_async.TrainerJobFailed`). ``on_retry(what)`` hears of every retry before
    its wait, with a short, key-free reason (``"POST /api/v1/forward: HTTP 503"``): the
    operation events count retries with it. ``connect_hint`` ends the error of a request that
    never reached a server (default: "is a server listening at <origin>?").
    ``serverless_poll`` marks a Fireworks serverless ``retrieve_future`` poll, whose 409s the
    policy judges by their text (:meth:`RetryPolicy.retryable_reply`).

    Example::

        request = client.build_request("DELETE", path, timeout=30.0)
        await send_with_retry(
            client, request, policy=policy, redactor=redactor, replay_safe=True,
            accept=lambda r, attempt: r.status_code == 404 and attempt > 1,
        )
    """
    limit = policy.max_attempts if max_attempts is None else min(max_attempts, policy.max_attempts)
    started = time.monotonic()
    deadline = None if policy.deadline_s is None else started + policy.deadline_s
    connect_by = None
    if policy.connect_deadline_s is not None:
        connect_by = started + policy.connect_deadline_s
    only_connect_errors = True  # no attempt has reached a server yet
    method, path = request.method, request.url.path
    attempt = 0
    while True:
        attempt += 1
        out_of_budget = attempt >= limit or (deadline is not None and time.monotonic() >= deadline)
        try:
            response = await client.send(request)
        except httpx.TransportError as exc:
            unreachable = isinstance(exc, _CONNECT_ERRORS)
            only_connect_errors = only_connect_errors and unreachable
            give_up = out_of_budget or (
                only_connect_errors and connect_by is not None and time.monotonic() >= connect_by
            )
            if give_up or not (replay_safe or isinstance(exc, NOT_SENT_ERRORS)):
                hint = None
                if unreachable:
                    hint = connect_hint or f"is a server listening at {_origin(request)}?"
                raise _transport_error(
                    method, path, exc, attempt, redactor, replay_safe, hint
                ) from None
            connect_limit = connect_by if only_connect_errors else None
            delay = _clip(policy.delay(attempt), deadline, connect_limit)
            log.debug(
                "%s %s: %s; retry %d in %.2fs",
                method,
                path,
                redactor.exception(exc),
                attempt,
                delay,
            )
            if on_retry is not None:
                on_retry(f"{method} {path}: {type(exc).__name__}")
            await sleep(delay)
            continue
        only_connect_errors = False
        status = response.status_code
        if response.is_success or (accept is not None and accept(response, attempt)):
            return response
        wait = None if not_yet is None else not_yet(response)
        if wait is not None:
            log.debug("%s %s: HTTP %d, not yet; again in %.2fs", method, path, status, wait)
            attempt -= 1  # the policy's attempts are for failures, not for "not yet"
            await sleep(wait)
            continue
        retryable = (
            policy.retryable_reply(status, response.text, serverless_poll=True)
            if serverless_poll and status == 409
            else policy.retryable_status(status)
        ) and (replay_safe or status in _REFUSED_STATUSES)
        if retryable and before_retry is not None:
            await before_retry(response)
        if out_of_budget or not retryable:
            raise error(response, redactor)
        delay = _clip(policy.delay(attempt, retry_after_seconds(response.headers)), deadline, None)
        log.debug("%s %s: HTTP %d; retry %d in %.2fs", method, path, status, attempt, delay)
        if on_retry is not None:
            on_retry(f"{method} {path}: HTTP {status}")
        await sleep(delay)


def _clip(delay: float, *deadlines: float | None) -> float:
    """``delay``, cut short so the next attempt starts by the earliest deadline (not after)."""
    now = time.monotonic()
    for deadline in deadlines:
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - now))
    return delay


def _origin(request: httpx.Request) -> str:
    url = request.url
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")


def _transport_error(
    method: str,
    path: str,
    exc: httpx.TransportError,
    attempts: int,
    redactor: Redactor,
    replay_safe: bool,
    hint: str | None = None,
) -> FiretitanError:
    maybe_applied = (
        " (the request may have reached the server)"
        if not replay_safe and not isinstance(exc, NOT_SENT_ERRORS)
        else ""
    )
    advice = f"; {redactor.text(hint)}" if hint else ""
    return FiretitanError(
        f"{method} {path} failed after {attempts} attempt(s): "
        f"{redactor.exception(exc)}{maybe_applied}{advice}"
    )
