"""The local trainer's Fireworks control plane (accounts, jobs, checkpoints, promotion, shapes)
and the data plane under a job's route and under the trainer gateway, over real HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from firetitan_async.local import LocalTrainer
from firetitan_async.local._model import MODEL_NAME

KEY = "fw-local-key-0123456789"


def _jobs_url(lt: LocalTrainer) -> str:
    return f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs"


def _gateway(lt: LocalTrainer, job_id: str) -> str:
    return f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/{lt.account_id}/{job_id}"


def _create(http: httpx.Client, lt: LocalTrainer, job_id: str | None = None, **config: Any) -> str:
    body = {
        "serviceMode": True,
        "keepAlive": False,
        "dataset": "",
        "displayName": "t",
        "useReservation": True,
        "nodeCount": 1,
        "trainingConfig": {"baseModel": MODEL_NAME, "loraRank": 0, "learningRate": 1e-3, **config},
    }
    params = {"skipValidations": "true", **({"rlorTrainerJobId": job_id} if job_id else {})}
    r = http.post(_jobs_url(lt), json=body, params=params)
    assert r.status_code == 200, r.text
    name: str = r.json()["name"]
    return name.rsplit("/", 1)[-1]


def _wait_running(http: httpx.Client, url: str, timeout: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record: dict[str, Any] = http.get(url).json()
        if record["state"] == "JOB_STATE_RUNNING":
            return record
        time.sleep(0.02)
    raise AssertionError("job never reached RUNNING")


def _rpc_error(r: httpx.Response, status: int, code: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"code", "message", "details"} and body["code"] == code
    for word in words:
        assert word in body["message"], body


def test_job_lifecycle_with_warmup_through_the_gateway() -> None:
    with LocalTrainer(warmup_s=0.6) as lt, httpx.Client(timeout=10) as http:
        job_id = _create(http, lt, "lifecycle-1")
        url = f"{_jobs_url(lt)}/{job_id}"
        record = http.get(url).json()
        assert record["name"] == f"accounts/{lt.account_id}/rlorTrainerJobs/{job_id}"
        assert record["state"] == "JOB_STATE_CREATING"
        assert record["statusMessage"] == "trainer is warming up"
        assert record["keepAlive"] is False and record["serviceMode"] is True
        assert record["trainingConfig"]["learningRate"] == 1e-3
        assert record["createTime"].endswith("Z")
        # While the job warms: its gateway route (healthz too) and the root answer 503.
        gateway = _gateway(lt, job_id)
        r = http.get(f"{gateway}/api/v1/healthz")
        assert r.status_code == 503 and r.json() == {"detail": "trainer is warming up"}
        assert http.get(f"{lt.base_url}/api/v1/healthz").status_code == 503
        time.sleep(0.35)
        assert http.get(url).json()["state"] == "JOB_STATE_PENDING"
        running = _wait_running(http, url)
        assert running["status"]["code"] == "OK"
        assert http.get(f"{gateway}/api/v1/healthz").status_code == 200
        assert http.get(f"{running['directRouteHandle']}/api/v1/healthz").status_code == 200

        lt.fail_job(job_id, message="out of GPUs")
        failed = http.get(url).json()
        assert failed["state"] == "JOB_STATE_FAILED"
        assert failed["statusMessage"] == "out of GPUs"
        assert failed["status"] == {"code": "INTERNAL", "message": "out of GPUs"}
        assert http.get(f"{gateway}/api/v1/healthz").status_code == 503

        # :resume takes no body, as the SDK sends it.
        resumed = http.post(f"{url}:resume", headers={"Content-Type": "application/json"})
        assert resumed.json()["state"] == "JOB_STATE_CREATING"
        _wait_running(http, url)

        # The HTTP test hook does the same as fail_job.
        hooked = http.post(f"{lt.base_url}/_local/jobs/{job_id}/fail", json={"message": "boom"})
        assert hooked.json()["state"] == "JOB_STATE_FAILED"

        listing = http.get(_jobs_url(lt)).json()
        assert listing["totalSize"] == 1 and listing["nextPageToken"] == ""
        assert http.delete(url).json() == {}
        # A deleted job stays as a tombstone: readable, its id not reusable, its route gone.
        tombstone = http.get(url).json()
        assert tombstone["state"] == "JOB_STATE_DELETED"
        _rpc_error(http.delete(url), 404, 5, job_id)
        assert http.get(f"{gateway}/api/v1/healthz").status_code == 404
        assert http.post(f"{lt.base_url}/_local/jobs/{job_id}/fail", json={}).status_code == 404
        again = http.post(
            _jobs_url(lt),
            params={"rlorTrainerJobId": job_id},
            json={"trainingConfig": {"baseModel": MODEL_NAME}},
        )
        _rpc_error(again, 409, 6, "already exists")


@pytest.mark.parametrize(
    ("body", "params", "status", "code", "words"),
    [
        ({"trainingConfig": {}}, {}, 400, 3, ["baseModel"]),
        ({"trainingConfig": {"baseModel": "Org/Unserved"}}, {}, 400, 3, [MODEL_NAME, "--model"]),
        ({"trainingConfig": {"baseModel": MODEL_NAME, "loraRank": "8"}}, {}, 400, 3, ["loraRank"]),
        ({"trainingConfig": {"baseModel": MODEL_NAME, "loraRank": -1}}, {}, 400, 3, ["loraRank"]),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}, "nodeCount": True},
            {},
            400,
            3,
            ["nodeCount"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}, "keepAlive": "no"},
            {},
            400,
            3,
            ["keepAlive"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}, "inactivityTimeout": "4h"},
            {},
            400,
            3,
            ["inactivityTimeout"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}, "inactivityTimeout": "10801s"},
            {},
            400,
            3,
            ["3 hours"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}, "displayName": "x" * 64},
            {},
            400,
            3,
            ["64"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}},
            {"rlorTrainerJobId": "a b"},
            400,
            3,
            ["a b"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}},
            {"skipValidations": "yes"},
            400,
            3,
            ["skip"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME}},
            {"trainingShape": "accounts/local/trainingShapes/nope"},
            400,
            3,
            ["unknown training shape"],
        ),
        (
            {"trainingConfig": {"baseModel": MODEL_NAME, "loraRank": 8}},
            {"trainingShape": "accounts/local/trainingShapes/tiny-byte-lm-full"},
            400,
            3,
            ["FULL_PARAMETER_TRAINER"],
        ),
    ],
)
def test_bad_creates_get_a_google_rpc_400_and_change_nothing(
    body: dict[str, Any], params: dict[str, str], status: int, code: int, words: list[str]
) -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        _rpc_error(http.post(_jobs_url(lt), json=body, params=params), status, code, *words)
        assert http.get(_jobs_url(lt)).json()["rlorTrainerJobs"] == []


def test_other_bad_requests() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        r = http.post(_jobs_url(lt), content=b"[", headers={"content-type": "application/json"})
        _rpc_error(r, 400, 3, "JSON")
        other = f"{lt.control_plane_url}/v1/accounts/someone-else/rlorTrainerJobs"
        _rpc_error(http.get(other), 404, 5, "someone-else")
        _rpc_error(http.get(f"{_jobs_url(lt)}/nope"), 404, 5, "nope")
        _rpc_error(http.post(f"{_jobs_url(lt)}/nope:resume"), 404, 5)
        _rpc_error(http.delete(f"{_jobs_url(lt)}/nope"), 404, 5)
        job_id = _create(http, lt)
        url = f"{_jobs_url(lt)}/{job_id}"
        _rpc_error(http.post(f"{url}:resume", json={"force": True}), 400, 3, "no body")
        _rpc_error(http.post(f"{url}:resume"), 400, 9, "JOB_STATE_RUNNING")
        _rpc_error(http.post(f"{url}:cancel"), 404, 5, "unknown action")
        _rpc_error(http.get(f"{lt.control_plane_url}/v1/nothing"), 404, 5, "no such endpoint")
        # Data-plane errors keep their {"detail"} form.
        r = http.get(f"{_gateway(lt, 'nope')}/api/v1/healthz")
        assert r.status_code == 404 and "nope" in r.json()["detail"]
        other_account = f"{lt.control_plane_url}/training/v1/rlorTrainerJobs/x/{job_id}"
        assert http.get(f"{other_account}/api/v1/healthz").status_code == 404


def test_accounts_and_training_shapes() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        accounts = http.get(f"{lt.control_plane_url}/v1/accounts", params={"pageSize": 2}).json()
        assert accounts["accounts"] == [
            {"name": f"accounts/{lt.account_id}", "displayName": "local trainer"}
        ]
        shapes = f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/trainingShapes"
        latest = http.get(
            f"{shapes}/tiny-byte-lm-lora/versions",
            params={"filter": "latest_validated=true", "pageSize": 1},
        ).json()["trainingShapeVersions"]
        assert len(latest) == 1 and latest[0]["snapshot"]["trainerMode"] == "LORA_TRAINER"
        pinned = http.get(f"{shapes}/tiny-byte-lm-lora/versions/v1").json()
        assert pinned == latest[0]
        _rpc_error(http.get(f"{shapes}/nope/versions"), 404, 5)
        _rpc_error(http.get(f"{shapes}/tiny-byte-lm-lora/versions", params={"filter": "x"}), 400, 3)
        # A job created on the shape path gets the shape's context length.
        r = http.post(
            _jobs_url(lt),
            params={"trainingShape": latest[0]["name"], "rlorTrainerJobId": "shaped"},
            json={"trainingConfig": {"baseModel": MODEL_NAME, "loraRank": 4}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["trainingConfig"]["maxContextLength"] == 4096


def test_auth_accepts_x_api_key_or_bearer_on_both_planes_and_refuses_alike() -> None:
    with LocalTrainer(api_key=KEY) as lt, httpx.Client(timeout=10) as http:
        accounts = f"{lt.control_plane_url}/v1/accounts"
        for headers in ({"X-Api-Key": KEY}, {"Authorization": f"Bearer {KEY}"}):
            assert http.get(accounts, headers=headers).status_code == 200
            assert http.get(f"{lt.base_url}/api/v1/healthz", headers=headers).status_code == 200
        refusals = []
        for headers in (
            {},
            {"X-Api-Key": "wrong"},
            {"Authorization": "Bearer wrong"},
            {"X-Api-Key": KEY, "Authorization": "Bearer wrong"},
            {"Authorization": KEY},
        ):
            r = http.get(accounts, headers=headers)
            assert r.status_code == 401
            refusals.append(r.json())
            assert KEY not in r.text
        assert all(body == refusals[0] for body in refusals)
        assert refusals[0]["code"] == 16
        data = http.get(f"{lt.base_url}/api/v1/healthz", headers={"X-Api-Key": "wrong"})
        assert data.status_code == 401 and data.json()["detail"] == refusals[0]["message"]


def test_data_plane_under_a_job_is_tagged_and_checked() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        job_id = _create(http, lt, loraRank=4)
        for base in (
            _wait_running(http, f"{_jobs_url(lt)}/{job_id}")["directRouteHandle"],
            _gateway(lt, job_id),
        ):
            api = f"{base}/api/v1"
            session = http.post(f"{api}/create_session", json={}).json()["session_id"]
            wrong = http.post(
                f"{api}/create_model",
                json={
                    "session_id": session,
                    "model_seq_id": 0,
                    "base_model": MODEL_NAME,
                    "lora_config": {"rank": 8},
                },
            )
            assert wrong.status_code == 400 and "loraRank=4" in wrong.json()["detail"]
            fut = http.post(
                f"{api}/create_model",
                json={
                    "session_id": session,
                    "model_seq_id": 1,
                    "base_model": MODEL_NAME,
                    "lora_config": {"rank": 4},
                },
            ).json()
            model_id = fut["model_id"]
            run = http.get(f"{api}/training_runs/{model_id}").json()
            assert run["job_id"] == job_id


def _save(http: httpx.Client, api: str, model_id: str, seq: int, kind: str, name: str) -> None:
    body: dict[str, Any] = {"model_id": model_id, "seq_id": seq, "path": name}
    if kind != "state":
        body["checkpoint_type"] = kind
    endpoint = "save_weights" if kind == "state" else "save_weights_for_sampler"
    fut = http.post(f"{api}/{endpoint}", json=body).json()
    done = http.post(f"{api}/retrieve_future", json={"request_id": fut["request_id"]})
    assert done.status_code == 200, done.text


def _job_with_checkpoints(http: httpx.Client, lt: LocalTrainer, rank: int) -> str:
    job_id = _create(http, lt, f"ckpt-job-{rank}", loraRank=rank)
    api = f"{_gateway(lt, job_id)}/api/v1"
    session = http.post(f"{api}/create_session", json={}).json()["session_id"]
    lora = {"rank": rank}
    model = http.post(
        f"{api}/create_model",
        json={
            "session_id": session,
            "model_seq_id": 0,
            "base_model": MODEL_NAME,
            "lora_config": lora,
        },
    ).json()["model_id"]
    _save(http, api, model, 1, "state", "step-1")
    _save(http, api, model, 2, "base", "snap-base")
    _save(http, api, model, 3, "delta", "snap-delta")
    return job_id


def test_job_checkpoints_are_listed_oldest_first_in_pages() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        job_id = _job_with_checkpoints(http, lt, rank=0)
        url = f"{_jobs_url(lt)}/{job_id}/checkpoints"
        rows, token, pages = [], "", 0
        while True:
            page = http.get(url, params={"pageSize": 2, **({"pageToken": token} if token else {})})
            assert page.status_code == 200, page.text
            rows += page.json()["checkpoints"]
            pages += 1
            token = page.json()["nextPageToken"]
            if not token:
                break
        assert pages == 2
        prefix = f"accounts/{lt.account_id}/rlorTrainerJobs/{job_id}/checkpoints"
        assert [(r["name"], r["checkpointType"], r["promotable"]) for r in rows] == [
            (f"{prefix}/step-1", "CHECKPOINT_TYPE_TRAINING", False),
            (f"{prefix}/snap-base", "CHECKPOINT_TYPE_INFERENCE_BASE", True),
            (f"{prefix}/snap-delta", "CHECKPOINT_TYPE_INFERENCE_ARC_V2", False),
        ]
        assert all(r["createTime"].endswith("Z") for r in rows)
        assert rows == sorted(rows, key=lambda r: r["createTime"])
        _rpc_error(http.get(url, params={"pageToken": "zz"}), 400, 3, "pageToken")
        _rpc_error(http.get(f"{_jobs_url(lt)}/nope/checkpoints"), 404, 5)
        # A deleted job's checkpoints stay listed.
        http.delete(f"{_jobs_url(lt)}/{job_id}")
        assert len(http.get(url).json()["checkpoints"]) == 3


def test_promotion_sync_async_polled_and_refused() -> None:
    with LocalTrainer() as lt, httpx.Client(timeout=10) as http:
        job_id = _job_with_checkpoints(http, lt, rank=4)
        account = f"{lt.control_plane_url}/v1/accounts/{lt.account_id}"
        body = {
            "output_model": f"accounts/{lt.account_id}/models/m-sync",
            "trainer_job_id": f"accounts/{lt.account_id}/rlorTrainerJobs/{job_id}",
            "base_model": MODEL_NAME,
        }
        model = http.post(f"{account}/checkpoints/snap-base:promote", json=body).json()["model"]
        assert model["name"] == body["output_model"] and model["state"] == "READY"
        assert model["kind"] == "HF_PEFT_ADDON" and model["peftDetails"]["r"] == 4
        assert http.get(f"{account}/models/m-sync").json() == model
        _rpc_error(http.post(f"{account}/checkpoints/snap-base:promote", json=body), 409, 6)
        # Asynchronous, polled twice before it is done.
        assert http.post(
            f"{lt.base_url}/_local/control_plane", json={"promote_pending_polls": 2}
        ).json() == {"promote_pending_polls": 2, "reject_async_promotion": False}
        body_async = {**body, "output_model": body["output_model"] + "-2", "async_promotion": True}
        op = http.post(f"{account}/checkpoints/snap-base:promote", json=body_async).json()
        operation = op["operation"]
        assert operation["done"] is False
        _rpc_error(http.get(f"{account}/models/m-sync-2"), 404, 5)
        polls = [
            http.get(f"{lt.control_plane_url}/v1/{operation['name']}").json() for _ in range(2)
        ]
        assert [p["done"] for p in polls] == [False, True]
        assert polls[1]["response"]["name"] == body_async["output_model"]
        assert http.get(f"{account}/models/m-sync-2").status_code == 200
        # Refusals: not promotable, unknown, camelCase body, a bad model id; an old server.
        for checkpoint, payload, status, code, word in (
            ("snap-delta", {**body, "output_model": body["output_model"] + "-3"}, 400, 9, "ARC_V2"),
            ("step-1", {**body, "output_model": body["output_model"] + "-3"}, 400, 9, "TRAINING"),
            ("nope", {**body, "output_model": body["output_model"] + "-3"}, 404, 5, "nope"),
            ("snap-base", {"outputModel": "x"}, 400, 3, "snake_case"),
            (
                "snap-base",
                {**body, "output_model": f"accounts/{lt.account_id}/models/Bad"},
                400,
                3,
                "Bad",
            ),
        ):
            r = http.post(f"{account}/checkpoints/{checkpoint}:promote", json=payload)
            _rpc_error(r, status, code, word)
        http.post(f"{lt.base_url}/_local/control_plane", json={"reject_async_promotion": True})
        body_old = {**body_async, "output_model": body["output_model"] + "-4"}
        r = http.post(f"{account}/checkpoints/snap-base:promote", json=body_old)
        _rpc_error(r, 400, 3, "async_promotion")
        assert http.post(f"{lt.base_url}/_local/control_plane", json={"x": 1}).status_code == 400
