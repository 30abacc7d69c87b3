"""The local trainer's serverless gateway, at the HTTP level: what it refuses and how.

(The SDK's flow and ours run against it in ``tests/conformance/test_serverless_fireworks.py``
and ``tests/client/test_serverless.py``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from firetitan_async.local import LocalTrainer

KEY = "fw_local_gateway_key_7"
GATEWAY = "/training/v1/serverless"


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with LocalTrainer(api_key=KEY, seed=1) as lt, httpx.Client(
        base_url=lt.base_url, headers={"X-API-Key": KEY}, timeout=30
    ) as client:
        yield client


def _session(http: httpx.Client, prefix: str = GATEWAY) -> str:
    reply = http.post(prefix + "/api/v1/create_session", json={"user_metadata": {}})
    reply.raise_for_status()
    session_id: str = reply.json()["session_id"]
    return session_id


def test_sessions_are_training_sessions_only_through_the_gateway(http: httpx.Client) -> None:
    assert _session(http).startswith("ts-")
    dedicated = _session(http, "")
    assert dedicated.startswith("local-")
    # A dedicated session is no training session on the control plane.
    reply = http.get(f"/v1/accounts/local/trainingSessions/{dedicated}/checkpoints")
    assert reply.status_code == 404 and reply.json()["code"] == 5


def test_create_sampling_route_is_the_gateways_and_checks_its_body(http: httpx.Client) -> None:
    route = GATEWAY + "/api/v1/create_sampling_route"
    dedicated = http.post("/api/v1/create_sampling_route", json={"base_model": "x"})
    assert dedicated.status_code == 404
    assert http.post(route, json={}).status_code == 400
    both = {"base_model": "local/tiny-byte-lm", "training_run": "accounts/local/trainingRuns/r"}
    assert http.post(route, json=both).status_code == 400
    elsewhere = {"training_run": "accounts/other/trainingRuns/r"}
    assert http.post(route, json=elsewhere).status_code == 404
    assert http.post(route, json={"base_model": "local/tiny-byte-lm"}).status_code == 200
    # A bound base route serves completions; an unbound one does not.
    completions = GATEWAY + "/inference/v1/completions"
    body = {"prompt": [1, 2], "max_tokens": 2}
    samplers = "accounts/local/trainingSamplers/"
    served = http.post(completions, json={**body, "model": samplers + "local/tiny-byte-lm"})
    assert served.status_code == 200
    assert len(served.json()["choices"][0]["raw_output"]["completion_token_ids"]) == 2
    unbound = http.post(completions, json={**body, "model": samplers + "Org/A"})
    assert unbound.status_code == 404


def test_the_session_routes_refuse_what_they_cannot_do(http: httpx.Client) -> None:
    session = _session(http)
    base = f"/v1/accounts/local/trainingSessions/{session}"
    completions = GATEWAY + "/inference/v1/completions"
    # No model yet: no rollout host for the session's base weights, no checkpoint to sample.
    name = base.removeprefix("/v1/")
    for model in (name, f"{name}/checkpoints/nope"):
        reply = http.post(completions, json={"model": model, "prompt": [1], "max_tokens": 1})
        assert reply.status_code == 404, model
    assert http.get(base + "/checkpoints").json()["trainingSessionCheckpoints"] == []
    promote = {"output_model": "accounts/local/models/m-1", "base_model": "local/tiny-byte-lm"}
    nope = base + "/checkpoints/nope:promote"
    assert http.post(nope, json=promote).status_code == 404
    assert http.post(nope, json={**promote, "x": 1}).status_code == 400
    assert http.post(nope, json={**promote, "output_model": "m"}).status_code == 400
    assert http.get(f"/v1/accounts/other/trainingSessions/{session}").status_code == 404
    assert http.get(base).json()["name"] == name
    assert http.delete(base).status_code == 200
    assert http.delete(base).status_code == 404  # gone (the SDK takes a 404 as done)
    assert http.get(base + "/checkpoints").status_code == 404


def test_the_capacity_knob_is_checked_and_authed(http: httpx.Client) -> None:
    knob = "/_local/serverless"
    assert httpx.post(str(http.base_url) + knob, json={}).status_code == 401
    assert http.post(knob, json={"capacity_409": -1}).status_code == 400
    assert http.post(knob, json={"capacity_409": True}).status_code == 400
    assert http.post(knob, json={"bare": "yes"}).status_code == 400
    assert http.post(knob, json={"surprise": 1}).status_code == 400
    assert http.post(knob, json={"capacity_409": 1, "bare": True}).json() == {
        "capacity_409": 1, "bare": True,
    }
    # Only serverless polls answer the forced 409 (a dedicated poll is left alone).
    poll = {"request_id": "req-unknown", "allow_metadata_only": True}
    assert http.post("/api/v1/retrieve_future", json=poll).status_code != 409
    forced = http.post(GATEWAY + "/api/v1/retrieve_future", json=poll)
    assert (forced.status_code, forced.content) == (409, b"{}")
    assert http.post(knob, json={"bare": False}).json() == {"capacity_409": 0, "bare": False}
