"""The Tinker data plane (``/api/v1/...``) of the local trainer, as Starlette routes.

Every operation that the tinker SDK treats as a future (``create_model``, ``forward_backward``,
``optim_step``, ``save_weights``, ``load_weights``, ``save_weights_for_sampler``, ``asample``)
is answered at once with ``{"request_id", "model_id"?}`` and completed later; training
operations run in ``seq_id`` order per model (``OrderedExecutor``). ``retrieve_future`` holds
the poll until the result exists or ``long_poll_s`` passes. Every 4xx carries
``{"detail": "<exactly what is wrong>"}``; a rejected training submission that names a valid
model and ``seq_id`` still consumes that ``seq_id`` and changes no state. A resend of a
training submission under the ``seq_id`` it already used (the tinker SDK's outer retry: same
body, new ``X-Idempotency-Key``) is the same request: it gets the original request id (or the
original 4xx) and runs once; a different request under a used ``seq_id`` is a 400.

Fireworks extensions (the Fireworks Training SDK 1.2.30 dialect, served alongside tinker's):
JSON ``forward_backward`` and ``POST forward`` (the Content-Type picks JSON or protobuf; a JSON
request's result is kept in both forms and ``retrieve_future`` answers in the one ``Accept``
prefers); ``create_model`` with ``lora_config.alpha``/``init_method``, ``base_only`` and the
capability fields (``CAPABILITIES``); ``optim_step`` with ``grad_accumulation_normalization``
and ``adam_params.emit_grad_norm_metrics``; ``save_weights_for_sampler`` with
``checkpoint_type`` ``base``/``delta``/``merged_base``, ``export_precision``, ``metadata`` and
``ttl_seconds``; ``GET list_checkpoints``; checkpoint references by logical name, run path or
``cross_job://`` (``_checkpoint_refs``); ``load_adapter``; ``unload_model``. ``GET checkpoints``
accepts ``job_id=``; checkpoints list ``snapshot_type`` and ``job_id`` as extra fields.

Local choices: sampling ``stop`` strings are their UTF-8 bytes (one token per byte) and ints
are one-token stop sequences; EOS (token 256) always ends a sample, also with ``stop=[]``.
``max_tokens`` defaults to 16. ``kind="inflight"`` sampler saves behave like ``"snapshot"``.
Top-k logprobs, ``target_prompt_logprobs`` and ``prompt_alt_tokens_k`` are refused (400).

Example::

    app = Starlette(routes=data_plane_routes())   # state at request.app.state.server
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

import attrs
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..wire import paths
from ._catalog import BYTE_MODEL, MAX_CONTEXT_LENGTH
from ._checkpoint_refs import resolve_checkpoint_ref
from ._checkpoint_store import (
    RunInfo,
    SnapshotType,
    check_name,
    parse_tinker_path,
    rfc3339,
)
from ._embeddings import EmbeddingConfig, embedding_config, run_embedding
from ._future_store import FutureReply, UnknownFuture
from ._http_errors import ApiError
from ._input_error import ModelInputError
from ._json_body import read_json_object
from ._json_codec import (
    decode_json_head,
    decode_json_input,
    encode_forward_backward_json,
    encode_outputs_json,
    model_input_tokens,
    prefers_json,
)
from ._model import LORA_ALPHA, NORMALIZATIONS, VOCAB_SIZE, TinyByteLM, vocab_of
from ._ordering import Operation, OrderedExecutor, SmallOperation
from ._proto_codec import (
    BadForwardBackwardData,
    ForwardBackwardSubmission,
    decode_forward_backward,
    encode_forward_backward_output,
    encode_sample_response,
)
from ._server_state import ServerState
from ._serverless_state import serverless_run_id
from ._sessions import SamplingSession, TrainingModel
from ._signed_urls import URL_LIFETIME_S
from ._submission_checks import check_adam, check_forward_backward

__all__ = ["JOB_SCOPE_KEY", "SERVERLESS_SCOPE_KEY", "data_plane_routes"]

JOB_SCOPE_KEY = "firetitan.job_id"
SERVERLESS_SCOPE_KEY = "firetitan.serverless"  # set by the FrontDoor on the serverless gateway
"""ASGI scope key holding the job id when a request came in under ``/jobs/{job_id}``."""

MAX_CONTEXT = MAX_CONTEXT_LENGTH
DEFAULT_MAX_TOKENS = 16
MAX_SAMPLES = 256
SMALL_TOKENS = 64
"""A forward/forward_backward of at most this many tokens runs on the event loop (it costs
less than a thread hand-off); optimizer steps of the tiny model always do."""

_T = TypeVar("_T")


# -- request helpers ----------------------------------------------------------------------------


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _serverless(request: Request) -> bool:
    return bool(request.scope.get(SERVERLESS_SCOPE_KEY))


def _job_id(request: Request) -> str | None:
    job_id = request.scope.get(JOB_SCOPE_KEY)
    return job_id if isinstance(job_id, str) else None


def _get(body: Mapping[str, Any], name: str, kind: type[_T] | tuple[type, ...], what: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and kind is not bool and bool not in _tuple(kind):
        raise ApiError(400, f"{name} must be {what}, got {value!r}")
    if not isinstance(value, kind):
        raise ApiError(400, f"{name} must be {what}, got {value!r}")
    return value


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _req_str(body: Mapping[str, Any], name: str) -> str:
    value = _get(body, name, str, "a string")
    if not value:
        raise ApiError(400, f"{name} is required")
    return str(value)


def _opt_int(body: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    value = _get(body, name, int, "an integer")
    if value is not None and minimum is not None and value < minimum:
        raise ApiError(400, f"{name} must be >= {minimum}, got {value}")
    return None if value is None else int(value)


def _req_int(body: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int:
    value = _opt_int(body, name, minimum=minimum)
    if value is None:
        raise ApiError(400, f"{name} is required")
    return value


def _bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = _get(body, name, bool, "true or false")
    return default if value is None else bool(value)


def _str_map(body: Mapping[str, Any], name: str) -> dict[str, str] | None:
    value = _get(body, name, dict, "an object")
    if value is None:
        return None
    return {str(k): str(v) for k, v in value.items()}


def _ttl(body: Mapping[str, Any]) -> int | None:
    return _opt_int(body, "ttl_seconds", minimum=1)


def _future(request_id: str, model_id: str | None = None, **extra: Any) -> JSONResponse:
    payload: dict[str, Any] = {"request_id": request_id}
    if model_id is not None:
        payload["model_id"] = model_id
    payload.update(extra)
    return JSONResponse(payload)


def _user_error(exc: ModelInputError) -> ApiError:
    return ApiError(400, str(exc))


# -- bootstrap and sessions ---------------------------------------------------------------------


async def client_config(request: Request) -> Response:
    await read_json_object(request)
    return JSONResponse(
        {
            "use_pyqwest_transport": False,
            "pjwt_auth_enabled": False,
            "credential_default_source": "api_key",
            "parallel_fwdbwd_chunks": True,
            "proto_compress_fwdbwd": False,
            "sample_use_retrieve_futures": False,
            "custom_loss_server_side": False,
            "sample_join_sampling_session": False,
        }
    )


async def dynamic_config(request: Request) -> Response:
    await read_json_object(request)
    return JSONResponse(
        {"refresh_interval_sec": 300, "sample_cancel_enabled": False,
         "sample_cancel_max_batch_size": 64}
    )


async def create_session(request: Request) -> Response:
    body = await read_json_object(request)
    metadata = _get(body, "user_metadata", dict, "an object") or {}
    _get(body, "tags", list, "a list of strings")
    session = _state(request).registry.new_session(
        job_id=_job_id(request), user_metadata=metadata, serverless=_serverless(request)
    )
    return JSONResponse({"type": "create_session", "session_id": session.session_id})


async def session_heartbeat(request: Request) -> Response:
    body = await read_json_object(request)
    session = _state(request).registry.session(_req_str(body, "session_id"))
    session.last_heartbeat_s = time.time()
    return JSONResponse({"type": "session_heartbeat"})


async def telemetry(request: Request) -> Response:
    # Telemetry may carry request headers (the SDK puts X-API-Key there): never log or keep it.
    await request.body()
    return JSONResponse({"status": "accepted"})


async def finish_session(request: Request) -> Response:
    await read_json_object(request)
    session = _state(request).registry.session(request.path_params["session_id"])
    session.finished = True
    return JSONResponse({})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def server_capabilities(request: Request) -> Response:
    return JSONResponse(
        {
            "supported_models": [
                {"model_name": m.name, "max_context_length": m.max_context_length,
                 "trainable": True, "sampleable": True}
                for m in _state(request).models.models
            ]
        }
    )


# -- models -------------------------------------------------------------------------------------


def _check_base_model(state: ServerState, base_model: object) -> str:
    return state.models.get(base_model, "base_model").name


def _vocab(state: ServerState, base_model: str) -> int:
    """The vocabulary size of a served base model (the byte model's for an unknown name)."""
    served = state.models.find(base_model)
    return served.vocab_size if served is not None else VOCAB_SIZE


def _base_weights(state: ServerState, base_model: str) -> dict[str, np.ndarray]:
    """A served base model's sampler weights: a promoted model's snapshot, or the tiny model's
    seeded initial weights of the model's vocabulary."""
    served = state.models.find(base_model)
    if served is not None and served.weights_path is not None:
        return state.checkpoints.load_sampler_weights(served.weights_path)
    return state.base_weights(_vocab(state, base_model))


def _check_job_match(state: ServerState, job_id: str | None, lora_rank: int) -> None:
    if job_id is None:
        return
    job = state.jobs.get(job_id)
    if lora_rank != job.lora_rank:
        raise ApiError(
            400,
            f"trainer job {job_id!r} was created with loraRank={job.lora_rank}; "
            f"a training client with lora_rank={lora_rank} does not match it",
        )


def _new_model(
    state: ServerState,
    *,
    session_id: str,
    model_seq_id: int,
    lora_rank: int,
    job_id: str | None,
    user_metadata: Mapping[str, str] | None,
    first_seq: int,
    seed: int,
    lora_alpha: float = LORA_ALPHA,
    init_method: str = "kaiming",
    base_only: bool = False,
    lora_seed: int | None = None,
    base_model: str = BYTE_MODEL,
    run_prefix: str | None = None,
) -> TrainingModel:
    model_id = f"{run_prefix or session_id}:train:{model_seq_id}"
    if model_id in state.registry.models:
        raise ApiError(
            400, f"model_seq_id {model_seq_id} of session {session_id} is already used "
            f"(model {model_id} exists)"
        )
    try:
        model = TinyByteLM(
            seed=seed, lora_rank=lora_rank, lora_alpha=lora_alpha, init_method=init_method,
            lora_seed=lora_seed, vocab_size=_vocab(state, base_model),
        )
        served = state.models.find(base_model)
        if served is not None and served.weights_path is not None:  # a promoted model
            model.load_base_weights(_base_weights(state, base_model))
    except ModelInputError as exc:
        raise _user_error(exc) from None
    executor = OrderedExecutor(
        model_id,
        first_seq=first_seq,
        futures=state.futures,
        spawn=state.tasks.spawn,
        on_compute=state.stats.add_compute,
    )
    run = RunInfo(model_id, base_model, lora_rank, job_id, user_metadata)
    entry = TrainingModel(
        run=run, session_id=session_id, model=model, executor=executor, base_only=base_only
    )
    state.registry.models[model_id] = entry
    return entry


CAPABILITIES: Mapping[str, Any] = {
    "comms": "v1",
    "routing_matrix_format": "base64_inline",
    "r3_store_id": None,
    "supports_router_replay": False,
    "supports_target_logprob_support": False,
    "supports_reinforce": False,
    "supports_score_centering": False,
    "supports_policy_importance_sampling": False,
    "supports_policy_diagnostics": False,
    "supports_rdma_weight_sync": False,
    "rdma_weight_sync_enabled": False,
}
"""The Fireworks capability fields of a ``create_model`` result, answered for the local model:
JSON v1 requests, no experts (no router replay), no RDMA weight sync, none of the optional
loss features."""


def _lora_alpha(lora: Mapping[str, Any]) -> float:
    alpha = lora.get("alpha")
    if alpha is None:
        return LORA_ALPHA
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ApiError(400, f"lora_config.alpha must be a number > 0, got {alpha!r}")
    return float(alpha)


async def create_model(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    session = state.registry.session(_req_str(body, "session_id"))
    model_seq_id = _req_int(body, "model_seq_id", minimum=0)
    base_model = _check_base_model(state, body.get("base_model"))
    base_only = _bool(body, "base_only", False)
    lora = _get(body, "lora_config", dict, "an object") or {}
    rank = _opt_int(lora, "rank", minimum=0) or 0
    if base_only and rank:
        raise ApiError(400, "base_only models are frozen base weights: lora_config.rank must be 0")
    lora_seed = _opt_int(lora, "seed")
    alpha = _lora_alpha(lora)
    init_method = _get(lora, "init_method", str, "a string") or "kaiming"
    if _opt_int(body, "projection_head_dim", minimum=0):
        raise ApiError(400, f"projection_head_dim is not supported by {base_model}")
    optimizer = _get(body, "optimizer_config", dict, "an object") or {"type": "adamw"}
    if optimizer.get("type", "adamw") != "adamw":
        raise ApiError(
            400, f"optimizer_config type {optimizer.get('type')!r} is not supported (only adamw)"
        )
    job_id = _job_id(request) or session.job_id
    if not base_only:  # a frozen base reference may share a LoRA job (the SDKs' KL/DPO refs)
        _check_job_match(state, job_id, rank)
    entry = _new_model(
        state,
        session_id=session.session_id,
        model_seq_id=model_seq_id,
        lora_rank=rank,
        job_id=job_id,
        user_metadata=_str_map(body, "user_metadata"),
        first_seq=1,
        seed=state.config.seed,
        lora_seed=lora_seed,
        lora_alpha=alpha,
        init_method=init_method,
        base_only=base_only,
        base_model=base_model,
        # A serverless session's models are runs (``run-<hex>:train:<n>``), as the gateway's.
        run_prefix=serverless_run_id(session.session_id, model_seq_id)
        if session.serverless
        else None,
    )
    request_id = state.futures.create("CreateModel")
    state.futures.complete(
        request_id,
        FutureReply.json({"model_id": entry.model_id, "type": "create_model", **CAPABILITIES}),
    )
    return _future(request_id, entry.model_id)


def _info(state: ServerState, entry: TrainingModel) -> dict[str, Any]:
    rank = entry.run.lora_rank
    name = entry.run.base_model
    served = state.models.find(name)
    model_data: dict[str, Any] = {"arch": "tiny-byte-lm", "model_name": name}
    if served is not None and served.tokenizer_id is not None:
        model_data["tokenizer_id"] = served.tokenizer_id
    return {
        "type": "get_info",
        "model_id": entry.model_id,
        "model_data": model_data,
        "is_lora": rank > 0,
        "lora_rank": rank if rank > 0 else None,
        "model_name": name,
        "optimizer_config": dict(entry.optimizer_config),
    }


async def get_info(request: Request) -> Response:
    body = await read_json_object(request)
    state = _state(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    return JSONResponse(_info(state, entry))


# -- training operations ------------------------------------------------------------------------


def _submit(
    state: ServerState,
    entry: TrainingModel,
    seq_id: int | None,
    kind: str,
    build: Callable[[], Operation],
    body: bytes,
) -> Response:
    """Answer a resend of a submission with its original reply (``OrderedExecutor.replay``);
    otherwise check ``seq_id``, build the operation (a 4xx consumes the seq_id), queue it.
    ``body`` identifies the request (see ``_fingerprint``)."""
    executor = entry.executor
    entry.last_request_s = time.time()
    fingerprint = None  # without a seq_id a submission takes the next free one: never a resend
    if seq_id is not None:
        fingerprint = _fingerprint(kind, body)
        earlier = executor.replay(seq_id, fingerprint)
        if earlier is not None:
            return _future(earlier, entry.model_id)
    seq = executor.assign_seq(seq_id)
    try:
        op = build()
    except ModelInputError as exc:
        error = _user_error(exc)
        executor.skip(seq, fingerprint, error)
        raise error from None
    except ApiError as exc:
        executor.skip(seq, fingerprint, exc)
        raise
    request_id = state.futures.create(kind)
    executor.submit(seq, request_id, op, fingerprint)
    return _future(request_id, entry.model_id)


def _fingerprint(kind: str, body: bytes) -> int:
    """What makes two submissions under one ``seq_id`` the same request: the operation kind
    and the body bytes (a client's resend serialises the same request to the same bytes).
    Python's own keyed 64-bit SipHash: ~0.5 ms per MB of body on a loaded 2-core machine, a
    third of SHA-256's (1.7 ms) and a fifth of decoding a 1 MB protobuf forward_backward
    (2.5 ms); an accidental collision (a client bug that goes unnoticed) is a 2**-64 chance."""
    return hash((kind, body))


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _fwdbwd_op(
    state: ServerState, entry: TrainingModel, sub: ForwardBackwardSubmission, *, as_json: bool
) -> Operation:
    """The model operation of a checked forward/forward_backward submission. A JSON request's
    reply carries both forms (``retrieve_future`` picks by ``Accept``); a protobuf one, proto."""
    with_logprobs = sub.forward_only or state.config.forward_backward_logprobs

    def op() -> FutureReply:
        result = entry.model.forward_backward(
            sub.data, sub.loss_fn, sub.loss_fn_config or None, backward=not sub.forward_only
        )
        logprobs = result.logprobs if with_logprobs else None
        proto = encode_forward_backward_output(logprobs, result.metrics, num_datums=len(sub.data))
        json_form = None
        if as_json:
            json_form = encode_forward_backward_json(
                logprobs, result.metrics, num_datums=len(sub.data)
            )
        return FutureReply.proto(proto, json_form=json_form)

    if sum(len(d.tokens) for d in sub.data) <= SMALL_TOKENS:
        return SmallOperation(op)
    return op


def _embedding_op(
    entry: TrainingModel, sub: ForwardBackwardSubmission, cfg: EmbeddingConfig
) -> Operation:
    """The model operation of an embedding request (``loss_fn_config.output``; JSON only)."""

    def op() -> FutureReply:
        outputs, metrics = run_embedding(
            entry.model, sub.data, cfg, backward=not sub.forward_only
        )
        named = [o["embedding"] for o in outputs if "embedding" in o] or None
        proto = encode_forward_backward_output(
            named, metrics, num_datums=len(sub.data), name="embedding"
        )
        return FutureReply.proto(proto, json_form=encode_outputs_json(outputs, metrics))

    return op


async def _json_forward_backward(request: Request, input_key: str) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    head = decode_json_head(body, input_key)
    entry = state.registry.model(head.model_id)

    def build() -> Operation:
        sub = decode_json_input(body, head)
        if not sub.forward_only:
            _refuse_if_base_only(entry, "forward_backward")
        embedding = embedding_config(sub.loss_fn_config, num_datums=len(sub.data))
        if embedding is not None:
            return _embedding_op(entry, sub, embedding)
        check_forward_backward(
            sub.loss_fn, sub.loss_fn_config, sub.data, entry.model.vocab_size
        )
        return _fwdbwd_op(state, entry, sub, as_json=True)

    kind = "Forward" if input_key == "forward_input" else "ForwardBackward"
    return _submit(state, entry, head.seq_id, kind, build, await request.body())


async def forward_backward(request: Request) -> Response:
    if _is_json(request):
        return await _json_forward_backward(request, "forward_backward_input")
    return await _proto_forward_backward(request, force_forward=False)


async def forward(request: Request) -> Response:
    """``POST /api/v1/forward`` (Fireworks): a forward pass; no gradient is accumulated."""
    if _is_json(request):
        return await _json_forward_backward(request, "forward_input")
    return await _proto_forward_backward(request, force_forward=True)


async def _proto_forward_backward(request: Request, *, force_forward: bool) -> Response:
    state = _state(request)
    raw = await request.body()
    try:
        sub = decode_forward_backward(
            raw, content_encoding=request.headers.get("content-encoding")
        )
    except BadForwardBackwardData as exc:
        error = exc  # valid model and seq_id: the seq_id is consumed
        bad = state.registry.model(error.model_id)

        def refuse() -> Operation:
            raise error

        return _submit(state, bad, error.seq_id, "ForwardBackward", refuse, raw)
    if force_forward and not sub.forward_only:
        sub = attrs.evolve(sub, forward_only=True)
    entry = state.registry.model(sub.model_id)

    def build() -> Operation:
        if not sub.forward_only:
            _refuse_if_base_only(entry, "forward_backward")
        check_forward_backward(
            sub.loss_fn, sub.loss_fn_config, sub.data, entry.model.vocab_size
        )
        return _fwdbwd_op(state, entry, sub, as_json=False)

    kind = "Forward" if sub.forward_only else "ForwardBackward"
    return _submit(state, entry, sub.seq_id, kind, build, raw)


def _refuse_if_base_only(entry: TrainingModel, what: str) -> None:
    if entry.base_only:
        raise ApiError(
            400, f"model {entry.model_id} is a frozen base_only reference model: {what} would "
            "train it (use forward for reference logprobs)"
        )


def _grad_norm_mode(params: object) -> str:
    """``adam_params.emit_grad_norm_metrics`` (bool or off/basic/detailed) → the mode."""
    value = params.get("emit_grad_norm_metrics") if isinstance(params, Mapping) else None
    if value is None or value is False:
        return "off"
    if value is True:
        return "basic"
    if value in ("off", "basic", "detailed"):
        return str(value)
    raise ApiError(
        400, "adam_params.emit_grad_norm_metrics must be a bool or 'off', 'basic', 'detailed', "
        f"got {value!r}"
    )


async def optim_step(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    seq_id = _opt_int(body, "seq_id")

    def build() -> Operation:
        _refuse_if_base_only(entry, "optim_step")
        params = body.get("adam_params", body.get("optim_params"))
        if params is None:
            other = body.get("optimizer_params")
            if other is not None:
                kind = other.get("type") if isinstance(other, dict) else other
                raise ApiError(
                    400, f"optimizer_params of type {kind!r} are not supported (only adam_params)"
                )
            raise ApiError(400, "adam_params is required")
        grad_metrics = _grad_norm_mode(params)
        if isinstance(params, Mapping):
            params = {k: v for k, v in params.items() if k != "emit_grad_norm_metrics"}
        config = check_adam(params)
        normalization = body.get("grad_accumulation_normalization")
        if normalization not in NORMALIZATIONS:
            raise ApiError(
                400, "grad_accumulation_normalization must be 'num_loss_tokens', "
                f"'num_sequences' or 'none', got {normalization!r}"
            )

        def op() -> FutureReply:
            metrics = entry.model.optim_step(
                config, normalization=normalization, grad_norm_metrics=grad_metrics
            )
            state.stats.count_optim_step(entry.model_id)
            return FutureReply.json({"metrics": metrics})

        return SmallOperation(op)

    return _submit(state, entry, seq_id, "OptimStep", build, await request.body())


async def save_weights(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    seq_id = _opt_int(body, "seq_id")
    serverless = _serverless(request)

    def build() -> Operation:
        name = body.get("path")
        ttl = _ttl(body)
        overwrite = _bool(body, "overwrite", False)
        metadata = _str_map(body, "user_metadata")
        if name is not None:
            check_name(name)

        step_names = state.config.checkpoint_step_names

        def op() -> FutureReply:
            final = name if name is not None else f"ckpt-{entry.model.optim_steps:06d}"
            if step_names:  # like a dedicated Fireworks trainer: the name is the step
                final = f"step-{entry.model.optim_steps}"
            meta = state.checkpoints.save_state(
                entry.run,
                final,
                entry.model.state(optimizer=True),
                ttl_seconds=ttl,
                user_metadata=metadata,
                overwrite=overwrite or step_names,
            )
            path = meta["tinker_path"]
            if serverless:  # the gateway's form, ``<account>/<run_id>/<name>``
                path = state.serverless.gateway_path(state.jobs.account_id, entry, final, path)
            return FutureReply.json({"path": path, "type": "save_weights"})

        return op

    return _submit(state, entry, seq_id, "SaveWeights", build, await request.body())


def _check_training_checkpoint(state: ServerState, path: str, lora_rank: int | None) -> int:
    """Check ``path`` is a live ``weights/`` checkpoint; returns its LoRA rank."""
    parsed = parse_tinker_path(path)
    meta = state.checkpoints.meta(path)
    if meta["checkpoint_type"] != "training":
        raise ApiError(
            400, f"{path} is a {meta['checkpoint_type']} checkpoint; load_weights needs a "
            "weights/ checkpoint saved with save_weights (save_state)"
        )
    run = state.checkpoints.get_run(parsed.training_run_id) or {}
    rank = run.get("lora_rank")
    if not isinstance(rank, int):
        arrays = state.checkpoints.load_arrays(path)
        rank = int(arrays["lora_rank"]) if "lora_rank" in arrays else 0
    if lora_rank is not None and rank != lora_rank:
        raise ApiError(
            400, f"{path} has LoRA rank {rank} but model has LoRA rank {lora_rank}"
        )
    return rank


def _load_op(state: ServerState, entry: TrainingModel, path: str, optimizer: bool) -> Operation:
    def op() -> FutureReply:
        arrays = state.checkpoints.load_arrays(path)
        entry.model.load_state(arrays, optimizer=optimizer)
        return FutureReply.json(
            {"path": path, "model_id": entry.model_id, "type": "load_weights"}
        )

    return op


def _resolve_ref(
    state: ServerState,
    request: Request,
    ref: object,
    entry: TrainingModel | None,
    *,
    job_id: str | None = None,
    field: str = "path",
) -> str:
    """A checkpoint reference (tinker path, logical name, run path, cross_job, a serverless
    gateway path) → tinker path."""
    return resolve_checkpoint_ref(
        state.checkpoints,
        state.serverless.tinker_path(ref) if isinstance(ref, str) else ref,
        own_run=entry.model_id if entry is not None else None,
        job_id=entry.run.job_id if entry is not None else (_job_id(request) or job_id),
        account_id=state.config.account_id,
        field=field,
    )


async def load_weights(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    if body.get("model_id") is not None:
        entry = state.registry.model(_req_str(body, "model_id"))

        def build() -> Operation:
            path = _resolve_ref(state, request, body.get("path"), entry)
            optimizer = _bool(body, "optimizer", False)
            _check_training_checkpoint(state, path, entry.run.lora_rank)
            return _load_op(state, entry, path, optimizer)

        seq_id = _opt_int(body, "seq_id")
        return _submit(state, entry, seq_id, "LoadWeights", build, await request.body())
    optimizer = _bool(body, "optimizer", False)
    # Create-via-load: the load is the new model's operation 0. The tinker SDK sends it through
    # its outer retry too: a resend (same body, new idempotency key) gets the original future.
    session = state.registry.session(_req_str(body, "session_id"))
    model_seq_id = _req_int(body, "model_seq_id", minimum=0)
    fingerprint = _fingerprint("LoadWeights", await request.body())
    run_prefix = serverless_run_id(session.session_id, model_seq_id) if session.serverless else None
    made = state.registry.models.get(f"{run_prefix or session.session_id}:train:{model_seq_id}")
    if made is not None:
        try:
            earlier = made.executor.replay(0, fingerprint)
        except ApiError:  # another request made it: refused below as a reused model_seq_id
            earlier = None
        if earlier is not None:
            return _future(earlier, made.model_id)
    path = _resolve_ref(state, request, body.get("path"), None, job_id=session.job_id)
    if body.get("base_model") is not None:
        base_model = _check_base_model(state, body["base_model"])
    else:
        run = state.checkpoints.get_run(parse_tinker_path(path, "path").training_run_id) or {}
        base_model = str(run.get("base_model") or BYTE_MODEL)
    rank = _check_training_checkpoint(state, path, None)
    job_id = _job_id(request) or session.job_id
    _check_job_match(state, job_id, rank)
    entry = _new_model(
        state,
        session_id=session.session_id,
        model_seq_id=model_seq_id,
        lora_rank=rank,
        job_id=job_id,
        user_metadata=_str_map(body, "user_metadata"),
        first_seq=0,
        seed=state.config.seed,
        base_model=base_model,
        run_prefix=run_prefix,
    )
    request_id = state.futures.create("LoadWeights")
    entry.executor.submit(0, request_id, _load_op(state, entry, path, optimizer), fingerprint)
    return _future(request_id, entry.model_id)


async def save_weights_for_sampler(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    seq_id = _opt_int(body, "seq_id")
    serverless = _serverless(request)

    def build() -> Operation:
        name = body.get("path")
        ttl = _ttl(body)
        metadata = _str_map(body, "user_metadata")
        kind = body.get("kind", "snapshot")
        if kind not in ("snapshot", "inflight"):
            raise ApiError(400, f"kind must be 'snapshot' or 'inflight', got {kind!r}")
        snapshot_type = body.get("checkpoint_type") or "base"
        if snapshot_type not in ("base", "delta", "merged_base"):
            raise ApiError(
                400, "checkpoint_type must be 'base', 'delta' or 'merged_base', "
                f"got {snapshot_type!r}"
            )
        precision = body.get("export_precision")
        if precision is not None and snapshot_type != "merged_base":
            raise ApiError(400, "export_precision is only valid with checkpoint_type='merged_base'")
        if precision not in (None, *EXPORT_PRECISIONS):
            raise ApiError(
                400, f"export_precision {precision!r} is not supported by the local trainer "
                f"(supported: {', '.join(EXPORT_PRECISIONS)})"
            )
        if snapshot_type == "merged_base" and not entry.run.lora_rank:
            raise ApiError(
                400, "checkpoint_type='merged_base' folds a LoRA adapter into the base weights; "
                f"model {entry.model_id} is full-parameter (save 'base' or 'delta' instead)"
            )
        sampler_metadata = _get(body, "metadata", dict, "an object")
        if name is None:
            n = _opt_int(body, "sampling_session_seq_id", minimum=0)
            if n is None:
                raise ApiError(400, "either path (a name) or sampling_session_seq_id is required")
            return _ephemeral_sampler_op(state, entry, n)
        check_name(name)
        # Whether a base precedes a delta is decided when the op runs, in seq_id order:
        # pipelined submissions may arrive in any order.

        def op() -> FutureReply:
            weights = entry.model.sampler_weights()
            extra = {"metadata": sampler_metadata} if sampler_metadata is not None else {}
            if snapshot_type == "delta":
                if entry.last_base_path is None or entry.last_base_weights is None:
                    raise ApiError(
                        400,
                        f"a delta snapshot needs a previous base snapshot of model "
                        f"{entry.model_id} (save one with checkpoint_type='base' first)",
                    )
                meta = state.checkpoints.save_sampler(
                    entry.run, name, weights, snapshot_type="delta",
                    base_path=entry.last_base_path, base_weights=entry.last_base_weights,
                    ttl_seconds=ttl, user_metadata=metadata, extra=extra,
                )
            else:
                if snapshot_type == "merged_base":
                    if not entry.model.has_adapter_delta():
                        raise ApiError(
                            400, f"model {entry.model_id} has no effective adapter delta to "
                            "merge (train it or load_adapter first)"
                        )
                    weights = _export(weights, precision or "source")
                    extra["export_precision"] = precision or "source"
                full: SnapshotType = "merged_base" if snapshot_type == "merged_base" else "base"
                meta = state.checkpoints.save_sampler(
                    entry.run, name, weights, snapshot_type=full,
                    ttl_seconds=ttl, user_metadata=metadata, extra=extra,
                )
                entry.last_base_path = meta["tinker_path"]
                entry.last_base_weights = weights
            path = meta["tinker_path"]
            if serverless:  # the gateway's form, ``<account>/<run_id>/<name>``
                path = state.serverless.gateway_path(state.jobs.account_id, entry, name, path)
            return FutureReply.json({"path": path, "type": "save_weights_for_sampler"})

        return op

    # The tinker SDK draws a new sampling_session_seq_id for each outer-retry attempt of the
    # same save (training_client._save_weights_for_sampler_impl): a resend differs in that
    # field only, and gets the original's future (whose sampling_session_id names the first).
    same = {k: v for k, v in body.items() if k != "sampling_session_seq_id"}
    canonical = json.dumps(same, sort_keys=True, separators=(",", ":")).encode()
    return _submit(state, entry, seq_id, "SaveWeightsForSampler", build, canonical)


EXPORT_PRECISIONS = ("source", "bf16")
"""``export_precision`` values of a ``merged_base`` save the local trainer can produce."""


def _export(weights: dict[str, np.ndarray], precision: str) -> dict[str, np.ndarray]:
    """Weights as exported at ``precision``: ``source`` is float32 as is; ``bf16`` rounds each
    value to the nearest bfloat16 (ties to even), stored as float32."""
    if precision == "source":
        return weights
    out: dict[str, np.ndarray] = {}
    for key, value in weights.items():
        bits = np.ascontiguousarray(value, dtype=np.float32).view(np.uint32)
        rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & (
            np.uint32(0xFFFF0000)
        )
        out[key] = rounded.view(np.float32)
    return out


def _ephemeral_sampler_op(state: ServerState, entry: TrainingModel, n: int) -> Operation:
    sampler_id = f"{entry.session_id}:sample:{n}"
    registry = state.registry
    if sampler_id in registry.samplers or sampler_id in registry.reserved_samplers:
        raise ApiError(400, f"sampling_session_seq_id {n} is already used ({sampler_id} exists)")
    registry.reserved_samplers.add(sampler_id)
    rng = state.sampling_rng.spawn(1)[0]

    def op() -> FutureReply:
        weights = entry.model.sampler_weights()
        registry.samplers[sampler_id] = SamplingSession(
            sampler_id, entry.run.base_model, None, weights, rng
        )
        return FutureReply.json(
            {"sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}
        )

    return op


async def list_checkpoints(request: Request) -> Response:
    """``GET /api/v1/list_checkpoints`` (Fireworks): sorted names of this trainer's
    ``save_state`` checkpoints (the job's, or those of models made without a job)."""
    state = _state(request)
    return JSONResponse({"checkpoints": state.checkpoints.training_names(job_id=_job_id(request))})


async def load_adapter(request: Request) -> Response:
    """``POST /api/v1/load_adapter`` (Fireworks): a LoRA model takes the adapter weights of a
    training checkpoint (any reference ``load_weights`` accepts), weights only."""
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))

    def build() -> Operation:
        if not entry.run.lora_rank:
            raise ApiError(400, f"load_adapter needs a LoRA model; {entry.model_id} is "
                           "full-parameter")
        ref = body.get("adapter_path")
        if isinstance(ref, str) and (ref.startswith("gs://") or ref.startswith("accounts/")):
            raise ApiError(
                400, f"adapter_path {ref!r}: the local trainer cannot fetch PEFT adapters; "
                "pass a checkpoint of a LoRA run (a name, <account>/run-<32 hex>/<name>, "
                "cross_job://<job>/<name> or tinker:// path)"
            )
        path = _resolve_ref(state, request, ref, entry, field="adapter_path")
        _check_training_checkpoint(state, path, entry.run.lora_rank)

        def op() -> FutureReply:
            arrays = state.checkpoints.load_arrays(path)
            entry.model.load_adapter(arrays)
            entry.adapter_loaded = True
            return FutureReply.json(
                {"model_id": entry.model_id, "adapter_path": ref, "type": "load_adapter"}
            )

        return op

    seq_id = _opt_int(body, "seq_id")
    return _submit(state, entry, seq_id, "LoadAdapter", build, await request.body())


async def unload_model(request: Request) -> Response:
    """``POST /api/v1/unload_model`` (Fireworks): a future that completes once the model's
    queued operations have run; then the model is freed and later requests get a 404."""
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    model_id = entry.model_id
    state.registry.unloaded.add(model_id)  # refuses new work at once
    request_id = state.futures.create("UnloadModel")

    async def job() -> None:
        await entry.executor.wait_idle()
        state.registry.models.pop(model_id, None)
        state.futures.complete(
            request_id, FutureReply.json({"model_id": model_id, "type": "unload_model"})
        )

    state.tasks.spawn(job())
    return _future(request_id, model_id)


# -- sampling -----------------------------------------------------------------------------------


def _weights_for_path(state: ServerState, path: str) -> dict[str, np.ndarray]:
    parsed = parse_tinker_path(path, "model_path")
    if parsed.segment == "sampler_weights":
        return state.checkpoints.load_sampler_weights(path)
    rank = _check_training_checkpoint(state, path, None)
    run = state.checkpoints.get_run(parsed.training_run_id) or {}
    vocab = _vocab(state, str(run.get("base_model") or BYTE_MODEL))
    model = TinyByteLM(seed=state.config.seed, lora_rank=rank, vocab_size=vocab)
    try:
        model.load_state(state.checkpoints.load_arrays(path), optimizer=False)
    except ModelInputError as exc:
        raise _user_error(exc) from None
    return model.sampler_weights()


async def create_sampling_session(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    session = state.registry.session(_req_str(body, "session_id"))
    n = _req_int(body, "sampling_session_seq_id", minimum=0)
    model_path = _get(body, "model_path", str, "a tinker:// path")
    base_model = body.get("base_model")
    sampler_id = f"{session.session_id}:sample:{n}"
    existing = state.registry.samplers.get(sampler_id)
    if existing is not None:
        if existing.model_path == model_path:
            return JSONResponse({"sampling_session_id": sampler_id})
        raise ApiError(400, f"sampling_session_seq_id {n} is already used ({sampler_id} exists)")
    if sampler_id in state.registry.reserved_samplers:
        raise ApiError(400, f"sampling_session_seq_id {n} is already used ({sampler_id})")
    if model_path is not None:
        if base_model is not None:
            base_model = _check_base_model(state, base_model)
        weights = _weights_for_path(state, model_path)
        if base_model is None:
            run_id = parse_tinker_path(model_path, "model_path").training_run_id
            base_model = str((state.checkpoints.get_run(run_id) or {}).get("base_model")
                             or BYTE_MODEL)
    elif base_model is not None:
        base_model = _check_base_model(state, base_model)
        weights = _base_weights(state, base_model)
    else:
        raise ApiError(400, "either model_path or base_model is required")
    rng = state.sampling_rng.spawn(1)[0]
    state.registry.samplers[sampler_id] = SamplingSession(
        sampler_id, base_model, model_path, weights, rng
    )
    return JSONResponse({"sampling_session_id": sampler_id})


async def get_sampler(request: Request) -> Response:
    sampler = _state(request).registry.sampler(request.path_params["sampler_id"])
    return JSONResponse(
        {"sampler_id": sampler.sampler_id, "base_model": sampler.base_model,
         "model_path": sampler.model_path}
    )


def _prompt_tokens(body: Mapping[str, Any]) -> np.ndarray:
    prompt = _get(body, "prompt", dict, "a ModelInput object")
    if prompt is None:
        raise ApiError(400, "prompt is required")
    arr = model_input_tokens(prompt.get("chunks"), "prompt")
    if not arr.size:
        raise ApiError(400, "prompt is empty")
    if arr.size > MAX_CONTEXT:
        raise ApiError(400, f"prompt has {arr.size} tokens; the limit is {MAX_CONTEXT}")
    return arr


def _check_in_vocab(field: str, tokens: np.ndarray, vocab: int) -> None:
    """``ApiError(400)`` naming ``field`` unless every token is in ``[0, vocab)``."""
    bad = tokens[(tokens < 0) | (tokens >= vocab)]
    if bad.size:
        raise ApiError(400, f"{field}: token {int(bad[0])} is out of range [0, {vocab})")


def _stop_sequences(
    stop: object, vocab: int = VOCAB_SIZE, special: Mapping[str, int] | None = None
) -> tuple[tuple[int, ...], ...]:
    """``SamplingParams.stop`` → token sequences. A string is its UTF-8 bytes, or the one
    token of a ``special`` token whose text it is (``"<|im_end|>"``); an int is one token in
    ``[0, vocab)``. EOS always stops generation (also with ``stop=[]``)."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list):
        raise ApiError(400, f"sampling_params.stop must be a string or a list, got {stop!r}")
    out: list[tuple[int, ...]] = []
    for item in items:
        if isinstance(item, str):
            if not item:
                raise ApiError(400, "sampling_params.stop: empty stop string")
            token = (special or {}).get(item)
            out.append((token,) if token is not None else tuple(item.encode("utf-8")))
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < vocab:
                raise ApiError(
                    400, f"sampling_params.stop: token {item} is out of range [0, {vocab})"
                )
            out.append((item,))
        else:
            raise ApiError(400, f"sampling_params.stop: {item!r} is not a string or a token")
    return tuple(out)


def _number(params: Mapping[str, Any], name: str, default: float) -> float:
    value = params.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ApiError(400, f"sampling_params.{name} must be a finite number, got {value!r}")
    return float(value)


async def asample(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    num_samples = _opt_int(body, "num_samples", minimum=1) or 1
    if num_samples > MAX_SAMPLES:
        raise ApiError(400, f"num_samples must be <= {MAX_SAMPLES}, got {num_samples}")
    prompt = _prompt_tokens(body)
    params = _get(body, "sampling_params", dict, "an object")
    if params is None:
        raise ApiError(400, "sampling_params is required")
    max_tokens = _opt_int(params, "max_tokens", minimum=1) or DEFAULT_MAX_TOKENS
    if max_tokens > MAX_CONTEXT:
        raise ApiError(400, f"sampling_params.max_tokens must be <= {MAX_CONTEXT}")
    temperature = _number(params, "temperature", 1.0)
    if temperature < 0:
        raise ApiError(400, f"sampling_params.temperature must be >= 0, got {temperature}")
    top_k = params.get("top_k", -1)
    if top_k is None:
        top_k = -1
    if isinstance(top_k, bool) or not isinstance(top_k, int) or (top_k < 1 and top_k != -1):
        raise ApiError(400, f"sampling_params.top_k must be -1 or >= 1, got {top_k!r}")
    top_p = _number(params, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise ApiError(400, f"sampling_params.top_p must be in (0, 1], got {top_p}")
    seed = _opt_int(params, "seed")
    stop_param = params.get("stop")
    want_prompt_lps = _bool(body, "prompt_logprobs", False)
    last_n = _opt_int(body, "prompt_logprobs_last_n", minimum=1)
    topk_prompt = _opt_int(body, "topk_prompt_logprobs", minimum=0) or 0
    topk_sample = _opt_int(body, "topk_sample_logprobs", minimum=0) or 0
    if _opt_int(body, "prompt_alt_tokens_k", minimum=0):
        raise ApiError(400, "prompt_alt_tokens_k is not supported by the local trainer (send 0)")
    if body.get("target_prompt_logprobs") is not None:
        raise ApiError(400, "target_prompt_logprobs is not supported by the local trainer")

    sampler_id = body.get("sampling_session_id")
    if sampler_id is not None:
        sampler = state.registry.sampler(sampler_id)
        weights, rng = sampler.weights, sampler.rng
    else:
        model_path = _get(body, "model_path", str, "a tinker:// path")
        if model_path is not None:
            weights = _weights_for_path(state, model_path)
        else:
            name = _check_base_model(state, body.get("base_model"))
            weights = _base_weights(state, name)
        rng = state.sampling_rng.spawn(1)[0]
    _check_in_vocab("prompt", prompt, vocab_of(weights))
    stop = _stop_sequences(stop_param, vocab_of(weights))
    for name, k in (("topk_prompt_logprobs", topk_prompt), ("topk_sample_logprobs", topk_sample)):
        if k > vocab_of(weights):
            raise ApiError(400, f"{name} must be <= the vocabulary size {vocab_of(weights)}")

    request_id = state.futures.create("Sample")

    def run() -> FutureReply:
        from ._sampler import MASK_LOGPROB, prompt_logprobs, prompt_topk_logprobs, sample

        seqs = sample(
            weights, prompt, num_samples=num_samples, max_tokens=max_tokens,
            temperature=temperature, top_k=top_k, top_p=top_p, stop=stop, seed=seed, rng=rng,
            topk=topk_sample,
        )
        lps = None
        if want_prompt_lps:
            lps = np.asarray(prompt_logprobs(weights, prompt), dtype=np.float32).copy()
            if last_n is not None:
                lps[: max(0, lps.size - last_n)] = np.nan
        prompt_topk = None
        if topk_prompt:
            ids, top_lps = prompt_topk_logprobs(weights, prompt, topk_prompt)
            if last_n is not None:  # rows before the last n are not scored
                cut = max(0, ids.shape[0] - last_n)
                ids[:cut], top_lps[:cut] = 0, MASK_LOGPROB
            prompt_topk = (ids, top_lps)
        triples = [(s.tokens, s.logprobs, s.stop_reason) for s in seqs]
        return FutureReply.proto(
            encode_sample_response(
                triples,
                lps,
                prompt_topk=prompt_topk,
                sequence_topk=[s.topk for s in seqs] if topk_sample else None,
            )
        )

    async def job() -> None:
        start = time.perf_counter()
        try:
            reply = await asyncio.to_thread(run)
        except ModelInputError as exc:
            reply = FutureReply.failure(str(exc), "user")
        except Exception as exc:
            reply = FutureReply.failure(f"sampling failed: {type(exc).__name__}: {exc}", "server")
        state.stats.add_compute(time.perf_counter() - start)
        state.futures.complete(request_id, reply)

    state.tasks.spawn(job())
    return _future(
        request_id, sample_sequence_ids=[f"{request_id}:{i}" for i in range(num_samples)]
    )


# -- futures ------------------------------------------------------------------------------------


async def retrieve_future(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    request_id = _req_str(body, "request_id")
    try:
        reply = await state.futures.wait(request_id, state.config.long_poll_s)
    except UnknownFuture:
        raise ApiError(404, f"unknown request_id {request_id!r}") from None
    if reply is None:
        return JSONResponse(
            {"type": "try_again", "request_id": request_id, "queue_state": "active"}
        )
    content, media_type = reply.negotiate(prefers_json(request.headers.get("accept")))
    return Response(content, media_type=media_type)


# -- checkpoints and runs -----------------------------------------------------------------------


def _run_record(state: ServerState, run_id: str) -> dict[str, Any]:
    entry = state.registry.models.get(run_id)
    if entry is not None:
        run = entry.run
        record: dict[str, Any] = {
            "base_model": run.base_model,
            "lora_rank": run.lora_rank,
            "job_id": run.job_id,
            "user_metadata": dict(run.user_metadata) if run.user_metadata else None,
            "last_request_time": rfc3339(entry.last_request_s),
        }
    else:
        stored = state.checkpoints.get_run(run_id)
        if stored is None:
            raise ApiError(404, f"unknown training run {run_id!r}")
        record = {**stored, "last_request_time": stored.get("created")}
    checkpoints = state.checkpoints.list_run(run_id)
    training = [c for c in checkpoints if c["checkpoint_type"] == "training"]
    sampler = [c for c in checkpoints if c["checkpoint_type"] == "sampler"]
    rank = int(record.get("lora_rank") or 0)
    return {
        "training_run_id": run_id,
        "base_model": record["base_model"],
        "model_owner": state.config.account_id,
        "is_lora": rank > 0,
        "corrupted": False,
        "lora_rank": rank if rank > 0 else None,
        "last_request_time": record["last_request_time"],
        "last_checkpoint": training[-1] if training else None,
        "last_sampler_checkpoint": sampler[-1] if sampler else None,
        "user_metadata": record.get("user_metadata"),
        "job_id": record.get("job_id"),
    }


async def list_run_checkpoints(request: Request) -> Response:
    state = _state(request)
    run_id = request.path_params["run_id"]
    if run_id not in state.registry.models and state.checkpoints.get_run(run_id) is None:
        raise ApiError(404, f"unknown training run {run_id!r}")
    return JSONResponse(
        {"checkpoints": _listing(state, state.checkpoints.list_run(run_id)), "cursor": None}
    )


_DETAIL_FIELDS = ("time", "tinker_path", "expires_at")


def _listing(state: ServerState, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tinker-form checkpoint rows; without ``time``/``tinker_path``/``expires_at`` when the
    ``checkpoint_list_details`` knob is off (as a Fireworks trainer lists them)."""
    if state.config.checkpoint_list_details:
        return rows
    return [{k: v for k, v in row.items() if k not in _DETAIL_FIELDS} for row in rows]


async def get_training_run(request: Request) -> Response:
    state = _state(request)
    return JSONResponse(_run_record(state, request.path_params["run_id"]))


def _page(request: Request, default_limit: int) -> tuple[int, int]:
    try:
        limit = int(request.query_params.get("limit", default_limit))
        offset = int(request.query_params.get("offset", 0))
    except ValueError:
        raise ApiError(400, "limit and offset must be integers") from None
    if limit < 1 or offset < 0:
        raise ApiError(400, f"need limit >= 1 and offset >= 0, got {limit} and {offset}")
    return limit, offset


async def list_training_runs(request: Request) -> Response:
    state = _state(request)
    limit, offset = _page(request, 20)
    ids = set(state.registry.models)
    ids.update(p.name for p in state.checkpoints.root.iterdir() if (p / "run.json").is_file())
    runs = [_run_record(state, run_id) for run_id in sorted(ids)]
    return JSONResponse(
        {"training_runs": runs[offset : offset + limit],
         "cursor": {"offset": offset, "limit": limit, "total_count": len(runs)}}
    )


async def list_user_checkpoints(request: Request) -> Response:
    state = _state(request)
    limit, offset = _page(request, 100)
    everything = state.checkpoints.list_all(job_id=request.query_params.get("job_id"))
    return JSONResponse(
        {"checkpoints": _listing(state, everything[offset : offset + limit]),
         "cursor": {"offset": offset, "limit": limit, "total_count": len(everything)}}
    )


async def delete_checkpoint(request: Request) -> Response:
    state = _state(request)
    run_id = request.path_params["run_id"]
    checkpoint_id = request.path_params["checkpoint_id"]
    parse_tinker_path(f"tinker://{run_id}/{checkpoint_id}", "checkpoint_id")
    state.checkpoints.delete(run_id, checkpoint_id)
    return JSONResponse({})


async def save_weights_external(request: Request) -> Response:
    """``save_weights_external``: the current weights as an ``external_weights/{name}``
    checkpoint, one ``weights.npz`` file (see :meth:`CheckpointStore.save_external`)."""
    state = _state(request)
    body = await read_json_object(request)
    entry = state.registry.model(_req_str(body, "model_id"))
    seq_id = _opt_int(body, "seq_id")

    def build() -> Operation:
        name = _req_str(body, "path")
        check_name(name)
        ttl = _ttl(body)
        if body.get("age_encryption_recipients"):
            raise ApiError(400, "age_encryption_recipients is not supported by the local trainer")

        def op() -> FutureReply:
            meta = state.checkpoints.save_external(
                entry.run, name, entry.model.sampler_weights(), ttl_seconds=ttl
            )
            return FutureReply.json({"path": meta["tinker_path"], "type": "save_weights_external"})

        return op

    return _submit(state, entry, seq_id, "SaveWeightsExternal", build, await request.body())


EXTERNAL_FILE_NAME = "weights.npz"


async def external_weights_urls(request: Request) -> Response:
    """Signed URLs, one per file, of an external-weights checkpoint (valid for an hour)."""
    state = _state(request)
    run_id = request.path_params["run_id"]
    checkpoint_id = request.path_params["checkpoint_id"]
    path = f"tinker://{run_id}/{checkpoint_id}"
    parse_tinker_path(path, "checkpoint_id")
    state.checkpoints.external_file(path)  # 404 when gone, 400 when not external
    name = checkpoint_id.partition("/")[2]
    file_path = f"{paths.EXTERNAL_FILES}/{run_id}/{name}/{EXTERNAL_FILE_NAME}"
    expires = int(time.time()) + URL_LIFETIME_S
    query = urlencode(state.url_signer.query(file_path, expires=expires))
    return JSONResponse(
        {"urls": {EXTERNAL_FILE_NAME: f"{state.root_url}{file_path}?{query}"},
         "expires": rfc3339(expires)}
    )


async def download_external_file(request: Request) -> Response:
    """A file behind a signed URL (no API key: the signature is the credential)."""
    state = _state(request)
    run_id, name = request.path_params["run_id"], request.path_params["name"]
    file_name = request.path_params["file"]
    file_path = f"{paths.EXTERNAL_FILES}/{run_id}/{name}/{file_name}"
    state.url_signer.check(
        file_path, request.query_params.get("expires"), request.query_params.get("signature")
    )
    if file_name != EXTERNAL_FILE_NAME:
        raise ApiError(404, f"no file {file_name!r}")
    source = state.checkpoints.external_file(f"tinker://{run_id}/external_weights/{name}")
    content = await asyncio.to_thread(source.read_bytes)
    return Response(content, media_type="application/octet-stream")


async def set_checkpoint_ttl(request: Request) -> Response:
    """``PUT training_runs/{run}/checkpoints/{id}/ttl``: ``{"ttl_seconds": n}`` sets the expiry
    ``n`` seconds from now, ``{"ttl_seconds": null}`` removes it."""
    state = _state(request)
    run_id = request.path_params["run_id"]
    checkpoint_id = request.path_params["checkpoint_id"]
    parse_tinker_path(f"tinker://{run_id}/{checkpoint_id}", "checkpoint_id")
    body = await read_json_object(request)
    if "ttl_seconds" not in body:
        raise ApiError(400, "ttl_seconds is required (null removes the expiry)")
    state.checkpoints.set_ttl(run_id, checkpoint_id, _ttl(body))
    return JSONResponse({})


async def weights_info(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    path = state.serverless.tinker_path(_req_str(body, "tinker_path"))
    parsed = parse_tinker_path(path, "tinker_path")
    state.checkpoints.meta(path)
    run = state.checkpoints.get_run(parsed.training_run_id) or {}
    rank = int(run.get("lora_rank") or 0)
    return JSONResponse(
        {"base_model": str(run.get("base_model") or BYTE_MODEL), "is_lora": rank > 0,
         "lora_rank": rank if rank else None, "optimizer_config": {"type": "adamw"}}
    )


def data_plane_routes() -> list[Route]:
    """The ``/api/v1`` routes (the job prefix is stripped by the front middleware).

    Spelled through :mod:`firetitan_async.wire.paths`, the client's own path table, so the two
    sides cannot drift apart (the client never imports ``local/``; this is the one way).
    """
    op = paths.operation
    return [
        # The hot routes first: Starlette tries the routes in order.
        Route(paths.RETRIEVE_FUTURE, retrieve_future, methods=["POST"]),
        Route(op("forward_backward"), forward_backward, methods=["POST"]),
        Route(op("forward"), forward, methods=["POST"]),
        Route(op("optim_step"), optim_step, methods=["POST"]),
        Route(paths.ASAMPLE, asample, methods=["POST"]),
        Route(paths.CLIENT_CONFIG, client_config, methods=["POST"]),
        Route(paths.CLIENT_DYNAMIC_CONFIG, dynamic_config, methods=["POST"]),
        Route(paths.CREATE_SESSION, create_session, methods=["POST"]),
        Route(paths.SESSION_HEARTBEAT, session_heartbeat, methods=["POST"]),
        Route(paths.TELEMETRY, telemetry, methods=["POST"]),
        Route(paths.session_finish("{session_id}"), finish_session, methods=["POST"]),
        Route(paths.HEALTHZ, healthz, methods=["GET"]),
        Route(paths.GET_SERVER_CAPABILITIES, server_capabilities, methods=["GET"]),
        Route(paths.CREATE_MODEL, create_model, methods=["POST"]),
        Route(paths.GET_INFO, get_info, methods=["POST"]),
        Route(op("save_weights"), save_weights, methods=["POST"]),
        Route(op("load_weights"), load_weights, methods=["POST"]),
        Route(op("save_weights_for_sampler"), save_weights_for_sampler, methods=["POST"]),
        Route(paths.CREATE_SAMPLING_SESSION, create_sampling_session, methods=["POST"]),
        Route(paths.sampler("{sampler_id}"), get_sampler, methods=["GET"]),
        Route(paths.WEIGHTS_INFO, weights_info, methods=["POST"]),
        Route(paths.TRAINING_RUNS, list_training_runs, methods=["GET"]),
        Route(paths.training_run("{run_id}"), get_training_run, methods=["GET"]),
        Route(paths.run_checkpoints("{run_id}"), list_run_checkpoints, methods=["GET"]),
        Route(op("save_weights_external"), save_weights_external, methods=["POST"]),
        Route(
            paths.run_checkpoint_external_urls("{run_id}", "{checkpoint_id:path}"),
            external_weights_urls,
            methods=["GET"],
        ),
        Route(
            paths.EXTERNAL_FILES + "/{run_id}/{name}/{file}",
            download_external_file,
            methods=["GET"],
        ),
        Route(
            paths.run_checkpoint_ttl("{run_id}", "{checkpoint_id:path}"),
            set_checkpoint_ttl,
            methods=["PUT"],
        ),
        Route(
            paths.run_checkpoint("{run_id}", "{checkpoint_id:path}"),
            delete_checkpoint,
            methods=["DELETE"],
        ),
        Route(paths.CHECKPOINTS, list_user_checkpoints, methods=["GET"]),
        Route(paths.LIST_CHECKPOINTS, list_checkpoints, methods=["GET"]),
        Route(paths.LOAD_ADAPTER, load_adapter, methods=["POST"]),
        Route(paths.UNLOAD_MODEL, unload_model, methods=["POST"]),
    ]

