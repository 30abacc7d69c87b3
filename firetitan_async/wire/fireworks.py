"""The Fireworks dialect: the data-plane wire of the Fireworks Training SDK 1.2.30.

What differs from the tinker dialect (``protocol/fireworks-sdk.md`` §3): ``sdk_version``
``"0.23.0"``; no ``client/config`` request, no ``get_info`` and no ``sessions/{id}/finish``;
``create_model`` without ``optimizer_config`` (LoRA ``alpha``, ``seed``, the train flags,
``base_only`` for a frozen reference); **JSON** ``forward_backward`` and a separate JSON
``POST /api/v1/forward``, chunked by fixed limits (1024 datums, 5 MB by the SDK's estimate);
results accepted as protobuf or JSON; ``optim_step`` extras; sampler snapshots with
``checkpoint_type``/``export_precision``/``metadata`` and no ``kind``; logical checkpoint
names and ``cross_job://`` references instead of ``tinker://`` paths; ``list_checkpoints``,
``unload_model`` and ``load_adapter``. Request bodies are what the SDK's pydantic models dump
with ``exclude_none``. Sans-IO.

Example::

    body = fwdbwd_body("forward_backward", model_id="s:train:0", seq_id=1, data=batch,
                       loss_fn="cross_entropy", loss_fn_config=None)
    ref = cross_job_ref("old-job", "step-4")   # "cross_job://old-job/step-4"
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
from tinker import types

from .._sdk_private import routing_matrices, tensor_array
from ..errors import InvalidInput, ProtocolError
from . import ModelSpec, WireRequest, paths, refused
from .chunking import model_input_bytes, split_batch
from .futures import Done
from .fwdbwd import decode_forward_backward_output
from .tinker import TinkerProtocol, adam_params_json
from .validation import (
    CHECKPOINT_TYPES,
    EXPORT_PRECISIONS,
    GRAD_ACC_NORMALIZATIONS,
    GRAD_NORM_METRICS_MODES,
    checkpoint_path_of,
    normalize_choice,
    validate_tinker_path,
)

__all__ = [
    "CHECKPOINT_TYPES",
    "EXPORT_PRECISIONS",
    "FIREWORKS",
    "GRAD_ACC_NORMALIZATIONS",
    "GRAD_NORM_METRICS_MODES",
    "LOSS_FUNCTIONS",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_LEN",
    "PROTOCOL_SDK_VERSION",
    "RESULT_ACCEPT",
    "FireworksDialect",
    "create_model_body",
    "create_session_body",
    "cross_job_ref",
    "datum_json",
    "decode_fwdbwd_result",
    "estimate_datum_bytes",
    "fwdbwd_body",
    "generate_snapshot_suffix",
    "load_adapter_body",
    "load_ref",
    "load_weights_body",
    "normalize_choice",
    "optim_step_body",
    "parse_checkpoint_list",
    "save_weights_body",
    "save_weights_for_sampler_body",
    "split",
    "unload_model_body",
    "validate_checkpoint_ref",
]

PROTOCOL_SDK_VERSION: str = "0.23.0"
"""The protocol version the Fireworks SDK 1.2.30 sends as ``sdk_version``."""

MAX_CHUNK_LEN = 1024
MAX_CHUNK_BYTES = 5_000_000
RESULT_ACCEPT = "application/x-protobuf, application/json"
"""``Accept`` of a forward/forward_backward result poll: protobuf or JSON, both decoded."""

LOSS_FUNCTIONS = (
    "cross_entropy",
    "importance_sampling",
    "ppo",
    "cispo",
    "dro",
    "dapo",
    "gspo",
    "dppo",
    "reinforce",
)
"""The loss names the Fireworks SDK's ``LossFnType`` allows."""

_CROSS_JOB = "cross_job://"
_TINKER = "tinker://"
_ROUTING_KEY = b',"routing_matrices":'
_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_RUN_ID = re.compile(r"^run-[0-9a-f]{32}$")
_BYTES_PER_VALUE = 10  # the SDK's estimate: 10 bytes per token and per tensor value


# -- session and model -----------------------------------------------------------------------


