"""The data plane honours ``HTTP(S)_PROXY`` / ``NO_PROXY`` / ``trust_env`` as httpx does, and
caps the size of a reply.

A small forward proxy on loopback (an ASGI app under uvicorn that relays absolute-form requests
to their target and records them) stands between a session and the local trainer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _loopback_app import serve_on_loopback
from tinker import types

from firetitan_async import FiretitanError, RetryPolicy, ServiceSession
from firetitan_async._http._http11_transport import Http11Transport, ReplyTooLarge
from firetitan_async._http._transport import Transport
from firetitan_async.local import LocalTrainer, sft_datum

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class _ForwardProxy:
    """An HTTP forward proxy: relays ``POST http://host/path`` and records each target."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        target = scope["path"] + (f"?{query}" if query else "")
        self.seen.append(target)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"host", b"connection")]
        async with httpx.AsyncClient(trust_env=False) as client:
            reply = await client.request(scope["method"], target, content=body, headers=headers)
        out = [(k.encode(), v.encode()) for k, v in reply.headers.items() if k.lower() not in
               ("content-length", "transfer-encoding", "connection", "content-encoding")]
        await send({"type": "http.response.start", "status": reply.status_code, "headers": out})
        await send({"type": "http.response.body", "body": reply.content})


@pytest.fixture
def proxy() -> Iterator[tuple[str, _ForwardProxy]]:
    app = _ForwardProxy()
    with serve_on_loopback(app) as url:
        yield url, app


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    return monkeypatch


async def _train_one_step(url: str, *, trust_env: bool = True) -> None:
    async with ServiceSession(url, trust_env=trust_env) as session:
        client = await session.create_training_client(MODEL, lora_rank=2)
        fb = client.forward_backward([sft_datum("via a proxy")], "cross_entropy")
        await client.optim_step(types.AdamParams(learning_rate=1e-3))
        assert (await fb).metrics


async def test_http_proxy_carries_the_data_plane(
    local_trainer: LocalTrainer, proxy: tuple[str, _ForwardProxy], clean_env: pytest.MonkeyPatch
) -> None:
    proxy_url, recorder = proxy
    clean_env.setenv("HTTP_PROXY", proxy_url)
    await _train_one_step(local_trainer.base_url)
    paths = {httpx.URL(target).path for target in recorder.seen}
    assert {"/api/v1/create_session", "/api/v1/forward_backward", "/api/v1/optim_step"} <= paths
    assert all(target.startswith(local_trainer.base_url) for target in recorder.seen)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*"])
async def test_no_proxy_bypasses_it(
    local_trainer: LocalTrainer,
    proxy: tuple[str, _ForwardProxy],
    clean_env: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    proxy_url, recorder = proxy
    clean_env.setenv("HTTP_PROXY", proxy_url)
    clean_env.setenv("NO_PROXY", no_proxy)
    await _train_one_step(local_trainer.base_url)
    assert recorder.seen == []


async def test_trust_env_false_ignores_the_environment(
    local_trainer: LocalTrainer, proxy: tuple[str, _ForwardProxy], clean_env: pytest.MonkeyPatch
) -> None:
    proxy_url, recorder = proxy
    clean_env.setenv("HTTP_PROXY", proxy_url)
    await _train_one_step(local_trainer.base_url, trust_env=False)
    assert recorder.seen == []
    await _train_one_step(local_trainer.base_url, trust_env=True)
    assert recorder.seen  # the same environment, trusted: through the proxy


async def test_a_reply_larger_than_the_cap_fails_once_without_retries(
    local_trainer: LocalTrainer, clean_env: pytest.MonkeyPatch
) -> None:
    h11 = Http11Transport(max_reply_bytes=16)
    async with httpx.AsyncClient(transport=h11) as client:
        with pytest.raises(ReplyTooLarge):
            await client.post(f"{local_trainer.base_url}/api/v1/client/config", json={})
    before = local_trainer.stats()
    transport = Transport(
        local_trainer.base_url,
        None,
        timeout=10,
        retry=RetryPolicy(max_attempts=5, backoff_base_s=0.001),
        transport=Http11Transport(max_reply_bytes=16),
    )
    try:
        with pytest.raises(FiretitanError, match="larger than 16 bytes"):
            await transport.call("POST", "/api/v1/client/config", json_body={})
    finally:
        await transport.aclose()
    assert _requests(local_trainer.stats()) - _requests(before) == 1


def _requests(stats: dict[str, Any]) -> int:
    return int(sum(stats.get("requests", {}).values()))
