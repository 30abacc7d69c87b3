"""The local trainer's Fireworks-dialect data plane over real HTTP on loopback (plain httpx).

Bodies are built by hand in the shapes the Fireworks SDK 1.2.30 sends (JSON ``forward_backward``
and ``forward``, top-level ``grad_accumulation_normalization``, ...); results are compared with
a ``TinyByteLM`` run in-process with the same seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tinker import types
from tinker.proto.response_conv import deserialize_forward_backward_output

from firetitan_async.local import LocalTrainer
from firetitan_async.local._checkpoint_refs import run_name
from firetitan_async.local._checkpoint_store import CheckpointStore
from firetitan_async.local._http_errors import ApiError
from firetitan_async.local._json_codec import decode_json_head, decode_json_input, prefers_json
from firetitan_async.local._model import MODEL_NAME, AdamConfig, DatumArrays, TinyByteLM
from firetitan_async.local._proto_codec import decode_forward_backward
from firetitan_async.wire.fwdbwd import encode_forward_backward_request

SEED = 11
TEXT = np.frombuffer(b"pack my box with five dozen liquor jugs", np.uint8).astype(np.int64)
ADAM = {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
        "weight_decay": 0.0, "grad_clip_norm": 0.0}
JSON_ACCEPT = {"accept": "application/json"}
SDK_ACCEPT = {"accept": "application/x-protobuf, application/json"}


def tensor(arr: np.ndarray) -> dict[str, Any]:
    arr = np.asarray(arr)
    dtype = "int64" if arr.dtype.kind in "iu" else "float32"
    return {"data": arr.ravel().tolist(), "dtype": dtype, "shape": list(arr.shape)}


def datum_json(tokens: np.ndarray, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    return {
        "model_input": {"chunks": [{"tokens": np.asarray(tokens).tolist(),
                                    "type": "encoded_text"}]},
        "loss_fn_inputs": {k: tensor(v) for k, v in inputs.items()},
    }


def sft_inputs(text: np.ndarray = TEXT) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return text[:-1], {"target_tokens": text[1:],
                       "weights": np.ones(len(text) - 1, np.float32)}


def local_batch(text: np.ndarray = TEXT) -> list[DatumArrays]:
    tokens, inputs = sft_inputs(text)
    return [DatumArrays(tokens=tokens, inputs=inputs)]


def fb_json(model_id: str, seq_id: int | None, *, key: str = "forward_backward_input",
            loss_fn: str = "cross_entropy", data: list[dict[str, Any]] | None = None,
            config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "data": data if data is not None else [datum_json(*sft_inputs())],
        "loss_fn": loss_fn,
    }
    if config is not None:
        section["loss_fn_config"] = dict(config)
    body: dict[str, Any] = {key: section, "model_id": model_id}
    if seq_id is not None:
        body["seq_id"] = seq_id
    return body


class Api:
    """A thin sync httpx wrapper speaking the Fireworks data-plane forms."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=base_url, headers=dict(headers or {}), timeout=30)

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(f"/api/v1/{path}", json=body, **kw)

    def ok(self, path: str, body: Any, **kw: Any) -> Any:
        r = self.post(path, body, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def raw_result(self, request_id: str, headers: Mapping[str, str] | None = None
                   ) -> httpx.Response:
        r = self.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": True},
                      headers=dict(headers or JSON_ACCEPT))
        assert r.status_code == 200, r.text
        return r

    def result(self, request_id: str) -> Any:
        body = self.raw_result(request_id).json()
        assert body.get("type") != "try_again", body
        return body

    def session(self) -> str:
        return str(self.ok("create_session", {"tags": [], "user_metadata": {},
                                              "type": "create_session"})["session_id"])

    def model(self, session_id: str, *, seq: int = 0, rank: int = 0,
              **extra: Any) -> tuple[str, dict[str, Any]]:
        lora: dict[str, Any] = {"rank": rank, "train_unembed": True, "train_mlp": True,
                                "train_attn": True}
        if rank:
            lora["alpha"] = 32
        body = {"session_id": session_id, "model_seq_id": seq, "base_model": MODEL_NAME,
                "lora_config": lora, "type": "create_model", **extra}
        fut = self.ok("create_model", body)
        result = self.result(fut["request_id"])
        assert result["model_id"] == fut["model_id"]
        return str(fut["model_id"]), result

    def fwd(self, body: dict[str, Any], path: str = "forward_backward") -> dict[str, Any]:
        fut = self.ok(path, body)
        out = self.result(fut["request_id"])
        assert "error" not in out, out
        return dict(out)

    def optim(self, model_id: str, seq_id: int, **extra: Any) -> dict[str, Any]:
        body = {"model_id": model_id, "seq_id": seq_id, "adam_params": ADAM,
                "type": "optim_step", **extra}
        out = self.result(self.ok("optim_step", body)["request_id"])
        assert "error" not in out, out
        return dict(out)


