"""The local deployment's completions endpoint: ``POST /inference/v1/completions``.

Token ids in, token ids out, with the fields the Fireworks SDK's ``DeploymentSampler`` sends
and reads. ``model`` is ``accounts/{a}/deployments/{id}``; ``prompt`` a list of token ids (a
string is taken as its UTF-8 bytes). Sampling is the trainer's own (``_sampler.sample``) at the
deployment's hot-loaded weights: for the same weights, prompt, ``n`` and ``seed`` it returns
exactly what the trainer's sampler returns. ``top_k`` 0 means no top-k; ``stop`` strings are
their UTF-8 bytes, or the one token of a special token of the deployment's base model whose
text they are (a model served with ``tokenizer=DIR``: ``"<|im_end|>"``). Each choice carries
``text``, ``finish_reason`` (``stop``/``length``), ``raw_output.completion_token_ids`` and,
with ``logprobs``, ``logprobs.content[]`` entries
``{"token", "token_id", "logprob", "sampling_logprob"}``. ``echo`` puts the prompt first (in
``text``, ``completion_token_ids`` and ``logprobs.content``, whose prompt entries carry the
model's ``logprob``, 0.0 for the first token, and a null ``sampling_logprob``).
``include_routing_matrix`` adds a ``routing_matrix`` to each ``logprobs.content[]`` entry (the
SDK's shape for router replay, a base64 string per token; the tiny model has no experts, so the
matrix is a stand-in computed from the token and the one before it). ``prompt_cache_key`` is
accepted (no cache to key).

``stream: true`` answers Server-Sent Events: one chunk per token per choice, a final chunk per
choice with its ``finish_reason`` and ``raw_output``, one with ``usage`` (and ``perf_metrics``
when ``perf_metrics_in_response``), then ``data: [DONE]``. The ``x-request-id`` header is
echoed (or made up); ``fireworks-snapshot-identity`` names the snapshot that produced the
reply and ``fireworks-snapshot-version`` the number of hot-loads applied (local extensions).

The ``max_concurrency`` knob answers 429 to a request arriving while that many are in flight;
``latency_s`` holds each request that long before sampling.

Example::

    routes = inference_routes(registry_of)
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._data_plane import MAX_CONTEXT, _stop_sequences
from ._deployments import DeploymentRegistry, check_key
from ._http_errors import ApiError
from ._input_error import ModelInputError
from ._json_body import read_json_object
from ._model import EOS_TOKEN, MAX_VOCAB, vocab_of
from ._sampler import SampledSequence, prompt_logprobs, sample
from ._server_state import ServerState

__all__ = ["inference_routes"]

MAX_N = 64
_INLINE_TOKENS = 32
_FIELDS = frozenset(
    {
        "model", "prompt", "n", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed",
        "logprobs", "stream", "raw_output", "perf_metrics_in_response", "prompt_cache_key",
        "echo", "return_token_ids", "user", "include_routing_matrix",
    }
)


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _int(body: dict[str, Any], name: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ApiError(400, f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


def _float(body: dict[str, Any], name: str, default: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number, got {value!r}")
    return float(value)


def _prompt(body: dict[str, Any]) -> np.ndarray:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompt = list(prompt.encode("utf-8"))
    if not isinstance(prompt, list) or not prompt or not all(
        isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt
    ):
        raise ApiError(400, "prompt must be a non-empty list of token ids (integers >= 0)")
    if len(prompt) > MAX_CONTEXT:
        raise ApiError(400, f"prompt has {len(prompt)} tokens; the limit is {MAX_CONTEXT}")
    return np.asarray(prompt, dtype=np.int64)


class _Params:
    """A checked completions request."""

    def __init__(self, body: dict[str, Any]) -> None:
        for field in sorted(set(body) - _FIELDS):
            raise ApiError(400, f"Extra inputs are not permitted, field: '{field}'")
        model = body.get("model")
        if not isinstance(model, str):
            raise ApiError(400, "model is required (accounts/{a}/deployments/{id})")
        self.model = model
        self.prompt = _prompt(body)
        self.n = _int(body, "n", 1, 1, MAX_N)
        self.max_tokens = _int(body, "max_tokens", 16, 0, MAX_CONTEXT)
        self.temperature = _float(body, "temperature", 1.0)
        if self.temperature < 0:
            raise ApiError(400, f"temperature must be >= 0, got {self.temperature}")
        self.top_p = _float(body, "top_p", 1.0)
        if not 0.0 < self.top_p <= 1.0:
            raise ApiError(400, f"top_p must be in (0, 1], got {self.top_p}")
        top_k = _int(body, "top_k", 0, -1, MAX_VOCAB)
        self.top_k = -1 if top_k <= 0 else top_k
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ApiError(400, f"seed must be an integer, got {seed!r}")
        self.seed: int | None = seed
        stop = body.get("stop")
        if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
            raise ApiError(400, "stop must be a string or a list of strings")
        self.raw_stop = stop
        self.stop = self.stops_for()
        self.logprobs = bool(body.get("logprobs"))
        self.stream = body.get("stream", False) is True
        self.perf = body.get("perf_metrics_in_response", False) is True
        self.echo = body.get("echo", False) is True
        self.routing = body.get("include_routing_matrix", False) is True
        # the routing matrices ride in logprobs.content, as the Fireworks server sends them
        self.content = self.logprobs or self.routing

    def stops_for(self, special: Mapping[str, int] | None = None) -> tuple[tuple[int, ...], ...]:
        """The stop token sequences, with the served model's special tokens."""
        try:
            return _stop_sequences(self.raw_stop, special=special)
        except ApiError as exc:
            raise ApiError(400, exc.detail.replace("sampling_params.", "")) from None


