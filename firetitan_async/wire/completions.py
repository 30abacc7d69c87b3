"""Sans-IO codec of a deployment's ``/inference/v1/completions`` (token ids in and out).

No I/O here: request bodies are built from checked arguments, replies (JSON, or the
Server-Sent Events of ``stream: true``) are parsed from bytes and objects, so the codec is
tested with plain values.

Example::

    body = completion_body("accounts/a/deployments/d", [1, 2], n=1, max_tokens=8)
    choices = parse_completion_reply(json.loads(raw), want_logprobs=False)
    decoder = SSEDecoder(); datas = decoder.feed(chunk)   # the "data:" payloads seen so far
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import attrs

from ..errors import InvalidInput, SamplingError
from .validation import MAX_SAMPLE_TOKENS, MAX_SAMPLES

__all__ = [
    "ChoiceResult",
    "CompletionOptions",
    "SSEDecoder",
    "Stop",
    "StreamDelta",
    "StreamEcho",
    "check_max_seq_len",
    "completion_body",
    "has_token_ids",
    "parse_completion_reply",
    "parse_stream_chunk",
    "prompt_token_ids",
]


@attrs.frozen
class ChoiceResult:
    """One parsed choice: completion token ids, their logprobs (if asked), finish reason, text;
    with ``echo`` the prompt's logprobs (the first None: it has no context), and with
    ``include_routing_matrix`` one routing matrix per prompt (echo) and completion token."""

    index: int
    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: str
    text: str
    prompt_logprobs: list[float | None] | None = None
    routing_matrices: list[str] | None = None
    prompt_routing_matrices: list[str] | None = None


@attrs.frozen
class StreamDelta:
    """One event of a streamed completion: a token of choice ``index`` (with its logprob, text
    and, when asked for, its routing matrix), or the end of that choice (``finish_reason`` set,
    ``token`` None). An ``echo`` stream starts with one delta for the prompt (``token`` None,
    ``prompt`` its token ids, ``text`` its text, ``prompt_logprobs`` one per prompt token with
    the first None, ``prompt_routing_matrices`` one per prompt token when asked for)."""

    index: int
    token: int | None
    logprob: float | None
    text: str
    finish_reason: str | None = None
    routing_matrix: str | None = None
    prompt: list[int] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_routing_matrices: list[str] | None = None


def _check_int(field: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(field, f"must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


#: A stop: one string, strings, or token ids (decoded to strings: the API takes strings).
Stop = str | Sequence[str] | Sequence[int]


class CompletionOptions(TypedDict, total=False):
    """The options of one completions request, in one place (every sampling call of a
    deployment takes them as keywords), with the Fireworks SDK's defaults.

    ``max_tokens`` (1024), ``temperature`` (1.0), ``top_p`` (1.0), ``top_k`` (0: no top-k,
    sent so serving defaults do not truncate rollouts), ``stop`` (none), ``logprobs``
    (False), ``echo`` (False), ``max_seq_len`` (none), ``prompt_cache_key`` (none), ``seed``
    (none), ``timeout`` (none), ``include_routing_matrix`` (False).

    Example::

        options: CompletionOptions = {"max_tokens": 32, "temperature": 0.7}
        completions = await sampler.sample(prompt, n=4, **options)
    """

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
    timeout: float | None
    include_routing_matrix: bool


#: Body fields the sampler owns: ``**extra`` may not set them.
_OWNED = frozenset(
    {"model", "prompt", "n", "stream", "raw_output", *CompletionOptions.__annotations__}
)


def prompt_token_ids(prompt: object, field: str = "prompt") -> list[int]:
    """The token ids of a prompt: a sequence of ints, or a ``ModelInput`` (tinker's or the
    Fireworks SDK's) of encoded text; ``InvalidInput`` names what is wrong."""
    if isinstance(prompt, str | bytes):
        raise InvalidInput(field, "must be token ids or a ModelInput, not text")
    if not isinstance(prompt, Sequence):
        to_ints = getattr(prompt, "to_ints", None)
        if to_ints is None:
            raise InvalidInput(field, "must be a sequence of token ids or a ModelInput")
        try:
            prompt = to_ints()
        except ValueError as exc:  # an image chunk: the completions API takes token ids
            raise InvalidInput(field, f"must hold only encoded text ({exc})") from None
    tokens: list[int] = list(prompt)  # type: ignore[call-overload]
    if not tokens:
        raise InvalidInput(field, "is empty")
    for i, tok in enumerate(tokens):
        if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
            raise InvalidInput(f"{field}[{i}]", f"must be a token id >= 0, got {tok!r}")
    return tokens


def check_max_seq_len(value: object) -> int:
    """Check ``max_seq_len`` (prompt + completion tokens; not a body field: the sampler filters
    by it, as the Fireworks SDK does)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput("max_seq_len", f"must be an integer >= 1, got {value!r}")
    return value


def has_token_ids(stop: object) -> bool:
    """Whether ``stop`` holds token ids (a sampler needs its tokenizer to decode them); cheap,
    and no check of the rest (``completion_body`` checks it)."""
    if stop is None or isinstance(stop, str | bytes) or not isinstance(stop, Sequence):
        return False
    return any(isinstance(item, int) and not isinstance(item, bool) for item in stop)


def _stop_strings(stop: object, decode: Callable[[int], str] | None) -> list[str]:
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence) or isinstance(stop, bytes):
        raise InvalidInput("stop", "must be a string, a list of strings or a list of token ids")
    items = list(stop)
    if all(isinstance(s, str) for s in items):
        if not all(items):
            raise InvalidInput("stop", "must not hold an empty string")
        return items
    if all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in items):
        if decode is None:
            raise InvalidInput(
                "stop", "token-id stops need the sampler's tokenizer= or load_tokenizer= (the "
                "completions API takes stop strings; the Fireworks SDK decodes them with its "
                "tokenizer too; a managed setup's samplers load ManagedConfig.tokenizer_model)"
            )
        out = []
        for token in items:
            try:
                text = decode(token)
            except Exception as exc:  # the caller's tokenizer: any failure is a bad stop
                raise InvalidInput(
                    "stop", f"the tokenizer could not decode token {token} "
                    f"({type(exc).__name__})"
                ) from None
            if not isinstance(text, str) or not text:
                raise InvalidInput("stop", f"token {token} decodes to no text")
            out.append(text)
        return out
    raise InvalidInput("stop", "must be all strings or all token ids >= 0")


def completion_body(
    model: str,
    prompt: object,
    *,
    n: int = 1,
    stream: bool = False,
    max_tokens: int = 1024,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop: Stop | None = None,
    logprobs: bool = False,
    echo: bool = False,
    prompt_cache_key: str | None = None,
    seed: int | None = None,
    include_routing_matrix: bool = False,
    extra: Mapping[str, Any] | None = None,
    decode_token: Callable[[int], str] | None = None,
) -> dict[str, Any]:
    """The JSON body of one completions request; ``InvalidInput`` names a bad argument.

    The fields the Fireworks SDK's ``DeploymentSampler`` sends: ``top_k`` and ``top_p`` always,
    ``stop``, ``logprobs``, ``echo``, ``prompt_cache_key``, ``seed`` and
    ``include_routing_matrix`` only when set; ``extra`` adds fields as they are (the SDK's
    ``**kwargs``). Token-id stops are decoded with ``decode_token`` (the API takes strings).
    """
    tokens = prompt_token_ids(prompt)
    _check_int("n", n, 1, MAX_SAMPLES)
    _check_int("max_tokens", max_tokens, 0, MAX_SAMPLE_TOKENS)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise InvalidInput("temperature", f"must be a finite number >= 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InvalidInput("top_p", f"must be in (0, 1], got {top_p!r}")
    if top_k != 0:
        _check_int("top_k", top_k, -1, MAX_SAMPLE_TOKENS)
    body: dict[str, Any] = {
        "model": model,
        "prompt": tokens,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "top_k": top_k,
        "raw_output": True,
        "stream": stream,
    }
    if stop is not None:
        body["stop"] = _stop_strings(stop, decode_token)
    if logprobs:
        body["logprobs"] = True
    if echo:
        body["echo"] = True
    if prompt_cache_key is not None:
        if not isinstance(prompt_cache_key, str) or not prompt_cache_key:
            raise InvalidInput("prompt_cache_key", "must be a non-empty string")
        body["prompt_cache_key"] = prompt_cache_key
    if seed is not None:
        body["seed"] = _check_int("seed", seed, 0, 2**63 - 1)
    if include_routing_matrix:
        body["include_routing_matrix"] = True
    if extra:
        _add_extra(body, extra)
    return body


def _add_extra(body: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for name, value in extra.items():
        if name in _OWNED:
            raise InvalidInput(name, "is set by the sampler, not through **extra")
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise InvalidInput(name, f"must be JSON, got {type(value).__name__}") from None
        body[name] = value


def _fail(what: str) -> SamplingError:
    return SamplingError(f"malformed completions reply: {what}")


def _index(choice: Mapping[str, Any], default: int) -> int:
    index = choice.get("index", default)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise _fail(f"a choice's index must be an integer >= 0, got {index!r:.50}")
    return index


def _logprob(entry: Mapping[str, Any]) -> float | None:
    value = entry.get("sampling_logprob", entry.get("logprob"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"logprobs.content[].logprob must be a number, got {value!r:.50}")
    return float(value)


def _logprobs_of(choice: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    lp = choice.get("logprobs")
    if not isinstance(lp, Mapping):
        return None
    content = lp.get("content")
    if not isinstance(content, list) or not all(isinstance(c, Mapping) for c in content):
        raise _fail("logprobs.content must be a list of objects")
    return content


def parse_completion_reply(
    reply: object,
    *,
    want_logprobs: bool,
    echo_of: Sequence[int] | None = None,
    want_routing: bool = False,
) -> list[ChoiceResult]:
    """The choices of a JSON completions reply, ordered by ``index``.

    ``echo_of`` is the prompt of an ``echo`` request: each choice's tokens (and logprobs and
    routing matrices) then start with the prompt's, which are checked and split off into
    ``prompt_logprobs`` (the model's ``logprob``; the first None) and
    ``prompt_routing_matrices``. ``want_routing``: each token's ``routing_matrix`` is read.
    """
    if not isinstance(reply, Mapping) or not isinstance(reply.get("choices"), list):
        raise _fail("expected an object with a choices list")
    out = []
    for pos, choice in enumerate(reply["choices"]):
        if not isinstance(choice, Mapping):
            raise _fail("each choice must be an object")
        raw = choice.get("raw_output")
        ids = raw.get("completion_token_ids") if isinstance(raw, Mapping) else None
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise _fail("raw_output.completion_token_ids is missing (token-out needs it)")
        content: list[Mapping[str, Any]] | None = None
        if want_logprobs or want_routing:
            content = _logprobs_of(choice)
            if content is None or len(content) != len(ids):
                raise _fail("logprobs.content does not cover every returned token")
        prompt_lps: list[float | None] | None = None
        prompt_routing: list[str] | None = None
        if echo_of is not None:
            p = len(echo_of)
            if ids[:p] != list(echo_of):
                raise _fail("an echo reply must start with the prompt's tokens")
            ids = ids[p:]
            if content is not None:
                head, content = content[:p], content[p:]
                if want_logprobs:
                    prompt_lps = [None, *(_prompt_logprob(c) for c in head[1:])]
                if want_routing:
                    prompt_routing = _routing(head)
        lps: list[float] | None = None
        if want_logprobs and content is not None:
            lps = [lp for c in content if (lp := _logprob(c)) is not None]
            if len(lps) != len(ids):
                raise _fail("logprobs.content[].logprob is missing")
        out.append(
            ChoiceResult(
                index=_index(choice, pos),
                tokens=list(ids),
                logprobs=lps,
                finish_reason=str(choice.get("finish_reason") or "unknown"),
                text=str(choice.get("text") or ""),
                prompt_logprobs=prompt_lps,
                routing_matrices=_routing(content) if want_routing and content is not None
                else None,
                prompt_routing_matrices=prompt_routing,
            )
        )
    return sorted(out, key=lambda c: c.index)


def _prompt_logprob(entry: Mapping[str, Any]) -> float:
    value = entry.get("logprob")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"an echoed prompt token's logprob must be a number, got {value!r:.50}")
    return float(value)


def _routing(content: list[Mapping[str, Any]]) -> list[str]:
    out = []
    for entry in content:
        matrix = entry.get("routing_matrix")
        if not isinstance(matrix, str):
            raise _fail("logprobs.content[].routing_matrix is missing (include_routing_matrix)")
        out.append(matrix)
    return out


def parse_stream_chunk(chunk: object) -> list[StreamDelta]:
    """The token deltas (and choice endings) of one streamed JSON chunk."""
    if not isinstance(chunk, Mapping):
        raise _fail("a stream event must be a JSON object")
    if chunk.get("error") is not None:
        raise _fail(f"the stream reported an error: {chunk['error']!r}")
    choices = chunk.get("choices") or []
    if not isinstance(choices, list):
        raise _fail("choices must be a list")
    out: list[StreamDelta] = []
    for choice in choices:
        if not isinstance(choice, Mapping):
            raise _fail("each choice must be an object")
        index = _index(choice, 0)
        for entry in _logprobs_of(choice) or []:
            token = entry.get("token_id")
            if isinstance(token, bool) or not isinstance(token, int):
                raise _fail("logprobs.content[].token_id is missing")
            matrix = entry.get("routing_matrix")
            out.append(StreamDelta(index, token, _logprob(entry), str(choice.get("text") or ""),
                                   None, matrix if isinstance(matrix, str) else None))
        reason = choice.get("finish_reason")
        if reason:
            out.append(StreamDelta(index, None, None, "", str(reason)))
    return out


class StreamEcho:
    """The echoed prompt at the head of a streamed ``echo`` completion (sans-IO).

    The server sends the prompt's tokens first, as ``logprobs.content`` entries, in one chunk or
    several (the Fireworks SDK's streaming path reads them the same way: the first
    ``len(prompt)`` rows are the prompt's, the first of them without context). ``split(chunk)``
    takes them off the front of each JSON chunk until all are in and returns the prompt's
    :class:`StreamDelta` once (None before and after) with the rest of the chunk, for
    ``parse_stream_chunk`` (None when nothing is left). A chunk's ``text`` goes with the
    prompt when the chunk holds only prompt tokens, else with the completion's. A reply whose
    echo is not the prompt, or that ends before it, is a ``SamplingError``.

    Example::

        echo = StreamEcho(prompt, want_routing=False)
        head, rest = echo.split(json.loads(data))
        deltas = ([head] if head else []) + (parse_stream_chunk(rest) if rest else [])
    """

    def __init__(self, prompt: Sequence[int], *, want_routing: bool) -> None:
        self._prompt = list(prompt)
        self._want_routing = want_routing
        self._entries: list[Mapping[str, Any]] = []
        self._text: list[str] = []
        #: Whether the whole prompt has come (``split`` passes chunks through from then on).
        self.done = False

    def split(self, chunk: object) -> tuple[StreamDelta | None, object | None]:
        """The prompt's delta if ``chunk`` completes it, and what is left of ``chunk``."""
        if self.done:
            return None, chunk
        choices = chunk.get("choices") if isinstance(chunk, Mapping) else None
        if not isinstance(chunk, Mapping) or chunk.get("error") is not None or not (
            isinstance(choices, list) and all(isinstance(c, Mapping) for c in choices)
        ):
            return None, chunk  # parse_stream_chunk names what is wrong with it
        head: StreamDelta | None = None
        rest: list[Mapping[str, Any]] = []
        for choice in choices:
            if self.done:
                rest.append(choice)
                continue
            content = _logprobs_of(choice) or []
            need = len(self._prompt) - len(self._entries)
            self._entries += content[:need]
            left = content[need:]
            if not left:
                self._text.append(str(choice.get("text") or ""))
            if len(self._entries) == len(self._prompt):
                head = self._head(_index(choice, 0))
            if (left or choice.get("finish_reason")) and head is None:
                raise _fail("the stream ended before the echoed prompt")
            if left:
                rest.append({**choice, "logprobs": {**choice["logprobs"], "content": left}})
            elif choice.get("finish_reason"):
                rest.append({**choice, "text": "", "logprobs": None})
        if not rest:
            return head, None
        return head, {**chunk, "choices": rest}

    def _head(self, index: int) -> StreamDelta:
        self.done = True
        entries = self._entries
        if [e.get("token_id") for e in entries] != self._prompt:
            raise _fail("an echo stream must start with the prompt's tokens")
        return StreamDelta(
            index, None, None, "".join(self._text),
            prompt=list(self._prompt),
            prompt_logprobs=[None, *(_prompt_logprob(e) for e in entries[1:])],
            prompt_routing_matrices=_routing(entries) if self._want_routing else None,
        )


class SSEDecoder:
    """Incremental Server-Sent Events decoder: ``feed(bytes)`` returns the ``data`` payloads
    of the events completed so far (multi-line data joined by newlines; comments skipped)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Consume ``chunk``; the payloads of every event it completed."""
        self._buffer += chunk
        out: list[str] = []
        while True:
            cut = self._buffer.find(b"\n")
            if cut < 0:
                return out
            try:
                line = self._buffer[:cut].rstrip(b"\r").decode("utf-8")
            except UnicodeDecodeError:
                raise _fail("the event stream is not UTF-8") from None
            self._buffer = self._buffer[cut + 1 :]
            if not line:
                if self._data:
                    out.append("\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                self._data.append(value[1:] if value.startswith(" ") else value)