def json_logprobs(out: Mapping[str, Any], i: int = 0) -> np.ndarray:
    lp = out["loss_fn_outputs"][i]["logprobs"]
    assert lp["dtype"] == "float32" and lp["shape"] == [len(lp["data"])]
    return np.asarray(lp["data"], dtype=np.float32)


TRAINER_OPTIONS = {"seed": SEED, "long_poll_s": 2.0}  # the module's `trainer` (conftest.py)


@pytest.fixture
def api(trainer: LocalTrainer) -> Iterator[Api]:
    client = Api(trainer.base_url)
    yield client
    client.http.close()


# -- JSON forward_backward and forward ----------------------------------------------------------


def test_a_json_forward_backward_resent_with_a_new_idempotency_key_runs_once(
    trainer: LocalTrainer, api: Api
) -> None:
    """A resend under the same ``seq_id`` (a client's outer retry: same body, new key) gets the
    original request id; the gradient is accumulated once. Another body under it is refused."""
    model_id, _ = api.model(api.session())
    body = fb_json(model_id, 1)
    first = api.ok("forward_backward", body, headers={"X-Idempotency-Key": "attempt-1"})
    again = api.ok("forward_backward", body, headers={"X-Idempotency-Key": "attempt-2"})
    assert again == first
    local = TinyByteLM(seed=SEED)
    local.forward_backward(local_batch(), "cross_entropy", backward=True)
    assert api.optim(model_id, 2)["metrics"] == pytest.approx(local.optim_step(AdamConfig(**ADAM)))
    assert "error" not in api.result(first["request_id"])
    r = api.post("forward_backward", fb_json(model_id, 1, loss_fn="importance_sampling"))
    assert r.status_code == 400 and "already used by a different request" in r.json()["detail"]


def test_json_forward_backward_and_forward_match_the_model_bit_for_bit(api: Api) -> None:
    model_id, _ = api.model(api.session())
    local = TinyByteLM(seed=SEED)
    expected = local.forward_backward(local_batch(), "cross_entropy", backward=True)
    out = api.fwd(fb_json(model_id, 1))
    assert out["loss_fn_output_type"] == "ArrayRecord"
    assert np.array_equal(json_logprobs(out), expected.logprobs[0])
    assert out["metrics"]["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-6)

    assert api.optim(model_id, 2)["metrics"] == pytest.approx(local.optim_step(AdamConfig(**ADAM)))
    after = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    fwd = api.fwd(fb_json(model_id, 3, key="forward_input"), path="forward")
    assert np.array_equal(json_logprobs(fwd), after.logprobs[0])
    # forward accumulates no gradient: a step now changes nothing but Adam's momentum, so the
    # server must match a local model that ran the same step without a forward_backward.
    api.optim(model_id, 4)
    local.optim_step(AdamConfig(**ADAM))
    again = api.fwd(fb_json(model_id, 5, key="forward_input"), path="forward")
    now = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    assert np.array_equal(json_logprobs(again), now.logprobs[0])


def test_result_form_follows_the_accept_header(api: Api) -> None:
    model_id, _ = api.model(api.session())
    fut = api.ok("forward", fb_json(model_id, 1, key="forward_input"))
    as_proto = api.raw_result(fut["request_id"], SDK_ACCEPT)
    assert as_proto.headers["content-type"].startswith("application/x-protobuf")
    decoded = deserialize_forward_backward_output(as_proto.content)
    as_json = api.raw_result(fut["request_id"], JSON_ACCEPT)
    assert as_json.headers["content-type"].startswith("application/json")
    lp_json = json_logprobs(as_json.json())
    assert np.array_equal(decoded.loss_fn_outputs[0]["logprobs"].to_numpy(), lp_json)
    preferred = api.raw_result(
        fut["request_id"], {"accept": "application/x-protobuf;q=0.5, application/json"}
    )
    assert preferred.headers["content-type"].startswith("application/json")


def test_accept_negotiation_rules() -> None:
    assert prefers_json("application/json")
    assert not prefers_json("application/x-protobuf, application/json")
    assert prefers_json("application/json, application/x-protobuf")
    assert prefers_json("application/x-protobuf;q=0.2, application/json;q=0.9")
    assert not prefers_json("application/json;q=0, application/x-protobuf;q=0.1")
    assert not prefers_json(None) and not prefers_json("*/*")


def test_several_json_datums(api: Api) -> None:
    model_id, _ = api.model(api.session(), rank=4)
    tokens, inputs = sft_inputs()
    half = inputs["weights"].copy()
    half[:10] = 0.0
    data = [datum_json(tokens, inputs), datum_json(tokens, inputs),
            datum_json(tokens, {**inputs, "weights": half})]
    out = api.fwd(fb_json(model_id, 1, key="forward_input", data=data), path="forward")
    assert len(out["loss_fn_outputs"]) == 3
    lps = [json_logprobs(out, i) for i in range(3)]
    assert np.array_equal(lps[0], lps[1]) and np.array_equal(lps[0], lps[2])
    expected = -(2 * lps[0].astype(np.float64).sum() + lps[0][10:].astype(np.float64).sum())
    assert out["metrics"]["loss:sum"] == pytest.approx(expected, rel=1e-5)


def test_sparse_csr_tensor_decodes_to_its_dense_form() -> None:
    dense = np.array([[0, 0, 3.5], [1.0, 0, 0]], np.float32)
    body = fb_json("m", 1, data=[{
        "model_input": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
        "loss_fn_inputs": {"x": {"data": [3.5, 1.0], "dtype": "float32", "shape": [2, 3],
                                 "sparse_crow_indices": [0, 1, 2],
                                 "sparse_col_indices": [2, 0]}},
    }])
    sub = decode_json_input(body, decode_json_head(body, "forward_backward_input"))
    assert np.array_equal(sub.data[0].inputs["x"], dense)
    # The protobuf codec densifies through the same function.
    sparse = types.TensorData(data=[3.5, 1.0], dtype="float32", shape=[2, 3],
                              sparse_crow_indices=[0, 1, 2], sparse_col_indices=[2, 0])
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                        loss_fn_inputs={"x": sparse})
    raw = encode_forward_backward_request(model_id="m", seq_id=1, data=[datum],
                                          loss_fn="cross_entropy", loss_fn_config=None,
                                          forward_only=False)
    assert np.array_equal(decode_forward_backward(raw).data[0].inputs["x"], dense)
    broken = body["forward_backward_input"]["data"][0]["loss_fn_inputs"]["x"]
    broken["sparse_col_indices"] = [3, 0]
    with pytest.raises(ApiError, match="inconsistent sparse CSR indices"):
        decode_json_input(body, decode_json_head(body, "forward_backward_input"))


