"""One rule for the API key and the service URLs from the environment (``_http/_environment``)."""

from __future__ import annotations

import pytest

from firetitan_async import ServiceSession, TrainerJobs
from firetitan_async._http._environment import (
    API_KEY_VARS,
    CONTROL_PLANE_URL_VAR,
    resolve_api_key,
    resolve_setting,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in API_KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(CONTROL_PLANE_URL_VAR, raising=False)
    return monkeypatch


def test_explicit_key_wins_and_an_empty_one_is_none(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FIREWORKS_API_KEY", "fw-env")
    assert resolve_api_key("fw-arg") == "fw-arg"
    assert resolve_api_key("") is None


def test_fireworks_key_first_then_tinker_key(clean_env: pytest.MonkeyPatch) -> None:
    assert resolve_api_key(None) is None
    clean_env.setenv("TINKER_API_KEY", "tml-env")
    assert resolve_api_key(None) == "tml-env"
    clean_env.setenv("FIREWORKS_API_KEY", "")
    assert resolve_api_key(None) == "tml-env"  # an empty variable is unset
    clean_env.setenv("FIREWORKS_API_KEY", "fw-env")
    assert resolve_api_key(None) == "fw-env"


def test_settings_fall_back_to_the_variable_then_the_default(
    clean_env: pytest.MonkeyPatch,
) -> None:
    assert resolve_setting(None, CONTROL_PLANE_URL_VAR, "https://d") == "https://d"
    clean_env.setenv(CONTROL_PLANE_URL_VAR, "https://env")
    assert resolve_setting(None, CONTROL_PLANE_URL_VAR, "https://d") == "https://env"
    assert resolve_setting("https://arg", CONTROL_PLANE_URL_VAR, "https://d") == "https://arg"


async def test_session_and_control_plane_apply_the_same_rule(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("TINKER_API_KEY", "tml-only-tinker")
    # The session picks the tinker dialect from the key it found (a tml- key).
    assert ServiceSession("http://127.0.0.1:1").dialect == "tinker"
    async with TrainerJobs(base_url="http://127.0.0.1:1", allow_insecure_http=True) as jobs:
        assert jobs.api_key == "tml-only-tinker"
        assert "tml-only-tinker" not in repr(jobs)
    async with TrainerJobs(
        "", base_url="http://127.0.0.1:1", allow_insecure_http=True
    ) as no_key:
        assert no_key.api_key is None
