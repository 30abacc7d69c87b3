"""Wire fidelity (issue 8): for the same operations, we send what the tinker SDK sends.

One script of operations runs twice — through the unmodified tinker SDK (pinned below) and
through ``firetitan_async`` — each against its own ``LocalTrainer`` (same seed) behind a
``Recorder``. The recordings are cut into the script's steps, normalised (session and request
ids, timing headers, the number of long-poll rounds, the order of requests inside a step) and
compared step by step, operation by operation: method, path, query, meaningful header values,
the set of header names, the full decoded body (JSON, or protobuf decoded field by field) and
the reply status.

Every difference we mean to have is in ``DELIBERATE`` below, with its reason. An entry that no
longer matches anything fails the test as well, so upgrading the SDK shows what it added, what
it changed and what it dropped.
"""

from __future__ import annotations

import base64
import json
import socket
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import attrs
import httpx
import numpy as np
import pytest
import tinker
import torch
import zstandard
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from firetitan_async import Pending, RetryPolicy, ServiceSession, TorchLoss
from firetitan_async._clients._snapshots import session_suffix
from firetitan_async.local import LocalTrainer
from firetitan_async.local._recorder import RecordedExchange, Recorder

PINNED_SDK = "0.38.0"
"""The tinker SDK whose wire this test holds us to. To move to a newer SDK: install it, set
this, run this file and read the diff — each difference is either a fix for our client or a
new entry in DELIBERATE."""

BASE_MODEL = "local/tiny-byte-lm"
API_KEY = "tml-local"
SEED = 1234

Side = Literal["sdk", "ours"]
Op = dict[str, Any]  # one normalised operation: {"request": {...}, "polls": [{...}, ...]}


# -- the script's inputs ---------------------------------------------------------------------


def _ce_datum(text: str, *, weights: bool = True, as_numpy: bool = False) -> types.Datum:
    tokens = list(text.encode())
    inputs: dict[str, Any] = {"target_tokens": tokens[1:]}
    if weights:
        inputs["weights"] = [1.0 if i % 3 else 0.5 for i in range(len(tokens) - 1)]
    if as_numpy:
        inputs = {
            k: np.asarray(v, np.int64 if k == "target_tokens" else np.float32)
            for k, v in inputs.items()
        }
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


def _rl_datum(text: str, advantage: float) -> types.Datum:
    tokens = list(text.encode())
    n = len(tokens) - 1
    inputs: dict[str, Any] = {  # Datum converts arrays and lists, as users rely on
        "target_tokens": types.TensorData(data=tokens[1:], dtype="int64", shape=[n]),
        "logprobs": np.linspace(-3.0, -0.5, n, dtype=np.float32),
        "advantages": [advantage] * n,
    }
    return types.Datum(model_input=types.ModelInput.from_ints(tokens[:-1]), loss_fn_inputs=inputs)


CE_BATCH = [
    _ce_datum("hello, world"),
    _ce_datum("the quick brown fox", as_numpy=True),
    _ce_datum("ab"),
]
RL_BATCH = [_rl_datum("reward me", 1.0), _rl_datum("punish me!", -0.5)]
CUSTOM_BATCH = [_ce_datum("custom loss", weights=False), _ce_datum("xyz", weights=False)]
METADATA = {"stage": "sft", "run": "a"}
ADAM = types.AdamParams(learning_rate=1e-3, weight_decay=0.01, grad_clip_norm=1.0)
PROMPT = types.ModelInput.from_ints(list(b"Once upon"))
SAMPLING = types.SamplingParams(
    max_tokens=6, temperature=0.7, top_k=50, top_p=0.9, seed=7, stop=["\n"]
)
LOSS_CONFIGS: dict[types.LossFnType, dict[str, float] | None] = {
    "importance_sampling": None,
    "ppo": {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3},
    "cispo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "dro": {"beta": 0.1},
}


def pg_loss(logprobs: Any, advantages: Any) -> tuple[Any, dict[str, Any]]:
    """A per-datum torch loss for ``create_custom_loss`` (nonlinear: its gradient is computed
    by autograd on both sides, from the same float32 logprobs)."""
    loss = -(logprobs.exp() * advantages).mean()
    return loss, {"custom/pg:mean": loss, "custom/adv:sum": advantages.sum()}


PG_RANKS: dict[str, Literal[0, 1, 2]] = {"logprobs": 1, "advantages": 1}
def _pg_datum(text: bytes, advantage: float) -> types.Datum:
    n = len(text) - 1
    inputs: dict[str, Any] = {"target_tokens": list(text[1:]), "advantages": [advantage] * n}
    return types.Datum(
        model_input=types.ModelInput.from_ints(list(text[:-1])), loss_fn_inputs=inputs
    )


PG_BATCH = [_pg_datum(b"policy gradient!", 0.5), _pg_datum(b"handle.", -1.0)]


def chunked_batch(chunk_len: int) -> list[types.Datum]:
    """At least three chunks at ``fwdbwd_max_chunk_len``; lengths vary, for the byte limit."""
    return [_ce_datum(f"d{i:04d}" + "x" * (i % 7)) for i in range(2 * chunk_len + 1)]


def half_logprob_loss(
    data: list[types.Datum], logprobs: list[np.ndarray]
) -> tuple[float, list[np.ndarray]]:
    """A custom loss with an exact gradient (-0.5 everywhere), so the SDK's torch loss and
    this numpy one produce bit-identical weights whatever the float precision."""
    return -0.5 * float(sum(lp.sum() for lp in logprobs)), [
        np.full(lp.shape, -0.5) for lp in logprobs
    ]


def half_logprob_loss_torch(
    data: list[types.Datum], logprobs: list[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float]]:
    """The same loss in torch, as the tinker SDK's ``forward_backward_custom`` takes it."""
    loss = -0.5 * sum(lp.sum() for lp in logprobs)
    return loss, {"half": float(loss.item())}


