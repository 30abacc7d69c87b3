"""The base-model names the local trainer serves (``LocalTrainer(models=)``, ``serve --model``):
parsing, the defaults in both forms, and every plane accepting them over real HTTP: tinker's
``get_info`` (``tokenizer_id``) and capabilities, the Fireworks control plane's jobs and
deployments, the model record the Fireworks SDK's ``model_is_moe`` reads, and refusals that
name the served models."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from firetitan_async import ServiceSession, TrainerJobConfig, TrainerJobs
from firetitan_async.local import LocalTrainer
from firetitan_async.local._catalog import DEFAULT_MODELS, ServedModel, served_models

pytestmark = pytest.mark.anyio

FW_QWEN = "accounts/fireworks/models/qwen3-8b"
HF_QWEN = "Qwen/Qwen3-8B"


def test_served_models_parse_and_defaults() -> None:
    assert [m.name for m in DEFAULT_MODELS] == ["local/tiny-byte-lm", FW_QWEN, HF_QWEN]
    assert served_models(None) == DEFAULT_MODELS
    spec = ServedModel.parse("accounts/acme/models/m,tokenizer_id=Org/Tok,context=8192,moe=true")
    assert spec == ServedModel(
        "accounts/acme/models/m", tokenizer_id="Org/Tok", max_context_length=8192, moe=True
    )
    # The byte model is always served, first; a configured list replaces the Qwen defaults.
    assert [m.name for m in served_models(["Org/Model"])] == ["local/tiny-byte-lm", "Org/Model"]
    for bad, words in [
        ("accounts/acme/m", "accounts/<account>/models/<model>"),
        ("Org/M,context=big", "context='big'"),
        ("Org/M,moe=maybe", "moe='maybe'"),
        ("Org/M,colour=red", "unknown model option 'colour'"),
        ("Org/M,tokenizer_id", "not KEY=VALUE"),
        ("", "non-empty"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            served_models([bad])
    with pytest.raises(ValueError, match="more than once"):
        served_models(["Org/M", "Org/M,context=9"])


@pytest.fixture
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=0) as lt:
        yield lt


async def test_tinker_plane_serves_both_forms(trainer: LocalTrainer) -> None:
    """A training client on each default name trains; ``get_info`` names the model and its
    tokenizer (as tinker's ``get_tokenizer`` reads it); capabilities list every name."""
    api = f"{trainer.base_url}/api/v1"
    async with httpx.AsyncClient() as http, \
            ServiceSession(trainer.base_url, dialect="tinker") as session:
        caps = (await http.get(f"{api}/get_server_capabilities")).json()
        assert [m["model_name"] for m in caps["supported_models"]] == trainer.model_names
        for name in (FW_QWEN, HF_QWEN):
            client = await session.create_training_client(name, lora_rank=4)
            info = (await http.post(f"{api}/get_info", json={"model_id": client.model_id})).json()
            assert info["model_name"] == name
            assert info["model_data"] == {
                "arch": "tiny-byte-lm", "model_name": name, "tokenizer_id": HF_QWEN
            }
            sampler = await client.save_weights_and_get_sampling_client()
            assert sampler is not None
        byte = await session.create_training_client("local/tiny-byte-lm", lora_rank=4)
        info = (await http.post(f"{api}/get_info", json={"model_id": byte.model_id})).json()
        assert "tokenizer_id" not in info["model_data"]  # the SDK derives it from the name
        sid = (await http.post(f"{api}/create_session", json={})).json()["session_id"]
        r = await http.post(
            f"{api}/create_model",
            json={"session_id": sid, "model_seq_id": 0, "base_model": "Org/Unserved"},
        )
        assert r.status_code == 400 and FW_QWEN in r.text and "--model" in r.text


async def test_fireworks_control_plane_accepts_the_names(trainer: LocalTrainer) -> None:
    """Jobs and deployments take a served name; an unserved one is refused naming the
    served ones; ``GET /v1/{model}`` returns the base-model record the Fireworks SDK reads."""
    async with TrainerJobs(base_url=trainer.control_plane_url) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=FW_QWEN, lora_rank=8))
        job = await jobs.get(created.job_id)
        assert job.raw["trainingConfig"]["baseModel"] == FW_QWEN
    root = f"{trainer.control_plane_url}/v1"
    async with httpx.AsyncClient() as http:
        bad = await http.post(
            f"{root}/accounts/local/rlorTrainerJobs",
            json={"serviceMode": True, "trainingConfig": {"baseModel": "accounts/x/models/y"}},
        )
        assert bad.status_code == 400 and FW_QWEN in bad.json()["message"]
        dep = await http.post(
            f"{root}/accounts/local/deployments", params={"deploymentId": "d1"},
            json={"baseModel": FW_QWEN, "minReplicaCount": 0, "maxReplicaCount": 1},
        )
        assert dep.status_code == 200, dep.text
        record = (await http.get(f"{root}/{FW_QWEN}")).json()
        assert record["name"] == FW_QWEN and record["contextLength"] == 4096
        assert record["baseModelDetails"]["moe"] is False
        assert (await http.get(f"{root}/accounts/fireworks/models/nope")).status_code == 404


