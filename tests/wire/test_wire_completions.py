"""The completions codec on plain values: echo replies split into prompt and completion, routing
matrices read per token, and the replies that do not match what was asked refused."""

from __future__ import annotations

from typing import Any

import pytest

from firetitan_async import InvalidInput, SamplingError
from firetitan_async.wire.completions import (
    check_max_seq_len,
    completion_body,
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
