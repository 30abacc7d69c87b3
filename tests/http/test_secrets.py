"""The API key never reaches an error, a traceback or a log line of the data plane.

A real server on loopback (a small Starlette app) echoes the ``X-API-Key`` it receives in its
error bodies, as careless gateways do; a mocked network raises errors whose text holds the key
(a fault shape a real server cannot produce). Every error text, repr, formatted traceback
(causes included) and DEBUG log line is searched for the key.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Iterator
from typing import Literal

import httpx
import pytest
from _loopback_app import serve_on_loopback
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tinker import types

from firetitan_async import FiretitanError, ProtocolError, RetryPolicy, ServiceSession

pytestmark = pytest.mark.anyio

KEY = "fw-sk-THE-SECRET-0123456789"
FAST = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_cap_s=0.01, jitter=0)


def _echo_app() -> Starlette:
    """Every path answers the error of ``app.state.mode``: 401 JSON, 503 text or 400 text."""

    async def echo(request: Request) -> Response:
        key = request.headers.get("x-api-key", "")
        mode = request.headers.get("x-test-mode") or request.app.state.mode
        if mode == "401":
            return JSONResponse({"detail": f"invalid API key {key!r}", "key": key}, 401)
        if mode == "503":
            return PlainTextResponse(f"overloaded, try again (you sent {key})", 503)
        return PlainTextResponse(f"bad request from {key}", 400)

    app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])
    app.state.mode = "401"
    return app


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, Starlette]]:
    app = _echo_app()
    with serve_on_loopback(app) as url:
        yield url, app


def _assert_clean(error: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    texts = [
        str(error),
        repr(error),
        "".join(traceback.format_exception(error)),
        repr(getattr(error, "body", None)),
        caplog.text,
    ]
    for text in texts:
        assert KEY not in text, text
    assert "<redacted>" in str(error) + caplog.text


@pytest.mark.parametrize("dialect", ["fireworks", "tinker"])
@pytest.mark.parametrize("mode", ["401", "503", "400"])
async def test_a_server_echoing_the_key_does_not_leak_it(
    echo_server: tuple[str, Starlette],
    mode: str,
    dialect: Literal["fireworks", "tinker"],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, app = echo_server
    app.state.mode = mode
    caplog.set_level(logging.DEBUG, logger="firetitan_async")
    with pytest.raises(FiretitanError) as info:
        async with ServiceSession(url, api_key=KEY, retry=FAST, dialect=dialect):
            pass
    assert f"HTTP {mode}" in str(info.value)
    if mode == "503":  # retried: the retry log lines are DEBUG
        assert "retry" in caplog.text
    _assert_clean(info.value, caplog)


async def test_a_transport_error_holding_the_key_does_not_leak_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError(f"proxy refused {request.headers['x-api-key']}", request=request)

    caplog.set_level(logging.DEBUG, logger="firetitan_async")
    with pytest.raises(FiretitanError) as info:
        async with ServiceSession(
            "http://127.0.0.1:9", api_key=KEY, retry=FAST, transport=httpx.MockTransport(handler)
        ):
            pass
    assert attempts == FAST.max_attempts
    assert "ConnectError" in str(info.value)
    assert "retry" in caplog.text
    _assert_clean(info.value, caplog)


async def test_a_failed_operation_echoing_the_key_does_not_leak_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``retrieve_future``'s failure message is server text, redacted like any other."""

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-api-key"]
        path = request.url.path
        if path.endswith("/client/config"):
            return httpx.Response(200, json={})
        if path.endswith("/create_session"):
            return httpx.Response(200, json={"session_id": "s", "type": "create_session"})
        if path.endswith("/create_model"):
            return httpx.Response(200, json={"request_id": "r1"})
        if path.endswith("/get_info"):
            return httpx.Response(200, json={"model_data": {}, "model_id": "m1"})
        if path.endswith("/retrieve_future"):
            body = {"type": "request_failed", "error": f"denied for {key}", "category": "user"}
            return httpx.Response(200, json=body)
        return httpx.Response(200, json={})

    caplog.set_level(logging.DEBUG, logger="firetitan_async")
    async with ServiceSession(
        "http://127.0.0.1:9",
        api_key=KEY,
        retry=FAST,
        transport=httpx.MockTransport(handler),
        dialect="tinker",
    ) as session:
        with pytest.raises(FiretitanError) as info:
            await session.create_training_client("local/tiny-byte-lm")
    assert "denied for" in str(info.value)
    _assert_clean(info.value, caplog)


def _garbling_handler(garble: str) -> httpx.MockTransport:
    """A trainer whose reply at step ``garble`` is malformed and quotes the caller's key.

    ``create_session``: a reply that does not fit its type (pydantic's own error would quote
    it); ``create_model``: a result that is not JSON; ``optim_step``: the same inside an
    operation (the sans-IO wire quotes a malformed reply as it came).
    """

    def handler(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-api-key"]
        path = request.url.path
        if path.endswith("/client/config"):
            return httpx.Response(200, json={})
        if path.endswith("/create_session"):
            if garble == "create_session":
                return httpx.Response(200, json={"session_id": {"owner": key}})
            return httpx.Response(200, json={"session_id": "s", "type": "create_session"})
        if path.endswith("/get_info"):
            return httpx.Response(200, json={"model_data": {}, "model_id": "m1"})
        if path.endswith("/retrieve_future"):
            request_id = json.loads(request.content)["request_id"]
            if request_id == "create_model" and garble != "create_model":
                return httpx.Response(200, json={"model_id": "m1", "type": "create_model"})
            if request_id == "create_model" or garble == request_id:
                return httpx.Response(
                    200,
                    content=f"<html>hello {key}</html>".encode(),
                    headers={"content-type": "application/json"},
                )
            return httpx.Response(200, json={"type": "try_again"})
        return httpx.Response(200, json={"request_id": path.rsplit("/", 1)[-1]})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("garble", ["create_session", "create_model", "optim_step"])
async def test_a_malformed_reply_quoting_the_key_does_not_leak_it(
    garble: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="firetitan_async")
    with pytest.raises(ProtocolError) as info:
        async with ServiceSession(
            "http://127.0.0.1:9",
            api_key=KEY,
            retry=FAST,
            transport=_garbling_handler(garble),
            dialect="tinker",
        ) as session:
            client = await session.create_training_client("local/tiny-byte-lm")
            await client.optim_step(types.AdamParams(learning_rate=1e-3))
    # pydantic's own error would quote the reply; ours names the field only.
    what = "create_session reply" if garble == "create_session" else "retrieve_future reply"
    assert info.value.what == what
    if garble != "create_session":  # the malformed reply is quoted, the key redacted
        assert "hello <redacted>" in str(info.value)
    for text in (
        str(info.value),
        repr(info.value),
        "".join(traceback.format_exception(info.value)),
        caplog.text,
    ):
        assert KEY not in text, text