def bad_json_cases(model_id: str) -> list[tuple[dict[str, Any], int, str]]:
    good = fb_json(model_id, None)
    datum = good["forward_backward_input"]["data"][0]
    image = {**datum, "model_input": {"chunks": [{"type": "image", "data": "x",
                                                  "format": "png"}]}}
    bad_dtype = {**datum, "loss_fn_inputs": {**datum["loss_fn_inputs"],
                                             "weights": {"data": [1], "dtype": "bf16"}}}
    bad_shape = {**datum, "loss_fn_inputs": {
        **datum["loss_fn_inputs"], "weights": {"data": [1.0, 2.0], "dtype": "float32",
                                               "shape": [3]}}}
    return [
        ({"forward_backward_input": good["forward_backward_input"]}, 400, "model_id is required"),
        ({**good, "model_id": "nope"}, 404, "unknown model_id"),
        ({**good, "forward_backward_input": None}, 400, "forward_backward_input is required"),
        (fb_json(model_id, None, data=[image]), 400,
         "forward_backward_input.data[0].model_input.chunks[0]: 'image' chunks"),
        (fb_json(model_id, None, data=[bad_dtype]), 400,
         "forward_backward_input.data[0].loss_fn_inputs.weights.dtype"),
        (fb_json(model_id, None, data=[bad_shape]), 400, "shape [3] does not match 2 values"),
        (fb_json(model_id, None, loss_fn="nope"), 400, "unknown loss function 'nope'"),
        (fb_json(model_id, None, config={"clip_low_threshold": [1]}), 400,
         "loss_fn_config.clip_low_threshold must be a finite number"),
        (fb_json(model_id, None, data=[]), 400, "data: the batch is empty"),
        ({**good, "seq_id": "3"}, 400, "seq_id must be an integer"),
        (fb_json(model_id, None, data=[{**datum, "model_input": {"chunks": [
            {"type": "encoded_text", "tokens": [2**70]}]}}]), 400,
         "chunks[0].tokens: a value does not fit int64"),
    ]


def test_bad_json_requests_say_what_is_wrong_and_change_nothing(api: Api) -> None:
    model_id, _ = api.model(api.session())
    before = api.fwd(fb_json(model_id, 1, key="forward_input"), path="forward")
    seq = 2
    for body, status, needle in bad_json_cases(model_id):
        if "seq_id" not in body and body.get("model_id") == model_id:
            body = {**body, "seq_id": seq}
        r = api.post("forward_backward", body)
        assert r.status_code == status, (needle, r.status_code, r.text)
        assert needle in r.json()["detail"], (needle, r.text)
        if status == 400 and body.get("model_id") == model_id and "seq_id" in body and (
            isinstance(body["seq_id"], int)
        ):
            seq += 1  # a rejected submission that names a valid model consumes its seq_id
    # Nothing changed: no gradient was accumulated, so a step leaves the weights where a
    # fresh model's step would; and the next seq_id in order is accepted.
    api.optim(model_id, seq)
    local = TinyByteLM(seed=SEED)
    local.optim_step(AdamConfig(**ADAM))
    after = api.fwd(fb_json(model_id, seq + 1, key="forward_input"), path="forward")
    expected = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    assert np.array_equal(json_logprobs(after), expected.logprobs[0])
    assert np.array_equal(json_logprobs(before), json_logprobs(after))


