"""Configuration is checked where it is given: ``InvalidInput`` names the field, and nothing
has been sent (a transport that counts its requests stands behind every client)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tinker import types

from firetitan_async import (
    Deployments,
    DeploymentSampler,
    InvalidInput,
    RetryPolicy,
    ServiceSession,
    TrainerJobs,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.wire.validation import MAX_LEARNING_RATE, MAX_SAMPLE_TOKENS, MAX_SAMPLES

URL = "http://127.0.0.1:9"
CRLF_KEY = "fw-0123456789abcdef\r\n"


class Counting(httpx.MockTransport):
    """Answers nothing useful; counts what reaches it."""

    def __init__(self) -> None:
        self.requests = 0

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests += 1
            return httpx.Response(500)

        super().__init__(handler)


def _raises(field: str, build: Callable[[], Any]) -> None:
    with pytest.raises(InvalidInput) as info:
        build()
    assert info.value.field == field, info.value
    assert CRLF_KEY.strip() not in str(info.value)  # a bad key is never quoted


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("api_key", {"api_key": CRLF_KEY}),
        ("api_key", {"api_key": "fw key with spaces"}),
        ("api_key", {"api_key": "fw-\x00-nul-inside"}),
        ("timeout", {"timeout": math.nan}),
        ("timeout", {"timeout": "5"}),
        ("timeout", {"timeout": math.inf}),
        ("timeout", {"timeout": 0}),
        ("retry", {"retry": {"max_attempts": 3}}),
    ],
)
def test_a_session_checks_its_configuration(field: str, kwargs: dict[str, Any]) -> None:
    transport = Counting()
    _raises(field, lambda: ServiceSession(URL, transport=transport, **kwargs))
    assert transport.requests == 0


def test_a_key_from_the_environment_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREWORKS_API_KEY", CRLF_KEY)
    _raises("api_key (from $FIREWORKS_API_KEY)", lambda: ServiceSession(URL, transport=Counting()))


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("backoff_base_s", {"backoff_base_s": -0.1}),
        ("backoff_cap_s", {"backoff_cap_s": math.nan}),
        ("backoff_cap_s", {"backoff_cap_s": math.inf}),
        ("jitter", {"jitter": 5}),
        ("jitter", {"jitter": -0.1}),
        ("deadline_s", {"deadline_s": math.nan}),
        ("deadline_s", {"deadline_s": 0}),
        ("connect_deadline_s", {"connect_deadline_s": -1}),
        ("max_attempts", {"max_attempts": 0}),
        ("max_attempts", {"max_attempts": 2.5}),
    ],
)
def test_a_retry_policy_checks_its_fields(field: str, kwargs: dict[str, Any]) -> None:
    _raises(field, lambda: RetryPolicy(**kwargs))


def test_sane_retry_policies_pass() -> None:
    RetryPolicy(backoff_base_s=0, backoff_cap_s=0, jitter=0, deadline_s=None, max_attempts=1)
    RetryPolicy(jitter=1.0, deadline_s=0.5)


@pytest.mark.parametrize("make", [TrainerJobs, Deployments])
def test_the_control_plane_checks_its_key(make: Callable[..., Any]) -> None:
    transport = Counting()
    _raises("api_key", lambda: make(CRLF_KEY, base_url=URL, account_id="a", transport=transport))
    assert transport.requests == 0


@pytest.mark.anyio
async def test_the_deployment_sampler_checks_its_configuration_and_bounds() -> None:
    transport = Counting()

    def sampler(**kwargs: Any) -> DeploymentSampler:
        return DeploymentSampler(URL, "accounts/a/deployments/d", transport=transport,
                                 allow_insecure_http=True, **kwargs)

    _raises("api_key", lambda: sampler(api_key=CRLF_KEY))
    _raises("timeout_s", lambda: sampler(api_key="k-0123", timeout_s=math.nan))
    async with sampler(api_key="k-0123") as ok:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("n", {"n": 10**9}),
            ("n", {"n": MAX_SAMPLES + 1}),
            ("max_tokens", {"max_tokens": MAX_SAMPLE_TOKENS + 1}),
        ]
        for field, kwargs in cases:
            with pytest.raises(InvalidInput) as info:
                await ok.sample([1, 2], **kwargs)
            assert info.value.field == field
    assert transport.requests == 0


@pytest.mark.anyio
@pytest.mark.parametrize("learning_rate", [1e30, 0.0, -1e-4, math.inf, MAX_LEARNING_RATE * 2])
async def test_a_learning_rate_is_checked_before_anything_is_sent(
    local_trainer: LocalTrainer, learning_rate: float
) -> None:
    async with ServiceSession(local_trainer.base_url, dialect="tinker") as session:
        client = await session.create_training_client("local/tiny-byte-lm")
        sampler = await session.create_sampling_client(base_model="local/tiny-byte-lm")
        before = dict(local_trainer.stats()["requests"])
        with pytest.raises(InvalidInput) as info:
            client.optim_step(types.AdamParams(learning_rate=learning_rate))
        assert info.value.field == "adam_params.learning_rate"
        with pytest.raises(InvalidInput) as sampled:
            sampler.sample(types.ModelInput.from_ints([1, 2]), 10**9, types.SamplingParams())
        assert sampled.value.field == "num_samples"
        after = dict(local_trainer.stats()["requests"])
        after.pop("session_heartbeat", None)
        before.pop("session_heartbeat", None)
        assert after == before