_Entry = tuple[int, float | None, str, str | None]  # token, logprob, text, routing matrix


def _entries(seq: SampledSequence, params: _Params, before: int) -> list[_Entry]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    n = len(seq.tokens)
    out: list[_Entry] = []
    prev = before
    for i, (tok, lp) in enumerate(zip(seq.tokens.tolist(), seq.logprobs.tolist(), strict=True)):
        raw = bytes([tok]) if tok < 256 else b""
        matrix = _routing_matrix(prev, tok) if params.routing else None
        out.append((tok, lp, decoder.decode(raw, final=i == n - 1), matrix))
        prev = tok
    return out


def _prompt_entries(prompt: list[int], logprobs: np.ndarray, params: _Params) -> list[_Entry]:
    """The echoed prompt's entries: the model's logprob of each token (0.0 for the first,
    which has no context) and a null sampling logprob (nothing was sampled)."""
    text = bytes(t for t in prompt if t < 256).decode("utf-8", errors="replace")
    out: list[_Entry] = []
    prev = -1
    for i, tok in enumerate(prompt):
        lp = 0.0 if i == 0 else float(logprobs[i])
        matrix = _routing_matrix(prev, tok) if params.routing else None
        out.append((tok, lp, text if i == 0 else "", matrix))
        prev = tok
    return out


def _echoed(params: _Params, weights: Mapping[str, np.ndarray]) -> list[_Entry]:
    """The prompt's entries of an ``echo`` request (none without ``echo``)."""
    if not params.echo:
        return []
    prompt = params.prompt.tolist()
    return _prompt_entries(prompt, prompt_logprobs(weights, params.prompt), params)


def _stream_deltas(
    index: int, seq: SampledSequence, params: _Params, prompt: list[int], echoed: list[_Entry]
) -> Iterator[dict[str, Any]]:
    """The streamed choice deltas of one sequence: the echoed prompt first, in one event, then
    one per token."""
    if echoed:
        first: dict[str, Any] = {"index": index, "text": echoed[0][2], "finish_reason": None}
        if params.content:
            first["logprobs"] = {"content": [_lp_entry(e, True) for e in echoed]}
        yield first
    for entry in _entries(seq, params, prompt[-1]):
        delta: dict[str, Any] = {"index": index, "text": entry[2], "finish_reason": None}
        if params.content:
            delta["logprobs"] = {"content": [_lp_entry(entry, False)]}
        yield delta


def _routing_matrix(prev: int, token: int) -> str:
    """A stand-in routing matrix (2 layers x top-1 of 8 experts, uint8, base64)."""
    experts = bytes([(prev * 31 + token) % 8, (prev * 17 + token * 5 + 3) % 8])
    return base64.b64encode(experts).decode("ascii")


def _choice(
    index: int, seq: SampledSequence, params: _Params, prompt: list[int], head: list[_Entry]
) -> dict[str, Any]:
    entries = [*head, *_entries(seq, params, prompt[-1])]
    choice: dict[str, Any] = {
        "index": index,
        "text": "".join(text for _, _, text, _ in entries),
        "finish_reason": seq.stop_reason,
        "raw_output": {"prompt_token_ids": prompt,
                       "completion_token_ids": [tok for tok, _, _, _ in entries]},
    }
    if params.content:
        choice["logprobs"] = {"content": [_lp_entry(e, i < len(head))
                                          for i, e in enumerate(entries)]}
    return choice


def _lp_entry(entry: _Entry, echoed: bool) -> dict[str, Any]:
    token, logprob, text, matrix = entry
    name = "<eos>" if token == EOS_TOKEN else text
    out = {"token": name, "token_id": token, "logprob": logprob,
           "sampling_logprob": None if echoed else logprob}
    if matrix is not None:
        out["routing_matrix"] = matrix
    return out


Served = Callable[[], tuple[Mapping[str, np.ndarray], str | None, int]]
"""What a completions request samples, read when it runs: the weights, their snapshot identity
and version."""