# -- create_model, base_only ----------------------------------------------------------------


def _train_step(api: Api, model_id: str, seq: int, **optim: Any) -> tuple[int, dict[str, Any]]:
    api.fwd(fb_json(model_id, seq))
    return seq + 2, api.optim(model_id, seq + 1, **optim)


def test_create_model_fireworks_form_alpha_init_method_and_capabilities(api: Api) -> None:
    model_id, result = api.model(api.session())
    # the defaults path: the Fireworks body has no optimizer_config and no get_info
    assert result["type"] == "create_model" and result["comms"] == "v1"
    assert result["supports_rdma_weight_sync"] is False
    assert result["routing_matrix_format"] == "base64_inline"
    assert result["supports_reinforce"] is False and result["supports_router_replay"] is False

    session = api.session()
    fut = api.ok("create_model", {
        "session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME,
        "lora_config": {"rank": 4, "alpha": 8, "init_method": "nora", "seed": 3,
                        "train_unembed": True, "train_mlp": True, "train_attn": True},
        "type": "create_model"})
    model_id = fut["model_id"]
    api.result(fut["request_id"])
    local = TinyByteLM(seed=SEED, lora_rank=4, lora_alpha=8, init_method="nora", lora_seed=3)
    local.forward_backward(local_batch(), "cross_entropy", backward=True)
    local.optim_step(AdamConfig(**ADAM))
    _train_step(api, model_id, 1)
    out = api.fwd(fb_json(model_id, 3, key="forward_input"), path="forward")
    expected = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    assert np.array_equal(json_logprobs(out), expected.logprobs[0])
    # alpha matters: the default alpha (32) trains to different weights
    other = TinyByteLM(seed=SEED, lora_rank=4, init_method="nora", lora_seed=3)
    other.forward_backward(local_batch(), "cross_entropy", backward=True)
    other.optim_step(AdamConfig(**ADAM))
    moved = other.forward_backward(local_batch(), "cross_entropy", backward=False)
    assert not np.array_equal(moved.logprobs[0], expected.logprobs[0])


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"lora_config": {"rank": 4, "alpha": 0}}, "lora_config.alpha must be a number > 0"),
        ({"lora_config": {"rank": 4, "init_method": "xavier"}},
         "lora_config.init_method: must be one of ['kaiming', 'nora']"),
        ({"lora_config": {"rank": 2}, "base_only": True}, "lora_config.rank must be 0"),
        ({"projection_head_dim": 8}, "projection_head_dim is not supported"),
        ({"base_only": "yes"}, "base_only must be true or false"),
    ],
)
def test_create_model_bad_fireworks_fields(api: Api, patch: dict[str, Any], needle: str) -> None:
    session = api.session()
    body = {"session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME,
            "type": "create_model", **patch}
    r = api.post("create_model", body)
    assert r.status_code == 400 and needle in r.json()["detail"], r.text
    # nothing was created: the same model_seq_id is still free
    api.ok("create_model", {**body, "lora_config": {"rank": 0}, "base_only": False,
                            "projection_head_dim": None})


def test_base_only_reference_model_is_frozen(api: Api) -> None:
    model_id, _ = api.model(api.session(), base_only=True)
    before = api.fwd(fb_json(model_id, 1, key="forward_input"), path="forward")
    r = api.post("forward_backward", fb_json(model_id, 2))
    assert r.status_code == 400 and "frozen base_only reference model" in r.json()["detail"]
    r = api.post("optim_step", {"model_id": model_id, "seq_id": 3, "adam_params": ADAM})
    assert r.status_code == 400
    assert "optim_step would train it" in r.json()["detail"], r.text
    after = api.fwd(fb_json(model_id, 4, key="forward_input"), path="forward")  # seqs consumed
    assert np.array_equal(json_logprobs(before), json_logprobs(after))
    expected = TinyByteLM(seed=SEED).forward_backward(local_batch(), "cross_entropy",
                                                      backward=False)
    assert np.array_equal(json_logprobs(after), expected.logprobs[0])


# -- optim_step: normalization and grad-norm metrics ----------------------------------------


