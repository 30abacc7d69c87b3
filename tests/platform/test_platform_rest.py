"""RestCore (the control plane's HTTP core) and send_with_retry (the one retry loop).

Account resolution runs against the real local trainer; ``httpx.MockTransport`` stands in only
for replies the local server does not produce on demand (zero or two accounts, a scripted
429 with ``Retry-After``, a google.rpc body with an ErrorInfo detail, an echoed key).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import pytest

from firetitan_async import (
    Deployments,
    FiretitanError,
    InvalidInput,
    RetryPolicy,
    SessionClosed,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.platform import PlatformAPIError, RestCore

pytestmark = pytest.mark.anyio

SECRET = "fw-secret-key-0123456789abcdef"
FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_cap_s=0.01, deadline_s=5)
# Retry-After is honoured up to 6x the backoff cap: 0.6 s here.
PATIENT = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_cap_s=0.1, deadline_s=5)


def _mock(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


def _accounts(*names: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/accounts"
        assert request.url.params["pageSize"] == "2"
        return httpx.Response(200, json={"accounts": [{"name": f"accounts/{n}"} for n in names]})

    return handler


async def test_account_resolved_once_from_the_key(anyio_backend: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return _accounts("acme")(request)

    async with RestCore(SECRET, base_url="https://fw.example", transport=_mock(handler)) as rest:
        assert await rest.account_id() == "acme"
        assert await rest.account_id() == "acme"
    assert len(seen) == 1
    headers = seen[0].headers
    assert headers["x-api-key"] == SECRET
    assert headers["content-type"] == "application/json"
    assert "authorization" not in headers


@pytest.mark.parametrize(("names", "words"), [((), "not associated"), (("a", "b"), "several")])
async def test_zero_or_several_accounts_raise(
    anyio_backend: str, names: tuple[str, ...], words: str
) -> None:
    async with RestCore(
        SECRET, base_url="https://fw.example", transport=_mock(_accounts(*names))
    ) as rest:
        with pytest.raises(FiretitanError, match=words) as info:
            await rest.account_id()
    assert SECRET not in str(info.value)
    assert "account_id=" in str(info.value)


async def test_given_account_sends_nothing(anyio_backend: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request {request.url}")

    async with RestCore(
        SECRET, base_url="https://fw.example", account_id="mine", transport=_mock(handler)
    ) as rest:
        assert await rest.account_id() == "mine"


def test_bad_account_and_url_refused() -> None:
    with pytest.raises(InvalidInput, match="account_id"):
        RestCore(SECRET, account_id="a/b")
    with pytest.raises(InvalidInput, match="base_url"):
        RestCore(SECRET, base_url="http://fw.example")
    with pytest.raises(FiretitanError, match="no API key"):
        RestCore("", base_url="https://fw.example")


async def test_env_headers_and_additional_headers(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIREWORKS_CLIENT_SOURCE", "fireworks-training-skill/1.0")
    monkeypatch.setenv("FIREWORKS_SESSION_ID", "0b2e5c3a-8f4e-4d0e-9a53-1a2b3c4d5e6f")
    rest = RestCore(SECRET, base_url="https://fw.example", additional_headers={"x-api-key": "k2"})
    headers = rest.headers(bearer=True)
    assert headers["X-Fireworks-Client-Source"] == "fireworks-training-skill/1.0"
    assert headers["X-Fireworks-Session-Id"] == "0b2e5c3a-8f4e-4d0e-9a53-1a2b3c4d5e6f"
    assert headers["x-api-key"] == "k2" and "X-Api-Key" not in headers
    assert headers["Authorization"] == f"Bearer {SECRET}"
    monkeypatch.setenv("FIREWORKS_CLIENT_SOURCE", "something-else")
    # Not canonical (no hyphens): dropped. (Upper case passes, as in the SDK's own check.)
    monkeypatch.setenv("FIREWORKS_SESSION_ID", "0b2e5c3a8f4e4d0e9a531a2b3c4d5e6f")
    headers = rest.headers()
    assert "X-Fireworks-Client-Source" not in headers
    assert "X-Fireworks-Session-Id" not in headers
    assert "Authorization" not in headers
    await rest.aclose()


async def test_retry_after_is_honoured(anyio_backend: str) -> None:
    times: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"}, json={"message": "slow"})
        return httpx.Response(200, json={"ok": True})

    async with RestCore(
        SECRET,
        base_url="https://fw.example",
        account_id="a",
        transport=_mock(handler),
        retry=PATIENT,
    ) as rest:
        assert await rest.call("POST", "/v1/x", json_body={}) == {"ok": True}
    assert len(times) == 2
    assert times[1] - times[0] >= 0.29


async def test_plain_post_not_replayed_after_a_500_but_a_get_is(anyio_backend: str) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(500, json={"message": "boom"})

    async with RestCore(
        SECRET, base_url="https://fw.example", account_id="a", transport=_mock(handler), retry=FAST
    ) as rest:
        with pytest.raises(PlatformAPIError):
            await rest.call("POST", "/v1/x", json_body={})
        assert calls == ["POST"]
        with pytest.raises(PlatformAPIError):
            await rest.call("GET", "/v1/x")
    assert calls.count("GET") == FAST.max_attempts


async def test_google_rpc_error_parsed_and_redacted(anyio_backend: str) -> None:
    body = {
        "code": 8,
        "message": f"quota exceeded for key {SECRET}",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "QUOTA_EXCEEDED",
                "metadata": {"quota_required": "8"},
            }
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json=body)

    async with RestCore(
        SECRET, base_url="https://fw.example", account_id="a", transport=_mock(handler)
    ) as rest:
        with pytest.raises(PlatformAPIError) as info:
            await rest.call("GET", "/v1/x")
    exc = info.value
    assert (exc.status_code, exc.grpc_code, exc.reason) == (400, 8, "QUOTA_EXCEEDED")
    assert exc.metadata == {"quota_required": "8"}
    assert exc.message == "quota exceeded for key <redacted>"
    assert SECRET not in str(exc) and SECRET not in json.dumps(exc.body)
    assert SECRET not in repr(rest)


async def test_connection_refused_is_retried_even_for_post(anyio_backend: str) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        if calls == 2:
            raise httpx.ReadError(f"reset {SECRET}", request=request)
        return httpx.Response(200, json={})

    async with RestCore(
        SECRET, base_url="https://fw.example", account_id="a", transport=_mock(handler), retry=FAST
    ) as rest:
        with pytest.raises(FiretitanError, match="may have reached the server") as info:
            await rest.call("POST", "/v1/x", json_body={})
    assert calls == 2
    assert SECRET not in str(info.value)


async def test_credentials_in_additional_headers_are_redacted_too(anyio_backend: str) -> None:
    other = "other-credential-0123456789"

    def handler(request: httpx.Request) -> httpx.Response:
        token = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(403, json={"message": f"bad token {token}"})

    async with RestCore(
        SECRET,
        base_url="https://fw.example",
        account_id="a",
        additional_headers={"Authorization": f"Bearer {other}"},
        transport=_mock(handler),
    ) as rest:
        with pytest.raises(PlatformAPIError) as info:
            await rest.call("GET", "/v1/x")
    assert other not in str(info.value) and other not in json.dumps(info.value.body)


@pytest.mark.parametrize("client_type", [TrainerJobs, Deployments])
async def test_a_control_plane_client_is_closed_by_its_block_and_cannot_reenter(
    local_trainer: LocalTrainer, client_type: type[TrainerJobs] | type[Deployments]
) -> None:
    client = client_type(base_url=local_trainer.control_plane_url)
    async with client as entered:
        assert entered is client and client.base_url == local_trainer.control_plane_url
        assert await client._rest.call("GET", "/v1/accounts")
    with pytest.raises(SessionClosed):
        await client._rest.call("GET", "/v1/accounts")
    with pytest.raises(SessionClosed):
        async with client:
            pass
    await client.aclose()  # closing twice is harmless
