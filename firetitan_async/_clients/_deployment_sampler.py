"""``DeploymentSampler``: token-in, token-out rollouts from a deployment's completions API.

The async twin of the Fireworks SDK's ``DeploymentSampler`` (asyncio and trio). Each
``sample`` is one ``POST {inference_url}/inference/v1/completions`` (``n`` choices in one
request) through a concurrency controller shared by every caller; ``stream`` yields token
deltas as the server sends them. Retries:

* 404 and 425 (the deployment is hot-loading) are retried every ``hotload_retry_interval_s``
  up to ``hotload_max_retries`` times (the SDK: 5 s x 10);
* connection errors, timeouts, 408, 429 and 5xx follow the ``RetryPolicy`` (``_retry.py``),
  honouring ``Retry-After``; the slot is given back while waiting;

both in the library's one retry loop (``_send.send_with_retry``), each attempt holding one
slot of the concurrency controller (:class:`_Slotted`);
* anything else, or exhausted retries, raises ``SamplingError`` with the request id we sent
  as ``x-request-id`` (the same on every attempt).

Example::

    async with DeploymentSampler(url, "accounts/me/deployments/rollouts",
                                 concurrency=AdaptiveConcurrency()) as sampler:
        [c] = await sampler.sample([1, 2, 3], max_tokens=64, logprobs=True)
        c.tokens, c.logprobs, c.finish_reason, c.policy_version
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import attrs
import httpx

from .._http._cpu_turns import CpuTurns, Turn, hold_turn, sleep_off_turn
from .._http._environment import resolve_api_key
from .._http._http11_transport import (
    DEFAULT_KEEPALIVE_EXPIRY_S,
    STREAM_EXTENSION,
    TURN_EXTENSION,
    Http11Transport,
)
from .._http._redact import Redactor
from .._http._retry import RetryPolicy
from .._http._send import send_with_retry
from .._http._transport import check_url_security
from .._session._ordered_ops import first_error
from .._version import USER_AGENT
from ..errors import FiretitanError, InvalidInput, OperationTimeout, SamplingError
from ..wire.completions import (
    SSEDecoder,
    Stop,
    StreamDelta,
    StreamEcho,
    check_max_seq_len,
    completion_body,
    has_token_ids,
    parse_completion_reply,
    parse_stream_chunk,
)
from ..wire.validation import validate_keepalive_expiry, validate_seconds
from ._concurrency import AdaptiveConcurrency, ConcurrencyController, FixedConcurrency, Observation

if TYPE_CHECKING:
    from tinker.types import ModelInput

__all__ = ["DeploymentSampler", "SampledCompletion"]

logger = logging.getLogger("firetitan_async.deployment_sampler")

_HOTLOADING = frozenset({404, 425})
_IDENTITY_HEADER = "fireworks-snapshot-identity"
_QUEUE_HEADERS = ("prefill-queue-duration", "fireworks-prefill-queue-duration")
_DEFAULT_RETRY = RetryPolicy(max_attempts=8, backoff_base_s=0.05, backoff_cap_s=2.0)
# sample_many checks its prompts in slices of about this much CPU, yielding between them.
_CHECK_BUDGET_S = 0.0005


@attrs.frozen
class SampledCompletion:
    """One sampled completion.

    ``tokens`` are the completion's token ids, ``logprobs`` their sampling logprobs (when asked
    for), ``finish_reason`` ``"stop"`` or ``"length"``, ``policy_version`` the identity of the
    weight snapshot that produced it (None: the base model, or a server that does not say),
    ``request_id`` the id of the request. With ``echo`` and ``logprobs``, ``prompt_logprobs``
    holds one logprob per prompt token (the first None: it has no context); with
    ``include_routing_matrix``, ``routing_matrices`` one base64 routing matrix (R3, for MoE
    router replay) per completion token and, with ``echo``, ``prompt_routing_matrices`` one per
    prompt token.

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
    prompt_logprobs: list[float | None] | None = None
    routing_matrices: list[str] | None = None
    prompt_routing_matrices: list[str] | None = None

    @property
    def full_tokens(self) -> list[int]:
        """Prompt then completion token ids."""
        return [*self.prompt_tokens, *self.tokens]


