"""What the Fireworks SDKs' managed flows (and the fw-ai cookbook's recipes) need from the local
trainer, over real HTTP: ``maxContextLength`` on every job, training shapes that name a
deployment shape, a ``FORWARD_ONLY`` shape for reference trainers, ``cross_entropy`` with
``loss_mask`` instead of ``weights``, and a frozen ``base_only`` reference on a LoRA job."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from firetitan_async.local import LocalTrainer
from firetitan_async.local._shapes import DEPLOYMENT_SHAPE

FW_QWEN = "accounts/fireworks/models/qwen3-8b"
TEXT = np.frombuffer(b"pack my box with five dozen liquor jugs", np.uint8).astype(np.int64)


def _tensor(arr: np.ndarray) -> dict[str, Any]:
    dtype = "int64" if arr.dtype.kind in "iu" else "float32"
    return {"data": arr.tolist(), "dtype": dtype, "shape": list(arr.shape)}


def _fwd_body(model_id: str, seq_id: int, inputs: dict[str, np.ndarray],
              key: str = "forward_input") -> dict[str, Any]:
    datum = {
        "model_input": {"chunks": [{"tokens": TEXT[:-1].tolist(), "type": "encoded_text"}]},
        "loss_fn_inputs": {k: _tensor(v) for k, v in inputs.items()},
    }
    return {"model_id": model_id, "seq_id": seq_id,
            key: {"data": [datum], "loss_fn": "cross_entropy"}}


class Api:
    """The Fireworks data-plane JSON forms over sync httpx."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=f"{base_url}/api/v1", timeout=30,
                                 headers={"accept": "application/json"})

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(f"/{path}", json=body)

    def call(self, path: str, body: Any) -> dict[str, Any]:
        r = self.post(path, body)
        assert r.status_code == 200, r.text
        out = self.post("retrieve_future", {"request_id": r.json()["request_id"]})
        assert out.status_code == 200 and "error" not in out.json(), out.text
        result: dict[str, Any] = out.json()
        return result

    def session(self) -> str:
        return str(self.post("create_session", {}).json()["session_id"])

    def model(self, session: str, seq: int, rank: int, **extra: Any) -> str:
        body = {"session_id": session, "model_seq_id": seq, "base_model": FW_QWEN,
                "lora_config": {"rank": rank}, **extra}
        return str(self.call("create_model", body)["model_id"])


def _logprobs(out: dict[str, Any]) -> np.ndarray:
    return np.asarray(out["loss_fn_outputs"][0]["logprobs"]["data"], np.float32)


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=3, models=[FW_QWEN, "accounts/acme/models/long,context=8192"]) as lt:
        yield lt


def _create_job(http: httpx.Client, lt: LocalTrainer, config: dict[str, Any],
                **params: str) -> dict[str, Any]:
    r = http.post(
        f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs",
        params=params, json={"serviceMode": True, "trainingConfig": config},
    )
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def test_every_job_has_a_max_context_length(trainer: LocalTrainer) -> None:
    with httpx.Client(timeout=10) as http:
        plain = _create_job(http, trainer, {"baseModel": FW_QWEN, "loraRank": 8})
        assert plain["trainingConfig"]["maxContextLength"] == 4096
        long = _create_job(http, trainer, {"baseModel": "accounts/acme/models/long"})
        assert long["trainingConfig"]["maxContextLength"] == 8192
        asked = _create_job(http, trainer, {"baseModel": FW_QWEN, "maxContextLength": 1024})
        assert asked["trainingConfig"]["maxContextLength"] == 1024


def test_shapes_name_a_deployment_shape_and_one_is_forward_only(trainer: LocalTrainer) -> None:
    shapes = f"{trainer.control_plane_url}/v1/accounts/{trainer.account_id}/trainingShapes"
    with httpx.Client(timeout=10) as http:
        modes = {}
        for shape in ("tiny-byte-lm-full", "tiny-byte-lm-lora", "tiny-byte-lm-forward"):
            snapshot = http.get(f"{shapes}/{shape}/versions/v1").json()["snapshot"]
            assert snapshot["deploymentShapeVersion"] == DEPLOYMENT_SHAPE
            modes[shape] = snapshot["trainerMode"]
        assert modes["tiny-byte-lm-forward"] == "FORWARD_ONLY"
        ref = f"accounts/{trainer.account_id}/trainingShapes/tiny-byte-lm-forward"
        job = _create_job(http, trainer, {"baseModel": FW_QWEN}, trainingShape=ref)
        assert job["trainingConfig"]["maxContextLength"] == 4096
        dep = http.post(
            f"{trainer.control_plane_url}/v1/accounts/{trainer.account_id}/deployments",
            params={"deploymentId": "shaped"},
            json={"baseModel": FW_QWEN, "deploymentShape": DEPLOYMENT_SHAPE},
        )
        assert dep.status_code == 200, dep.text


