"""Server-side futures on the wire: the submission reply and the ``retrieve_future`` replies.

A long operation (``forward_backward``, ``optim_step``, ``asample``, …) is answered at once
with an ``UntypedAPIFuture`` (:func:`parse_accepted`). Its result is then long-polled with
``POST /api/v1/retrieve_future``; :func:`classify_retrieve_reply` turns one HTTP-200 reply
into one of four outcomes, the way the tinker SDK 0.38 reads them. Sans-IO: bytes in, values
out.

Example::

    accepted = parse_accepted({"request_id": "r1"})
    outcome = classify_retrieve_reply("application/json", b'{"type": "try_again", ...}')
    if isinstance(outcome, Done):
        result = decode_json_result(types.OptimStepResponse, outcome.payload)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

import attrs
import pydantic

from ..errors import InvalidInput, ProtocolError

__all__ = [
    "Accepted",
    "Done",
    "Failed",
    "MetadataOnly",
    "RetrieveOutcome",
    "TryAgain",
    "classify_retrieve_reply",
    "decode_json_result",
    "parse_accepted",
    "parse_json_object",
    "retrieve_future_body",
    "validate_reply",
]

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)

_PROTO_CONTENT_TYPE = "application/x-protobuf"
_ERROR_CATEGORIES = frozenset({"unknown", "server", "user"})
_MAX_SNIPPET = 200


@attrs.frozen
class Accepted:
    """The immediate reply to a submission: the server-side future's id.

    ``sample_sequence_ids`` is set for ``asample`` only (one id per requested sample).

    Example::

        parse_accepted({"request_id": "r1"}) == Accepted("r1")
    """

    request_id: str
    sample_sequence_ids: tuple[str, ...] | None = None
    model_id: str | None = None


@attrs.frozen
class Done:
    """The operation finished: ``payload`` holds its result (protobuf or JSON bytes)."""

    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    content_type: str

    @property
    def is_proto(self) -> bool:
        """Whether ``payload`` is protobuf (else it is JSON)."""
        return _PROTO_CONTENT_TYPE in self.content_type


@attrs.frozen
class TryAgain:
    """Not finished yet; poll again. ``queue_state`` is ``"active"``, ``"paused_capacity"``,
    ``"paused_rate_limit"`` or ``None`` when the server gave none."""

    queue_state: str | None = None
    queue_state_reason: str | None = None


@attrs.frozen
class Failed:
    """The operation failed on the server. ``category`` is ``"user"``, ``"server"`` or
    ``"unknown"`` (any other value the server sends is read as ``"unknown"``, like the SDK)."""

    message: str
    category: str


@attrs.frozen
class MetadataOnly:
    """The result is ready but large: ``size`` bytes. Poll again with
    ``allow_metadata_only=False`` to fetch it."""

    size: int


RetrieveOutcome = Done | TryAgain | Failed | MetadataOnly


def parse_accepted(obj: Any) -> Accepted:
    """Read the ``UntypedAPIFuture`` a submission returns (already JSON-decoded).

    Example::

        parse_accepted({"request_id": "r", "sample_sequence_ids": ["a", "b"]})
        # Accepted(request_id="r", sample_sequence_ids=("a", "b"))
    """
    what = "submission reply (UntypedAPIFuture)"
    if not isinstance(obj, dict):
        raise ProtocolError(what, f"expected a JSON object, got {_describe(obj)}")
    request_id = obj.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise ProtocolError(what, f"'request_id' must be a non-empty string, got {request_id!r}")
    model_id = obj.get("model_id")
    if model_id is not None and not isinstance(model_id, str):
        raise ProtocolError(what, f"'model_id' must be a string, got {model_id!r}")
    raw_ids = obj.get("sample_sequence_ids")
    ids: tuple[str, ...] | None = None
    if raw_ids is not None:
        if not isinstance(raw_ids, list) or not all(isinstance(i, str) for i in raw_ids):
            raise ProtocolError(what, "'sample_sequence_ids' must be a list of strings")
        ids = tuple(raw_ids)
    return Accepted(request_id=request_id, sample_sequence_ids=ids, model_id=model_id)


def classify_retrieve_reply(content_type: str, body: bytes) -> RetrieveOutcome:
    """Classify one HTTP-200 reply of ``retrieve_future``, as the tinker SDK does.

    * ``Content-Type`` containing ``application/x-protobuf`` → :class:`Done` (proto payload);
    * JSON ``{"type": "try_again", ...}`` → :class:`TryAgain`;
    * JSON ``{"status": "complete_metadata", "response_payload_size": n}`` →
      :class:`MetadataOnly`;
    * JSON with an ``"error"`` key → :class:`Failed`;
    * any other JSON object → :class:`Done` (JSON payload, see :func:`decode_json_result`).

    Raises :class:`ProtocolError` when the body is not a JSON object.

    Example::

        classify_retrieve_reply("application/json", b'{"error": "bad", "category": "user"}')
        # Failed(message="bad", category="user")
    """
    if _PROTO_CONTENT_TYPE in content_type.lower():
        return Done(payload=bytes(body), content_type=content_type)
    what = "retrieve_future reply"
    obj = _loads(what, body)
    if not isinstance(obj, dict):
        raise ProtocolError(what, f"expected a JSON object, got {_describe(obj)}")
    if obj.get("type") == "try_again":
        state = obj.get("queue_state")
        reason = obj.get("queue_state_reason")
        return TryAgain(
            queue_state=state if isinstance(state, str) and state else None,
            queue_state_reason=reason if isinstance(reason, str) else None,
        )
    if obj.get("status") == "complete_metadata":
        size = obj.get("response_payload_size") or 0
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ProtocolError(what, f"'response_payload_size' must be an int >= 0: {size!r}")
        return MetadataOnly(size=size)
    if "error" in obj:
        category = obj.get("category")
        if not isinstance(category, str) or category not in _ERROR_CATEGORIES:
            category = "unknown"
        return Failed(message=str(obj["error"]), category=category)
    return Done(payload=bytes(body), content_type=content_type)


def decode_json_result(model_cls: type[T], payload: bytes) -> T:
    """Decode a JSON future result into a tinker result type (a pydantic model such as
    ``OptimStepResponse``, ``SaveWeightsResponse``, ``LoadWeightsResponse``,
    ``SaveWeightsForSamplerResponse``, ``CreateModelResponse``; or a dataclass).

    Raises :class:`ProtocolError` when the payload does not fit the type.

    Example::

        decode_json_result(types.SaveWeightsResponse, b'{"path": "tinker://r/weights/a"}')
    """
    what = f"{getattr(model_cls, '__name__', 'result')} result"
    obj = _loads(what, payload)
    if isinstance(model_cls, type) and issubclass(model_cls, pydantic.BaseModel):
        return validate_reply(model_cls, obj, what)
    if dataclasses.is_dataclass(model_cls) and isinstance(model_cls, type):
        if not isinstance(obj, dict):
            raise ProtocolError(what, f"expected a JSON object, got {_describe(obj)}")
        names = {f.name for f in dataclasses.fields(model_cls) if f.init}
        try:
            return model_cls(**{k: v for k, v in obj.items() if k in names})
        except TypeError as exc:
            raise ProtocolError(what, str(exc)) from None
    raise InvalidInput(
        "model_cls", f"must be a pydantic model or a dataclass, got {model_cls!r}"
    )


def validate_reply(model_cls: type[M], obj: Any, what: str) -> M:
    """``obj`` (a parsed JSON reply) as the pydantic model ``model_cls``.

    Raises :class:`ProtocolError` naming ``what`` when it does not fit.

    Example::

        validate_reply(types.CreateSessionResponse, {"session_id": "s"}, "create_session reply")
    """
    try:
        return model_cls.model_validate(obj)
    except pydantic.ValidationError as exc:
        raise ProtocolError(what, _summarize_validation(exc)) from None


def parse_json_object(what: str, payload: bytes) -> dict[str, Any]:
    """A JSON reply as a dict (a non-object is wrapped as ``{"result": value}``).

    Raises :class:`ProtocolError` naming ``what`` when the payload is not JSON.

    Example::

        parse_json_object("load_adapter result", b'{"ok": true}')   # {"ok": True}
    """
    obj = _loads(what, payload)
    return obj if isinstance(obj, dict) else {"result": obj}


def _loads(what: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(
            what, f"not JSON ({exc.__class__.__name__}): {_snippet(body)}"
        ) from None


def _snippet(body: bytes) -> str:
    text = body[:_MAX_SNIPPET].decode("utf-8", "replace")
    return repr(text) + ("…" if len(body) > _MAX_SNIPPET else "")


def _describe(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= _MAX_SNIPPET else text[:_MAX_SNIPPET] + "…"


def _summarize_validation(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def retrieve_future_body(request_id: str, *, allow_metadata_only: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/retrieve_future``.

    Example::

        retrieve_future_body("req-1", allow_metadata_only=True)
        # {"request_id": "req-1", "allow_metadata_only": True}
    """
    return {"request_id": request_id, "allow_metadata_only": allow_metadata_only}