class DeploymentSampler:
    """Rollout sampling from a deployment (see the module docstring).

    ``concurrency`` is a controller (``FixedConcurrency``, ``AdaptiveConcurrency``, or your
    own ``ConcurrencyController``), an int (a fixed window) or None (adaptive, like the SDK).
    ``api_key`` defaults to ``$FIREWORKS_API_KEY``. ``tokenizer`` (a Hugging Face tokenizer,
    or anything with ``decode(ids, skip_special_tokens=False)``) turns token-id stops into
    the strings the completions API takes, as the SDK's sampler does. Without one,
    ``load_tokenizer`` (an async function returning it) is awaited once, the first time a call
    needs the tokenizer (a token-id stop, :meth:`get_tokenizer`): a managed setup's samplers
    load ``ManagedConfig.tokenizer_model`` so, in a worker thread (a ``tokenizer`` wins). An
    idle pooled connection is reused for ``keepalive_expiry`` seconds, then closed (as
    ``ServiceSession``'s). ``transport`` is the httpx seam (tests).

    Example::

        sampler = DeploymentSampler(url, model,
                                    load_tokenizer=partial(client.get_tokenizer, "Qwen/Qwen3-8B"))
        await sampler.sample(prompt, stop=[tokenizer_eos_id])   # loads it on this first need
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
        tokenizer: Any = None,
        keepalive_expiry: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        load_tokenizer: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        try:
            base = check_url_security(inference_url, allow_insecure_http=allow_insecure_http)
        except ValueError as exc:
            raise InvalidInput("inference_url", str(exc)) from None
        _check_model(model)
        validate_seconds(timeout_s, "timeout_s")
        validate_seconds(hotload_retry_interval_s, "hotload_retry_interval_s")
        validate_keepalive_expiry(keepalive_expiry)
        if load_tokenizer is not None and not callable(load_tokenizer):
            raise InvalidInput("load_tokenizer", "must be an async function returning a "
                               f"tokenizer, got {type(load_tokenizer).__name__}")
        self.tokenizer = tokenizer  # checked by the setter
        self._load_tokenizer = load_tokenizer
        self._tokenizer_lock: anyio.Lock | None = None
        key = resolve_api_key(api_key)
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
        # With our own transport a request holds a CPU turn while it builds or parses and
        # gives it back around its network waits, so when hundreds of replies land in one
        # loop turn they are parsed a couple per turn (a caller's transport: no bound).
        self._turns: CpuTurns | None = None
        self._owns_transport = transport is None  # a caller's transport is the caller's to close
        if transport is None:
            self._turns = CpuTurns()
            transport = Http11Transport(
                ssl_context=httpx.create_ssl_context(), turns=self._turns,
                keepalive_expiry=keepalive_expiry,
            )
        self._transport = transport
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

    @property
    def tokenizer(self) -> Any:
        """The tokenizer that decodes token-id stops: the one given or loaded (None: none
        yet). Settable, as the SDK's sampler's (``InvalidInput`` for one without ``decode``)."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Any) -> None:
        if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
            raise InvalidInput("tokenizer", "must have decode(ids, skip_special_tokens=False)")
        self._tokenizer = tokenizer
        self._decode_token: Callable[[int], str] | None = (
            None if tokenizer is None else partial(_decode_one, tokenizer)
        )

    async def get_tokenizer(self) -> Any:
        """The sampler's tokenizer: the one given, else ``load_tokenizer``'s, awaited on the
        first call (concurrent first calls share one load); ``InvalidInput`` when it has
        neither.

        Example::

            tokenizer = await sampler.get_tokenizer()
            text = tokenizer.decode(completion.tokens)
        """
        if self._tokenizer is not None:
            return self._tokenizer
        load = self._load_tokenizer
        if load is None:
            raise InvalidInput("tokenizer", "this sampler has none: pass tokenizer= or "
                               "load_tokenizer= (a managed setup's samplers load "
                               "ManagedConfig.tokenizer_model)")
        if self._tokenizer_lock is None:
            self._tokenizer_lock = anyio.Lock()
        async with self._tokenizer_lock:  # a second caller waits for the first's load
            if self._tokenizer is None:
                loaded = await load()
                if loaded is None or not callable(getattr(loaded, "decode", None)):
                    raise InvalidInput("load_tokenizer", "must return a tokenizer (with "
                                       f"decode), got {type(loaded).__name__}")
                self.tokenizer = loaded
        return self._tokenizer

    async def _tokenizer_for(self, stop: object) -> None:
        """Load the tokenizer first when ``stop`` holds token ids and none is loaded yet."""
        if self._decode_token is None and self._load_tokenizer is not None and (
            has_token_ids(stop)
        ):
            await self.get_tokenizer()

    async def __aenter__(self) -> DeploymentSampler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections (of a transport it made: a ``transport=`` given to it,
        or shared with the sampler it was made from, is not its own to close)."""
        if self._owns_transport:
            await self._transport.aclose()

    async def sample(
        self,
        prompt: Sequence[int] | ModelInput,
        *,
        n: int = 1,
        max_tokens: int = 1024,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Stop | None = None,
        logprobs: bool = False,
        echo: bool = False,
        max_seq_len: int | None = None,
        prompt_cache_key: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        include_routing_matrix: bool = False,
        **extra: Any,
    ) -> list[SampledCompletion]:
        """``n`` completions of ``prompt`` (token ids or a ``ModelInput``; one request).

        The Fireworks SDK's parameters and defaults: ``top_k=0`` is sent on purpose (serving
        defaults would truncate rollouts); ``stop`` is a string, strings, or token ids (decoded
        with the sampler's ``tokenizer``, loaded first if need be: :meth:`get_tokenizer`);
        ``echo`` also returns the prompt's logprobs (``prompt_logprobs``); ``max_seq_len``
        returns nothing for a prompt of that length or more (no request) and drops completions
        longer than that in total, as the SDK does; ``prompt_cache_key`` is passed to the
        server; ``timeout`` bounds this call (waiting for a slot, retries and hot-load waits
        included; not a first tokenizer load) and raises ``OperationTimeout``;
        ``include_routing_matrix`` returns each token's routing matrix (R3); ``extra`` adds
        fields to the request body as they are. ``InvalidInput`` for a bad argument (nothing
        sent); ``SamplingError`` when the request fails for good.

        Example::

            completions = await sampler.sample(prompt, n=4, max_tokens=32, seed=7)
        """
        if stop is not None and self._decode_token is None:
            await self._tokenizer_for(stop)
        args = _Args(n, max_tokens, temperature, top_p, top_k, stop, logprobs, echo,
                     max_seq_len, prompt_cache_key, seed, include_routing_matrix, extra)
        if timeout is None:
            sender = _Slotted(self, stream=False)
            # Admission first: of a burst of thousands of callers only the window's worth go
            # on to build a request; each of the others does the least work (a place in the
            # controller's FIFO) in the loop turn where the burst started. The arguments are
            # still checked before anything is sent.
            await sender.acquire()
            return await self._sample_admitted(sender, None, prompt, args, uuid.uuid4().hex)
        return await self._sample_within(timeout, None, prompt, args)

    async def sample_many(
        self,
        prompts: Sequence[Sequence[int] | ModelInput],
        *,
        n: int = 1,
        max_tokens: int = 1024,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Stop | None = None,
        logprobs: bool = False,
        echo: bool = False,
        max_seq_len: int | None = None,
        prompt_cache_key: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        include_routing_matrix: bool = False,
        on_result: Callable[[int, list[SampledCompletion]], object] | None = None,
        **extra: Any,
    ) -> list[list[SampledCompletion]]:
        """``sample`` for each of ``prompts`` (same arguments), the results in prompt order;
        ``timeout`` bounds each prompt's request from the moment it has a slot.

        ``on_result(index, completions)`` is called as each prompt's result arrives, in the
        order they arrive, so a pipeline can score and train on the first rollouts while the
        rest are sampled (an exception it raises fails the batch like a failed request).

        For a large batch this is the cheap way to start it: one task admits the prompts as
        the concurrency window frees slots, so a request task exists only for the prompts in
        flight (thousands of ``sample`` tasks started at once each run a first step in the
        same loop turn). Every prompt is checked before anything is sent (``InvalidInput``
        names it: ``prompts[7][3]``). The first request that fails for good cancels the
        others and raises its ``SamplingError``.

        Example::

            results = await sampler.sample_many(prompts, max_tokens=32, logprobs=True)
            for prompt, [completion] in zip(prompts, results): ...

            # as they arrive: into a stream another task reads
            send, receive = anyio.create_memory_object_stream(len(prompts))
            await sampler.sample_many(prompts, on_result=lambda i, c: send.send_nowait((i, c)))
        """
        if on_result is not None and not callable(on_result):
            raise InvalidInput("on_result", f"must be callable, got {type(on_result).__name__}")
        if stop is not None and self._decode_token is None:
            await self._tokenizer_for(stop)
        args = _Args(n, max_tokens, temperature, top_p, top_k, stop, logprobs, echo,
                     max_seq_len, prompt_cache_key, seed, include_routing_matrix, extra)
        if timeout is not None:
            validate_seconds(timeout, "timeout")
        bodies: list[dict[str, Any]] = []
        clock = time.perf_counter
        turn_ends = clock() + _CHECK_BUDGET_S
        for index, prompt in enumerate(prompts):
            try:
                bodies.append(self._body(prompt, args))
            except InvalidInput as exc:
                field = exc.field
                if field == "prompt" or field.startswith("prompt["):
                    field = f"prompts[{index}]{field[6:]}"
                raise InvalidInput(field, exc.problem) from None
            if clock() >= turn_ends:  # a long batch is checked over several loop turns
                await anyio.lowlevel.checkpoint()
                turn_ends = clock() + _CHECK_BUDGET_S
        results: list[list[SampledCompletion]] = [[] for _ in bodies]
        cursor = 0  # the next prompt to admit, whoever takes the slot for it

        async def admitted() -> int | None:
            """A slot and the next prompt (None when every prompt is taken: no slot held)."""
            nonlocal cursor
            sender = _Slotted(self, stream=False)
            await sender.acquire()
            if cursor >= len(bodies):
                sender.release_unused()
                return None
            cursor += 1
            senders[cursor - 1] = sender
            return cursor - 1

        async def one(index: int, sender: _Slotted) -> None:
            if timeout is None:
                results[index] = await self._sample_admitted(
                    sender, bodies[index], (), args, uuid.uuid4().hex
                )
            else:
                results[index] = await self._sample_within(timeout, bodies[index], (), args,
                                                           sender)
            if on_result is not None:
                on_result(index, results[index])

        async def carry(index: int | None) -> None:
            # A request task goes on to the next prompt (queueing for a slot behind the
            # others) instead of ending: starting an anyio task costs more than its request's
            # own CPU turn, and the window's worth of tasks carries the whole batch.
            while index is not None:
                await one(index, senders.pop(index))
                index = await admitted() if cursor < len(bodies) else None

        senders: dict[int, _Slotted] = {}
        try:
            async with anyio.create_task_group() as tg:
                # A task only for a prompt with a slot: the tasks grow with the window. A free
                # slot is taken without a pass through the loop, so a fresh window would start
                # all its tasks in one turn (256 starts: ~6 ms): a turn starts them for at most
                # _CHECK_BUDGET_S, then yields.
                turn_ends = clock() + _CHECK_BUDGET_S
                while cursor < len(bodies) and (first := await admitted()) is not None:
                    try:
                        tg.start_soon(carry, first)
                    except BaseException:
                        senders.pop(first).release_unused()
                        raise
                    if clock() >= turn_ends:
                        await anyio.lowlevel.checkpoint()
                        turn_ends = clock() + _CHECK_BUDGET_S
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            for sender in senders.values():  # admitted, never started (cancelled)
                sender.release_unused()
        return results

    async def compute_logprobs(
        self, prompt: Sequence[int] | ModelInput, *, timeout: float | None = None
    ) -> list[float | None]:
        """The logprob of each prompt token under the deployment's weights (the first None),
        from one ``echo`` request, as the Fireworks SDK's sampling client computes them (a
        training client's ``forward`` is the exact way; this is the served model's view).

        Example::

            logprobs = await sampler.compute_logprobs([1, 2, 3])   # [None, -2.1, -0.7]
        """
        [completion] = await self.sample(prompt, max_tokens=1, echo=True, logprobs=True,
                                         timeout=timeout)
        assert completion.prompt_logprobs is not None  # echo + logprobs: parsed or raised
        return completion.prompt_logprobs

    def _body(self, prompt: object, args: _Args, *, stream: bool = False) -> dict[str, Any]:
        """The checked request body of one prompt (``InvalidInput`` names a bad argument)."""
        if args.max_seq_len is not None:
            check_max_seq_len(args.max_seq_len)
        return completion_body(
            self.model, prompt, n=args.n, stream=stream, max_tokens=args.max_tokens,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, stop=args.stop,
            logprobs=args.logprobs, echo=args.echo, prompt_cache_key=args.prompt_cache_key,
            seed=args.seed, include_routing_matrix=args.include_routing_matrix,
            extra=args.extra, decode_token=self._decode_token,
        )

    async def _sample_within(
        self,
        timeout: float,
        body: dict[str, Any] | None,
        prompt: object,
        args: _Args,
        sender: _Slotted | None = None,
    ) -> list[SampledCompletion]:
        """A sample bounded by ``timeout`` seconds (``OperationTimeout`` when it runs out);
        ``sender`` holds its slot already, or the slot is waited for within the bound."""
        validate_seconds(timeout, "timeout")
        request_id = uuid.uuid4().hex
        started = time.monotonic()
        with anyio.move_on_after(timeout):
            if sender is None:
                sender = _Slotted(self, stream=False)
                await sender.acquire()
            return await self._sample_admitted(sender, body, prompt, args, request_id)
        if sender is not None:
            sender.release_unused()
        raise _timed_out("sample", request_id, timeout, time.monotonic() - started)

    async def _sample_admitted(
        self,
        sender: _Slotted,
        body: dict[str, Any] | None,
        prompt: object,
        args: _Args,
        request_id: str,
    ) -> list[SampledCompletion]:
        """One ``sample`` whose window slot ``sender`` holds (given back on every path);
        ``body`` is the checked request body, or None to build it from the arguments."""
        try:
            async with self._cpu_turn() as turn:  # given back around every network wait
                sender.turn = turn
                if body is None:
                    body = self._body(prompt, args)
                tokens: list[int] = body["prompt"]
                max_seq_len = args.max_seq_len
                if max_seq_len is not None and len(tokens) >= max_seq_len:
                    return []  # the SDK's rule: no room for a completion, no request
                response = await self._send_with_retry(sender, body, request_id, {}, turn)
                try:
                    choices = parse_completion_reply(
                        json.loads(self._redact.json_bytes(response.content)),
                        want_logprobs=args.logprobs,
                        echo_of=tokens if args.echo else None,
                        want_routing=args.include_routing_matrix,
                    )
                except ValueError:
                    raise self._error("malformed completions reply: not JSON", request_id,
                                      response, sender.attempts) from None
                except SamplingError as exc:
                    raise self._error(exc.message, request_id, response,
                                      sender.attempts) from None
                version = response.headers.get(_IDENTITY_HEADER) or None
                return [
                    SampledCompletion(list(tokens), c.tokens, c.logprobs, c.finish_reason,
                                      c.text, version, request_id, c.prompt_logprobs,
                                      c.routing_matrices, c.prompt_routing_matrices)
                    for c in choices
                    if max_seq_len is None or len(tokens) + len(c.tokens) <= max_seq_len
                ]
        finally:
            sender.release_unused()

    async def stream(
        self,
        prompt: Sequence[int] | ModelInput,
        *,
        max_tokens: int = 1024,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Stop | None = None,
        logprobs: bool = False,
        echo: bool = False,
        max_seq_len: int | None = None,
        prompt_cache_key: str | None = None,
        seed: int | None = None,
        timeout: float | None = None,
        include_routing_matrix: bool = False,
        **extra: Any,
    ) -> AsyncIterator[StreamDelta]:
        """Token deltas of one completion as the server streams them (SSE), then one delta
        with its ``finish_reason``. Retried like ``sample`` until the first event arrives.

        ``sample``'s parameters, except: with ``echo`` the first delta is the prompt's
        (``token`` None; ``prompt``, its ``text``, and with ``logprobs`` its
        ``prompt_logprobs``, the first None, as ``sample(echo=True)`` returns them; with
        ``include_routing_matrix`` its ``prompt_routing_matrices``), as the Fireworks SDK's
        streaming path reads an echo; ``max_seq_len`` only skips a prompt of that length or
        more (nothing is yielded; a stream cannot take back tokens); ``timeout`` bounds the
        whole stream; with ``include_routing_matrix`` each delta carries its
        ``routing_matrix``.

        Example::

            async for delta in sampler.stream(prompt, max_tokens=64):
                if delta.token is not None: tokens.append(delta.token)
        """
        if stop is not None and self._decode_token is None:
            await self._tokenizer_for(stop)
        args = _Args(1, max_tokens, temperature, top_p, top_k, stop, True, echo,
                     max_seq_len, prompt_cache_key, seed, include_routing_matrix, extra)
        body = self._body(prompt, args, stream=True)  # logprobs always on the wire
        if timeout is not None:
            validate_seconds(timeout, "timeout")
        if max_seq_len is not None and len(body["prompt"]) >= max_seq_len:
            return
        request_id = uuid.uuid4().hex
        ends = math.inf if timeout is None else time.monotonic() + timeout
        echoed = StreamEcho(body["prompt"], want_routing=include_routing_matrix) if echo else None
        sender = _Slotted(self, stream=True)
        response: httpx.Response | None = None
        with anyio.move_on_after(timeout if timeout is not None else math.inf):
            response = await self._send_with_retry(
                sender, body, request_id, {"Accept": "text/event-stream"}
            )
        if response is None:  # the timeout ran out before the reply started
            sender.release_held()
            raise _timed_out("stream", request_id, timeout or 0.0, timeout or 0.0)
        try:  # the reply holds its slot until the stream ends
            decoder = SSEDecoder()
            chunks = _body_chunks(response, request_id, sender.attempts, self._redact)
            while True:
                if timeout is None:
                    raw = await anext(chunks, None)
                else:
                    with anyio.move_on_after(ends - time.monotonic()) as scope:
                        raw = await anext(chunks, None)
                    if scope.cancelled_caught:
                        await chunks.aclose()
                        raise _timed_out("stream", request_id, timeout, timeout)
                if raw is None:
                    break
                for data in self._events(decoder, raw, request_id, sender.attempts):
                    if data.strip() == "[DONE]":
                        if echoed is not None and not echoed.done:
                            raise self._stream_error("the stream ended before the echoed "
                                                     "prompt", request_id, sender.attempts)
                        return
                    for delta in self._deltas(data, request_id, sender.attempts, echoed):
                        yield delta if logprobs else attrs.evolve(
                            delta, logprob=None, prompt_logprobs=None
                        )
            raise SamplingError("the stream ended without [DONE]",
                                request_id=request_id, attempts=sender.attempts)
        finally:
            try:
                await response.aclose()
            finally:
                sender.release_held()

    # -- internals ------------------------------------------------------------------------

    def _cpu_turn(self) -> AbstractAsyncContextManager[Turn | None]:
        """A CPU turn for one request (None with a caller's transport: no bound)."""
        return hold_turn(self._turns)

    async def _sleep(self, seconds: float, turn: Turn | None) -> None:
        """A retry's or a hot-load's wait, with the CPU turn given back."""
        await sleep_off_turn(self._turns, seconds, turn)

    async def _send_with_retry(
        self,
        sender: _Slotted,
        body: dict[str, Any],
        request_id: str,
        extra: dict[str, str],
        turn: Turn | None = None,
    ) -> httpx.Response:
        """One completions request through the one retry loop: the same ``x-request-id`` on
        every attempt; 404/425 waited out as hot-loading; a final failure as ``SamplingError``.

        The first attempt's slot is taken before the request is built: of a burst of thousands
        of callers, only the window's worth encode a request, the rest wait for a slot (built
        first, all their requests took one loop iteration: 250 ms at 2,000 callers)."""
        await sender.acquire()
        try:
            request = httpx.Request(
                "POST", self._url, headers=[*self._headers, ("x-request-id", request_id),
                                            *extra.items()],
                content=json.dumps(body).encode(),
                # A streamed reply is read as it arrives (the transport hands its body over).
                extensions={
                    "timeout": self._timeout, STREAM_EXTENSION: sender.stream, TURN_EXTENSION: turn
                },
            )
        except BaseException:
            sender.release_unused()
            raise
        hot = 0

        def not_yet(response: httpx.Response) -> float | None:
            nonlocal hot
            if response.status_code not in _HOTLOADING or hot >= self._hot_max:
                return None
            if "html" in response.headers.get("content-type", ""):
                return None  # a web page, not a deployment loading weights: final at once
            hot += 1
            return self._hot_interval

        def error(response: httpx.Response, redactor: Redactor) -> FiretitanError:
            return self._error(
                f"completions request failed: HTTP {response.status_code}: "
                f"{redactor.cut(response.text, 500)}",
                request_id, response, sender.attempts,
            )

        try:
            return await send_with_retry(
                sender, request, policy=self._retry, redactor=self._redact, replay_safe=True,
                not_yet=not_yet, error=error, log=logger, sleep=partial(self._sleep, turn=turn),
                connect_hint=f"is the deployment's server listening at {self.inference_url}?",
            )
        except SamplingError:
            raise
        except FiretitanError as exc:  # no reply: the loop's redacted transport failure
            raise SamplingError(str(exc), request_id=request_id,
                                attempts=sender.attempts) from None
        finally:
            sender.release_unused()  # a slot taken for an attempt that was never sent

    def _events(
        self, decoder: SSEDecoder, raw: bytes, request_id: str, attempts: int
    ) -> list[str]:
        """The ``data`` payloads ``raw`` completes; a malformed stream is a ``SamplingError``."""
        try:
            return decoder.feed(raw)
        except SamplingError as exc:
            raise self._stream_error(exc.message, request_id, attempts) from None

    def _deltas(
        self, data: str, request_id: str, attempts: int, echoed: StreamEcho | None
    ) -> list[StreamDelta]:
        """The deltas of one event (``echoed``: the prompt's delta first, once it has all come);
        a malformed one is a ``SamplingError`` with redacted text (the server's words may echo
        the key)."""
        try:
            chunk = json.loads(self._redact.text(data))
            if echoed is None or echoed.done:
                return parse_stream_chunk(chunk)
            head, rest = echoed.split(chunk)
            deltas = [] if rest is None else parse_stream_chunk(rest)
            return deltas if head is None else [head, *deltas]
        except ValueError:
            raise self._stream_error(
                "malformed completions stream: an event is not JSON", request_id, attempts
            ) from None
        except SamplingError as exc:
            raise self._stream_error(exc.message, request_id, attempts) from None

    def _stream_error(self, message: str, request_id: str, attempts: int) -> SamplingError:
        return SamplingError(self._redact.text(message), request_id=request_id, attempts=attempts)

    def _error(
        self, message: str, request_id: str, response: httpx.Response, attempts: int
    ) -> SamplingError:
        return SamplingError(
            self._redact.text(message),
            request_id=request_id,
            server_request_id=self._redact.text(response.headers.get("x-request-id", "")) or None,
            status_code=response.status_code,
            attempts=attempts,
        )


def sampler_sharing(base: DeploymentSampler, model: str) -> DeploymentSampler:
    """A sampler of ``model`` through ``base``'s connections, CPU turns, concurrency window,
    retry and tokenizer; it owns none of them (its ``aclose`` closes nothing).

    Example::

        v2 = sampler_sharing(first, "accounts/a/trainingSessions/ts/checkpoints/v2")
    """
    _check_model(model)
    other = copy.copy(base)
    other.model = model
    other._owns_transport = False
    return other


class _Slotted:
    """Sends one attempt of a sampler's request while holding one slot of its concurrency
    controller: the slot is taken before the request goes out and given back, with what was
    observed, once the reply has been read (or failed), so no slot is held between attempts.
    A successful ``stream=True`` reply keeps its slot until :meth:`release_held`."""

    def __init__(self, sampler: DeploymentSampler, *, stream: bool) -> None:
        self._concurrency = sampler.concurrency
        self._transport = sampler._transport
        #: Whether a successful reply is returned unread (its body then streams).
        self.stream = stream
        self._held: Observation | None = None
        self._acquired = False
        self._turns = sampler._turns
        #: The CPU turn of the request (given back while a retry waits for a slot).
        self.turn: Turn | None = None
        #: Attempts sent so far (hot-load waits included).
        self.attempts = 0

    async def acquire(self) -> None:
        """Take the slot of the next attempt now (before its request is built)."""
        if not self._acquired:
            await self._concurrency.acquire()
            self._acquired = True

    async def send(self, request: httpx.Request) -> httpx.Response:
        if not self._acquired and self._turns is not None:
            async with self._turns.yielded(self.turn):  # never wait for a slot holding a turn
                await self.acquire()
        await self.acquire()
        self._acquired = False
        self.attempts += 1
        t0 = time.monotonic()
        observation = Observation(None, 0.0)
        try:
            response = await self._transport.handle_async_request(request)
            if self.stream and response.is_success:
                self._held = _observe(response, t0)
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
            observation = _observe(response, t0)
            return response
        except httpx.TransportError:
            observation = Observation(None, time.monotonic() - t0)
            raise
        finally:
            if self._held is None:
                self._concurrency.release(observation)

    def release_unused(self) -> None:
        """Give back a slot :meth:`acquire` took that no attempt used (an error or a
        cancellation came first)."""
        if self._acquired:
            self._acquired = False
            self._concurrency.release(Observation(None, 0.0))

    def release_held(self) -> None:
        """Give back the slot a streaming reply held."""
        if self._held is not None:
            held, self._held = self._held, None
            self._concurrency.release(held)


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


async def _body_chunks(
    response: httpx.Response, request_id: str, attempts: int, redactor: Redactor
) -> AsyncGenerator[bytes]:
    """A streaming reply's body; a connection broken mid-stream is a ``SamplingError`` (not
    retried: deltas were already yielded)."""
    try:
        async for raw in response.aiter_bytes():
            yield raw
    except httpx.TransportError as exc:
        raise SamplingError(f"the stream broke: {redactor.exception(exc)}",
                            request_id=request_id, attempts=attempts) from None



@attrs.frozen
class _Args:
    """The arguments of one sampling call, checked when its body is built."""

    n: int
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: Stop | None
    logprobs: bool
    echo: bool
    max_seq_len: int | None
    prompt_cache_key: str | None
    seed: int | None
    include_routing_matrix: bool
    extra: dict[str, Any]


def _check_model(model: object) -> None:
    if not isinstance(model, str) or not model:
        raise InvalidInput("model", "must be a deployment name, e.g. accounts/a/deployments/d")


def _decode_one(tokenizer: Any, token: int) -> str:
    """One token id's text (a token-id stop), as the Fireworks SDK decodes it."""
    return str(tokenizer.decode([token], skip_special_tokens=False))


def _timed_out(
    operation: str, request_id: str, budget_s: float, spent_s: float
) -> OperationTimeout:
    return OperationTimeout(operation, seq_id=None, request_id=request_id, phase="call",
                            budget_s=budget_s, phase_s={"call": spent_s})
