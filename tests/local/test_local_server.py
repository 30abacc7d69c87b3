"""The local trainer server over real HTTP on loopback, driven with plain httpx.

Requests are built by hand (JSON, and protobuf with ``tinker.proto.tinker_public_pb2``) and
replies decoded with the tinker SDK's own decoders, so these tests pin the wire, not our client.
Model results are compared bit-for-bit with a ``TinyByteLM`` run in-process with the same seed.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import zstandard
from tinker.proto import tinker_public_pb2 as pb
from tinker.proto.response_conv import (
    deserialize_forward_backward_output,
    deserialize_sample_response,
)

from firetitan_async.local import LocalTrainer, _ordering
from firetitan_async.local._checkpoint_store import CheckpointStore
from firetitan_async.local._model import MODEL_NAME, AdamConfig, DatumArrays, TinyByteLM

SEED = 7
TEXT = np.frombuffer(b"the quick brown fox jumps over the lazy dog", np.uint8).astype(np.int64)
ADAM = {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8,
        "weight_decay": 0.0, "grad_clip_norm": 0.0}
PROTO = {"content-type": "application/x-protobuf"}


# -- helpers ----------------------------------------------------------------------------------


def fb_body(
    model_id: str,
    seq_id: int,
    *,
    tokens: np.ndarray = TEXT[:-1],
    inputs: Mapping[str, np.ndarray] | None = None,
    loss_fn: str = "cross_entropy",
    forward_only: bool = False,
    config: Mapping[str, float] | None = None,
    n_data: int = 1,
) -> bytes:
    """A protobuf ForwardBackwardRequest of ``n_data`` copies of one datum."""
    if inputs is None:
        inputs = {"target_tokens": TEXT[1:], "weights": np.ones(len(TEXT) - 1, np.float32)}
    msg = pb.ForwardBackwardRequest(
        model_id=model_id, seq_id=seq_id, loss_fn=loss_fn, forward_only=forward_only
    )
    for key, value in (config or {}).items():
        msg.loss_fn_config[key] = value
        msg.loss_fn_config_v2[key].number = value
    for _ in range(n_data):
        datum = msg.data.add()
        datum.model_input.add().encoded_text.tokens = np.asarray(tokens, np.int32).tobytes()
        for name, arr in inputs.items():
            tensor = datum.loss_fn_inputs[name]
            is_int = np.asarray(arr).dtype.kind in "iu"
            tensor.dtype = pb.DTYPE_INT64 if is_int else pb.DTYPE_FLOAT32
            tensor.dense = np.asarray(arr, np.int64 if is_int else np.float32).tobytes()
            tensor.shape.extend(np.asarray(arr).shape)
    return bytes(msg.SerializeToString())


def image_body(model_id: str, seq_id: int) -> bytes:
    """A ForwardBackwardRequest whose datum is an image (the tiny model reads only text)."""
    msg = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    chunk = msg.data.add().model_input.add()
    chunk.image.data = b"\x89PNG"
    chunk.image.format = "png"
    return bytes(msg.SerializeToString())


def local_batch() -> list[DatumArrays]:
    return [DatumArrays(tokens=TEXT[:-1], inputs={"target_tokens": TEXT[1:],
                                                   "weights": np.ones(len(TEXT) - 1, np.float32)})]


class Api:
    """A thin sync httpx wrapper for the data plane."""

    def __init__(self, base_url: str, headers: Mapping[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=base_url, headers=dict(headers or {}), timeout=30)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        if isinstance(body, bytes):
            return self.http.post(f"/api/v1/{path}", content=body, **kw)
        return self.http.post(f"/api/v1/{path}", json=body if body is not None else {}, **kw)

    def ok(self, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.post(path, body, **kw)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def session(self) -> str:
        return str(self.ok("create_session", {"tags": [], "user_metadata": {}})["session_id"])

    def model(self, session_id: str, seq: int = 0, rank: int = 0) -> str:
        body: dict[str, Any] = {"session_id": session_id, "model_seq_id": seq,
                                "base_model": MODEL_NAME}
        if rank:
            body["lora_config"] = {"rank": rank}
        fut = self.ok("create_model", body)
        assert self.result(fut["request_id"])["model_id"] == fut["model_id"]
        return str(fut["model_id"])

    def result(self, request_id: str) -> Any:
        r = self.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": True})
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("application/x-protobuf"):
            return r.content
        body = r.json()
        assert body.get("type") != "try_again", body
        return body

    def fwd(self, model_id: str, seq: int, **kw: Any) -> Any:
        fut = self.ok("forward_backward", fb_body(model_id, seq, **kw), headers=PROTO)
        out = self.result(fut["request_id"])
        assert isinstance(out, bytes), out
        return deserialize_forward_backward_output(out)

    def optim(self, model_id: str, seq: int) -> Any:
        fut = self.ok("optim_step", {"model_id": model_id, "seq_id": seq, "adam_params": ADAM,
                                     "type": "optim_step"})
        return self.result(fut["request_id"])


def logprobs_of(out: Any) -> np.ndarray:
    return np.asarray(out.loss_fn_outputs[0]["logprobs"].to_numpy(), dtype=np.float32)


TRAINER_OPTIONS = {"seed": SEED, "long_poll_s": 2.0}  # the module's `trainer` (conftest.py)


@pytest.fixture
def api(trainer: LocalTrainer) -> Iterator[Api]:
    client = Api(trainer.base_url)
    yield client
    client.http.close()


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_with_serves_and_stops_under_both_backends() -> None:
    async with LocalTrainer() as lt:
        async with httpx.AsyncClient(base_url=lt.base_url) as http:
            assert (await http.get("/api/v1/healthz")).json() == {"status": "ok"}
        url = lt.base_url
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/api/v1/healthz", timeout=2)


def test_start_stop_and_urls() -> None:
    lt = LocalTrainer()
    lt.start()
    try:
        assert lt.base_url.startswith("http://127.0.0.1:")
        assert lt.control_plane_url == lt.base_url and lt.account_id == "local"
        assert httpx.get(f"{lt.base_url}/api/v1/healthz").status_code == 200
        caps = httpx.get(f"{lt.base_url}/api/v1/get_server_capabilities").json()
        assert caps["supported_models"][0]["model_name"] == MODEL_NAME
    finally:
        lt.stop()


# -- training round trip -------------------------------------------------------------------


def test_forward_backward_round_trip_matches_the_model_bit_for_bit(api: Api) -> None:
    session = api.session()
    model_id = api.model(session)
    assert model_id == f"{session}:train:0"
    info = api.ok("get_info", {"model_id": model_id, "type": "get_info"})
    assert info["model_data"]["model_name"] == MODEL_NAME and info["is_lora"] is False

    local = TinyByteLM(seed=SEED)
    expected = local.forward_backward(local_batch(), "cross_entropy", backward=True)
    out = api.fwd(model_id, 1)
    assert out.loss_fn_output_type == "ArrayRecord"
    assert np.array_equal(logprobs_of(out), expected.logprobs[0])
    assert out.metrics["loss:sum"] == pytest.approx(expected.metrics["loss:sum"], rel=1e-6)

    metrics = api.optim(model_id, 2)["metrics"]
    local_metrics = local.optim_step(AdamConfig(**ADAM))
    assert metrics == pytest.approx(local_metrics)
    after = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    out2 = api.fwd(model_id, 3, forward_only=True)
    assert np.array_equal(logprobs_of(out2), after.logprobs[0])
    assert out2.metrics["loss:sum"] < out.metrics["loss:sum"]


def test_zstd_body_and_several_data(api: Api) -> None:
    model_id = api.model(api.session(), rank=4)
    raw = fb_body(model_id, 1, n_data=3, forward_only=True)
    fut = api.ok(
        "forward_backward",
        zstandard.ZstdCompressor().compress(raw),
        headers={**PROTO, "content-encoding": "zstd"},
    )
    out = deserialize_forward_backward_output(api.result(fut["request_id"]))
    assert len(out.loss_fn_outputs) == 3
    first = out.loss_fn_outputs[0]["logprobs"].to_numpy()
    assert all(np.array_equal(o["logprobs"].to_numpy(), first) for o in out.loss_fn_outputs)


def test_rl_losses_run(api: Api) -> None:
    model_id = api.model(api.session())
    n = len(TEXT) - 1
    rl = {"target_tokens": TEXT[1:], "logprobs": np.full(n, -5.0, np.float32),
          "advantages": np.linspace(-1, 1, n).astype(np.float32)}
    for seq, loss in enumerate(("importance_sampling", "ppo", "cispo", "dro"), start=1):
        out = api.fwd(model_id, seq, inputs=rl, loss_fn=loss)
        assert math.isfinite(out.metrics["loss:sum"]), loss


@pytest.mark.anyio
async def test_out_of_order_submissions_run_in_seq_order(trainer: LocalTrainer) -> None:
    api = Api(trainer.base_url)
    model_id = api.model(api.session())
    bodies = {
        3: ("forward_backward", fb_body(model_id, 3, forward_only=True)),
        2: ("optim_step", {"model_id": model_id, "seq_id": 2, "adam_params": ADAM}),
        1: ("forward_backward", fb_body(model_id, 1)),
    }
    ids: dict[int, str] = {}
    async with httpx.AsyncClient(base_url=trainer.base_url, timeout=30) as http:

        async def submit(seq: int) -> None:
            path, body = bodies[seq]
            if isinstance(body, bytes):
                r = await http.post(f"/api/v1/{path}", content=body, headers=PROTO)
            else:
                r = await http.post(f"/api/v1/{path}", json=body)
            assert r.status_code == 200, r.text
            ids[seq] = r.json()["request_id"]

        await submit(3)
        await submit(2)
        # seq 3 cannot run before 1 and 2: the long poll (2 s here) ends with try_again.
        with anyio.fail_after(10):
            r = await http.post("/api/v1/retrieve_future", json={"request_id": ids[3]})
        assert r.json()["type"] == "try_again", r.text
        async with anyio.create_task_group() as tg:  # the remaining chunk, concurrently
            tg.start_soon(submit, 1)
        r3 = await http.post("/api/v1/retrieve_future", json={"request_id": ids[3]})
    local = TinyByteLM(seed=SEED)
    local.forward_backward(local_batch(), "cross_entropy", backward=True)
    local.optim_step(AdamConfig(**ADAM))
    expected = local.forward_backward(local_batch(), "cross_entropy", backward=False)
    got = deserialize_forward_backward_output(r3.content)
    assert np.array_equal(logprobs_of(got), expected.logprobs[0])


@pytest.mark.anyio
async def test_long_poll_holds_then_answers_try_again_or_the_result() -> None:
    async with LocalTrainer(long_poll_s=0.4) as lt:
        api = Api(lt.base_url)
        model_id = api.model(api.session())
        fut = api.ok("forward_backward", fb_body(model_id, 2, forward_only=True), headers=PROTO)
        async with httpx.AsyncClient(base_url=lt.base_url, timeout=30) as http:
            start = time.monotonic()
            r = await http.post("/api/v1/retrieve_future", json={"request_id": fut["request_id"]})
            held = time.monotonic() - start
            assert r.json() == {"type": "try_again", "request_id": fut["request_id"],
                                "queue_state": "active"}
            assert 0.35 <= held < 2.0

            got: dict[str, Any] = {}

            async def poll() -> None:
                t0 = time.monotonic()
                reply = await http.post(
                    "/api/v1/retrieve_future", json={"request_id": fut["request_id"]}
                )
                got["dt"], got["reply"] = time.monotonic() - t0, reply

            async with anyio.create_task_group() as tg:
                tg.start_soon(poll)
                await anyio.sleep(0.1)
                await anyio.to_thread.run_sync(api.fwd, model_id, 1)  # unblocks seq 2
        assert got["dt"] < 0.4
        assert got["reply"].headers["content-type"] == "application/x-protobuf"
        r404 = api.post("retrieve_future", {"request_id": "req-nope"})
        assert r404.status_code == 404 and "req-nope" in r404.json()["detail"]
        api.http.close()


@pytest.mark.anyio
async def test_stop_answers_held_polls_try_again() -> None:
    lt = LocalTrainer(long_poll_s=30.0)
    await anyio.to_thread.run_sync(lt.start)
    api = Api(lt.base_url)
    model_id = api.model(api.session())
    fut = api.ok("forward_backward", fb_body(model_id, 2, forward_only=True), headers=PROTO)
    api.http.close()
    got: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=lt.base_url, timeout=30) as http:

        async def poll() -> None:
            got["reply"] = await http.post(
                "/api/v1/retrieve_future", json={"request_id": fut["request_id"]}
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await anyio.sleep(0.3)  # the poll is held (seq 1 never comes)
            await anyio.to_thread.run_sync(lt.stop)
    # Released with an answer, not cut off when the 2 s graceful shutdown runs out.
    assert got["reply"].json()["type"] == "try_again"


def test_stop_is_prompt_and_a_reply_under_way_still_arrives() -> None:
    """An idle trainer stops in milliseconds: uvicorn's own stop takes 0.15-0.2 s (a 0.1 s
    tick, then a fixed 0.1 s wait), which was ~100 s of this suite's ~700 trainers. A reply
    under way when stop is called still arrives whole, and stop waits for it."""
    took = []
    for _ in range(3):  # the best of three: one scheduling hiccup on a loaded machine is not it
        lt = LocalTrainer()
        lt.start()
        with httpx.Client(base_url=lt.base_url) as http:
            assert http.get("/api/v1/healthz").status_code == 200  # a keep-alive connection
            started = time.monotonic()
            lt.stop()
            took.append(time.monotonic() - started)
    assert min(took) < 0.09, took

    lt = LocalTrainer(latency_s=0.4)
    lt.start()
    replies: list[httpx.Response] = []
    with httpx.Client(base_url=lt.base_url, timeout=10) as http:
        request = threading.Thread(target=lambda: replies.append(http.get("/api/v1/healthz")))
        request.start()
        time.sleep(0.15)  # the request is in, its reply 0.25 s away
        started = time.monotonic()
        lt.stop()
        stop_s = time.monotonic() - started
        request.join(10)
    assert [r.status_code for r in replies] == [200] and replies[0].json() == {"status": "ok"}
    assert stop_s < 2.0, stop_s  # within the graceful shutdown's 2 s


# -- 4xx: exact messages, no state change, seq consumed --------------------------------------


def test_bad_requests_say_what_is_wrong_and_change_nothing(trainer: LocalTrainer, api: Api) -> None:
    session = api.session()
    model_id = api.model(session)
    baseline = logprobs_of(api.fwd(model_id, 1, forward_only=True))
    n = len(TEXT) - 1
    seq = 2
    # (label, endpoint, body or callable(seq) -> body, status, text in detail, consumes seq)
    cases: list[tuple[str, str, Any, int, str, bool]] = [
        ("unknown loss", "forward_backward",
         lambda s: fb_body(model_id, s, loss_fn="hinge"), 400, "unknown loss function", True),
        ("missing weights", "forward_backward",
         lambda s: fb_body(model_id, s, inputs={"target_tokens": TEXT[1:]}), 400,
         "loss_fn_inputs.weights (datum 0)", True),
        ("shape mismatch", "forward_backward",
         lambda s: fb_body(model_id, s, inputs={"target_tokens": TEXT[2:],
                                                "weights": np.ones(n - 1, np.float32)}),
         400, "must have shape", True),
        ("token out of range", "forward_backward",
         lambda s: fb_body(model_id, s, tokens=np.full(n, 999)), 400, "token 999", True),
        ("empty batch", "forward_backward", lambda s: fb_body(model_id, s, n_data=0), 400,
         "batch is empty", True),
        ("non-finite weights", "forward_backward",
         lambda s: fb_body(model_id, s, inputs={"target_tokens": TEXT[1:],
                                                "weights": np.full(n, np.nan, np.float32)}),
         400, "non-finite", True),
        ("bad loss config", "forward_backward",
         lambda s: fb_body(model_id, s, config={"nope": 1.0}), 400, "loss_fn_config.nope", True),
        ("negative lr", "optim_step",
         lambda s: {"model_id": model_id, "seq_id": s,
                    "adam_params": {**ADAM, "learning_rate": -1.0}},
         400, "adam_params.learning_rate", True),
        ("no adam params", "optim_step", lambda s: {"model_id": model_id, "seq_id": s}, 400,
         "adam_params is required", True),
        ("bad checkpoint name", "save_weights",
         lambda s: {"model_id": model_id, "seq_id": s, "path": "a/b"}, 400,
         "invalid checkpoint name", True),
        ("negative ttl", "save_weights",
         lambda s: {"model_id": model_id, "seq_id": s, "path": "x", "ttl_seconds": -5}, 400,
         "ttl_seconds must be >= 1", True),
        ("bad checkpoint_type", "save_weights_for_sampler",
         lambda s: {"model_id": model_id, "seq_id": s, "path": "d", "checkpoint_type": "full"},
         400, "checkpoint_type must be", True),
        ("unknown checkpoint", "load_weights",
         lambda s: {"model_id": model_id, "seq_id": s, "optimizer": True,
                    "path": f"tinker://{model_id}/weights/never-saved"}, 404, "not found", True),
        ("malformed tinker path", "load_weights",
         lambda s: {"model_id": model_id, "seq_id": s, "optimizer": False, "path": "s3://x"},
         400, "tinker://", True),
        ("image chunk", "forward_backward", lambda s: image_body(model_id, s), 400,
         "data[0].model_input: image chunks are not supported", True),
        ("load without path", "load_weights",
         lambda s: {"model_id": model_id, "seq_id": s, "optimizer": False}, 400,
         "path is required", True),
        ("reused seq_id", "optim_step",
         lambda s: {"model_id": model_id, "seq_id": 1, "adam_params": ADAM}, 400,
         "seq_id 1 of model", False),
        ("reused seq_id, another kind", "optim_step",
         lambda s: {"model_id": model_id, "seq_id": 1, "adam_params": ADAM}, 400,
         "already used by a different request", False),
        ("unknown model", "optim_step",
         lambda s: {"model_id": "nope:train:0", "seq_id": s, "adam_params": ADAM}, 404,
         "unknown model_id 'nope:train:0'", False),
        ("undecodable protobuf", "forward_backward", lambda s: b"\xff\xff\xff", 400,
         "not a protobuf", False),
        ("bad json", "optim_step", lambda s: b"{not json", 400, "not valid JSON", False),
        ("json list body", "optim_step", lambda s: [1, 2], 400, "must be a JSON object", False),
        ("unknown base model", "create_model",
         lambda s: {"session_id": session, "model_seq_id": 9, "base_model": "Org/Unserved"},
         400, "local/tiny-byte-lm", False),
        ("negative lora rank", "create_model",
         lambda s: {"session_id": session, "model_seq_id": 9, "base_model": MODEL_NAME,
                    "lora_config": {"rank": -2}}, 400, "rank must be >= 0", False),
        ("reused model_seq_id", "create_model",
         lambda s: {"session_id": session, "model_seq_id": 0, "base_model": MODEL_NAME},
         400, "already used", False),
        ("unknown session", "create_model",
         lambda s: {"session_id": "nope", "model_seq_id": 0, "base_model": MODEL_NAME},
         404, "unknown session_id", False),
        ("sample: bad top_p", "asample",
         lambda s: {"base_model": MODEL_NAME, "num_samples": 1,
                    "prompt": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
                    "sampling_params": {"top_p": 0}}, 400, "top_p", False),
        ("sample: image chunk", "asample",
         lambda s: {"base_model": MODEL_NAME, "num_samples": 1,
                    "prompt": {"chunks": [{"data": "", "format": "png", "type": "image"}]},
                    "sampling_params": {}}, 400, "'image' chunks are not supported", False),
        ("unknown endpoint", "no_such_thing", lambda s: {}, 404, "no such endpoint", False),
    ]
    steps_before = trainer.stats()["optim_steps_applied"].get(model_id, 0)
    for label, path, make, status, text, consumes in cases:
        body = make(seq)
        headers = PROTO if isinstance(body, bytes) and path == "forward_backward" else {}
        if isinstance(body, bytes) and path != "forward_backward":
            headers = {"content-type": "application/json"}
        r = api.post(path, body, headers=headers)
        assert r.status_code == status, (label, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and text in detail, (label, detail)
        if consumes:
            seq += 1
    # Nothing changed, and every consumed seq_id is behind us: the next one runs at once.
    assert trainer.stats()["optim_steps_applied"].get(model_id, 0) == steps_before
    assert np.array_equal(logprobs_of(api.fwd(model_id, seq, forward_only=True)), baseline)
    assert api.ok("get_info", {"model_id": model_id})["model_id"] == model_id


def test_execution_time_error_fails_the_future_as_a_user_error(api: Api) -> None:
    model_id = api.model(api.session(), rank=2)
    other = api.model(api.session(), rank=0)
    saved = api.result(api.ok("save_weights", {"model_id": other, "seq_id": 1,
                                               "path": "full"})["request_id"])
    r = api.post("load_weights", {"model_id": model_id, "seq_id": 1, "optimizer": False,
                                  "path": saved["path"]})
    assert r.status_code == 400 and "LoRA rank 0" in r.json()["detail"]
    # A checkpoint deleted after submission fails at execution time, as a user error.
    fut = api.ok("forward_backward", fb_body(other, 3, forward_only=True), headers=PROTO)
    load = api.ok("load_weights", {"model_id": other, "seq_id": 4, "optimizer": True,
                                   "path": saved["path"]})
    run_id, _, cid = saved["path"][len("tinker://"):].partition("/")
    api.http.delete(f"/api/v1/training_runs/{run_id}/checkpoints/{cid}")
    # Nothing ran yet: seq 2 is missing. Fill it, then both complete.
    api.fwd(other, 2, forward_only=True)
    assert isinstance(api.result(fut["request_id"]), bytes)
    failed = api.result(load["request_id"])
    assert failed["category"] == "user" and "not found" in failed["error"]


# -- idempotency and faults ----------------------------------------------------------------


def test_idempotent_replay_returns_the_original_reply(trainer: LocalTrainer, api: Api) -> None:
    model_id = api.model(api.session())
    api.fwd(model_id, 1)
    key = {"X-Idempotency-Key": f"test-{uuid.uuid4()}"}
    body = {"model_id": model_id, "seq_id": 2, "adam_params": ADAM}
    first = api.ok("optim_step", body, headers=key)
    again = api.ok("optim_step", body, headers=key)
    assert again == first
    api.result(first["request_id"])
    assert trainer.stats()["optim_steps_applied"][model_id] == 1
    # A 4xx is replayed too (and still consumed exactly one seq_id).
    bad = {"model_id": model_id, "seq_id": 3, "adam_params": {"learning_rate": -1}}
    key2 = {"X-Idempotency-Key": f"test-{uuid.uuid4()}"}
    r1, r2 = api.post("optim_step", bad, headers=key2), api.post("optim_step", bad, headers=key2)
    assert r1.status_code == r2.status_code == 400 and r1.json() == r2.json()
    api.fwd(model_id, 4, forward_only=True)


def _new_key() -> dict[str, str]:
    """A fresh key, as the tinker SDK draws for each outer ``execute_with_retries`` attempt."""
    return {"X-Idempotency-Key": f"stainless-python-retry-{uuid.uuid4()}"}


def test_a_resend_under_its_seq_id_is_the_same_request(trainer: LocalTrainer, api: Api) -> None:
    """The tinker SDK's outer retry resends a submission whose reply it lost with the same
    ``seq_id`` and a new idempotency key: it gets the original future and runs once."""
    model_id = api.model(api.session())
    body = fb_body(model_id, 1)
    first = api.ok("forward_backward", body, headers={**PROTO, **_new_key()})
    assert api.ok("forward_backward", body, headers={**PROTO, **_new_key()}) == first
    step_body = {"model_id": model_id, "seq_id": 2, "adam_params": ADAM, "type": "optim_step"}
    step = api.ok("optim_step", step_body, headers=_new_key())
    assert api.ok("optim_step", step_body, headers=_new_key()) == step
    assert api.ok("optim_step", step_body) == step  # no key at all
    # The gradient was accumulated once: the step's grad norm is that of one forward_backward.
    local = TinyByteLM(seed=SEED)
    local.forward_backward(local_batch(), "cross_entropy", backward=True)
    assert api.result(step["request_id"])["metrics"] == pytest.approx(
        local.optim_step(AdamConfig(**ADAM))
    )
    assert trainer.stats()["optim_steps_applied"][model_id] == 1
    # Long after it ran, a resend still gets the original (completed) future.
    assert api.ok("forward_backward", body, headers=PROTO) == first
    assert isinstance(api.result(first["request_id"]), bytes)
    # A different request under a used seq_id is a client bug: refused, nothing runs.
    for path, other, headers in (
        ("forward_backward", fb_body(model_id, 1, forward_only=True), PROTO),
        ("optim_step", {**step_body, "adam_params": {**ADAM, "learning_rate": 0.5}}, {}),
    ):
        r = api.post(path, other, headers=headers)
        assert r.status_code == 400, r.text
        assert "seq_id" in r.json()["detail"]
        assert "already used by a different request" in r.json()["detail"]
    assert trainer.stats()["optim_steps_applied"][model_id] == 1
    # A refused submission resent gets the same refusal, and its seq_id was consumed once.
    bad = fb_body(model_id, 3, loss_fn="hinge")
    refusals = [api.post("forward_backward", bad, headers={**PROTO, **_new_key()})
                for _ in range(2)]
    assert [r.status_code for r in refusals] == [400, 400]
    assert refusals[0].json() == refusals[1].json()
    assert "unknown loss function" in refusals[0].json()["detail"]
    api.fwd(model_id, 4, forward_only=True)


def test_a_model_remembers_a_bounded_window_of_seq_ids(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_ordering, "REPLAY_WINDOW", 2)
    model_id = api.model(api.session())
    steps = [{"model_id": model_id, "seq_id": s, "adam_params": ADAM} for s in (1, 2, 3)]
    futures = [api.ok("optim_step", step) for step in steps]
    assert api.ok("optim_step", steps[1], headers=_new_key()) == futures[1]
    r = api.post("optim_step", steps[0], headers=_new_key())  # forgotten: refused as a reuse
    assert r.status_code == 400 and "seq_id 1" in r.json()["detail"], r.text
    assert "different request" not in r.json()["detail"]


def test_a_resent_sampler_save_with_a_new_sampling_session_seq_id_is_the_same_save(
    trainer: LocalTrainer, api: Api
) -> None:
    """The tinker SDK draws a new ``sampling_session_seq_id`` for each outer-retry attempt of
    ``save_weights_and_get_sampling_client``: the resend still names the same save."""
    session = api.session()
    model_id = api.model(session)
    body = {"model_id": model_id, "seq_id": 1, "kind": "snapshot", "sampling_session_seq_id": 0}
    first = api.ok("save_weights_for_sampler", body, headers=_new_key())
    again = api.ok("save_weights_for_sampler", {**body, "sampling_session_seq_id": 1},
                   headers=_new_key())
    assert again == first
    assert api.result(first["request_id"])["sampling_session_id"] == f"{session}:sample:0"
    # Another field differs: a different request.
    r = api.post("save_weights_for_sampler", {**body, "kind": "inflight"})
    assert r.status_code == 400 and "different request" in r.json()["detail"]


def test_a_resent_create_via_load_is_the_same_model(api: Api) -> None:
    """``create_training_client_from_state`` goes through the SDK's outer retry too: a resend
    of the load that made a model gets its future; another request for that model_seq_id is
    refused."""
    session = api.session()
    model_id = api.model(session)
    saved = api.result(api.ok("save_weights", {"model_id": model_id, "seq_id": 1,
                                               "path": "s"})["request_id"])
    body = {"session_id": session, "model_seq_id": 1, "path": saved["path"], "optimizer": True}
    first = api.ok("load_weights", body, headers=_new_key())
    assert api.ok("load_weights", body, headers=_new_key()) == first
    assert first["model_id"] == f"{session}:train:1"
    assert api.result(first["request_id"])["model_id"] == first["model_id"]
    r = api.post("load_weights", {**body, "optimizer": False}, headers=_new_key())
    assert r.status_code == 400 and "model_seq_id 1" in r.json()["detail"], r.text
    r = api.post("load_weights", {**body, "model_seq_id": 0}, headers=_new_key())
    assert r.status_code == 400 and "model_seq_id 0" in r.json()["detail"], r.text


def test_faults_are_injected_counted_and_survivable_with_idempotency_keys() -> None:
    with LocalTrainer(seed=SEED, fault_rate=0.5, long_poll_s=1.0) as lt:
        clean = Api(lt.base_url)
        http = httpx.Client(base_url=lt.base_url, timeout=10)
        statuses: dict[str, int] = {}

        def send(path: str, body: Any, key: str | None) -> Any:
            headers = dict(PROTO) if isinstance(body, bytes) else {}
            if key:
                headers["X-Idempotency-Key"] = key
            for _ in range(200):
                try:
                    if isinstance(body, bytes):
                        r = http.post(f"/api/v1/{path}", content=body, headers=headers)
                    else:
                        r = http.post(f"/api/v1/{path}", json=body, headers=headers)
                except httpx.TransportError as exc:
                    statuses[type(exc).__name__] = statuses.get(type(exc).__name__, 0) + 1
                    continue
                statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "1"
                    assert r.headers["retry-after-ms"] == "50"
                if r.status_code == 200:
                    json_reply = r.headers["content-type"].endswith("json")
                    if json_reply and r.json().get("type") == "try_again":
                        continue
                    return r
                assert r.status_code in (408, 429, 500, 503), r.text
                assert r.json()["detail"].startswith("injected fault")
            raise AssertionError("no success in 200 attempts")

        def key() -> str:
            return f"k-{uuid.uuid4()}"

        session = send("create_session", {}, key()).json()["session_id"]
        fut = send("create_model", {"session_id": session, "model_seq_id": 0,
                                    "base_model": MODEL_NAME}, key()).json()
        model_id = fut["model_id"]
        seq = 1
        request_ids = []
        for _ in range(5):
            fb = send("forward_backward", fb_body(model_id, seq), key()).json()
            op = send("optim_step", {"model_id": model_id, "seq_id": seq + 1,
                                     "adam_params": ADAM}, key()).json()
            request_ids += [fb["request_id"], op["request_id"]]
            seq += 2
        for rid in request_ids:
            send("retrieve_future", {"request_id": rid}, None)
        stats = lt.stats()
        assert stats["optim_steps_applied"] == {model_id: 5}
        assert stats["faults_injected"] >= 5
        assert {"503", "500"} & set(statuses), statuses
        # The control plane and /_local are never faulted.
        for _ in range(10):
            assert http.get(f"/v1/accounts/{lt.account_id}/rlorTrainerJobs").status_code == 200
            assert http.get("/_local/stats").status_code == 200
        # Same weights as a clean run of the same operations.
        local = TinyByteLM(seed=SEED)
        for _ in range(5):
            local.forward_backward(local_batch(), "cross_entropy", backward=True)
            local.optim_step(AdamConfig(**ADAM))
        expected = local.forward_backward(local_batch(), "cross_entropy", backward=False)
        fwd = send("forward_backward", fb_body(model_id, seq, forward_only=True), key()).json()
        out = send("retrieve_future", {"request_id": fwd["request_id"]}, None)
        assert np.array_equal(
            logprobs_of(deserialize_forward_backward_output(out.content)), expected.logprobs[0]
        )
        http.close()
        clean.http.close()


def test_every_fault_kind_appears() -> None:
    seen: set[str] = set()
    with LocalTrainer(fault_rate=1.0, long_poll_s=0.2) as lt, httpx.Client(
        base_url=lt.base_url, timeout=10
    ) as http:
        for i in range(80):
            try:
                start = time.monotonic()
                r = http.post("/api/v1/retrieve_future", json={"request_id": "x"},
                              headers={"X-Idempotency-Key": f"k{i}"})
                if r.status_code == 404 and time.monotonic() - start >= 0.1:
                    seen.add("slow")
                seen.add(str(r.status_code))
            except httpx.RemoteProtocolError:
                seen.add("dropped")
        assert lt.stats()["faults_injected"] == 80
    assert {"408", "429", "500", "503", "dropped", "slow"} <= seen, seen


# -- checkpoints -------------------------------------------------------------------------------


def _save(api: Api, path: str, body: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = api.result(api.ok(path, body)["request_id"])
    return result


def test_checkpoints_survive_a_restart(tmp_path: Path) -> None:
    ckpt_dir = str(tmp_path / "ckpt")
    with LocalTrainer(seed=SEED, checkpoint_dir=ckpt_dir) as lt:
        api = Api(lt.base_url)
        model_id = api.model(api.session(), rank=4)
        api.fwd(model_id, 1)
        api.optim(model_id, 2)
        state = _save(api, "save_weights", {"model_id": model_id, "seq_id": 3,
                                            "path": "step-1", "user_metadata": {"k": "v"}})
        sampler = _save(api, "save_weights_for_sampler",
                        {"model_id": model_id, "seq_id": 4, "path": "s-1"})
        api.fwd(model_id, 5)
        api.optim(model_id, 6)
        expected = logprobs_of(api.fwd(model_id, 7, forward_only=True))
        api.http.close()
    assert state["path"] == f"tinker://{model_id}/weights/step-1"
    with LocalTrainer(seed=SEED + 1, checkpoint_dir=ckpt_dir) as lt:
        api = Api(lt.base_url)
        listing = api.http.get(f"/api/v1/training_runs/{model_id}/checkpoints").json()
        ids = {c["checkpoint_id"]: c for c in listing["checkpoints"]}
        assert set(ids) == {"weights/step-1", "sampler_weights/s-1"}
        assert ids["weights/step-1"]["user_metadata"] == {"k": "v"}
        assert ids["sampler_weights/s-1"]["snapshot_type"] == "base"
        run = api.http.get(f"/api/v1/training_runs/{model_id}").json()
        assert run["is_lora"] and run["lora_rank"] == 4
        assert run["last_checkpoint"]["checkpoint_id"] == "weights/step-1"
        # Create-via-load with the optimizer, then the same step: same logprobs.
        session = api.session()
        fut = api.ok("load_weights", {"session_id": session, "model_seq_id": 0,
                                      "path": state["path"], "optimizer": True})
        assert api.result(fut["request_id"])["model_id"] == f"{session}:train:0"
        new_id = fut["model_id"]
        assert api.ok("get_info", {"model_id": new_id})["lora_rank"] == 4
        api.fwd(new_id, 1)
        api.optim(new_id, 2)
        assert np.array_equal(logprobs_of(api.fwd(new_id, 3, forward_only=True)), expected)
        # Sampling from the saved sampler path works after the restart.
        sampled = sample(api, {"model_path": sampler["path"]}, seed=3)
        assert len(sampled.sequences) == 2
        api.http.close()


def test_ttl_expiry_hides_and_refuses_the_checkpoint(api: Api) -> None:
    model_id = api.model(api.session())
    saved = _save(api, "save_weights", {"model_id": model_id, "seq_id": 1, "path": "short",
                                        "ttl_seconds": 1})
    forever = _save(api, "save_weights", {"model_id": model_id, "seq_id": 2, "path": "long"})
    listing = api.http.get(f"/api/v1/training_runs/{model_id}/checkpoints").json()["checkpoints"]
    by_id = {c["checkpoint_id"]: c for c in listing}
    assert by_id["weights/short"]["expires_at"] and by_id["weights/long"]["expires_at"] is None
    time.sleep(1.1)
    listing = api.http.get(f"/api/v1/training_runs/{model_id}/checkpoints").json()["checkpoints"]
    assert [c["checkpoint_id"] for c in listing] == ["weights/long"]
    r = api.post("load_weights", {"model_id": model_id, "seq_id": 3, "optimizer": False,
                                  "path": saved["path"]})
    assert r.status_code == 404 and "expired" in r.json()["detail"]
    assert _save(api, "load_weights", {"model_id": model_id, "seq_id": 4, "optimizer": False,
                                       "path": forever["path"]})["path"] == forever["path"]


def test_delta_snapshot_rebuilds_the_weights_bit_exactly(
    trainer: LocalTrainer, api: Api, tmp_path: Path
) -> None:
    ckpt = tmp_path / "c"
    with LocalTrainer(seed=SEED, checkpoint_dir=str(ckpt)) as lt:
        api = Api(lt.base_url)
        model_id = api.model(api.session())
        base = _save(api, "save_weights_for_sampler", {"model_id": model_id, "seq_id": 1,
                                                       "path": "b0", "checkpoint_type": "base"})
        api.fwd(model_id, 2)
        api.optim(model_id, 3)
        delta = _save(api, "save_weights_for_sampler", {"model_id": model_id, "seq_id": 4,
                                                        "path": "d1", "checkpoint_type": "delta",
                                                        "ttl_seconds": 3600})
        full = _save(api, "save_weights_for_sampler", {"model_id": model_id, "seq_id": 5,
                                                       "path": "f1"})
        listing = api.http.get(f"/api/v1/training_runs/{model_id}/checkpoints").json()
        kinds = {c["checkpoint_id"]: c["snapshot_type"] for c in listing["checkpoints"]}
        assert kinds == {"sampler_weights/b0": "base", "sampler_weights/d1": "delta",
                         "sampler_weights/f1": "base"}
        store = CheckpointStore(ckpt)
        raw_delta = store.load_arrays(delta["path"])
        assert all(a.dtype == np.uint32 for a in raw_delta.values())
        rebuilt = store.load_sampler_weights(delta["path"])
        reference = store.load_sampler_weights(full["path"])
        local = TinyByteLM(seed=SEED)
        local.forward_backward(local_batch(), "cross_entropy", backward=True)
        local.optim_step(AdamConfig(**ADAM))
        for key, value in local.sampler_weights().items():
            assert rebuilt[key].tobytes() == value.tobytes() == reference[key].tobytes()
        assert not np.array_equal(store.load_sampler_weights(base["path"])["w2"], rebuilt["w2"])
        # Sampling from the delta path gives what sampling from the full save gives.
        a = sample(api, {"model_path": delta["path"]}, seed=11, prompt_logprobs=True)
        b = sample(api, {"model_path": full["path"]}, seed=11, prompt_logprobs=True)
        assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
        assert a.prompt_logprobs == b.prompt_logprobs
        api.http.close()


def test_user_checkpoints_listing_delete_and_job_filter(api: Api) -> None:
    model_id = api.model(api.session())
    saved = _save(api, "save_weights", {"model_id": model_id, "seq_id": 1, "path": "to-delete"})
    everything = api.http.get("/api/v1/checkpoints", params={"limit": 1000}).json()
    assert saved["path"] in {c["tinker_path"] for c in everything["checkpoints"]}
    assert everything["cursor"]["total_count"] >= 1
    none = api.http.get("/api/v1/checkpoints", params={"job_id": "no-such-job"}).json()
    assert none["checkpoints"] == []
    r = api.http.delete(f"/api/v1/training_runs/{model_id}/checkpoints/weights/to-delete")
    assert r.status_code == 200
    r = api.http.delete(f"/api/v1/training_runs/{model_id}/checkpoints/weights/to-delete")
    assert r.status_code == 404 and "not found" in r.json()["detail"]


# -- sampling --------------------------------------------------------------------------------


def sample(api: Api, where: Mapping[str, Any], *, seed: int | None = None,
           prompt_logprobs: bool = False, stop: Any = None, num_samples: int = 2) -> Any:
    params: dict[str, Any] = {"max_tokens": 8, "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    if seed is not None:
        params["seed"] = seed
    if stop is not None:
        params["stop"] = stop
    body = {"num_samples": num_samples, "prompt": {"chunks": [{"tokens": TEXT[:5].tolist(),
                                                      "type": "encoded_text"}]},
            "sampling_params": params, "prompt_logprobs": prompt_logprobs, **where}
    fut = api.ok("asample", body)
    assert len(fut["sample_sequence_ids"]) == num_samples
    raw = api.result(fut["request_id"])
    assert isinstance(raw, bytes), raw
    return deserialize_sample_response(raw)


def test_sampling_sessions_and_asample(api: Api) -> None:
    session = api.session()
    sid = api.ok("create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0,
                                             "base_model": MODEL_NAME})["sampling_session_id"]
    assert sid == f"{session}:sample:0"
    info = api.http.get(f"/api/v1/samplers/{sid}").json()
    assert info == {"sampler_id": sid, "base_model": MODEL_NAME, "model_path": None}
    a = sample(api, {"sampling_session_id": sid, "seq_id": 0}, seed=5, prompt_logprobs=True)
    b = sample(api, {"sampling_session_id": sid, "seq_id": 1}, seed=5)
    assert [s.tokens for s in a.sequences] == [s.tokens for s in b.sequences]
    assert all(len(s.tokens) == len(s.logprobs or []) for s in a.sequences)
    assert a.prompt_logprobs is not None and a.prompt_logprobs[0] is None
    assert all(isinstance(x, float) for x in a.prompt_logprobs[1:])
    stopped = sample(api, {"sampling_session_id": sid}, seed=1, stop=[int(t) for t in range(257)])
    assert all(s.stop_reason == "stop" and len(s.tokens) == 1 for s in stopped.sequences)
    # Ephemeral sampler save (what save_weights_and_get_sampling_client does).
    model_id = api.model(session)
    eph = _save(api, "save_weights_for_sampler", {"model_id": model_id, "seq_id": 1,
                                                  "sampling_session_seq_id": 1,
                                                  "kind": "snapshot"})
    assert eph["sampling_session_id"] == f"{session}:sample:1"
    c = sample(api, {"sampling_session_id": eph["sampling_session_id"]}, seed=5)
    assert [s.tokens for s in c.sequences] == [s.tokens for s in a.sequences]  # untrained = base


# -- auth and stats --------------------------------------------------------------------------


def test_api_key_is_required_everywhere_and_never_echoed() -> None:
    secret = "tml-secret-0123456789"
    with LocalTrainer(api_key=secret) as lt:
        for headers in ({}, {"X-API-Key": "tml-wrong"}, {"Authorization": "Bearer tml-wrong"}):
            r = httpx.post(f"{lt.base_url}/api/v1/create_session", json={}, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
            assert secret not in r.text and "tml-wrong" not in r.text
        # Either credential header works on both planes (the Fireworks SDK sends X-Api-Key).
        for good in ({"X-API-Key": secret}, {"Authorization": f"Bearer {secret}"}):
            ok = httpx.post(f"{lt.base_url}/api/v1/create_session", json={}, headers=good)
            assert ok.status_code == 200
            jobs = f"{lt.control_plane_url}/v1/accounts/{lt.account_id}/rlorTrainerJobs"
            assert httpx.get(jobs, headers=good).status_code == 200
        assert httpx.get(jobs, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(jobs, headers={"X-API-Key": "nope"}).status_code == 401
        assert secret not in repr(lt)


def test_stats_count_requests_steps_and_compute(trainer: LocalTrainer, api: Api) -> None:
    before = trainer.stats()
    model_id = api.model(api.session())
    api.fwd(model_id, 1)
    api.optim(model_id, 2)
    after = trainer.stats()
    assert after["requests"]["forward_backward"] == before["requests"].get("forward_backward",
                                                                           0) + 1
    assert after["requests"]["retrieve_future"] >= before["requests"].get("retrieve_future", 0) + 3
    assert after["optim_steps_applied"][model_id] == 1
    assert after["compute_seconds"] > before["compute_seconds"]
    served = httpx.get(f"{trainer.base_url}/_local/stats").json()
    assert served["optim_steps_applied"][model_id] == 1
    assert set(served) == {"requests", "faults_injected", "optim_steps_applied",
                           "compute_seconds", "live"}
    assert served["requests"].get("_local/stats") is None


def test_latency_delays_every_reply(local_trainer: LocalTrainer) -> None:
    with LocalTrainer(latency_s=0.15) as slow, httpx.Client(timeout=10) as http:
        for url in (slow.base_url, local_trainer.base_url):
            http.get(f"{url}/api/v1/healthz")
        start = time.monotonic()
        http.get(f"{slow.base_url}/api/v1/healthz")
        slow_s = time.monotonic() - start
        start = time.monotonic()
        http.get(f"{local_trainer.base_url}/api/v1/healthz")
        fast_s = time.monotonic() - start
    assert slow_s >= 0.15 > fast_s


def test_cli_serve_runs_until_interrupted(tmp_path: Path) -> None:
    # PYTHONPATH kept: it carries the suite's no-torch stand-in (tests/conftest.py), ~1.4 s of
    # CPU a process.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((root, os.environ["PYTHONPATH"])),
           "LOCAL_KEY": "tml-cli-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "firetitan_async", "serve", "--port", "0", "--seed", "1",
         "--checkpoint-dir", str(tmp_path), "--api-key-env", "LOCAL_KEY",
         "--log-level", "debug"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("local trainer serving http://127.0.0.1:"), first
        url = first.split()[-1]
        r = httpx.get(f"{url}/api/v1/healthz", headers={"X-API-Key": "tml-cli-key"})
        assert r.status_code == 200
        assert httpx.get(f"{url}/api/v1/healthz").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "GET /api/v1/healthz -> 200" in err and "tml-cli-key" not in err


def test_delta_before_base_fails_its_future_in_seq_order(api: Api) -> None:
    model_id = api.model(api.session())
    # The delta (seq 2) arrives before the base (seq 1): it still runs after it, and succeeds.
    delta = api.ok("save_weights_for_sampler", {"model_id": model_id, "seq_id": 2, "path": "d",
                                                "checkpoint_type": "delta"})
    base = api.ok("save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "b",
                                               "checkpoint_type": "base"})
    assert api.result(base["request_id"])["path"].endswith("/sampler_weights/b")
    assert api.result(delta["request_id"])["path"].endswith("/sampler_weights/d")
    # On a model with no base at all, the delta's future fails as a user error.
    other = api.model(api.session())
    lone = api.ok("save_weights_for_sampler", {"model_id": other, "seq_id": 1, "path": "d",
                                               "checkpoint_type": "delta"})
    failed = api.result(lone["request_id"])
    assert failed["category"] == "user" and "needs a previous base" in failed["error"]