# -- the script, as the tinker SDK runs it ---------------------------------------------------


class SdkScript:
    """The script through the unmodified tinker SDK (sync API, as its users write it)."""

    def __init__(self, base_url: str, chunk_len: int) -> None:
        self.base_url = base_url
        self.chunk_len = chunk_len

    def bootstrap(self) -> None:
        self.service = tinker.ServiceClient(base_url=self.base_url, api_key=API_KEY)
        self.service.holder  # noqa: B018 — the first use bootstraps the session

    def create_lora_client(self) -> None:
        self.lora = self.service.create_lora_training_client(BASE_MODEL, rank=8).result()

    def create_full_client(self) -> None:
        # tinker 0.38 has no plain create_training_client; rank 0 is how it says "full".
        self.full = self.service.create_lora_training_client(BASE_MODEL, rank=0).result()

    def forward(self) -> None:
        self.lora.forward(CE_BATCH, "cross_entropy").result()

    def fwdbwd_cross_entropy(self) -> None:
        self.lora.forward_backward(CE_BATCH, "cross_entropy").result()

    def fwdbwd_rl_losses(self) -> None:
        for loss_fn, config in LOSS_CONFIGS.items():
            self.lora.forward_backward(RL_BATCH, loss_fn, config).result()

    def fwdbwd_chunked(self) -> None:
        self.lora.forward_backward(chunked_batch(self.chunk_len), "cross_entropy").result()

    def optim_step(self) -> None:
        self.lora.optim_step(ADAM).result()

    def pipelined_full_step(self) -> None:
        fb = self.full.forward_backward(CE_BATCH, "cross_entropy")
        step = self.full.optim_step(ADAM)
        fb.result()
        step.result()

    def custom_loss(self) -> None:
        self.lora.forward_backward_custom(CUSTOM_BATCH, half_logprob_loss_torch).result()

    def custom_loss_torch(self) -> None:
        self.lora.forward_backward_custom(CUSTOM_BATCH, half_logprob_loss_torch).result()

    def custom_loss_handle(self) -> None:
        handle = self.service.create_custom_loss(pg_loss, PG_RANKS).result()
        self.lora.forward_backward_custom(PG_BATCH, handle).result()

    def save_state(self) -> None:
        self.state_path = self.lora.save_state("ckpt-a", ttl_seconds=3600).result().path

    def load_state(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in 0.38, still works
            self.lora.load_state(self.state_path).result()

    def load_state_with_optimizer(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.lora.load_state_with_optimizer(self.state_path).result()

    def save_state_with_metadata(self) -> None:
        self.meta_path = (
            self.lora.save_state("ckpt-m", ttl_seconds=7200, user_metadata=METADATA).result().path
        )

    def create_from_state(self) -> None:
        self.service.create_training_client_from_state(self.state_path).result()

    def create_from_state_with_optimizer(self) -> None:
        resumed = self.service.create_training_client_from_state_with_optimizer(
            self.meta_path, user_metadata=METADATA
        ).result()
        resumed.forward(CE_BATCH, "cross_entropy").result()  # its first operation is seq_id 1

    def save_weights_for_sampler(self) -> None:
        self.sampler_path = self.lora.save_weights_for_sampler("sampler-a").result().path

    def save_snapshot(self) -> None:
        # The Fireworks SDK's save_weights_for_sampler_ext wraps this same call.
        self.lora.save_weights_for_sampler("snap-b").result()

    def create_sampling_client(self) -> None:
        self.sampler = self.service.create_sampling_client(model_path=self.sampler_path).result()

    def sample(self) -> None:
        self.sampler.sample(PROMPT, 2, SAMPLING).result()

    def compute_logprobs(self) -> None:
        self.sampler.compute_logprobs(PROMPT).result()

    def sample_topk(self) -> None:
        first = self.sampler.sample(
            PROMPT, 2, SAMPLING, topk_prompt_logprobs=3, topk_sample_logprobs=2
        )
        self.sampler.sample(
            PROMPT, 1, SAMPLING, include_prompt_logprobs=True, topk_prompt_logprobs=4
        ).result()
        first.result()

    def ephemeral_sampler(self) -> None:
        sampler = self.lora.save_weights_and_get_sampling_client().result()
        sampler.sample(PROMPT, 1, SAMPLING).result()

    def save_weights_external(self) -> None:
        saved = self.lora.save_weights_external("export-a", ttl_seconds=7200).result()
        self.export_path = saved.path

    def get_external_weights_urls(self) -> None:
        self._rest().get_external_weights_urls(self.export_path).result()

    def _rest(self) -> tinker.RestClient:
        return tinker.RestClient(base_url=self.base_url, api_key=API_KEY)

    def list_checkpoints(self) -> None:
        self._rest().list_checkpoints(self.lora.model_id).result()

    def set_checkpoint_ttl(self) -> None:
        rest = self._rest()
        rest.set_checkpoint_ttl_from_tinker_path(self.meta_path, 86400).result()
        rest.set_checkpoint_ttl_from_tinker_path(self.meta_path, None).result()

    def list_user_checkpoints(self) -> None:
        self._rest().list_user_checkpoints(limit=50, offset=1).result()

    def delete_checkpoint(self) -> None:
        self._rest().delete_checkpoint_from_tinker_path(self.meta_path).result()

    def close(self) -> None:
        self.service.close("success").result()


# -- the script, as firetitan_async runs it ---------------------------------------------------


class OurScript:
    """The same script through firetitan_async (bootstrap and close are the ``async with``)."""

    def __init__(self, session: ServiceSession, chunk_len: int) -> None:
        self.session = session
        self.chunk_len = chunk_len

    async def create_lora_client(self) -> None:
        self.lora = await self.session.create_training_client(BASE_MODEL, lora_rank=8)

    async def create_full_client(self) -> None:
        self.full = await self.session.create_training_client(BASE_MODEL, lora_rank=0)

    async def forward(self) -> None:
        await self.lora.forward(CE_BATCH, "cross_entropy")

    async def fwdbwd_cross_entropy(self) -> None:
        await self.lora.forward_backward(CE_BATCH, "cross_entropy")

    async def fwdbwd_rl_losses(self) -> None:
        for loss_fn, config in LOSS_CONFIGS.items():
            await self.lora.forward_backward(RL_BATCH, loss_fn, config)

    async def fwdbwd_chunked(self) -> None:
        await self.lora.forward_backward(chunked_batch(self.chunk_len), "cross_entropy")

    async def optim_step(self) -> None:
        await self.lora.optim_step(ADAM)

    async def pipelined_full_step(self) -> None:
        fb = self.full.forward_backward(CE_BATCH, "cross_entropy")
        step = self.full.optim_step(ADAM)
        await fb
        await step

    async def custom_loss(self) -> None:  # the numpy form: the same requests
        await self.lora.forward_backward_custom(CUSTOM_BATCH, half_logprob_loss)

    async def custom_loss_torch(self) -> None:
        await self.lora.forward_backward_custom(CUSTOM_BATCH, TorchLoss(half_logprob_loss_torch))
    async def custom_loss_handle(self) -> None:
        handle = await self.session.create_custom_loss(pg_loss, PG_RANKS)
        await self.lora.forward_backward_custom(PG_BATCH, handle)

    async def save_state(self) -> None:
        self.state_path = (await self.lora.save_state("ckpt-a", ttl_seconds=3600)).path

    async def load_state(self) -> None:
        await self.lora.load_state(self.state_path)

    async def load_state_with_optimizer(self) -> None:
        await self.lora.load_state_with_optimizer(self.state_path)

    async def save_state_with_metadata(self) -> None:
        saved = await self.lora.save_state("ckpt-m", ttl_seconds=7200, user_metadata=METADATA)
        self.meta_path = saved.path

    async def create_from_state(self) -> None:
        await self.session.create_training_client_from_state(self.state_path)

    async def create_from_state_with_optimizer(self) -> None:
        resumed = await self.session.create_training_client_from_state_with_optimizer(
            self.meta_path, user_metadata=METADATA
        )
        await resumed.forward(CE_BATCH, "cross_entropy")

    async def save_weights_for_sampler(self) -> None:
        self.sampler_path = (await self.lora.save_weights_for_sampler("sampler-a")).path

    async def save_snapshot(self) -> None:
        await self.lora.save_weights_for_sampler_ext("snap-b", checkpoint_type="base")

    async def create_sampling_client(self) -> None:
        self.sampler = await self.session.create_sampling_client(model_path=self.sampler_path)

    async def sample(self) -> None:
        await self.sampler.sample(PROMPT, 2, SAMPLING)

    async def compute_logprobs(self) -> None:
        await self.sampler.compute_logprobs(PROMPT)

    async def sample_topk(self) -> None:
        first = self.sampler.sample(
            PROMPT, 2, SAMPLING, topk_prompt_logprobs=3, topk_sample_logprobs=2
        )
        await self.sampler.sample(
            PROMPT, 1, SAMPLING, include_prompt_logprobs=True, topk_prompt_logprobs=4
        )
        await first

    async def ephemeral_sampler(self) -> None:
        sampler = await self.lora.save_weights_and_get_sampling_client()
        await sampler.sample(PROMPT, 1, SAMPLING)

    async def list_checkpoints(self) -> None:
        await self.lora.list_checkpoints()

    async def save_weights_external(self) -> None:
        saved = await self.lora.save_weights_external("export-a", ttl_seconds=7200)
        self.export_path = saved.path

    async def get_external_weights_urls(self) -> None:
        await self.session.get_external_weights_urls(self.export_path)

    async def set_checkpoint_ttl(self) -> None:
        await self.session.set_checkpoint_ttl_from_tinker_path(self.meta_path, 86400)
        await self.session.set_checkpoint_ttl_from_tinker_path(self.meta_path, None)

    async def list_user_checkpoints(self) -> None:
        await self.session.list_user_checkpoints(limit=50, offset=1)

    async def delete_checkpoint(self) -> None:
        await self.session.delete_checkpoint_from_tinker_path(self.meta_path)


STEPS = [
    "create_lora_client",
    "create_full_client",
    "forward",
    "fwdbwd_cross_entropy",
    "fwdbwd_rl_losses",
    "fwdbwd_chunked",
    "optim_step",
    "pipelined_full_step",
    "custom_loss",
    "custom_loss_torch",
    "custom_loss_handle",
    "save_state",
    "load_state",
    "load_state_with_optimizer",
    "save_state_with_metadata",
    "create_from_state",
    "create_from_state_with_optimizer",
    "save_weights_for_sampler",
    "save_snapshot",
    "create_sampling_client",
    "sample",
    "compute_logprobs",
    "sample_topk",
    "ephemeral_sampler",
    "save_weights_external",
    "list_checkpoints",
    "get_external_weights_urls",
    "set_checkpoint_ttl",
    "list_user_checkpoints",
    "delete_checkpoint",
]
"""The script, between "bootstrap" (first) and "close" (last)."""


@attrs.frozen
class Variant:
    """The script (or part of it) under one server configuration."""

    steps: tuple[str, ...]
    client_config: Mapping[str, Any]  # merged into client/config replies by the Recorder


VARIANTS = {
    "server-defaults": Variant(tuple(STEPS), {}),
    # zstd bodies, and chunk boundaries from both the datum count and the estimated bytes
    "zstd-small-chunks": Variant(
        ("create_lora_client", "forward", "fwdbwd_chunked", "custom_loss", "custom_loss_torch"),
        {
            "proto_compress_fwdbwd": True,
            "fwdbwd_max_chunk_len": 8,
            "fwdbwd_max_chunk_bytes_count": 700,
        },
    ),
}

Recording = dict[str, tuple[RecordedExchange, ...]]  # step -> its exchanges


def run_sdk(trainer_url: str, variant: Variant, chunk_len: int) -> Recording:
    steps: Recording = {}
    with Recorder(trainer_url, client_config=variant.client_config) as rec:
        script = SdkScript(rec.base_url, chunk_len)
        for name in ["bootstrap", *variant.steps, "close"]:
            getattr(script, name)()
            steps[name] = rec.take()
    return steps


async def run_ours(trainer_url: str, variant: Variant, chunk_len: int) -> Recording:
    steps: Recording = {}
    async with Recorder(trainer_url, client_config=variant.client_config) as rec:
        async with ServiceSession(rec.base_url, api_key=API_KEY) as session:
            steps["bootstrap"] = rec.take()
            script = OurScript(session, chunk_len)
            for name in variant.steps:
                await getattr(script, name)()
                steps[name] = rec.take()
        steps["close"] = rec.take()
    return steps


# -- normalisation ----------------------------------------------------------------------------

TIMER_DRIVEN = frozenset({"session_heartbeat"})
"""Sent on a timer, so how many land in a step depends on timing: dropped on both sides."""

_SUBMISSION_REPLY_KEY = "request_id"


def normalise(recording: Recording) -> dict[str, list[Op]]:
    """Ids become placeholders, polls attach to their submission, a step's ops are sorted."""
    session_id = _session_id(recording["bootstrap"])
    ids = {session_id: "<session>", session_suffix(session_id): "<session-suffix>"}
    steps: dict[str, list[Op]] = {}
    for step, exchanges in recording.items():
        ops: list[Op] = []
        by_request: dict[str, Op] = {}
        for ex in exchanges:
            assert 200 <= ex.status < 300, f"{step}: {ex.describe()}: {ex.reply}"
            if ex.endpoint in TIMER_DRIVEN:
                continue
            if ex.endpoint == "retrieve_future" and isinstance(ex.body, dict):
                request_id = str(ex.body.get("request_id"))
                op = by_request.get(request_id)
                assert op is not None, f"{step}: a poll for a request not submitted in this step"
                op["polls"].append(_exchange(ex, {**ids, request_id: "<this-request>"}))
                continue
            op = {"request": _exchange(ex, ids)}
            if isinstance(ex.reply, dict) and isinstance(ex.reply.get(_SUBMISSION_REPLY_KEY), str):
                op["polls"] = []
                by_request[ex.reply[_SUBMISSION_REPLY_KEY]] = op
            ops.append(op)
        for op in ops:
            if "polls" in op:
                op["polls"] = _collapse_polls(op["polls"])
        steps[step] = sorted(ops, key=_op_sort_key)
    return steps


def _session_id(bootstrap: Sequence[RecordedExchange]) -> str:
    for ex in bootstrap:
        if ex.endpoint == "create_session":
            return str(ex.reply["session_id"])
    raise AssertionError("no create_session in the bootstrap step")


def _exchange(ex: RecordedExchange, ids: Mapping[str, str]) -> dict[str, Any]:
    headers = dict(ex.headers)
    if "x-tinker-create-promise-roundtrip-time" in headers:
        headers["x-tinker-create-promise-roundtrip-time"] = "<seconds>"
    out: dict[str, Any] = {
        "call": f"{ex.method} {_replace_ids(ex.path, ids)}",
        "headers": headers,
        "header_names": sorted(ex.header_names),
        "body": _readable(_replace_ids(ex.body, ids)),
        "status": ex.status,
    }
    if ex.query:
        out["query"] = [list(pair) for pair in _replace_ids(ex.query, ids)]
    return out


def _replace_ids(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for real, placeholder in ids.items():
            value = value.replace(real, placeholder)
        return value
    if isinstance(value, list | tuple):
        return [_replace_ids(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _replace_ids(v, ids) for k, v in value.items()}
    return value


_DTYPES: dict[str, np.dtype[Any]] = {
    "DTYPE_FLOAT32": np.dtype(np.float32),
    "DTYPE_INT64": np.dtype(np.int64),
    "DTYPE_INT32": np.dtype(np.int32),
}


def _readable(value: Any) -> Any:
    """Protobuf bytes of tokens and dense tensors shown as numbers (exactly), for diffs."""
    if isinstance(value, list):
        return [_readable(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _readable(v) for k, v in value.items()}
    if set(out) == {"tokens"} and isinstance(out["tokens"], str):  # EncodedTextChunk
        out["tokens"] = _b64_array(out["tokens"], _DTYPES["DTYPE_INT32"])
    if "dense" in out and isinstance(out["dense"], str):  # Tensor
        dtype = _DTYPES.get(str(out.get("dtype", "")))
        if dtype is not None:
            out["dense"] = _b64_array(out["dense"], dtype)
    return out


def _b64_array(text: str, dtype: np.dtype[Any]) -> list[Any]:
    values = np.frombuffer(base64.b64decode(text), dtype=dtype).tolist()
    if dtype.kind == "f":  # repr keeps -0.0 apart from 0.0, and float32 -> float64 is exact
        return [repr(v) for v in values]
    return list(values)


def _collapse_polls(polls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How many long-poll rounds an op takes is timing; what each round sends is not. Check the
    rounds are numbered 0, 1, 2, … and keep each distinct round once, in order."""
    numbers = [p["headers"].get("x-tinker-request-iteration") for p in polls]
    assert numbers == [str(i) for i in range(len(polls))], numbers
    out: list[dict[str, Any]] = []
    for poll in polls:
        poll = {**poll, "headers": {**poll["headers"], "x-tinker-request-iteration": "<n>"}}
        if poll["headers"].get("x-tinker-create-promise-roundtrip-time") and out:
            raise AssertionError("x-tinker-create-promise-roundtrip-time after round 0")
        if not out or poll != out[-1]:
            out.append(poll)
    return out


def _op_sort_key(op: Op) -> tuple[str, str, int, str]:
    request = op["request"]
    body = request["body"] if isinstance(request["body"], dict) else {}
    owner = str(body.get("model_id") or body.get("sampling_session_id") or "")
    seq = body.get("seq_id", 0)
    return request["call"], owner, int(seq) if isinstance(seq, int) else 0, json.dumps(op)


# -- the deliberate differences ----------------------------------------------------------------


@attrs.frozen
class Deliberate:
    """One way our wire differs from the SDK's on purpose.

    ``rewrite`` turns an op of ``side`` into what the other side sends (``None`` drops it);
    it returns the op unchanged where it does not apply. ``steps`` limits it to some steps.
    """

    what: str
    why: str
    side: Side
    rewrite: Callable[[Op], Op | None]
    steps: frozenset[str] | None = None


def _drop_if(endpoint: str) -> Callable[[Op], Op | None]:
    def rewrite(op: Op) -> Op | None:
        return None if op["request"]["call"].endswith(f"/api/v1/{endpoint}") else op

    return rewrite


def _drop_call_prefix(prefix: str) -> Callable[[Op], Op | None]:
    def rewrite(op: Op) -> Op | None:
        return None if op["request"]["call"].startswith(prefix) else op

    return rewrite


def _each_exchange(fn: Callable[[dict[str, Any], bool], dict[str, Any]]) -> Callable[[Op], Op]:
    """Apply ``fn(exchange, is_poll)`` to an op's request and each of its polls."""

    def rewrite(op: Op) -> Op:
        out = {**op, "request": fn(op["request"], False)}
        if "polls" in op:
            out["polls"] = [fn(p, True) for p in op["polls"]]
        return out

    return rewrite


def _without_headers(
    names: Callable[[str], bool], *, polls_only: bool = False
) -> Callable[[Op], Op]:
    def fn(ex: dict[str, Any], is_poll: bool) -> dict[str, Any]:
        if polls_only and not is_poll:
            return ex
        return {
            **ex,
            "headers": {k: v for k, v in ex["headers"].items() if not names(k)},
            "header_names": [n for n in ex["header_names"] if not names(n)],
        }

    return _each_exchange(fn)


def _is_sdk_identification(name: str) -> bool:
    return name.startswith(("x-stainless-", "x-sdk-"))


def _snapshot_as_plain_save(op: Op) -> Op:
    body = op["request"]["body"]
    if not (isinstance(body, dict) and "checkpoint_type" in body):
        return op
    body = {k: v for k, v in body.items() if k != "checkpoint_type"}
    body["path"] = str(body["path"]).removesuffix("-<session-suffix>")
    return {**op, "request": {**op["request"], "body": body}}


DELIBERATE: list[Deliberate] = [
    Deliberate(
        what="x-stainless-* and x-sdk-* headers",
        why="the SDK's generated-client metadata (package version, OS, runtime, retry count, read "
        "timeout) and per-method attribution; servers do not need them to act, and we identify "
        "ourselves by User-Agent (firetitan-async/<version>) instead",
        side="sdk",
        rewrite=_without_headers(_is_sdk_identification),
    ),
    Deliberate(
        what="POST client/dynamic_config at bootstrap",
        why="it only carries the refresh interval and the sample-cancel flags; we never cancel "
        "samples server-side (a cancelled wait leaves the operation running), so we skip it",
        side="sdk",
        rewrite=_drop_if("client/dynamic_config"),
        steps=frozenset({"bootstrap"}),
    ),
    Deliberate(
        what="X-Idempotency-Key on retrieve_future polls",
        why="a poll reads a result and changes nothing, so repeating it is harmless; the SDK only "
        "sends one because its generated client puts a key on every non-GET. Submissions carry "
        "one on both sides; ours keeps it across all retries (the SDK makes a new one per outer "
        "retry): see test_our_retries_keep_one_idempotency_key_per_submission",
        side="sdk",
        rewrite=_without_headers(lambda n: n == "x-idempotency-key", polls_only=True),
    ),
    Deliberate(
        what="X-Tinker-Create-Promise-Roundtrip-Time on the first poll",
        why="the SDK's client-side latency telemetry (time from building the request to getting "
        "the future) for the server's dashboards; it changes nothing the server does, and we "
        "send no telemetry",
        side="sdk",
        rewrite=_without_headers(lambda n: n == "x-tinker-create-promise-roundtrip-time"),
    ),
    Deliberate(
        what="GET samplers/{id} after create_sampling_session(model_path=...)",
        why="the SDK looks up the sampler's base model to serve SamplingClient.get_tokenizer(); we "
        "have no tokenizer (no transformers dependency) and already know the model path",
        side="sdk",
        rewrite=_drop_call_prefix("GET /api/v1/samplers/"),
        steps=frozenset({"create_sampling_client"}),
    ),
    Deliberate(
        what="client/config and client/dynamic_config when listing checkpoints",
        why="the SDK lists through a separate session-less RestClient, which bootstraps again; we "
        "list through the session's own HTTP client and config",
        side="sdk",
        rewrite=_drop_call_prefix("POST /api/v1/client/"),
        steps=frozenset(
            {
                "list_checkpoints",
                "get_external_weights_urls",
                "set_checkpoint_ttl",
                "list_user_checkpoints",
                "delete_checkpoint",
            }
        ),
    ),
    Deliberate(
        what="Content-Type: application/json on a DELETE without a body",
        why="the SDK's generated client labels every request as JSON, even a DELETE that carries "
        "no body; there is nothing to label, so we send no Content-Type (the server reads none)",
        side="sdk",
        rewrite=lambda op: (
            _without_headers(lambda n: n == "content-type")(op)
            if op["request"]["call"].startswith("DELETE ")
            else op
        ),
        steps=frozenset({"delete_checkpoint"}),
    ),
    Deliberate(
        what="save_weights_for_sampler_ext: checkpoint_type field, session-qualified name",
        why="the Fireworks extension: checkpoint_type 'base'|'delta' selects a full or XOR-delta "
        "snapshot, and the name gets a session-scoped suffix so runs never overwrite each "
        "other's snapshots (as FiretitanTrainingClient does); otherwise the body is the SDK's",
        side="ours",
        rewrite=_snapshot_as_plain_save,
        steps=frozenset({"save_snapshot"}),
    ),
]
"""Every deliberate difference, in one place. Two more are normalisations rather than rewrites:
the order of requests inside a step (we pipeline submissions and send chunks concurrently; the
SDK waits for each submission before sending the next; the server orders by seq_id, so ops are
compared sorted by (endpoint, model, seq_id)), and idempotency-key values (random on both sides:
only their presence is compared)."""


def apply_deliberate(side: Side, steps: dict[str, list[Op]], used: set[int]) -> dict[str, list[Op]]:
    out: dict[str, list[Op]] = {}
    for step, ops in steps.items():
        kept: list[Op] = []
        for op in ops:
            current: Op | None = op
            for index, entry in enumerate(DELIBERATE):
                if current is None or entry.side != side:
                    continue
                if entry.steps is not None and step not in entry.steps:
                    continue
                rewritten = entry.rewrite(current)
                if rewritten != current:
                    used.add(index)
                current = rewritten
            if current is not None:
                kept.append(current)
        out[step] = sorted(kept, key=_op_sort_key)
    return out


# -- comparison ------------------------------------------------------------------------------


def compare(sdk: Recording, ours: Recording) -> None:
    """Assert the two recordings agree step by step, up to DELIBERATE; explain each difference.

    A difference is shown once as ``where in the op: SDK value | our value``, followed by every
    (step, request) in which it occurs.
    """
    assert list(sdk) == list(ours), "both runs must record the same steps"
    used: set[int] = set()
    sdk_steps = apply_deliberate("sdk", normalise(sdk), used)
    our_steps = apply_deliberate("ours", normalise(ours), used)
    where: dict[str, list[str]] = {}
    for step in sdk_steps:
        for place, line in _differences(step, sdk_steps[step], our_steps[step]):
            where.setdefault(line, []).append(place)
    problems = [
        f"{line}\n    in {len(places)}: {'; '.join(places[:5])}{' …' if len(places) > 5 else ''}"
        for line, places in where.items()
    ]
    stale = [
        entry.what
        for i, entry in enumerate(DELIBERATE)
        if i not in used and (entry.steps is None or entry.steps & set(sdk))
    ]
    if stale:
        problems.append(
            "DELIBERATE entries that no longer match anything (the SDK changed? remove or "
            "update them):\n    " + "\n    ".join(stale)
        )
    if problems:
        raise AssertionError("our wire differs from the tinker SDK's:\n" + "\n".join(problems))


def _differences(step: str, sdk_ops: list[Op], our_ops: list[Op]) -> Iterator[tuple[str, str]]:
    sdk_calls = [op["request"]["call"] for op in sdk_ops]
    our_calls = [op["request"]["call"] for op in our_ops]
    if sdk_calls != our_calls:
        yield step, f"requests: SDK {sdk_calls} | ours {our_calls}"
        return
    for sdk_op, our_op in zip(sdk_ops, our_ops, strict=True):
        for line in _paths(sdk_op, our_op, ""):
            yield f"{step}: {sdk_op['request']['call']}", line


def _paths(sdk_value: Any, our_value: Any, path: str) -> Iterator[str]:
    """Where two JSON-like values differ, as ``path: SDK … | ours …`` lines."""
    if isinstance(sdk_value, dict) and isinstance(our_value, dict):
        for key in sorted(set(sdk_value) | set(our_value)):
            sub = f"{path}.{key}" if path else str(key)
            if key not in our_value:
                yield f"{sub}: SDK {_short(sdk_value[key])} | ours (absent)"
            elif key not in sdk_value:
                yield f"{sub}: SDK (absent) | ours {_short(our_value[key])}"
            else:
                yield from _paths(sdk_value[key], our_value[key], sub)
    elif isinstance(sdk_value, list) and isinstance(our_value, list):
        if len(sdk_value) == len(our_value):
            for index, (a, b) in enumerate(zip(sdk_value, our_value, strict=True)):
                yield from _paths(a, b, f"{path}[{index}]")
        elif all(isinstance(v, str) for v in [*sdk_value, *our_value]):
            only_sdk = sorted(set(sdk_value) - set(our_value))
            only_ours = sorted(set(our_value) - set(sdk_value))
            yield f"{path}: only SDK {only_sdk} | only ours {only_ours}"
        else:
            yield f"{path}: SDK {_short(sdk_value)} | ours {_short(our_value)}"
    elif sdk_value != our_value or type(sdk_value) is not type(our_value):
        yield f"{path}: SDK {_short(sdk_value)} | ours {_short(our_value)}"


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- fixtures and tests ------------------------------------------------------------------------


def _chunk_len(trainer_url: str, variant: Variant) -> int:
    reply = httpx.post(
        f"{trainer_url}/api/v1/client/config",
        json={"sdk_version": PINNED_SDK},
        headers={"X-API-Key": API_KEY},
    )
    reply.raise_for_status()
    config = {**reply.json(), **variant.client_config}
    return int(config.get("fwdbwd_max_chunk_len") or 1024)


SdkRecordings = dict[str, tuple[Recording, int]]  # variant -> (recording, chunk length)


@pytest.fixture(scope="module")
def sdk_recordings() -> Iterator[SdkRecordings]:
    """Each variant through the tinker SDK, once per module (it is sync and backend-free)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TINKER_TELEMETRY", "0")
        for name in ("TINKER_BASE_URL", "TINKER_API_KEY", "TINKER_PROJECT_ID", "TINKER_TAGS"):
            mp.delenv(name, raising=False)
        recordings: SdkRecordings = {}
        for name, variant in VARIANTS.items():
            trainer = LocalTrainer(seed=SEED)
            trainer.start()
            try:
                chunk_len = _chunk_len(trainer.base_url, variant)
                recordings[name] = run_sdk(trainer.base_url, variant, chunk_len), chunk_len
            finally:
                trainer.stop()
        yield recordings


@pytest.fixture
def sdk_recording(sdk_recordings: SdkRecordings) -> Recording:
    return sdk_recordings["server-defaults"][0]


def test_the_pinned_sdk_is_installed() -> None:
    assert tinker.__version__ == PINNED_SDK, (
        f"tinker {tinker.__version__} is installed, but our wire was checked against "
        f"{PINNED_SDK}: set PINNED_SDK and run this file to see what changed"
    )


def test_deliberate_differences_have_reasons() -> None:
    for entry in DELIBERATE:
        assert entry.what and len(entry.why) > 40, entry
        assert entry.steps is None or entry.steps <= {"bootstrap", *STEPS, "close"}, entry


def test_scripts_cover_the_same_steps() -> None:
    for name in STEPS:
        assert callable(getattr(SdkScript, name)) and callable(getattr(OurScript, name)), name


def test_sdk_recordings_cover_the_script(sdk_recordings: SdkRecordings) -> None:
    recording, _ = sdk_recordings["server-defaults"]
    endpoints = {ex.endpoint for exchanges in recording.values() for ex in exchanges}
    assert {
        "client/config",
        "create_session",
        "create_model",
        "get_info",
        "forward_backward",
        "optim_step",
        "save_weights",
        "load_weights",
        "save_weights_for_sampler",
        "create_sampling_session",
        "asample",
        "retrieve_future",
    } <= endpoints
    # tinker 0.38's calls we match (issue 25): each step sent what it is about
    calls = {(ex.method, ex.path.rsplit("/", 1)[-1]) for ex in recording["set_checkpoint_ttl"]}
    assert ("PUT", "ttl") in calls and "checkpoints" in endpoints
    assert "DELETE" in {ex.method for ex in recording["delete_checkpoint"]}
    urls = [ex for ex in recording["get_external_weights_urls"] if ex.method == "GET"]
    assert [(ex.path.rsplit("/", 1)[-1], ex.status) for ex in urls] == [
        ("external_weights_urls", 200)
    ]
    creates = [
        ex.body
        for ex in recording["create_from_state_with_optimizer"]
        if ex.endpoint == "load_weights"
    ]
    assert [(b.get("model_id"), b["optimizer"], b["user_metadata"]) for b in creates] == [
        (None, True, METADATA)
    ]
    saves = [
        ex.body for ex in recording["save_state_with_metadata"] if ex.endpoint == "save_weights"
    ]
    assert [b["user_metadata"] for b in saves] == [METADATA]
    topk = [
        (ex.body["topk_prompt_logprobs"], ex.body["topk_sample_logprobs"])
        for ex in recording["sample_topk"]
        if ex.endpoint == "asample"
    ]
    assert sorted(topk) == [(3, 2), (4, 0)]
    # create_custom_loss: traced client-side (the local trainer does not run uploaded losses),
    # then a forward and the cross_entropy surrogate's forward_backward
    handle_calls = [ex.endpoint for ex in recording["custom_loss_handle"]]
    assert "create_custom_loss" not in handle_calls
    assert handle_calls.count("forward_backward") == 2
    losses = {
        ex.body["loss_fn"] for ex in recording["fwdbwd_rl_losses"] if ex.body_format == "protobuf"
    }
    assert losses == set(LOSS_CONFIGS)
    for name, (recording, chunk_len) in sdk_recordings.items():
        chunks = [ex for ex in recording["fwdbwd_chunked"] if ex.endpoint == "forward_backward"]
        assert len(chunks) >= 3, name
        encodings = {ex.headers.get("content-encoding") for ex in chunks}
        assert encodings == ({"zstd"} if name == "zstd-small-chunks" else {None}), name
        sizes = [len(ex.body["data"]) for ex in chunks]
        assert sum(sizes) == 2 * chunk_len + 1, name
        if name == "zstd-small-chunks":
            assert min(sizes) < max(sizes) <= chunk_len, "the byte limit splits some chunks"


@pytest.mark.anyio
@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_our_wire_matches_the_sdk(sdk_recordings: SdkRecordings, variant: str) -> None:
    sdk, chunk_len = sdk_recordings[variant]
    async with LocalTrainer(seed=SEED) as trainer:
        ours = await run_ours(trainer.base_url, VARIANTS[variant], chunk_len)
    compare(sdk, ours)


def test_comparison_finds_a_changed_field(sdk_recording: Recording) -> None:
    """The comparison can fail: one changed field is reported with its path and both values."""
    sdk = sdk_recording
    exchanges = list(sdk["optim_step"])
    index = next(i for i, ex in enumerate(exchanges) if ex.endpoint == "optim_step")
    body = dict(exchanges[index].body)
    body["adam_params"] = {**body["adam_params"], "beta2": 0.999}
    exchanges[index] = attrs.evolve(exchanges[index], body=body)
    tampered = {**sdk, "optim_step": tuple(exchanges)}
    before, after = normalise(sdk), normalise(tampered)
    assert list(_differences("forward", before["forward"], after["forward"])) == []
    lines = [
        line for _, line in _differences("optim_step", before["optim_step"], after["optim_step"])
    ]
    assert lines == ["request.body.adam_params.beta2: SDK 0.95 | ours 0.999"]
    with pytest.raises(AssertionError, match="beta2"):
        compare(sdk, tampered)


def test_comparison_finds_a_stale_deliberate_entry(sdk_recording: Recording) -> None:
    """If the SDK stopped sending something DELIBERATE accounts for, the entry shows as stale."""
    sdk = sdk_recording
    entry = next(i for i, e in enumerate(DELIBERATE) if "dynamic_config at" in e.what)
    used: set[int] = set()
    apply_deliberate("sdk", normalise(sdk), used)
    assert entry in used
    without = {
        step: tuple(ex for ex in exchanges if ex.endpoint != "client/dynamic_config")
        for step, exchanges in sdk.items()
    }
    used.clear()
    apply_deliberate("sdk", normalise(without), used)
    assert entry not in used


# -- the recorder itself ---------------------------------------------------------------------


def test_recorder_records_what_was_sent() -> None:
    chunk = pb.ForwardBackwardRequest(model_id="nope:train:0", seq_id=1, loss_fn="cross_entropy")
    chunk.data.add().model_input.add().encoded_text.tokens = np.array([1, 2], np.int32).tobytes()
    with (
        LocalTrainer(seed=SEED) as trainer,
        Recorder(trainer.base_url, client_config={"fwdbwd_max_chunk_len": 3}) as rec,
        httpx.Client(base_url=rec.base_url, headers={"X-API-Key": API_KEY}) as http,
    ):
        config = http.post("/api/v1/client/config", json={"sdk_version": "x", "k": API_KEY})
        rejected = http.post(
            "/api/v1/forward_backward",
            content=zstandard.ZstdCompressor().compress(chunk.SerializeToString()),
            headers={
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "zstd",
                "X-Idempotency-Key": "key-1",
            },
        )
        listed = http.get("/api/v1/training_runs/nope:train:0/checkpoints", params={"limit": 2})
    config_ex, chunk_ex, list_ex = rec.records
    assert config.json()["fwdbwd_max_chunk_len"] == 3 and config_ex.reply == config.json()
    assert config_ex.body == {"sdk_version": "x", "k": "<redacted>"}  # a key is never recorded
    assert config_ex.headers["x-api-key"] == "<present>" and API_KEY not in repr(rec.records)
    assert (chunk_ex.body_format, chunk_ex.headers["content-encoding"]) == ("protobuf", "zstd")
    assert chunk_ex.body == {
        "model_id": "nope:train:0",
        "seq_id": 1,
        "loss_fn": "cross_entropy",
        "data": [{"model_input": [{"encoded_text": {"tokens": "AQAAAAIAAAA="}}]}],
    }
    assert (
        chunk_ex.idempotency_key == "key-1" and chunk_ex.headers["x-idempotency-key"] == "<present>"
    )
    assert 400 <= rejected.status_code < 500 and chunk_ex.status == rejected.status_code
    assert chunk_ex.reply_format == "json" and "detail" in chunk_ex.reply
    assert (list_ex.method, list_ex.endpoint) == ("GET", "training_runs/nope:train:0/checkpoints")
    assert list_ex.query == (("limit", "2"),) and list_ex.status == listed.status_code
    assert [ex.index for ex in rec.records] == [0, 1, 2]


def test_recorder_answers_502_when_the_target_is_down() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Recorder(f"http://127.0.0.1:{port}") as rec:
        reply = httpx.get(f"{rec.base_url}/api/v1/healthz")
        assert rec.take()[0].status == reply.status_code == 502
        assert rec.records == ()


@pytest.mark.anyio
async def test_our_retries_keep_one_idempotency_key_per_submission() -> None:
    """What no fault-free run shows: under injected faults (5xx, 429, dropped connections, some
    after the server applied the request) every attempt of one submission carries the same
    X-Idempotency-Key, each submission has its own, and the server applies each op once. (The
    SDK makes a new key for each of its outer retries; see DELIBERATE.)"""
    fast = RetryPolicy(backoff_base_s=0.005, backoff_cap_s=0.05)
    async with (
        LocalTrainer(seed=SEED, fault_rate=0.3) as trainer,
        Recorder(trainer.base_url) as rec,
    ):
        async with ServiceSession(rec.base_url, api_key=API_KEY, retry=fast) as session:
            client = await session.create_training_client(BASE_MODEL, lora_rank=4)
            ops: list[Pending[Any]] = []
            for _ in range(6):
                ops += [client.forward_backward(CE_BATCH, "cross_entropy"), client.optim_step(ADAM)]
            for op in ops:
                await op
        applied = trainer.stats()["optim_steps_applied"][client.model_id]
    keys: dict[tuple[str, int], set[str | None]] = {}
    attempts: dict[tuple[str, int], int] = {}
    for ex in rec.records:
        if ex.endpoint in ("forward_backward", "optim_step") and isinstance(ex.body, dict):
            submission = (ex.endpoint, int(ex.body["seq_id"]))
            keys.setdefault(submission, set()).add(ex.idempotency_key)
            attempts[submission] = attempts.get(submission, 0) + 1
    assert len(keys) == 12 and applied == 6
    assert all(len(k) == 1 and None not in k for k in keys.values()), keys
    assert len({next(iter(k)) for k in keys.values()}) == 12
    assert max(attempts.values()) > 1, "no submission was retried: the check saw nothing"
