"""Submission replies and retrieve_future replies, classified as the tinker SDK reads them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tinker import types

from firetitan_async.errors import FiretitanError, ProtocolError
from firetitan_async.wire.futures import (
    Accepted,
    Done,
    Failed,
    MetadataOnly,
    TryAgain,
    classify_retrieve_reply,
    decode_json_result,
    parse_accepted,
)

JSON = "application/json"
PROTO = "application/x-protobuf"


def test_parse_accepted() -> None:
    assert parse_accepted({"request_id": "r1"}) == Accepted("r1")
    got = parse_accepted({"request_id": "r2", "model_id": "m", "sample_sequence_ids": ["a", "b"]})
    assert got == Accepted("r2", ("a", "b"), "m")
    # Extra fields are ignored, like the SDK's pydantic models.
    assert parse_accepted({"request_id": "r", "extra": 1}).request_id == "r"


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "r1",
        {},
        {"request_id": ""},
        {"request_id": 5},
        {"request_id": "r", "sample_sequence_ids": "ab"},
        {"request_id": "r", "sample_sequence_ids": [1, 2]},
        {"request_id": "r", "model_id": 3},
    ],
)
def test_parse_accepted_rejects_malformed(obj: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_accepted(obj)
    assert isinstance(info.value, FiretitanError)
    assert "UntypedAPIFuture" in str(info.value)


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (PROTO, b"\x0a\x00", Done(b"\x0a\x00", PROTO)),
        (PROTO + "; v=1", b"", Done(b"", PROTO + "; v=1")),
        (
            JSON,
            _j({"type": "try_again", "request_id": "r", "queue_state": "active"}),
            TryAgain("active"),
        ),
        (
            JSON,
            _j({"type": "try_again", "request_id": "r", "queue_state": "paused_capacity",
                "queue_state_reason": "busy"}),
            TryAgain("paused_capacity", "busy"),
        ),
        (JSON, _j({"type": "try_again", "request_id": "r"}), TryAgain(None)),
        (
            JSON,
            _j({"status": "complete_metadata", "response_payload_size": 1234}),
            MetadataOnly(1234),
        ),
        (JSON, _j({"status": "complete_metadata"}), MetadataOnly(0)),
        (JSON, _j({"error": "boom", "category": "user"}), Failed("boom", "user")),
        (JSON, _j({"error": "boom", "category": "server"}), Failed("boom", "server")),
        (JSON, _j({"error": "boom", "category": "weird"}), Failed("boom", "unknown")),
        (JSON, _j({"error": "boom"}), Failed("boom", "unknown")),
        (JSON, _j({"metrics": {"loss:sum": 1.0}}), Done(_j({"metrics": {"loss:sum": 1.0}}), JSON)),
        ("", _j({"path": "tinker://a/weights/b"}), Done(_j({"path": "tinker://a/weights/b"}), "")),
    ],
)  # fmt: skip
def test_classify(content_type: str, body: bytes, expected: object) -> None:
    assert classify_retrieve_reply(content_type, body) == expected


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'"text"', _j({"status": "complete_metadata",
                                                         "response_payload_size": -1})],
)  # fmt: skip
def test_classify_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        classify_retrieve_reply(JSON, body)


def test_done_flags_proto_and_hides_payload_in_repr() -> None:
    done = Done(b"x" * 1000, PROTO)
    assert done.is_proto and not Done(b"{}", JSON).is_proto
    assert "1000 bytes" in repr(done) and "xxxx" not in repr(done)


@pytest.mark.parametrize(
    ("cls", "obj"),
    [
        (types.OptimStepResponse, {"metrics": {"grad_norm:mean": 0.5}}),
        (types.OptimStepResponse, {}),
        (types.SaveWeightsResponse, {"path": "tinker://s:train:0/weights/a"}),
        (types.LoadWeightsResponse, {"path": "tinker://s:train:0/weights/a"}),
        (types.SaveWeightsForSamplerResponse, {"path": "tinker://s:train:0/sampler_weights/a"}),
        (types.CreateModelResponse, {"model_id": "s:train:0"}),
    ],
)
def test_decode_json_result_matches_sdk(cls: type[Any], obj: dict[str, Any]) -> None:
    got = decode_json_result(cls, _j(obj))
    assert isinstance(got, cls)
    assert got == cls.model_validate(obj)


def test_decode_json_result_sampling_session_reply() -> None:
    got = decode_json_result(
        types.SaveWeightsForSamplerResponseInternal, _j({"sampling_session_id": "s:sample:1"})
    )
    assert got.sampling_session_id == "s:sample:1"


@pytest.mark.parametrize(
    ("cls", "body"),
    [
        (types.CreateModelResponse, b"{}"),
        (types.CreateModelResponse, b"<html>502</html>"),
        (types.SaveWeightsResponse, _j({"path": 5})),
    ],
)
def test_decode_json_result_rejects(cls: type[Any], body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_json_result(cls, body)
    assert cls.__name__ in str(info.value)


def test_a_json_object_result_that_is_not_json_is_a_protocol_error() -> None:
    """load_adapter's result: not JSON is a ProtocolError (a JSONDecodeError escaped)."""
    from firetitan_async.wire.futures import parse_json_object

    assert parse_json_object("load_adapter result", b'{"ok": true}') == {"ok": True}
    assert parse_json_object("load_adapter result", b"[1]") == {"result": [1]}
    with pytest.raises(ProtocolError, match="malformed load_adapter result: not JSON"):
        parse_json_object("load_adapter result", b"<html>")
