"""Sans-IO codec of a deployment's ``/inference/v1/completions`` (token ids in and out).

No I/O here: request bodies are built from checked arguments, replies (JSON, or the
Server-Sent Events of ``stream: true``) are parsed from bytes and objects, so the codec is
tested with plain values.

Example::

    body = completion_body("accounts/a/deployments/d", [1, 2], n=1, max_tokens=8)
    choices = parse_completion_reply(json.loads(raw))
    decoder = SSEDecoder(); datas = decoder.feed(chunk)   # the "data:" payloads seen so far
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict, Unpack

import attrs

from ..errors import InvalidInput, SamplingError
from .validation import MAX_SAMPLE_TOKENS, MAX_SAMPLES

__all__ = [
    "ChoiceResult",
    "CompletionOptions",
    "SSEDecoder",
    "StreamDelta",
    "completion_body",
    "parse_completion_reply",
    "parse_stream_chunk",
]


@attrs.frozen
class ChoiceResult:
    """One parsed choice: completion token ids, their logprobs (if asked), finish reason, text."""

    index: int
    tokens: list[int]
    logprobs: list[float] | None
    finish_reason: str
    text: str


@attrs.frozen
class StreamDelta:
    """One event of a streamed completion: a token of choice ``index`` (with its logprob and
    text), or the end of that choice (``finish_reason`` set, ``token`` None)."""

    index: int
    token: int | None
    logprob: float | None
    text: str
    finish_reason: str | None = None


def _check_int(field: str, value: object, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(field, f"must be an integer in [{minimum}, {maximum}], got {value!r}")
    return value


class CompletionOptions(TypedDict, total=False):
    """The options of one completions request, in one place (every sampling call of a
    deployment takes them as keywords; the defaults are :func:`completion_body`'s).

    ``max_tokens`` (16), ``temperature`` (1.0), ``top_p`` (1.0), ``stop`` (none),
    ``logprobs`` (False), ``seed`` (none).

    Example::

        options: CompletionOptions = {"max_tokens": 32, "temperature": 0.7}
        completions = await sampler.sample(prompt, n=4, **options)
    """

    max_tokens: int
    temperature: float
    top_p: float
    stop: Sequence[str] | None
    logprobs: bool
    seed: int | None


_OPTION_NAMES = frozenset(CompletionOptions.__annotations__)


def completion_body(
    model: str,
    prompt_tokens: Sequence[int],
    *,
    n: int = 1,
    stream: bool = False,
    **options: Unpack[CompletionOptions],
) -> dict[str, Any]:
    """The JSON body of one completions request; ``InvalidInput`` names a bad argument."""
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    max_tokens = options.get("max_tokens", 16)
    temperature = options.get("temperature", 1.0)
    top_p = options.get("top_p", 1.0)
    stop = options.get("stop")
    logprobs = options.get("logprobs", False)
    seed = options.get("seed")
    if isinstance(prompt_tokens, str | bytes) or not isinstance(prompt_tokens, Sequence):
        raise InvalidInput("prompt_tokens", "must be a sequence of token ids")
    tokens = list(prompt_tokens)
    if not tokens:
        raise InvalidInput("prompt_tokens", "is empty")
    for i, tok in enumerate(tokens):
        if isinstance(tok, bool) or not isinstance(tok, int) or tok < 0:
            raise InvalidInput(f"prompt_tokens[{i}]", f"must be a token id >= 0, got {tok!r}")
    _check_int("n", n, 1, MAX_SAMPLES)
    _check_int("max_tokens", max_tokens, 0, MAX_SAMPLE_TOKENS)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature >= 0
    ):
        raise InvalidInput("temperature", f"must be a finite number >= 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise InvalidInput("top_p", f"must be in (0, 1], got {top_p!r}")
    body: dict[str, Any] = {
        "model": model,
        "prompt": tokens,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "top_k": 0,
        "raw_output": True,
        "stream": stream,
    }
    if stop is not None:
        if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
            raise InvalidInput("stop", "must be a list of non-empty strings")
        body["stop"] = list(stop)
    if logprobs:
        body["logprobs"] = True
    if seed is not None:
        body["seed"] = _check_int("seed", seed, 0, 2**63 - 1)
    return body


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


def parse_completion_reply(reply: object, *, want_logprobs: bool) -> list[ChoiceResult]:
    """The choices of a JSON completions reply, ordered by ``index``."""
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
        lps: list[float] | None = None
        if want_logprobs:
            content = _logprobs_of(choice)
            if content is None or len(content) != len(ids):
                raise _fail("logprobs.content does not cover every completion token")
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
            )
        )
    return sorted(out, key=lambda c: c.index)


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
            out.append(StreamDelta(index, token, _logprob(entry),
                                   str(choice.get("text") or "")))
        reason = choice.get("finish_reason")
        if reason:
            out.append(StreamDelta(index, None, None, "", str(reason)))
    return out


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