def test_grad_accumulation_normalization_matches_the_model(api: Api) -> None:
    for mode in ("num_loss_tokens", "num_sequences", "none"):
        model_id, _ = api.model(api.session())
        api.fwd(fb_json(model_id, 1))
        api.fwd(fb_json(model_id, 2, data=[datum_json(*sft_inputs())] * 2))
        metrics = api.optim(model_id, 3, grad_accumulation_normalization=mode)["metrics"]
        local = TinyByteLM(seed=SEED)
        local.forward_backward(local_batch(), "cross_entropy", backward=True)
        local.forward_backward(local_batch() * 2, "cross_entropy", backward=True)
        assert local.accumulated == (3 * (len(TEXT) - 1), 3)
        expected = local.optim_step(AdamConfig(**ADAM), normalization=mode)
        assert metrics == pytest.approx(expected), mode
        out = api.fwd(fb_json(model_id, 4, key="forward_input"), path="forward")
        now = local.forward_backward(local_batch(), "cross_entropy", backward=False)
        assert np.array_equal(json_logprobs(out), now.logprobs[0]), mode


def test_grad_norm_metrics_modes(api: Api) -> None:
    model_id, _ = api.model(api.session(), rank=2)
    seq = 1
    keys = {}
    for mode in (False, "off", True, "basic", "detailed"):
        seq, out = _train_step(api, model_id, seq,
                               adam_params={**ADAM, "emit_grad_norm_metrics": mode})
        keys[str(mode)] = set(out["metrics"])
    base = {"grad_norm:mean", "learning_rate:mean"}
    basic = base | {"grad_norm/global:mean", "grad_norm/rms:mean", "grad_norm/clipped:mean"}
    assert keys["False"] == keys["off"] == base
    assert keys["True"] == keys["basic"] == basic
    assert keys["detailed"] == basic | {f"grad_norm/param/w{i}.lora_{ab}:mean"
                                        for i in (1, 2) for ab in "ab"}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"grad_accumulation_normalization": "per_token"},
         "grad_accumulation_normalization must be 'num_loss_tokens', 'num_sequences' or 'none'"),
        ({"adam_params": {**ADAM, "emit_grad_norm_metrics": "loud"}},
         "adam_params.emit_grad_norm_metrics must be a bool or 'off', 'basic', 'detailed'"),
        ({"adam_params": {**ADAM, "momentum": 0.9}}, "adam_params: unknown fields ['momentum']"),
    ],
)
def test_bad_optim_step_fields(api: Api, patch: dict[str, Any], needle: str) -> None:
    model_id, _ = api.model(api.session())
    api.fwd(fb_json(model_id, 1))
    body = {"model_id": model_id, "seq_id": 2, "adam_params": ADAM, "type": "optim_step",
            **patch}
    r = api.post("optim_step", body)
    assert r.status_code == 400 and needle in r.json()["detail"], r.text
    # The gradient is still there and seq 2 was consumed: seq 3 applies it.
    metrics = api.optim(model_id, 3)["metrics"]
    assert metrics["grad_norm:mean"] > 0


# -- losses and loss_fn_config --------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_fn", "config", "needle"),
    [
        ("dapo", None, "'dapo' is not implemented by the local trainer"),
        ("dppo", None, "'dppo' is not implemented"),
        ("reinforce", {"score_centering": False}, "'reinforce' is not implemented"),
        ("cross_entropy", {"target_logprob_support": "sampling_support"},
         "loss_fn_config.target_logprob_support: 'sampling_support' is not supported"),
        ("cross_entropy", {"weighting": "tis"}, "loss_fn_config.weighting: server-side policy"),
        ("cross_entropy", {"report_policy_diagnostics": True},
         "loss_fn_config.report_policy_diagnostics: True is not supported"),
        ("cross_entropy", {"report_policy_diagnostics": "no"},
         "loss_fn_config.report_policy_diagnostics: must be a bool"),
    ],
)
def test_refused_losses_and_features(api: Api, loss_fn: str, config: Any, needle: str) -> None:
    model_id, _ = api.model(api.session())
    r = api.post("forward_backward", fb_json(model_id, 1, loss_fn=loss_fn, config=config))
    assert r.status_code == 400 and needle in r.json()["detail"], r.text


def test_feature_switches_in_their_off_form_are_accepted(api: Api) -> None:
    model_id, _ = api.model(api.session())
    config = {"target_logprob_support": "full_vocabulary", "report_policy_diagnostics": False,
              "score_centering": False}
    out = api.fwd(fb_json(model_id, 1, key="forward_input", config=config), path="forward")
    expected = TinyByteLM(seed=SEED).forward_backward(local_batch(), "cross_entropy",
                                                      backward=False)
    assert np.array_equal(json_logprobs(out), expected.logprobs[0])


# -- sampler saves ----------------------------------------------------------------------------


def _save_sampler(api: Api, model_id: str, seq: int | None, name: str,
                  **extra: Any) -> httpx.Response:
    body = {"model_id": model_id, "path": name, "type": "save_weights_for_sampler", **extra}
    if seq is not None:
        body["seq_id"] = seq
    return api.post("save_weights_for_sampler", body)


