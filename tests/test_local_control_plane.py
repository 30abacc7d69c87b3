"""The local trainer's trainer-job control plane and the data plane under a job's route."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME


def _jobs_url(lt: LocalTrainer) -> str:
    return f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs"


def _create(http: httpx.Client, lt: LocalTrainer, **config: Any) -> dict[str, Any]:
    body = {"displayName": "t", "serviceMode": True, "trainingShapeRef": "shape/x",
            "trainingConfig": {"baseModel": MODEL_NAME, "loraRank": 0, "learningRate": 1e-3,
                               **config}}
    r = http.post(_jobs_url(lt), json=body)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def _wait_running(http: httpx.Client, url: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record: dict[str, Any] = http.get(url).json()
        if record["state"] == "JOB_STATE_RUNNING":
            return record
        time.sleep(0.02)
    raise AssertionError("job never reached RUNNING")


def test_job_lifecycle_with_warmup() -> None:
    with LocalTrainer(warmup_s=0.6) as lt, httpx.Client(timeout=10) as http:
        record = _create(http, lt)
        job_id = record["name"].rsplit("/", 1)[-1]
        assert record["name"] == f"accounts/{lt.account_id}/rlorTrainerJobs/{job_id}"
        assert record["state"] == "JOB_STATE_CREATING"
        assert "directRouteHandle" not in record
        assert record["trainingShapeRef"] == "shape/x" and record["serviceMode"] is True
        assert record["trainingConfig"]["learningRate"] == 1e-3
        assert record["createTime"].endswith("Z")
        url = f"{_jobs_url(lt)}/{job_id}"
        # While the job warms: its route and the root data plane answer 503.
        handle = f"{lt.base_url}/jobs/{job_id}"
        r = http.get(f"{handle}/api/v1/healthz")
        assert r.status_code == 503 and r.json() == {"detail": "trainer is warming up"}
        assert http.get(f"{lt.base_url}/api/v1/healthz").status_code == 503
        time.sleep(0.35)
        assert http.get(url).json()["state"] == "JOB_STATE_PENDING"
        running = _wait_running(http, url)
        assert running["directRouteHandle"] == handle
        assert running["status"]["code"] == "OK"
        assert http.get(f"{handle}/api/v1/healthz").status_code == 200
        assert http.get(f"{lt.base_url}/api/v1/healthz").status_code == 200

        lt.fail_job(job_id, message="out of GPUs")
        failed = http.get(url).json()
        assert failed["state"] == "JOB_STATE_FAILED"
        assert "out of GPUs" in failed["status"]["message"]
        assert "directRouteHandle" not in failed
        assert http.get(f"{handle}/api/v1/healthz").status_code == 503

        resumed = http.post(f"{url}:resume", json={}).json()
        assert resumed["state"] == "JOB_STATE_CREATING"
        _wait_running(http, url)

        # The HTTP test hook does the same as fail_job.
        hooked = http.post(f"{lt.base_url}/_local/jobs/{job_id}/fail", json={"message": "boom"})
        assert hooked.json()["state"] == "JOB_STATE_FAILED"

        listing = http.get(_jobs_url(lt)).json()
        assert listing["totalSize"] == 1 and listing["nextPageToken"] == ""
        assert listing["rlorTrainerJobs"][0]["name"] == record["name"]
        assert http.delete(url).json() == {}
        gone = http.get(url)
        assert gone.status_code == 404 and job_id in gone.json()["detail"]
        assert http.get(_jobs_url(lt)).json()["rlorTrainerJobs"] == []
        assert http.get(f"{handle}/api/v1/healthz").status_code == 404


def test_bad_job_requests() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        r = http.post(_jobs_url(lt), json={"trainingConfig": {}})
        assert r.status_code == 400 and "baseModel" in r.json()["detail"]
        r = http.post(_jobs_url(lt), json={"trainingConfig": {"baseModel": "Qwen/Qwen3-8B"}})
        assert r.status_code == 400 and MODEL_NAME in r.json()["detail"]
        r = http.post(_jobs_url(lt), content=b"[", headers={"content-type": "application/json"})
        assert r.status_code == 400 and "JSON" in r.json()["detail"]
        chosen = http.post(_jobs_url(lt), params={"rlorTrainerJobId": "my-job"},
                           json={"trainingConfig": {"baseModel": MODEL_NAME}})
        assert chosen.json()["name"].endswith("/my-job")
        again = http.post(_jobs_url(lt), params={"rlorTrainerJobId": "my-job"},
                          json={"trainingConfig": {"baseModel": MODEL_NAME}})
        assert again.status_code == 409
        other = f"{lt.control_plane_url}/v1/accounts/someone-else/rlorTrainerJobs"
        assert http.get(other).status_code == 404
        assert http.get(f"{_jobs_url(lt)}/nope").status_code == 404
        assert http.post(f"{_jobs_url(lt)}/nope:resume", json={}).status_code == 404
        assert http.delete(f"{_jobs_url(lt)}/nope").status_code == 404


def test_data_plane_under_a_job_is_tagged_and_checked() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        record = _create(http, lt, loraRank=4)
        job_id = record["name"].rsplit("/", 1)[-1]
        handle = _wait_running(http, f"{_jobs_url(lt)}/{job_id}")["directRouteHandle"]
        api = f"{handle}/api/v1"
        session = http.post(f"{api}/create_session", json={}).json()["session_id"]
        wrong = http.post(f"{api}/create_model", json={
            "session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME,
            "lora_config": {"rank": 8}})
        assert wrong.status_code == 400 and "loraRank=4" in wrong.json()["detail"]
        fut = http.post(f"{api}/create_model", json={
            "session_id": session, "model_seq_id": 1, "base_model": MODEL_NAME,
            "lora_config": {"rank": 4}}).json()
        model_id = fut["model_id"]
        save = http.post(f"{api}/save_weights", json={
            "model_id": model_id, "seq_id": 1, "path": "job-ckpt"}).json()
        done = http.post(f"{api}/retrieve_future", json={"request_id": save["request_id"]})
        path = done.json()["path"]
        mine = http.get(f"{lt.base_url}/api/v1/checkpoints", params={"job_id": job_id}).json()
        assert [c["tinker_path"] for c in mine["checkpoints"]] == [path]
        assert mine["checkpoints"][0]["job_id"] == job_id
        run = http.get(f"{api}/training_runs/{model_id}").json()
        assert run["job_id"] == job_id


@pytest.mark.anyio
async def test_control_plane_with_async_client_and_key() -> None:
    async with (
        LocalTrainer(api_key="tml-k", warmup_s=0.2) as lt,
        httpx.AsyncClient(headers={"Authorization": "Bearer tml-k"}) as http,
    ):
        r = await http.post(_jobs_url(lt), json={"trainingConfig": {"baseModel": MODEL_NAME}})
        assert r.status_code == 200
        job_url = f"{_jobs_url(lt)}/{r.json()['name'].rsplit('/', 1)[-1]}"
        assert (await http.get(job_url)).json()["state"] in (
            "JOB_STATE_CREATING", "JOB_STATE_PENDING")
        r401 = await http.get(job_url, headers={"Authorization": "Bearer wrong"})
        assert r401.status_code == 401