def inference_routes(
    registry: Callable[[Request], DeploymentRegistry],
    *,
    path: str = "/inference/v1/completions",
    resolve: Callable[[Request, str], Served] | None = None,
) -> list[Route]:
    """``POST /inference/v1/completions`` (or ``path``) for the weights ``resolve(request,
    model)`` names (refusing an unknown model): by default a deployment's; the serverless
    gateway passes its session checkpoints'."""

    def deployment(request: Request, model: str) -> Served:
        dep = registry(request).by_name(model)
        if not dep.record.get("maxReplicaCount", 1):
            raise ApiError(503, f"deployment {dep.deployment_id!r} is scaled to zero")
        base = _state(request).base_weights
        return lambda: (dep.weights if dep.weights is not None else base(), dep.identity,
                        dep.version)

    async def completions(request: Request) -> Response:
        state = _state(request)
        check_key(request, state)
        reg = registry(request)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        params = _Params(await read_json_object(request))
        served = (resolve or deployment)(request, params.model)
        if resolve is None:  # a deployment stops at its base model's special tokens
            base_model = state.models.find(reg.by_name(params.model).record.get("baseModel"))
            if base_model is not None and base_model.special_tokens:
                params.stop = params.stops_for(dict(base_model.special_tokens))
        limit = reg.knobs.max_concurrency
        if limit is not None and reg.in_flight >= limit:
            reg.rejected_429 += 1
            return JSONResponse(
                {"error": {"message": f"too many concurrent requests (limit {limit})",
                           "code": "rate_limited"}},
                status_code=429, headers={"x-request-id": request_id},
            )
        reg.in_flight += 1
        reg.max_in_flight = max(reg.max_in_flight, reg.in_flight)
        started = time.perf_counter()
        try:
            if reg.knobs.latency_s:
                await asyncio.sleep(reg.knobs.latency_s)
            weights, identity, version = served()
            vocab = vocab_of(weights)  # the served weights' vocabulary bounds the prompt
            if int(params.prompt.max()) >= vocab:
                raise ApiError(400, f"prompt must be a list of token ids in [0, {vocab})")
            seed = params.seed
            # a few tokens are cheaper inline than a thread hand-off; a thread gets its own rng
            small = params.n * params.max_tokens <= _INLINE_TOKENS
            rng = reg.rng if small or seed is not None else reg.rng.spawn(1)[0]

            def run() -> list[SampledSequence]:
                return sample(
                    weights, params.prompt, num_samples=params.n, max_tokens=params.max_tokens,
                    temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                    stop=params.stop, seed=seed, rng=rng,
                )

            try:
                seqs = run() if small else await asyncio.to_thread(run)
            except ModelInputError as exc:
                raise ApiError(400, str(exc)) from None
        finally:
            reg.in_flight -= 1
        reg.completions += 1
        elapsed = time.perf_counter() - started
        prompt = params.prompt.tolist()
        completion_tokens = sum(len(s.tokens) for s in seqs)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": completion_tokens,
                 "total_tokens": len(prompt) + completion_tokens}
        perf = {
            "server-processing-time": f"{elapsed:.6f}",
            "num-concurrent-requests": str(reg.in_flight + 1),
            "prompt-tokens": str(len(prompt)),
            "cached-prompt-tokens": "0",
        }
        headers = {
            "x-request-id": request_id,
            "fireworks-snapshot-identity": identity or "",
            "fireworks-snapshot-version": str(version),
            **{f"fireworks-{k}": v for k, v in perf.items()},
        }
        cid = f"cmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": cid, "object": "text_completion", "created": int(time.time()),
                "model": params.model}
        echoed = _echoed(params, weights)
        choices = [_choice(i, s, params, prompt, echoed) for i, s in enumerate(seqs)]
        if not params.stream:
            reply = {**head, "choices": choices, "usage": usage}
            if params.perf:
                reply["perf_metrics"] = perf
            return JSONResponse(reply, headers=headers)
        events: list[str] = []

        def emit(payload: dict[str, Any]) -> None:
            events.append(f"data: {json.dumps(payload)}\n\n")

        for i, seq in enumerate(seqs):
            for delta in _stream_deltas(i, seq, params, prompt, echoed):
                emit({**head, "choices": [delta]})
            final = choices[i]
            emit({**head, "choices": [{"index": i, "text": "", "finish_reason":
                                       final["finish_reason"], "raw_output": final["raw_output"]}]})
        tail: dict[str, Any] = {**head, "choices": [], "usage": usage}
        if params.perf:
            tail["perf_metrics"] = perf
        emit(tail)
        events.append("data: [DONE]\n\n")
        return Response("".join(events), media_type="text/event-stream", headers=headers)

    return [Route(path, completions, methods=["POST"])]