def test_cross_entropy_takes_loss_mask_as_the_weights(trainer: LocalTrainer) -> None:
    """The cookbook's reference forwards send ``target_tokens`` and ``loss_mask``."""
    api = Api(trainer.base_url)
    try:
        model_id = api.model(api.session(), 0, 0)
        targets = TEXT[1:]
        mask = np.zeros(len(targets), np.float32)
        mask[5:] = 1.0
        a = api.call("forward", _fwd_body(model_id, 1, {"target_tokens": targets,
                                                         "weights": mask}))
        b = api.call("forward", _fwd_body(model_id, 2, {"target_tokens": targets,
                                                         "loss_mask": mask}))
        assert np.array_equal(_logprobs(a), _logprobs(b))
        assert a["metrics"]["loss:sum"] == b["metrics"]["loss:sum"]
        assert b["metrics"]["loss:sum"] == pytest.approx(-_logprobs(b)[5:].sum(), rel=1e-5)
        r = api.post("forward_backward", _fwd_body(model_id, 3, {"target_tokens": targets},
                                                   key="forward_backward_input"))
        assert r.status_code == 400 and "loss_fn_inputs.weights" in r.text
    finally:
        api.http.close()


def test_base_only_reference_shares_a_lora_job(trainer: LocalTrainer) -> None:
    """A LoRA job serves its policy and a frozen base reference (lora_rank=0, base_only);
    a trainable rank-0 model is still refused there."""
    with httpx.Client(timeout=10) as http:
        job = _create_job(http, trainer, {"baseModel": FW_QWEN, "loraRank": 4})
    job_id = job["name"].rsplit("/", 1)[-1]
    api = Api(f"{trainer.base_url}/jobs/{job_id}")
    try:
        session = api.session()
        policy = api.model(session, 0, 4)
        ref = api.model(session, 1, 0, base_only=True)
        body = {"session_id": session, "model_seq_id": 2, "base_model": FW_QWEN,
                "lora_config": {"rank": 0}}
        refused = api.post("create_model", body)
        assert refused.status_code == 400 and "loraRank=4" in refused.text
        inputs: dict[str, np.ndarray] = {
            "target_tokens": TEXT[1:], "weights": np.ones(len(TEXT) - 1, np.float32)
        }
        out = api.call("forward", _fwd_body(ref, 1, inputs))
        base = api.call("forward", _fwd_body(policy, 1, inputs))
        assert np.array_equal(_logprobs(out), _logprobs(base))  # B=0: policy = base
    finally:
        api.http.close()


def test_repointing_a_deployment_rolls_its_pod(trainer: LocalTrainer) -> None:
    """A PATCH of ``hotLoadTrainerJob`` starts a new serving pod (a new replica identity,
    nothing hot-loaded), which SDK 1.2.9's reattach waits for; other PATCHes do not."""
    root = f"{trainer.control_plane_url}/v1/accounts/{trainer.account_id}/deployments"
    hot = {"fireworks-deployment": f"accounts/{trainer.account_id}/deployments/pods",
           "fireworks-model": FW_QWEN}
    with httpx.Client(timeout=10) as http:
        made = http.post(root, params={"deploymentId": "pods"},
                         json={"baseModel": FW_QWEN, "deploymentShape": DEPLOYMENT_SHAPE})
        assert made.status_code == 200, made.text

        def pod() -> str:
            status = http.get(f"{trainer.base_url}/hot_load/v1/models/hot_load", headers=hot)
            assert status.status_code == 200, status.text
            identity: str = status.json()["replicas"][0]["identity"]
            return identity

        assert pod() == "pods-pod-1"
        http.patch(f"{root}/pods", params={"updateMask": "description"},
                   json={"description": "x"}).raise_for_status()
        assert pod() == "pods-pod-1"
        http.patch(f"{root}/pods", params={"updateMask": "hot_load_trainer_job"},
                   json={"hotLoadTrainerJob": "accounts/local/rlorTrainerJobs/j"}
                   ).raise_for_status()
        assert pod() == "pods-pod-2"
