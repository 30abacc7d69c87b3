"""The completions codec on plain values: echo replies split into prompt and completion, routing
matrices read per token, and the replies that do not match what was asked refused."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from firetitan_async import InvalidInput, SamplingError
from firetitan_async.wire.completions import (
    StreamDelta,
    StreamEcho,
    check_max_seq_len,
    completion_body,
    has_token_ids,
    parse_completion_reply,
    parse_stream_chunk,
)

PROMPT = [5, 6, 7]


def _entry(token: int, logprob: float | None, sampling: float | None, matrix: str) -> Any:
    return {"token_id": token, "logprob": logprob, "sampling_logprob": sampling,
            "routing_matrix": matrix}


def _echo_reply(tokens: list[int]) -> dict[str, Any]:
    content = [_entry(5, 0.0, None, "p0"), _entry(6, -1.0, None, "p1"),
               _entry(7, -2.0, None, "p2"), _entry(8, -3.5, -3.0, "c0"),
               _entry(9, -4.5, -4.0, "c1")]
    return {"choices": [{"index": 0, "finish_reason": "length", "text": "",
                         "raw_output": {"completion_token_ids": tokens},
                         "logprobs": {"content": content}}]}


def test_an_echo_reply_is_split_into_the_prompts_rows_and_the_completions() -> None:
    [choice] = parse_completion_reply(_echo_reply([5, 6, 7, 8, 9]), want_logprobs=True,
                                      echo_of=PROMPT, want_routing=True)
    assert choice.tokens == [8, 9]
    assert choice.logprobs == [-3.0, -4.0]  # the sampling logprobs of the completion
    assert choice.prompt_logprobs == [None, -1.0, -2.0]  # the model's, the first has no context
    assert choice.routing_matrices == ["c0", "c1"]
    assert choice.prompt_routing_matrices == ["p0", "p1", "p2"]
    [plain] = parse_completion_reply(_echo_reply([5, 6, 7, 8, 9]), want_logprobs=False,
                                     echo_of=PROMPT)
    assert plain.tokens == [8, 9] and plain.prompt_logprobs is None


def test_replies_that_do_not_match_the_request_are_refused() -> None:
    with pytest.raises(SamplingError, match="start with the prompt"):
        parse_completion_reply(_echo_reply([5, 6, 4, 8, 9]), want_logprobs=True,
                               echo_of=PROMPT)
    reply = _echo_reply([5, 6, 7, 8, 9])
    del reply["choices"][0]["logprobs"]["content"][3]["routing_matrix"]
    with pytest.raises(SamplingError, match="routing_matrix"):
        parse_completion_reply(reply, want_logprobs=False, echo_of=PROMPT, want_routing=True)
    reply = _echo_reply([5, 6, 7, 8, 9])
    reply["choices"][0]["logprobs"]["content"][1]["logprob"] = None
    with pytest.raises(SamplingError, match="prompt token's logprob"):
        parse_completion_reply(reply, want_logprobs=True, echo_of=PROMPT)


def test_a_streamed_delta_carries_its_routing_matrix() -> None:
    [delta] = parse_stream_chunk({"choices": [{"index": 0, "text": "a", "logprobs": {
        "content": [_entry(8, -1.0, -1.0, "AQI=")]}}]})
    assert (delta.token, delta.logprob, delta.routing_matrix) == (8, -1.0, "AQI=")


def test_stops_and_max_seq_len_are_checked_as_the_sdk_takes_them() -> None:
    def body(**kwargs: Any) -> dict[str, Any]:
        return completion_body("m", PROMPT, decode_token=lambda t: chr(t + 60), **kwargs)

    assert body(stop="ab")["stop"] == ["ab"]  # one string (the SDK would split it into chars)
    assert body(stop=[1, 2])["stop"] == ["=", ">"]  # token ids through the tokenizer
    assert body(stop=[])["stop"] == []
    for bad in ([True], [1, "a"], [-1], b"x", 3):
        with pytest.raises(InvalidInput) as info:
            body(stop=bad)
        assert info.value.field == "stop"
    def broken(token: int) -> str:
        raise KeyError(token)

    for decode in (broken, lambda t: ""):
        with pytest.raises(InvalidInput) as info:
            completion_body("m", PROMPT, stop=[3], decode_token=decode)
        assert info.value.field == "stop"
    assert check_max_seq_len(8) == 8
    for bad_len in (0, True, 2.0):
        with pytest.raises(InvalidInput) as info:
            check_max_seq_len(bad_len)
        assert info.value.field == "max_seq_len"


def _chunk(entries: list[Any], text: str = "", finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "choices": [{"index": 0, "text": text, "finish_reason": finish,
                                    "logprobs": {"content": entries}}]}


def _stream(echo: StreamEcho, chunks: list[dict[str, Any]]) -> list[StreamDelta]:
    out: list[StreamDelta] = []
    for chunk in chunks:
        head, rest = echo.split(chunk)
        out += ([head] if head else []) + (parse_stream_chunk(rest) if rest else [])
    return out


def test_a_streamed_echo_is_split_off_however_the_server_chunks_it() -> None:
    p0, p1, p2 = _entry(5, 0.0, None, "p0"), _entry(6, -1.0, None, "p1"), _entry(7, -2.0, None,
                                                                                 "p2")
    c0, c1 = _entry(8, -3.5, -3.0, "c0"), _entry(9, -4.5, -4.0, "c1")
    end = _chunk([], finish="length")
    head = StreamDelta(0, None, None, "ab", prompt=PROMPT, prompt_logprobs=[None, -1.0, -2.0],
                       prompt_routing_matrices=["p0", "p1", "p2"])
    tail = [StreamDelta(0, 8, -3.0, "x", routing_matrix="c0"),
            StreamDelta(0, 9, -4.0, "y", routing_matrix="c1"), StreamDelta(0, None, None, "",
                                                                           "length")]
    one = [_chunk([p0, p1, p2], "ab"), _chunk([c0], "x"), _chunk([c1], "y"), end]
    assert _stream(StreamEcho(PROMPT, want_routing=True), one) == [head, *tail]
    split = [_chunk([p0], "a"), _chunk([p1, p2], "b"), *one[1:]]  # over two chunks
    assert _stream(StreamEcho(PROMPT, want_routing=True), split) == [head, *tail]
    # the last prompt rows and the first completion row in one chunk: its text is the
    # completion's; the same deltas otherwise
    mixed = [_chunk([p0, p1], "ab"), _chunk([p2, c0], "x"), *one[2:]]
    assert _stream(StreamEcho(PROMPT, want_routing=False), mixed) == [
        attrs.evolve(head, prompt_routing_matrices=None), *tail
    ]
    # no completion (max_tokens=0): the prompt, then the end
    assert _stream(StreamEcho(PROMPT, want_routing=False), [
        _chunk([p0, p1, p2], "ab", finish="length")
    ]) == [attrs.evolve(head, prompt_routing_matrices=None), tail[-1]]
    with pytest.raises(SamplingError, match="before the echoed prompt"):
        _stream(StreamEcho(PROMPT, want_routing=False), [_chunk([p0, p1], "a"), end])
    with pytest.raises(SamplingError, match="start with the prompt"):
        _stream(StreamEcho([5, 6, 1], want_routing=False), one)
    with pytest.raises(SamplingError, match="error"):  # left for parse_stream_chunk to name
        _stream(StreamEcho(PROMPT, want_routing=False), [{"error": "overloaded"}])


def test_has_token_ids_tells_a_token_id_stop() -> None:
    assert has_token_ids([2]) and has_token_ids((7, 8)) and has_token_ids(["a", 3])
    assert not any(has_token_ids(s) for s in (None, "ab", ["a"], [], b"\x01", [True], 3))