def test_sampler_saves_in_the_fireworks_form(tmp_path: Path) -> None:
    with LocalTrainer(seed=SEED, checkpoint_dir=str(tmp_path)) as lt:
        api = Api(lt.base_url)
        lora, _ = api.model(api.session(), rank=4)
        # a fresh LoRA model has no adapter delta to merge: its future fails, in seq order
        fut = _save_sampler(api, lora, 1, "m0-abcd1234", checkpoint_type="merged_base").json()
        failed = api.result(fut["request_id"])
        assert failed["category"] == "user" and "no effective adapter delta" in failed["error"]
        seq, _ = _train_step(api, lora, 2)
        meta = {"decision_calibration": {"temperature": 0.7}}
        paths = {}
        for name, extra in (("m1-abcd1234", {"checkpoint_type": "merged_base",
                                             "export_precision": "bf16", "metadata": meta}),
                            ("b1-abcd1234", {"checkpoint_type": "base"})):
            fut = _save_sampler(api, lora, seq, name, **extra).json()
            paths[name] = api.result(fut["request_id"])["path"]
            seq += 1
        store = CheckpointStore(tmp_path)
        merged = store.load_sampler_weights(paths["m1-abcd1234"])
        plain = store.load_sampler_weights(paths["b1-abcd1234"])
        for key, value in merged.items():
            assert not np.any(value.view(np.uint32) & np.uint32(0xFFFF)), key  # bf16 values
            np.testing.assert_allclose(value, plain[key], rtol=2**-8, atol=1e-30)
        assert not np.array_equal(merged["w1"], plain["w1"])
        row = store.meta(paths["m1-abcd1234"])
        assert row["snapshot_type"] == "merged_base" and row["export_precision"] == "bf16"
        assert row["metadata"] == meta

        full, _ = api.model(api.session())
        for extra, needle in [
            ({"checkpoint_type": "merged_base"}, "model " + full + " is full-parameter"),
            ({"checkpoint_type": "full"}, "checkpoint_type must be 'base', 'delta' or"),
            ({"checkpoint_type": "base", "export_precision": "bf16"},
             "export_precision is only valid with checkpoint_type='merged_base'"),
            ({"checkpoint_type": "merged_base", "export_precision": "nvfp4"},
             "export_precision 'nvfp4' is not supported"),
            ({"metadata": "x"}, "metadata must be an object"),
        ]:
            r = _save_sampler(api, full, None, "bad-abcd1234", **extra)
            assert r.status_code == 400 and needle in r.json()["detail"], (extra, r.text)
        api.http.close()


# -- save_state, list_checkpoints, logical names -------------------------------------------


def _save_state(api: Api, model_id: str, seq: int, name: str) -> str:
    fut = api.ok("save_weights", {"model_id": model_id, "path": name, "seq_id": seq,
                                  "overwrite": False, "type": "save_weights"})
    out = api.result(fut["request_id"])
    assert "error" not in out, out
    return str(out["path"])


def _load(api: Api, model_id: str, seq: int, path: str) -> httpx.Response:
    return api.post("load_weights", {"model_id": model_id, "path": path, "optimizer": True,
                                     "seq_id": seq, "type": "load_weights"})


def _create_job(lt: LocalTrainer, job_id: str) -> str:
    body = {"displayName": job_id, "serviceMode": True,
            "trainingConfig": {"baseModel": MODEL_NAME, "loraRank": 0}}
    r = httpx.post(f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs",
                   params={"rlorTrainerJobId": job_id}, json=body)
    assert r.status_code == 200, r.text
    return f"{lt.base_url}/jobs/{job_id}"


