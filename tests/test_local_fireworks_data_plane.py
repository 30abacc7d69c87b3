"""The local trainer's Fireworks-dialect data plane over real HTTP on loopback (plain httpx).

Bodies are built by hand in the shapes the Fireworks SDK 1.2.30 sends (JSON ``forward_backward``
and ``forward``, top-level ``grad_accumulation_normalization``, ...); results are compared with
a ``TinyByteLM`` run in-process with the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import numpy as np
import pytest
from tinker.proto.response_conv import deserialize_forward_backward_output

from firetitan_async.local import LocalTrainer
from firetitan_async.local._http_errors import ApiError
from firetitan_async.local._json_codec import decode_json_head, decode_json_input, prefers_json
from firetitan_async.local._model import MODEL_NAME, AdamConfig, DatumArrays, TinyByteLM

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


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=SEED, long_poll_s=2.0) as lt:
        yield lt


@pytest.fixture
def api(trainer: LocalTrainer) -> Iterator[Api]:
    client = Api(trainer.base_url)
    yield client
    client.http.close()


# -- JSON forward_backward and forward ----------------------------------------------------------


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