def create_session_body(*, user_metadata: Mapping[str, str] | None) -> dict[str, Any]:
    """Body of ``POST /api/v1/create_session`` (no ``project_id``: the SDK refuses it).

    Example::

        create_session_body(user_metadata=None)
        # {"tags": [], "user_metadata": {}, "sdk_version": "0.23.0", "type": "create_session"}
    """
    return {
        "tags": [],
        "user_metadata": dict(user_metadata or {}),
        "sdk_version": PROTOCOL_SDK_VERSION,
        "type": "create_session",
    }


def create_model_body(
    *,
    session_id: str,
    model_seq_id: int,
    base_model: str,
    lora_rank: int = 0,
    seed: int | None = None,
    train_mlp: bool = True,
    train_attn: bool = True,
    train_unembed: bool = True,
    lora_alpha: int | None = 32,
    user_metadata: Mapping[str, str] | None = None,
    base_only: bool = False,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/create_model``: no ``optimizer_config``; ``alpha`` for LoRA only.

    ``base_only=True`` is the frozen reference of ``create_base_training_client`` (no
    ``lora_config``).

    Example::

        create_model_body(session_id="s", model_seq_id=0, base_model="m", lora_rank=8)
        # {..., "lora_config": {"alpha": 32, "rank": 8, "train_unembed": True, ...},
        #  "type": "create_model"}
    """
    body: dict[str, Any] = {
        "session_id": session_id,
        "model_seq_id": model_seq_id,
        "base_model": base_model,
    }
    if user_metadata is not None:
        body["user_metadata"] = dict(user_metadata)
    if base_only:
        body["base_only"] = True
    else:
        lora: dict[str, Any] = {}
        if lora_rank > 0 and lora_alpha is not None:
            lora["alpha"] = lora_alpha
        lora["rank"] = lora_rank
        if seed is not None:
            lora["seed"] = seed
        lora.update(train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn)
        body["lora_config"] = lora
    body["type"] = "create_model"
    return body


# -- forward / forward_backward --------------------------------------------------------------


def estimate_datum_bytes(datum: types.Datum) -> int:
    """The Fireworks SDK's size estimate of a datum: 10 bytes per token and per tensor value
    (images and dmel chunks count their raw bytes), plus the compact-JSON bytes of its
    ``routing_matrices``.

    Example::

        estimate_datum_bytes(datum)   # 10 * (tokens + values of every loss_fn_input)
    """
    total = model_input_bytes(datum.model_input, per_token=_BYTES_PER_VALUE)
    for td in datum.loss_fn_inputs.values():
        total += int(tensor_array(td).size) * _BYTES_PER_VALUE
    routing = routing_matrices(datum.model_input)
    if routing is not None:  # the SDK adds their compact-JSON bytes
        total += len(_ROUTING_KEY) + len(
            json.dumps(list(routing), ensure_ascii=False, separators=(",", ":")).encode()
        )
    return total


def split(data: Sequence[types.Datum], *, values: float | None = None) -> list[list[types.Datum]]:
    """Chunks of a batch by the SDK's fixed limits (1024 datums, 5 MB estimated).

    Example::

        [len(c) for c in split(batch_of_2500)]   # [1024, 1024, 452]
    """
    return split_batch(
        data, max_len=MAX_CHUNK_LEN, max_bytes=MAX_CHUNK_BYTES, estimate=estimate_datum_bytes,
        values=values,
    )


def _tensor_json(td: types.TensorData) -> dict[str, Any]:
    out: dict[str, Any] = {"data": tensor_array(td).reshape(-1).tolist(), "dtype": td.dtype}
    if td.shape is not None:
        out["shape"] = list(td.shape)
    if td.sparse_crow_indices is not None:
        out["sparse_crow_indices"] = list(td.sparse_crow_indices)
    if td.sparse_col_indices is not None:
        out["sparse_col_indices"] = list(td.sparse_col_indices)
    return out


def _chunk_json(chunk: types.ModelInputChunk, index: int) -> dict[str, Any]:
    if isinstance(chunk, types.EncodedTextChunk):
        return {"tokens": list(chunk.tokens), "type": "encoded_text"}
    if isinstance(chunk, types.ImageChunk):
        out = chunk.model_dump(mode="json", exclude_none=True)
        return dict(out)
    raise InvalidInput(
        "model_input.chunks",
        f"a {type(chunk).__name__} cannot be sent in the fireworks dialect (encoded text and "
        "inline images only, as the Fireworks SDK)",
        index=index,
    )


def datum_json(datum: types.Datum, index: int = 0) -> dict[str, Any]:
    """A datum as the Fireworks SDK's JSON: ``loss_fn_inputs`` tensors and ``model_input``.

    Example::

        datum_json(datum)["model_input"]["chunks"][0]   # {"tokens": [...], "type": "encoded_text"}
    """
    model_input: dict[str, Any] = {
        "chunks": [_chunk_json(c, index) for c in datum.model_input.chunks]
    }
    routing = routing_matrices(datum.model_input)  # RoutedModelInput (R3)
    if routing is not None:
        model_input["routing_matrices"] = list(routing)
    return {
        "loss_fn_inputs": {name: _tensor_json(td) for name, td in datum.loss_fn_inputs.items()},
        "model_input": model_input,
    }


_INPUT_KEY: Final = {"forward": "forward_input", "forward_backward": "forward_backward_input"}


def fwdbwd_body(
    op: Literal["forward", "forward_backward"],
    *,
    model_id: str,
    seq_id: int,
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Body of a JSON ``POST /api/v1/forward_backward`` or ``/api/v1/forward`` (the Fireworks
    SDK's separate forward endpoint): the batch under ``{op}_input``, no ``type`` key.

    Example::

        fwdbwd_body("forward_backward", model_id="s:train:0", seq_id=1, data=batch,
                    loss_fn="cross_entropy", loss_fn_config=None)
        # {"forward_backward_input": {"data": [...], "loss_fn": "cross_entropy"},
        #  "model_id": "s:train:0", "seq_id": 1}
    """
    batch: dict[str, Any] = {
        "data": [datum_json(d, i) for i, d in enumerate(data)],
        "loss_fn": loss_fn,
    }
    if loss_fn_config is not None:
        batch["loss_fn_config"] = dict(loss_fn_config)
    return {_INPUT_KEY[op]: batch, "model_id": model_id, "seq_id": seq_id}


_FWDBWD_JSON: Final = "ForwardBackwardOutput (JSON)"


def decode_fwdbwd_result(done: Done) -> types.ForwardBackwardOutput:
    """A forward/forward_backward result, protobuf or JSON (whichever the server sent).

    Example::

        output = decode_fwdbwd_result(done)
        output.metrics["loss:sum"]
    """
    if done.is_proto:
        return decode_forward_backward_output(done.payload)
    what = _FWDBWD_JSON
    try:
        obj = json.loads(done.payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(what, f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(what, "expected a JSON object")
    raw_metrics = obj.get("metrics") or {}
    raw_outputs = obj.get("loss_fn_outputs") or []
    if not isinstance(raw_metrics, dict) or not isinstance(raw_outputs, list):
        raise ProtocolError(what, "'metrics' must be an object and 'loss_fn_outputs' a list")
    try:
        metrics = {str(k): float(v) for k, v in raw_metrics.items()}
        outputs = [
            {name: _tensor_of(t, f"loss_fn_outputs[{i}].{name}") for name, t in out.items()}
            for i, out in enumerate(raw_outputs)
        ]
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ProtocolError(what, str(exc)) from None
    return types.ForwardBackwardOutput(
        loss_fn_output_type=str(obj.get("loss_fn_output_type") or "ArrayRecord"),
        loss_fn_outputs=outputs,
        metrics=metrics,
    )


def _tensor_of(obj: Any, where: str) -> types.TensorData:
    if not isinstance(obj, dict) or obj.get("dtype") not in ("float32", "int64"):
        raise ProtocolError(_FWDBWD_JSON, f"{where}: not a float32/int64 TensorData")
    dtype = np.float32 if obj["dtype"] == "float32" else np.int64
    arr = np.asarray(obj.get("data", []), dtype=dtype)
    shape = obj.get("shape")
    if shape is not None:
        arr = arr.reshape([int(s) for s in shape])
    return types.TensorData.from_numpy(arr)


# -- optimizer and checkpoints ---------------------------------------------------------------


def optim_step_body(
    *,
    model_id: str,
    seq_id: int,
    adam_params: types.AdamParams,
    grad_accumulation_normalization: str | None = None,
    emit_grad_norm_metrics: bool | str | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/optim_step``: Adam only; the extras of §3.6 when given.

    Example::

        optim_step_body(model_id="s:train:0", seq_id=2, adam_params=types.AdamParams(),
                        grad_accumulation_normalization="num_loss_tokens",
                        emit_grad_norm_metrics="basic")
    """
    adam: dict[str, Any] = {}
    if emit_grad_norm_metrics is not None:
        adam["emit_grad_norm_metrics"] = emit_grad_norm_metrics
    adam.update(adam_params_json(adam_params))
    body: dict[str, Any] = {
        "adam_params": adam,
        "model_id": model_id,
        "seq_id": seq_id,
        "type": "optim_step",
    }
    if grad_accumulation_normalization is not None:
        body["grad_accumulation_normalization"] = grad_accumulation_normalization
    return body


def save_weights_body(*, model_id: str, seq_id: int, name: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/save_weights`` (``save_state``; no TTL, never overwrite).

    Example::

        save_weights_body(model_id="s:train:0", seq_id=4, name="step-4")
    """
    return {
        "model_id": model_id,
        "path": name,
        "seq_id": seq_id,
        "overwrite": False,
        "type": "save_weights",
    }


def load_weights_body(*, model_id: str, seq_id: int, path: str, optimizer: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/load_weights`` with a logical name or ``cross_job://`` ref.

    Example::

        load_weights_body(model_id="s:train:0", seq_id=5, path="step-4", optimizer=True)
    """
    return {
        "model_id": model_id,
        "path": path,
        "optimizer": optimizer,
        "seq_id": seq_id,
        "type": "load_weights",
    }


def save_weights_for_sampler_body(
    *,
    model_id: str,
    seq_id: int,
    name: str,
    checkpoint_type: str,
    export_precision: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/save_weights_for_sampler`` (no ``kind``, no TTL).

    Example::

        save_weights_for_sampler_body(model_id="s:train:0", seq_id=6, name="step-0-a1b2c3d4",
                                      checkpoint_type="base")
    """
    body: dict[str, Any] = {
        "model_id": model_id,
        "path": name,
        "seq_id": seq_id,
        "type": "save_weights_for_sampler",
        "checkpoint_type": checkpoint_type,
    }
    if export_precision is not None:
        body["export_precision"] = export_precision
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def unload_model_body(*, model_id: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/unload_model``.

    Example::

        unload_model_body(model_id="s:train:0")
        # {"model_id": "s:train:0", "type": "unload_model"}
    """
    return {"model_id": model_id, "type": "unload_model"}


def load_adapter_body(*, model_id: str, seq_id: int, adapter_path: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/load_adapter``.

    Example::

        load_adapter_body(model_id="s:train:0", seq_id=3, adapter_path="gs://b/adapter")
    """
    return {"adapter_path": adapter_path, "model_id": model_id, "seq_id": seq_id}


def generate_snapshot_suffix() -> str:
    """A random 8-hex suffix, drawn once per training client (the SDK's ``session_id``).

    Example::

        f"step-0-{generate_snapshot_suffix()}"   # e.g. "step-0-e7f1af22"
    """
    return secrets.token_hex(4)


def parse_checkpoint_list(reply: Any) -> list[dict[str, Any]]:
    """Rows of ``GET /api/v1/list_checkpoints``: names only (``{"checkpoints": ["step-2"]}``)
    or objects; each row is ``{"name", ...whatever else the trainer sent}``.

    Example::

        parse_checkpoint_list({"checkpoints": ["step-2"]})   # [{"name": "step-2"}]
    """
    what = "list_checkpoints reply"
    if not isinstance(reply, dict) or not isinstance(reply.get("checkpoints"), list):
        raise ProtocolError(what, "expected {'checkpoints': [...]}")
    rows: list[dict[str, Any]] = []
    for item in reply["checkpoints"]:
        if isinstance(item, str):
            rows.append({"name": item})
        elif isinstance(item, dict) and isinstance(
            item.get("name") or item.get("checkpoint_id"), str
        ):
            row = dict(item)
            row.setdefault("name", item.get("checkpoint_id"))
            rows.append(row)
        else:
            raise ProtocolError(what, f"a checkpoint must be a name or an object: {item!r}")
    return rows


# -- checkpoint references (offline, the SDK's rules) ---------------------------------------


def _logical_path(path: str, field: str) -> str:
    norm = path.strip()
    if not norm:
        raise InvalidInput(field, "checkpoint path cannot be empty")
    if "\x00" in norm or "\\" in norm:
        raise InvalidInput(field, "checkpoint path contains invalid characters")
    for segment in norm.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidInput(field, f"empty or traversal segment in {path!r}")
        if not _DNS_LABEL.fullmatch(segment):
            raise InvalidInput(
                field,
                f"segment {segment!r} is not a DNS label (lower-case letters, digits and '-', "
                "at most 63)",
            )
    return norm


def validate_checkpoint_ref(ref: str, *, field: str = "path") -> str:
    """Check a checkpoint reference the way the Fireworks SDK does, and normalise it.

    Accepted: a bare DNS label (``step-4``), ``<account>/run-<32 hex>/<label>[/…]`` and
    ``cross_job://<job>/<label>``. Anything with a URI scheme (``tinker://``, ``gs://``), a
    leading ``/`` or other multi-segment paths raises :class:`InvalidInput`.

    Example::

        validate_checkpoint_ref("step-4")                       # "step-4"
        validate_checkpoint_ref("tinker://r/weights/a")         # InvalidInput
    """
    if not isinstance(ref, str):
        raise InvalidInput(field, f"must be a str, got {type(ref).__name__}")
    norm = ref.strip()
    if norm.startswith(_CROSS_JOB):
        job, sep, name = norm[len(_CROSS_JOB) :].partition("/")
        if not sep or not job or not name:
            raise InvalidInput(field, f"expected {_CROSS_JOB}<source_job_id>/<checkpoint_name>")
        job = _logical_path(job, field)
        name = _logical_path(name, field)
        if "/" in job or "/" in name:
            raise InvalidInput(field, "the job id and checkpoint name must each be one DNS label")
        return f"{_CROSS_JOB}{job}/{name}"
    if norm.startswith("/") or _URI.match(norm):
        raise InvalidInput(
            field,
            f"the fireworks dialect loads a logical checkpoint name or a cross_job:// reference, "
            f"not {ref!r} (a tinker:// path is the tinker dialect's)",
        )
    norm = _logical_path(norm, field)
    segments = norm.split("/")
    if len(segments) == 1 or (len(segments) >= 3 and _RUN_ID.fullmatch(segments[1])):
        return norm
    raise InvalidInput(
        field,
        "must be a bare logical name, '<account>/run-<32 hex>/<checkpoint>' or a "
        "cross_job:// reference",
    )


def load_ref(path: str | types.SaveWeightsResponse, *, field: str = "path") -> str:
    """The checkpoint reference ``load_weights`` sends for ``path`` (a path, or what
    ``save_state`` returned), as the Fireworks SDK sends it: a logical name.

    A trainer answers ``save_state`` with the path it stored the state under; a dedicated
    trainer may store it under its own name (``step-N``). The Fireworks SDK loads by logical
    name, which the trainer resolves in its own checkpoint store, so a returned
    ``tinker://<run>/weights/<name>`` path is sent as ``<name>``: the name the trainer stored,
    never the one asked for. Anything else is checked by the SDK's rules
    (:func:`validate_checkpoint_ref`); a sampler snapshot (``sampler_weights``) is not a
    training state and raises :class:`InvalidInput`.

    Example::

        load_ref("tinker://s:train:0/weights/step-4")   # "step-4"
        load_ref(await client.save_state("ckpt"))       # "ckpt"
    """
    path = checkpoint_path_of(path, field=field)
    if not path.startswith(_TINKER):
        return validate_checkpoint_ref(path, field=field)
    parsed = validate_tinker_path(path, field=field)
    if parsed.kind != "weights":
        raise InvalidInput(
            field,
            f"{path!r} is a {parsed.kind} path; load_state loads a training state, the path "
            "save_state returned (tinker://<run>/weights/<name>)",
        )
    return validate_checkpoint_ref(parsed.name, field=field)  # one segment: a bare label


def cross_job_ref(source_job_id: str, checkpoint_name: str) -> str:
    """``cross_job://<source_job_id>/<checkpoint_name>``, each part one DNS label; a bad part
    raises :class:`InvalidInput` naming it (``source_job_id`` or ``checkpoint_name``).

    Example::

        cross_job_ref("old-job", "step-4")   # "cross_job://old-job/step-4"
    """
    try:
        return validate_checkpoint_ref(
            f"{_CROSS_JOB}{source_job_id}/{checkpoint_name}", field="checkpoint_name"
        )
    except InvalidInput:
        job = source_job_id.strip() if isinstance(source_job_id, str) else ""
        if not _DNS_LABEL.fullmatch(job):
            raise InvalidInput(
                "source_job_id",
                f"must be a bare trainer job id (one DNS label), got {source_job_id!r}",
            ) from None
        raise


_JSON = "application/json"


class FireworksDialect(TinkerProtocol):
    """The Fireworks Training SDK 1.2.30 wire (``protocol/fireworks-sdk.md`` §3).

    Example::

        FIREWORKS.check_load_path("cross_job://old-job/step-4")
    """

    name: Literal["fireworks"] = "fireworks"
    fetches_client_config = False
    finishes_session = False
    fetches_info = False
    names_tokenizer = False
    fwdbwd_accept = RESULT_ACCEPT
    extras: frozenset[str] = frozenset({"unload_model", "load_adapter"})
    saves_sampler_as_snapshot = True
    adds_response_tokens = True
    custom_loss_sum_is_surrogate = True  # as the SDK 1.2.30 client.py forward_backward_custom
    cancels_timed_out_samples = False  # the Fireworks SDK has no cancel
    unloads_models_on_close = True  # the Fireworks SDK's unload_model on close
    has_trainer_jobs = True
    # The Fireworks SDK samples through a deployment's or the serverless gateway's
    # /inference/v1/completions, never through the trainer's sampling sessions.
    has_sampling_sessions = False
    checkpoint_rows_path: str | None = paths.LIST_CHECKPOINTS

    def __repr__(self) -> str:
        return "FireworksDialect()"

    # The Fireworks SDK's bodies and rules as the module builds them.
    create_session_body = staticmethod(create_session_body)
    new_snapshot_suffix = staticmethod(generate_snapshot_suffix)
    parse_checkpoint_rows = staticmethod(parse_checkpoint_list)
    unload_model_body = staticmethod(unload_model_body)
    load_adapter_body = staticmethod(load_adapter_body)
    decode_fwdbwd = staticmethod(decode_fwdbwd_result)
    optim_step_body = staticmethod(optim_step_body)
    check_load_path = staticmethod(load_ref)
    load_weights_body = staticmethod(load_weights_body)

    def chunk_order(self, n_chunks: int, *, forward_only: bool) -> list[int]:
        """The SDK's ``forward`` sends the first chunk last; its ``forward_backward`` starts
        the leading chunk first."""
        if forward_only:
            return [*range(1, n_chunks), 0]
        return list(range(n_chunks))

    def default_export_precision(self, checkpoint_type: str) -> str | None:
        """``"source"`` for ``merged_base`` (the Fireworks SDK's default)."""
        return "source" if checkpoint_type == "merged_base" else None

    def checkpoint_reference(self, name: str, source_job_id: str | None) -> str | None:
        """Offline, the SDK's rules: the name itself (checked), or ``cross_job://`` with a
        source job."""
        if source_job_id is not None:
            return cross_job_ref(source_job_id, name)
        return validate_checkpoint_ref(name, field="checkpoint_name")

    def checkpoint_load_reference(self, path: str) -> str:
        """The checkpoint's logical name (the last segment of its path)."""
        return path.rstrip("/").rsplit("/", 1)[-1]

    def checkpoint_delete_path(self, path: str) -> str | None:
        """``None``: the platform manages checkpoint retention."""
        del path
        return None

    # What the Fireworks SDK refuses (or has not) on a dedicated trainer.
    checkpoint_ttl_path = staticmethod(
        refused(
            "ttl_seconds",
            "Fireworks does not support checkpoint TTLs (retention is managed by the platform); "
            "set_checkpoint_ttl_from_tinker_path is the tinker dialect's",
        )
    )
    save_weights_external_body = staticmethod(
        refused(
            "save_weights_external",
            "is the tinker dialect's; in the fireworks dialect export with "
            "save_weights_for_sampler_ext (and promote the snapshot)",
        )
    )
    # The SDK 1.2.30 reads the checkpoint's configuration from ``weights_info``, which only
    # serverless endpoints serve: a model created by its first ``load_weights`` is the tinker
    # dialect's.
    create_from_state_body = staticmethod(
        refused(
            "path",
            "create_training_client_from_state is the tinker dialect's; on a dedicated "
            "Fireworks trainer (as in the Fireworks SDK) create the training client with its "
            "explicit configuration (create_training_client) and call "
            "load_state_with_optimizer(saved) (or load_state) on it",
        )
    )

    def create_model_body(
        self,
        spec: ModelSpec,
        *,
        session_id: str,
        model_seq_id: int,
        user_metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Body of ``create_model`` (no ``optimizer_config``)."""
        return create_model_body(
            session_id=session_id,
            model_seq_id=model_seq_id,
            base_model=spec.base_model,
            lora_rank=spec.lora_rank,
            seed=spec.seed,
            train_mlp=spec.train_mlp,
            train_attn=spec.train_attn,
            train_unembed=spec.train_unembed,
            lora_alpha=spec.lora_alpha,
            user_metadata=user_metadata,
            base_only=spec.base_only,
        )

    def split(
        self,
        data: Sequence[types.Datum],
        client_config: Mapping[str, Any],
        *,
        values: float | None = None,
    ) -> list[list[types.Datum]]:
        """Chunks by the SDK's fixed limits (there is no ``client/config``)."""
        del client_config
        return split(data, values=values)

    def fwdbwd_request(
        self,
        op: Literal["forward", "forward_backward"],
        *,
        model_id: str,
        seq_id: int,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, Any] | None,
        client_config: Mapping[str, Any],
    ) -> WireRequest:
        """JSON ``/api/v1/forward`` or ``/api/v1/forward_backward``."""
        del client_config
        body = fwdbwd_body(
            op,
            model_id=model_id,
            seq_id=seq_id,
            data=data,
            loss_fn=loss_fn,
            loss_fn_config=loss_fn_config,
        )
        content = json.dumps(body, separators=(",", ":")).encode()
        return WireRequest(paths.operation(op), content, _JSON)

    def check_ttl(self, ttl_seconds: int | None) -> None:
        """Any TTL is refused: Fireworks does not support checkpoint TTLs."""
        if ttl_seconds is not None:
            raise InvalidInput(
                "ttl_seconds",
                "Fireworks does not support checkpoint TTLs (retention is managed by the "
                "platform); leave ttl_seconds unset in the fireworks dialect",
            )

    def save_weights_body(
        self,
        *,
        model_id: str,
        seq_id: int,
        name: str,
        ttl_seconds: int | None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Body of ``save_weights``; the SDK's ``save_state`` sends no ``user_metadata``."""
        self.check_ttl(ttl_seconds)
        if user_metadata is not None:
            raise InvalidInput(
                "user_metadata",
                "the fireworks dialect cannot attach metadata to a checkpoint (the Fireworks "
                "SDK's save_state sends none); it is the tinker dialect's",
            )
        return save_weights_body(model_id=model_id, seq_id=seq_id, name=name)

    def sampler_body(
        self,
        *,
        model_id: str,
        seq_id: int,
        name: str,
        ttl_seconds: int | None,
        checkpoint_type: str | None,
        export_precision: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Body of ``save_weights_for_sampler`` (the type is always sent)."""
        self.check_ttl(ttl_seconds)
        return save_weights_for_sampler_body(
            model_id=model_id,
            seq_id=seq_id,
            name=name,
            checkpoint_type=checkpoint_type or "base",
            export_precision=export_precision,
            metadata=metadata,
        )


FIREWORKS = FireworksDialect()
"""The Fireworks dialect."""