def test_list_checkpoints_and_loading_by_logical_name(tmp_path: Path) -> None:
    with LocalTrainer(seed=SEED, checkpoint_dir=str(tmp_path)) as lt:
        api = Api(lt.base_url)
        first, _ = api.model(api.session())
        seq, _ = _train_step(api, first, 1)
        path = _save_state(api, first, seq, "step-1")
        _save_state(api, first, seq + 1, "aaa")
        assert api.http.get("/api/v1/list_checkpoints").json() == {"checkpoints": ["aaa", "step-1"]}
        expected = api.fwd(fb_json(first, seq + 2, key="forward_input"), path="forward")

        second, _ = api.model(api.session())
        run = run_name(first)
        assert run.startswith("run-") and len(run) == 36
        refs = ["step-1", f"{lt.account_id}/{run}/step-1", path]
        for i, ref in enumerate(refs):  # every form loads the same weights
            fut = _load(api, second, 1 + 2 * i, ref).json()
            assert api.result(fut["request_id"])["path"] == path
            out = api.fwd(fb_json(second, 2 + 2 * i, key="forward_input"), path="forward")
            assert np.array_equal(json_logprobs(out), json_logprobs(expected)), ref

        bad = [
            ("nope", 404, "no checkpoint named 'nope'"),
            (f"other/{run}/step-1", 404, "account 'other' is not this trainer's account"),
            (f"{lt.account_id}/run-123/step-1", 400, "expected <account>/run-<32 hex>/<name>"),
            (f"{lt.account_id}/{'run-' + '0' * 32}/step-1", 404, "has no checkpoint 'step-1'"),
            ("cross_job://ghost/step-1", 404, "job 'ghost' saved no checkpoint 'step-1'"),
            ("cross_job://only-one-part", 400, "expected cross_job://<job>/<name>"),
            ("gs://bucket/x", 400, "is not a checkpoint name"),
            ("a/b", 400, "is not a checkpoint name"),
            ("Bad Name!", 400, "invalid checkpoint name"),
        ]
        seq = 7
        for ref, status, needle in bad:
            r = _load(api, second, seq, ref)
            assert r.status_code == status and needle in r.json()["detail"], (ref, r.text)
            seq += 1  # a rejected load consumes its seq_id
        out = api.fwd(fb_json(second, seq, key="forward_input"), path="forward")
        assert np.array_equal(json_logprobs(out), json_logprobs(expected))
        api.http.close()


def test_cross_job_resume_and_job_scoped_listing(tmp_path: Path) -> None:
    with LocalTrainer(seed=SEED, checkpoint_dir=str(tmp_path)) as lt:
        old = Api(_create_job(lt, "old-job"))
        model, _ = old.model(old.session())
        seq, _ = _train_step(old, model, 1)
        _save_state(old, model, seq, "step-4")
        expected = old.fwd(fb_json(model, seq + 1, key="forward_input"), path="forward")
        assert old.http.get("/api/v1/list_checkpoints").json()["checkpoints"] == ["step-4"]

        new = Api(_create_job(lt, "new-job"))
        assert new.http.get("/api/v1/list_checkpoints").json()["checkpoints"] == []
        root = Api(lt.base_url)
        assert root.http.get("/api/v1/list_checkpoints").json()["checkpoints"] == []
        model2, _ = new.model(new.session())
        r = _load(new, model2, 1, "step-4")  # a bare name is this job's: not found here
        assert r.status_code == 404, r.text
        fut = _load(new, model2, 2, "cross_job://old-job/step-4").json()
        assert new.result(fut["request_id"])["type"] == "load_weights"
        out = new.fwd(fb_json(model2, 3, key="forward_input"), path="forward")
        assert np.array_equal(json_logprobs(out), json_logprobs(expected))
        for client in (old, new, root):
            client.http.close()


# -- unload_model and load_adapter ----------------------------------------------------------


def test_unload_model_drains_then_frees(api: Api) -> None:
    model_id, _ = api.model(api.session())
    # queue a gap-free burst, then unload at once: every queued op still completes first
    big = [datum_json(*sft_inputs())] * 400  # slow enough that the ops are still queued
    futs = [api.ok("forward_backward", fb_json(model_id, s, data=big)) for s in (1, 2, 3)]
    futs.append(api.ok("optim_step", {"model_id": model_id, "seq_id": 4, "adam_params": ADAM}))
    parked = api.ok("forward_backward", fb_json(model_id, 6))  # waits for seq 5 forever
    unload = api.ok("unload_model", {"model_id": model_id, "type": "unload_model"})
    assert api.result(unload["request_id"]) == {"model_id": model_id, "type": "unload_model"}
    for fut in futs:
        assert "error" not in api.result(fut["request_id"])
    dropped = api.result(parked["request_id"])
    assert "was unloaded while this operation waited" in dropped["error"]
    for path, body in [("forward_backward", fb_json(model_id, 5)),
                       ("unload_model", {"model_id": model_id}),
                       ("get_info", {"model_id": model_id})]:
        r = api.post(path, body)
        assert r.status_code == 404 and "was unloaded" in r.json()["detail"], (path, r.text)
    r = api.post("unload_model", {"model_id": "nope"})
    assert r.status_code == 404 and "unknown model_id" in r.json()["detail"]


def test_load_adapter(api: Api) -> None:
    src, _ = api.model(api.session(), rank=4)
    seq, _ = _train_step(api, src, 1)
    _save_state(api, src, seq, "adapter-src")
    expected = api.fwd(fb_json(src, seq + 1, key="forward_input"), path="forward")
    dst, _ = api.model(api.session(), rank=4)
    body = {"adapter_path": "adapter-src", "model_id": dst, "seq_id": 1}
    out = api.result(api.ok("load_adapter", body)["request_id"])
    assert out == {"model_id": dst, "adapter_path": "adapter-src", "type": "load_adapter"}
    got = api.fwd(fb_json(dst, 2, key="forward_input"), path="forward")
    assert np.array_equal(json_logprobs(got), json_logprobs(expected))
    full, _ = api.model(api.session())
    small, _ = api.model(api.session(), rank=2)
    for model_id, path, status, needle in [
        (full, "adapter-src", 400, "load_adapter needs a LoRA model"),
        (dst, "gs://bucket/peft", 400, "cannot fetch PEFT adapters"),
        (dst, "accounts/local/models/m", 400, "cannot fetch PEFT adapters"),
        (dst, "missing", 404, "no checkpoint named 'missing'"),
        (small, "adapter-src", 400, "has LoRA rank 4 but model has LoRA rank 2"),
    ]:
        r = api.post("load_adapter", {"adapter_path": path, "model_id": model_id})
        assert r.status_code == status and needle in r.json()["detail"], (path, r.text)