def test_fireworks_sdk_reads_the_moe_flag() -> None:
    """The unmodified Fireworks SDK's ``model_is_moe`` (the RL recipes' router-replay check)."""
    from fireworks.training.sdk.fireworks_client import FireworksClient

    models = [FW_QWEN, "accounts/acme/models/big-moe,moe=true"]
    with LocalTrainer(api_key="fw-key-0123456789", models=models) as lt:
        client = FireworksClient(api_key="fw-key-0123456789", base_url=lt.control_plane_url)
        assert client.model_is_moe(FW_QWEN) is False
        assert client.model_is_moe("accounts/acme/models/big-moe") is True
        assert lt.model_names == ["local/tiny-byte-lm", FW_QWEN, "accounts/acme/models/big-moe"]
        hf = httpx.get(
            f"{lt.control_plane_url}/v1/{HF_QWEN}",
            headers={"Authorization": "Bearer fw-key-0123456789"},
        )
        assert hf.status_code == 404  # not a Fireworks resource name


def test_serve_model_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """``serve --model`` (repeatable) serves exactly those names plus the byte model."""
    from firetitan_async.cli import _cmd_serve
    from firetitan_async.cli._cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--port", "0", "--model", "Org/A,tokenizer_id=Org/Tok", "--model", "Org/B",
         "--model", "accounts/acme/models/c", "--deployment", "dep-a=Org/A", "--deployment", "d2"]
    )
    stop = threading.Event()
    thread = threading.Thread(target=_cmd_serve.serve, args=(args, stop))
    thread.start()
    try:
        out = ""
        deadline = time.monotonic() + 20
        while "export TINKER_BASE_URL=" not in out and time.monotonic() < deadline:
            time.sleep(0.05)
            out += capsys.readouterr().out
        assert "base models:   local/tiny-byte-lm, Org/A, Org/B" in out
        url = re.search(r"export TINKER_BASE_URL=(\S+)", out)
        assert url is not None
        caps = httpx.get(f"{url.group(1)}/api/v1/get_server_capabilities").json()
        names = [m["model_name"] for m in caps["supported_models"]]
        assert names == ["local/tiny-byte-lm", "Org/A", "Org/B", "accounts/acme/models/c"]
        deps = f"{url.group(1)}/v1/accounts/local/deployments"
        a = httpx.get(f"{deps}/dep-a").json()
        assert a["baseModel"] == "Org/A" and a["state"] == "READY" and a["enableHotLoad"]
        assert httpx.get(f"{deps}/d2").json()["baseModel"] == "accounts/acme/models/c"
    finally:
        stop.set()
        thread.join(10)
    bad = build_parser().parse_args(["serve", "--port", "0", "--model", "Org/A,x=1"])
    assert _cmd_serve.serve(bad) == 2
    assert "unknown model option 'x'" in capsys.readouterr().err
    unserved = build_parser().parse_args(["serve", "--port", "0", "--deployment", "d=Org/Z"])
    assert _cmd_serve.serve(unserved) == 2
    assert "creating deployment 'd' failed" in capsys.readouterr().err
