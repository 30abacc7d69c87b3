"""``DeploymentSampler``: token-in, token-out rollouts from a deployment's completions API.

The async twin of the Fireworks SDK's ``DeploymentSampler`` (asyncio and trio). Each
``sample`` is one ``POST {inference_url}/inference/v1/completions`` (``n`` choices in one
request) through a concurrency controller shared by every caller; ``stream`` yields token
deltas as the server sends them. Retries:

* 404 and 425 (the deployment is hot-loading) are retried every ``hotload_retry_interval_s``
  up to ``hotload_max_retries`` times (the SDK: 5 s x 10);
* connection errors, timeouts, 408, 429 and 5xx follow the ``RetryPolicy`` (``_retry.py``),
  honouring ``Retry-After``; the slot is given back while waiting;
* anything else, or exhausted retries, raises ``SamplingError`` with the request id we sent
  as ``x-request-id`` (the same on every attempt).

Example::

    async with DeploymentSampler(url, "accounts/me/deployments/rollouts",
                                 concurrency=AdaptiveConcurrency()) as sampler:
        [c] = await sampler.sample([1, 2, 3], max_tokens=64, logprobs=True)
        c.tokens, c.logprobs, c.finish_reason, c.policy_version
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import attrs
import httpx

from ._concurrency import AdaptiveConcurrency, ConcurrencyController, FixedConcurrency, Observation
from ._deployment_errors import SamplingError
from ._h11_transport import H11Transport
from ._redact import Redactor
from ._retry import RetryPolicy, retry_after_seconds
from ._transport import check_url_security
from ._version import USER_AGENT
from .errors import InvalidInput
from .wire.completions import (
    SSEDecoder,
    StreamDelta,
    completion_body,
    parse_completion_reply,
    parse_stream_chunk,
)

__all__ = ["DeploymentSampler", "SampledCompletion"]

_HOTLOADING = frozenset({404, 425})
_IDENTITY_HEADER = "fireworks-snapshot-identity"
_QUEUE_HEADERS = ("prefill-queue-duration", "fireworks-prefill-queue-duration")
_DEFAULT_RETRY = RetryPolicy(max_attempts=8, backoff_base_s=0.05, backoff_cap_s=2.0)


@attrs.frozen
class SampledCompletion:
    """One sampled completion.

    ``tokens`` are the completion's token ids, ``logprobs`` their sampling logprobs (when asked
    for), ``finish_reason`` ``"stop"`` or ``"length"``, ``policy_version`` the identity of the
    weight snapshot that produced it (None: the base model, or a server that does not say),
    ``request_id`` the id of the request.

    Example::

        datum_tokens = c.full_tokens        # prompt + completion, for the training datum
    """

    prompt_tokens: list[int]
    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: str
    text: str
    policy_version: str | None
    request_id: str

    @property
    def full_tokens(self) -> list[int]:
        """Prompt then completion token ids."""
        return [*self.prompt_tokens, *self.tokens]


class DeploymentSampler:
    """Rollout sampling from a deployment (see the module docstring).

    ``concurrency`` is a controller (``FixedConcurrency``, ``AdaptiveConcurrency``, or your
    own ``ConcurrencyController``), an int (a fixed window) or None (adaptive, like the SDK).
    ``api_key`` defaults to ``$FIREWORKS_API_KEY``. ``transport`` is the httpx seam (tests).
    """

    def __init__(
        self,
        inference_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: ConcurrencyController | int | None = None,
        retry: RetryPolicy = _DEFAULT_RETRY,
        hotload_retry_interval_s: float = 5.0,
        hotload_max_retries: int = 10,
        timeout_s: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
        allow_insecure_http: bool = False,
    ) -> None:
        try:
            base = check_url_security(inference_url, allow_insecure_http=allow_insecure_http)
        except ValueError as exc:
            raise InvalidInput("inference_url", str(exc)) from None
        if not isinstance(model, str) or not model:
            raise InvalidInput("model", "must be a deployment name, e.g. accounts/a/deployments/d")
        key = api_key if api_key is not None else os.environ.get("FIREWORKS_API_KEY")
        self.model = model
        self.inference_url = base
        if isinstance(concurrency, int):
            concurrency = FixedConcurrency(concurrency)
        self.concurrency: ConcurrencyController = concurrency or AdaptiveConcurrency()
        self._retry = retry
        self._hot_interval = hotload_retry_interval_s
        self._hot_max = hotload_max_retries
        self._redact = Redactor.of(key)
        # The transport is called directly: no per-request cookie jar, auth flow or hooks
        # (httpx.AsyncClient's), which were a good part of the client's CPU per rollout.
        self._transport = transport or H11Transport(ssl_context=httpx.create_ssl_context())
        self._headers: list[tuple[str, str]] = [
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ]
        if key:
            self._headers += [("Authorization", f"Bearer {key}"), ("X-Api-Key", key)]
        self._timeout = {"connect": min(timeout_s, 10.0), "read": timeout_s,
                         "write": timeout_s, "pool": None}
        self._url = httpx.URL(f"{base}/inference/v1/completions")

    def __repr__(self) -> str:
        return f"DeploymentSampler({self.inference_url!r}, {self.model!r})"

    async def __aenter__(self) -> DeploymentSampler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._transport.aclose()

    async def sample(
        self,
        prompt_tokens: Sequence[int],
        *,
        n: int = 1,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        logprobs: bool = False,
        seed: int | None = None,
    ) -> list[SampledCompletion]:
        """``n`` completions of ``prompt_tokens`` (one request). ``InvalidInput`` for a bad
        argument (nothing sent); ``SamplingError`` when the request fails for good.

        Example::

            completions = await sampler.sample(prompt, n=4, max_tokens=32, seed=7)
        """
        body = completion_body(
            self.model, prompt_tokens, n=n, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=stop, logprobs=logprobs, seed=seed,
        )
        request_id = uuid.uuid4().hex
        content = json.dumps(body).encode()
        attempt = 0
        hot = 0
        started = time.monotonic()
        while True:
            attempt += 1
            response, error = await self._attempt(content, request_id)
            if response is not None and response.is_success:
                try:
                    choices = parse_completion_reply(response.json(), want_logprobs=logprobs)
                except (SamplingError, ValueError) as exc:
                    raise self._error(str(exc), request_id, response, attempt) from None
                version = response.headers.get(_IDENTITY_HEADER) or None
                prompt = list(body["prompt"])
                return [
                    SampledCompletion(prompt, c.tokens, c.logprobs, c.finish_reason, c.text,
                                      version, request_id)
                    for c in choices
                ]
            wait, hot = self._retry_wait(response, error, attempt, hot, started)
            if wait is None:
                raise self._failure(response, error, request_id, attempt)
            await anyio.sleep(wait)

    async def stream(
        self,
        prompt_tokens: Sequence[int],
        *,
        max_tokens: int = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] | None = None,
        logprobs: bool = False,
        seed: int | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Token deltas of one completion as the server streams them (SSE), then one delta
        with its ``finish_reason``. Retried like ``sample`` until the first event arrives.

        Example::

            async for delta in sampler.stream(prompt, max_tokens=64):
                if delta.token is not None: tokens.append(delta.token)
        """
        body = completion_body(
            self.model, prompt_tokens, n=1, max_tokens=max_tokens, temperature=temperature,
            top_p=top_p, stop=stop, logprobs=True, seed=seed, stream=True,
        )
        request_id = uuid.uuid4().hex
        content = json.dumps(body).encode()
        headers = {"x-request-id": request_id, "Accept": "text/event-stream"}
        attempt = 0
        hot = 0
        started = time.monotonic()
        while True:
            attempt += 1
            await self.concurrency.acquire()
            observation: Observation | None = None
            t0 = time.monotonic()
            try:
                try:
                    response = await self._send(content, headers)
                    try:
                        observation = _observe(response, t0)
                        if response.is_success:
                            decoder = SSEDecoder()
                            async for raw in response.aiter_bytes():
                                for data in decoder.feed(raw):
                                    if data.strip() == "[DONE]":
                                        return
                                    for delta in _deltas(data, request_id, attempt):
                                        yield delta if logprobs else attrs.evolve(
                                            delta, logprob=None
                                        )
                            raise SamplingError("the stream ended without [DONE]",
                                                request_id=request_id, attempts=attempt)
                        await response.aread()
                    finally:
                        await response.aclose()
                    error: httpx.TransportError | None = None
                except httpx.TransportError as exc:
                    observation = Observation(None, time.monotonic() - t0)
                    response, error = None, exc
            finally:
                self.concurrency.release(observation)
            wait, hot = self._retry_wait(response, error, attempt, hot, started)
            if wait is None:
                raise self._failure(response, error, request_id, attempt)
            await anyio.sleep(wait)

    # -- internals ------------------------------------------------------------------------

    async def _attempt(
        self, content: bytes, request_id: str
    ) -> tuple[httpx.Response | None, httpx.TransportError | None]:
        await self.concurrency.acquire()
        observation: Observation | None = None
        t0 = time.monotonic()
        try:
            try:
                response = await self._send(content, {"x-request-id": request_id})
                await response.aread()
                await response.aclose()
            except httpx.TransportError as exc:
                observation = Observation(None, time.monotonic() - t0)
                return None, exc
            observation = _observe(response, t0)
            return response, None
        finally:
            self.concurrency.release(observation)

    async def _send(self, content: bytes, extra: dict[str, str]) -> httpx.Response:
        request = httpx.Request(
            "POST", self._url, headers=[*self._headers, *extra.items()], content=content,
            extensions={"timeout": self._timeout},
        )
        return await self._transport.handle_async_request(request)

    def _retry_wait(
        self,
        response: httpx.Response | None,
        error: httpx.TransportError | None,
        attempt: int,
        hot: int,
        started: float,
    ) -> tuple[float | None, int]:
        """Seconds to wait before the next attempt (None: give up), and the hot-load count."""
        if response is not None and response.status_code in _HOTLOADING:
            if hot < self._hot_max:
                return self._hot_interval, hot + 1
            return None, hot
        retryable = error is not None or (
            response is not None and self._retry.retryable_status(response.status_code)
        )
        deadline = self._retry.deadline_s
        if (
            not retryable
            or attempt >= self._retry.max_attempts
            or (deadline is not None and time.monotonic() - started >= deadline)
        ):
            return None, hot
        after = retry_after_seconds(response.headers) if response is not None else None
        return self._retry.delay(attempt, after), hot

    def _failure(
        self,
        response: httpx.Response | None,
        error: httpx.TransportError | None,
        request_id: str,
        attempts: int,
    ) -> SamplingError:
        if response is None:
            what = self._redact.exception(error) if error else "no reply"
            return SamplingError(f"completions request failed: {what}", request_id=request_id,
                                 attempts=attempts)
        return self._error(
            f"completions request failed: HTTP {response.status_code}: "
            f"{self._redact.text(response.text[:500])}",
            request_id, response, attempts,
        )

    def _error(
        self, message: str, request_id: str, response: httpx.Response, attempts: int
    ) -> SamplingError:
        return SamplingError(
            self._redact.text(message),
            request_id=request_id,
            server_request_id=response.headers.get("x-request-id"),
            status_code=response.status_code,
            attempts=attempts,
        )


def _observe(response: httpx.Response, t0: float) -> Observation:
    queue: float | None = None
    for name in _QUEUE_HEADERS:
        value = response.headers.get(name)
        if value:
            try:
                queue = float(value)
            except ValueError:
                queue = None
            break
    return Observation(response.status_code, time.monotonic() - t0, queue)


def _deltas(data: str, request_id: str, attempt: int) -> list[StreamDelta]:
    try:
        chunk: Any = json.loads(data)
    except ValueError:
        raise SamplingError("malformed completions stream: an event is not JSON",
                            request_id=request_id, attempts=attempt) from None
    return parse_stream_chunk(chunk)