# -- knobs ------------------------------------------------------------------------------------


def test_dedicated_trainer_knobs_on_the_wire() -> None:
    with LocalTrainer(seed=SEED, forward_backward_logprobs=False, checkpoint_step_names=True,
                      checkpoint_list_details=False) as lt:
        api = Api(lt.base_url)
        model_id, _ = api.model(api.session())
        fut = api.ok("forward_backward", fb_json(model_id, 1, data=[datum_json(*sft_inputs())] * 2))
        as_json = api.raw_result(fut["request_id"]).json()
        assert as_json["loss_fn_outputs"] == [{}, {}] and as_json["metrics"]["loss:sum"] > 0
        proto = deserialize_forward_backward_output(
            api.raw_result(fut["request_id"], SDK_ACCEPT).content)
        assert proto.metrics["loss:sum"] == pytest.approx(as_json["metrics"]["loss:sum"])
        api.optim(model_id, 2)
        fwd = api.fwd(fb_json(model_id, 3, key="forward_input"), path="forward")
        assert json_logprobs(fwd).size == len(TEXT) - 1  # forward keeps its logprobs
        assert _save_state(api, model_id, 4, "my-name").endswith("/weights/step-1")
        assert _save_state(api, model_id, 5, "again").endswith("/weights/step-1")  # replaced
        assert api.http.get("/api/v1/list_checkpoints").json() == {"checkpoints": ["step-1"]}
        rows = api.http.get(f"/api/v1/training_runs/{model_id}/checkpoints").json()
        assert [set(r) & {"time", "tinker_path", "expires_at"} for r in rows["checkpoints"]] == [
            set()]
        assert rows["checkpoints"][0]["checkpoint_id"] == "weights/step-1"
        everything = api.http.get("/api/v1/checkpoints").json()["checkpoints"]
        assert everything and all("tinker_path" not in r for r in everything)
        api.http.close()


def test_serve_flags_turn_the_knobs_on(tmp_path: Path) -> None:
    # PYTHONPATH kept: it carries the suite's no-torch stand-in (tests/conftest.py), ~1.4 s
    # of CPU a process.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((root, os.environ["PYTHONPATH"]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firetitan_async", "serve", "--port", "0", "--seed", str(SEED),
         "--checkpoint-dir", str(tmp_path), "--no-fwdbwd-logprobs", "--step-checkpoint-names",
         "--bare-checkpoint-list"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        api = Api(url)
        model_id, _ = api.model(api.session())
        assert api.fwd(fb_json(model_id, 1))["loss_fn_outputs"] == [{}]
        assert _save_state(api, model_id, 2, "mine").endswith("/weights/step-0")
        rows = api.http.get("/api/v1/checkpoints").json()["checkpoints"]
        assert [r["checkpoint_id"] for r in rows] == ["weights/step-0"]
        assert "time" not in rows[0]
        api.http.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


@pytest.mark.anyio
async def test_json_forms_under_both_backends(trainer: LocalTrainer) -> None:
    async with httpx.AsyncClient(base_url=f"{trainer.base_url}/api/v1", timeout=30) as http:
        session = (await http.post("create_session", json={})).json()["session_id"]
        fut = (await http.post("create_model", json={
            "session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME})).json()
        model_id = fut["model_id"]
        subs = [await http.post("forward_backward", json=fb_json(model_id, 1)),
                await http.post("forward", json=fb_json(model_id, 2, key="forward_input")),
                await http.post("forward", json=fb_json(model_id, 3, key="nope"))]
        assert [r.status_code for r in subs] == [200, 200, 400]
        assert "forward_input is required" in subs[2].json()["detail"]
        outs = [(await http.post("retrieve_future", json={"request_id": r.json()["request_id"]},
                                 headers=JSON_ACCEPT)).json() for r in subs[:2]]
        assert np.array_equal(json_logprobs(outs[0]), json_logprobs(outs[1]))
        unload = await http.post("unload_model", json={"model_id": model_id})
        done = await http.post("retrieve_future", json={"request_id": unload.json()["request_id"]})
        assert done.json() == {"model_id": model_id, "type": "unload_model"}
