"""JSON request bodies, byte for byte as the tinker SDK 0.38 sends them.

Every builder returns a plain ``dict`` equal to what the SDK produces with
``request.model_dump(exclude_none=True, mode="json")`` for the same request (keys in the same
order, so the JSON text is identical too). Nothing here does I/O.

Example::

    body = optim_step_body(model_id="s:train:0", seq_id=3, adam_params=types.AdamParams())
    # {"model_id": "s:train:0", "seq_id": 3, "type": "optim_step", "adam_params": {...}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import zstandard
from tinker import types

from ..errors import InvalidInput, ProtocolError
from . import ModelSpec, WireRequest, paths, refused
from .chunking import split_batch
from .futures import Done, retrieve_future_body
from .fwdbwd import decode_forward_backward_output, encode_forward_backward_request
from .validation import checkpoint_path_of, validate_tinker_path, validate_ttl

__all__ = [
    "PROTOCOL_SDK_VERSION",
    "REQUEST_TYPE",
    "TINKER",
    "TinkerDialect",
    "TinkerProtocol",
    "adam_params_json",
    "cancel_future_body",
    "checkpoint_ttl_body",
    "client_config_body",
    "create_from_state_body",
    "create_model_body",
    "create_sampling_session_body",
    "create_session_body",
    "ephemeral_sampler_body",
    "finish_session_body",
    "get_info_body",
    "load_weights_body",
    "optim_step_body",
    "retrieve_future_body",
    "save_weights_body",
    "save_weights_external_body",
    "save_weights_for_sampler_body",
    "session_heartbeat_body",
]

PROTOCOL_SDK_VERSION: str = "0.38.0"
"""The tinker SDK version whose wire dialect we speak (sent as ``sdk_version``)."""

REQUEST_TYPE: Mapping[str, str] = MappingProxyType(
    {
        "create_model": "CreateModel",
        "forward": "Forward",
        "forward_backward": "ForwardBackward",
        "optim_step": "OptimStep",
        "save_weights": "SaveWeights",
        "load_weights": "LoadWeights",
        "save_weights_for_sampler": "SaveWeightsForSampler",
        "save_weights_external": "SaveWeightsExternal",
        "sample": "Sample",
        "asample": "Sample",
        "create_custom_loss": "CreateCustomLoss",
    }
)
"""Operation name → the ``X-Tinker-Request-Type`` header of its ``retrieve_future`` polls.

Example::

    headers = {"X-Tinker-Request-Type": REQUEST_TYPE["forward_backward"]}  # "ForwardBackward"
"""


def client_config_body() -> dict[str, Any]:
    """Body of ``POST /api/v1/client/config``.

    Example::

        client_config_body()  # {"sdk_version": "0.38.0"}
    """
    return {"sdk_version": PROTOCOL_SDK_VERSION}


def create_session_body(
    *,
    user_metadata: Mapping[str, str] | None,
    tags: Sequence[str] = (),
    project_id: str | None = None,
    display_name: str | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/create_session``.

    Like the SDK, a missing ``user_metadata`` is sent as ``{}``.

    Example::

        create_session_body(user_metadata={"run": "a"})
        # {"tags": [], "user_metadata": {"run": "a"}, "sdk_version": "0.38.0",
        #  "type": "create_session"}
    """
    body: dict[str, Any] = {
        "tags": list(tags),
        "user_metadata": dict(user_metadata or {}),
        "sdk_version": PROTOCOL_SDK_VERSION,
    }
    if project_id is not None:
        body["project_id"] = project_id
    if display_name is not None:
        body["display_name"] = display_name
    body["type"] = "create_session"
    return body


def session_heartbeat_body(session_id: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/session_heartbeat``.

    Example::

        session_heartbeat_body("s1")  # {"session_id": "s1", "type": "session_heartbeat"}
    """
    return {"session_id": session_id, "type": "session_heartbeat"}


def finish_session_body(
    session_id: str,
    status: Literal["success", "errored", "interrupted"] = "success",
    detail: str | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/sessions/{session_id}/finish``.

    The session id travels in the path only; it is accepted here so callers build path and body
    from the same value. As in the SDK (a raw dict, not a pydantic dump) ``detail`` is sent
    even when it is ``None``.

    Example::

        finish_session_body("s1")  # {"reason": {"type": "success"}, "detail": None}
    """
    del session_id  # part of the URL, not of the body
    return {"reason": {"type": status}, "detail": detail}


def create_model_body(
    *,
    session_id: str,
    model_seq_id: int,
    base_model: str,
    lora_rank: int,
    user_metadata: Mapping[str, str] | None,
    seed: int | None = None,
    train_mlp: bool = True,
    train_attn: bool = True,
    train_unembed: bool = True,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/create_model``.

    ``lora_rank > 0`` sends the SDK's ``lora_config`` (``seed`` when given, and the three train
    flags). ``lora_rank == 0`` means full-parameter training, which the 0.38 SDK cannot
    express; we send ``lora_config`` with ``rank: 0`` (Fireworks service-mode trainers and the
    local trainer read rank 0, or no ``lora_config``, as full-parameter).

    Example::

        create_model_body(session_id="s", model_seq_id=0, base_model="m", lora_rank=8,
                          user_metadata=None)
    """
    body: dict[str, Any] = {
        "session_id": session_id,
        "model_seq_id": model_seq_id,
        "base_model": base_model,
    }
    if user_metadata is not None:
        body["user_metadata"] = dict(user_metadata)
    lora: dict[str, Any] = {"rank": lora_rank}
    if seed is not None:
        lora["seed"] = seed
    lora.update(train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn)
    body["lora_config"] = lora
    body["optimizer_config"] = {"type": "adamw"}
    body["type"] = "create_model"
    return body


def get_info_body(model_id: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/get_info``.

    Example::

        get_info_body("s:train:0")  # {"model_id": "s:train:0", "type": "get_info"}
    """
    return {"model_id": model_id, "type": "get_info"}


def adam_params_json(adam_params: types.AdamParams) -> dict[str, Any]:
    """The JSON form of :class:`tinker.types.AdamParams` (all six fields, as floats).

    Example::

        adam_params_json(types.AdamParams(learning_rate=1e-3))["learning_rate"]  # 0.001
    """
    return {
        "learning_rate": float(adam_params.learning_rate),
        "beta1": float(adam_params.beta1),
        "beta2": float(adam_params.beta2),
        "eps": float(adam_params.eps),
        "weight_decay": float(adam_params.weight_decay),
        "grad_clip_norm": float(adam_params.grad_clip_norm),
    }


def optim_step_body(*, model_id: str, seq_id: int, adam_params: types.AdamParams) -> dict[str, Any]:
    """Body of ``POST /api/v1/optim_step`` (Adam parameters travel as ``adam_params``).

    Example::

        optim_step_body(model_id="s:train:0", seq_id=2, adam_params=types.AdamParams())
    """
    return {
        "model_id": model_id,
        "seq_id": seq_id,
        "type": "optim_step",
        "adam_params": adam_params_json(adam_params),
    }


def save_weights_body(
    *,
    model_id: str,
    seq_id: int,
    name: str,
    ttl_seconds: int | None,
    user_metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/save_weights`` (``save_state``); the name travels as ``path``.

    ``user_metadata`` is attached to the checkpoint (omitted when ``None``, as the SDK does).

    Example::

        save_weights_body(model_id="s:train:0", seq_id=4, name="step-4", ttl_seconds=None,
                          user_metadata={"stage": "sft"})
    """
    body: dict[str, Any] = {"model_id": model_id, "path": name, "seq_id": seq_id}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    body["overwrite"] = False
    if user_metadata is not None:
        body["user_metadata"] = dict(user_metadata)
    body["type"] = "save_weights"
    return body


def load_weights_body(*, model_id: str, seq_id: int, path: str, optimizer: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/load_weights`` addressing an existing model (``load_state``).

    Example::

        load_weights_body(model_id="s:train:0", seq_id=5, path="tinker://r/weights/a",
                          optimizer=True)
    """
    return {
        "model_id": model_id,
        "seq_id": seq_id,
        "path": path,
        "optimizer": optimizer,
        "type": "load_weights",
    }


def create_from_state_body(
    *,
    session_id: str,
    model_seq_id: int,
    path: str,
    optimizer: bool,
    base_model: str | None = None,
    user_metadata: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/load_weights`` that creates a model from a checkpoint
    (``create_training_client_from_state[_with_optimizer]``): addressed to the session and a
    new ``model_seq_id`` instead of a model, the load is the new model's first operation.

    Example::

        create_from_state_body(session_id="s", model_seq_id=1, path="tinker://r/weights/a",
                               optimizer=True)
        # {"session_id": "s", "model_seq_id": 1, "path": "tinker://r/weights/a",
        #  "optimizer": True, "type": "load_weights"}
    """
    body: dict[str, Any] = {"session_id": session_id, "model_seq_id": model_seq_id}
    if base_model is not None:
        body["base_model"] = base_model
    if user_metadata is not None:
        body["user_metadata"] = dict(user_metadata)
    body["path"] = path
    body["optimizer"] = optimizer
    body["type"] = "load_weights"
    return body


def save_weights_external_body(
    *, model_id: str, seq_id: int, name: str, ttl_seconds: int | None
) -> dict[str, Any]:
    """Body of ``POST /api/v1/save_weights_external`` (weights in an external format, e.g.
    Hugging Face's, downloadable through ``get_external_weights_urls``).

    Example::

        save_weights_external_body(model_id="s:train:0", seq_id=8, name="export",
                                   ttl_seconds=None)
        # {"model_id": "s:train:0", "path": "export", "seq_id": 8,
        #  "type": "save_weights_external"}
    """
    body: dict[str, Any] = {"model_id": model_id, "path": name, "seq_id": seq_id}
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    body["type"] = "save_weights_external"
    return body


def checkpoint_ttl_body(ttl_seconds: int | None) -> dict[str, Any]:
    """Body of ``PUT /api/v1/training_runs/{run}/checkpoints/{id}/ttl``; ``None`` (sent as
    ``null``, as the SDK does) removes the expiry.

    Example::

        checkpoint_ttl_body(86400)   # {"ttl_seconds": 86400}
        checkpoint_ttl_body(None)    # {"ttl_seconds": None}
    """
    return {"ttl_seconds": ttl_seconds}


def save_weights_for_sampler_body(
    *,
    model_id: str,
    seq_id: int,
    name: str,
    ttl_seconds: int | None,
    checkpoint_type: str | None = None,
) -> dict[str, Any]:
    """Body of a named ``POST /api/v1/save_weights_for_sampler``.

    ``checkpoint_type`` (``"base"`` or ``"delta"``) is the Fireworks extension used by
    ``save_weights_for_sampler_ext``; it is omitted when ``None``, which gives exactly the
    SDK's body.

    Example::

        save_weights_for_sampler_body(model_id="s:train:0", seq_id=6, name="snap",
                                      ttl_seconds=None, checkpoint_type="base")
    """
    body: dict[str, Any] = {
        "model_id": model_id,
        "path": name,
        "kind": "snapshot",
        "seq_id": seq_id,
    }
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    body["type"] = "save_weights_for_sampler"
    if checkpoint_type is not None:
        body["checkpoint_type"] = checkpoint_type
    return body


def ephemeral_sampler_body(
    *, model_id: str, seq_id: int, sampling_session_seq_id: int
) -> dict[str, Any]:
    """Body of an unnamed ``save_weights_for_sampler`` that yields a sampling session
    (``save_weights_and_get_sampling_client``); the result is ``{"sampling_session_id"}``.

    Example::

        ephemeral_sampler_body(model_id="s:train:0", seq_id=7, sampling_session_seq_id=1)
    """
    return {
        "model_id": model_id,
        "sampling_session_seq_id": sampling_session_seq_id,
        "kind": "snapshot",
        "seq_id": seq_id,
        "type": "save_weights_for_sampler",
    }


def create_sampling_session_body(
    *,
    session_id: str,
    sampling_session_seq_id: int,
    model_path: str | None,
    base_model: str | None,
) -> dict[str, Any]:
    """Body of ``POST /api/v1/create_sampling_session``.

    Example::

        create_sampling_session_body(session_id="s", sampling_session_seq_id=0,
                                     model_path="tinker://r/sampler_weights/a", base_model=None)
    """
    body: dict[str, Any] = {
        "session_id": session_id,
        "sampling_session_seq_id": sampling_session_seq_id,
    }
    if base_model is not None:
        body["base_model"] = base_model
    if model_path is not None:
        body["model_path"] = model_path
    body["type"] = "create_sampling_session"
    return body




def cancel_future_body(request_id: str) -> dict[str, Any]:
    """Body of ``POST /api/v1/cancel_future`` (sampling only; flag-gated on the server).

    Example::

        cancel_future_body("req-1")   # {"request_id": "req-1"}
    """
    return {"request_id": request_id}


_PROTO = "application/x-protobuf"


def _chunk_limit(client_config: Mapping[str, Any], key: str, default: int) -> int:
    """A chunk limit of the server's ``client/config`` (``default`` when absent)."""
    value = client_config.get(key) or default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ProtocolError("client/config reply", f"{key} must be an int >= 1, got {value!r:.50}")
    return value


class TinkerProtocol:
    """The requests both dialects send alike (the tinker protocol's session plumbing), and the
    tinker defaults of every capability a dialect may change. :class:`TinkerDialect` and the
    Fireworks dialect derive from it.

    Example::

        TINKER.session_heartbeat_body("s1")  # {"session_id": "s1", "type": "session_heartbeat"}
    """

    extras: frozenset[str] = frozenset()
    saves_sampler_as_snapshot = False
    adds_response_tokens = False
    custom_loss_sum_is_surrogate = False
    cancels_timed_out_samples = True
    unloads_models_on_close = False
    has_trainer_jobs = False
    has_sampling_sessions = True
    checkpoint_rows_path: str | None = None

    def request_type(self, op: str) -> str:
        """``REQUEST_TYPE[op]``."""
        return REQUEST_TYPE[op]

    # The bodies both dialects send alike: the module's builders, one copy each (a
    # staticmethod, so a call costs what the builder costs).
    client_config_body = staticmethod(client_config_body)
    session_heartbeat_body = staticmethod(session_heartbeat_body)
    finish_session_body = staticmethod(finish_session_body)
    get_info_body = staticmethod(get_info_body)
    create_sampling_session_body = staticmethod(create_sampling_session_body)
    ephemeral_sampler_body = staticmethod(ephemeral_sampler_body)
    cancel_future_body = staticmethod(cancel_future_body)
    checkpoint_ttl_body = staticmethod(checkpoint_ttl_body)

    def new_snapshot_suffix(self) -> str | None:
        """``None``: snapshot names are derived from the session (:func:`snapshot_name`)."""
        return None

    def chunk_order(self, n_chunks: int, *, forward_only: bool) -> list[int]:
        """The tinker SDK sends the first chunk last."""
        del forward_only
        return [*range(1, n_chunks), 0]

    def default_export_precision(self, checkpoint_type: str) -> str | None:
        """No export precision unless asked for."""
        del checkpoint_type
        return None

    def parse_checkpoint_rows(self, reply: Any) -> list[dict[str, Any]]:
        """Never called: :attr:`checkpoint_rows_path` is ``None`` (listed per training run)."""
        del reply
        raise ProtocolError(
            "checkpoint listing", "the tinker dialect lists checkpoints per training run"
        )

    def checkpoint_reference(self, name: str, source_job_id: str | None) -> str | None:
        """``None`` (the server is asked); a ``cross_job://`` reference is refused."""
        del source_job_id
        if name.startswith("cross_job://"):
            raise InvalidInput(
                "checkpoint_name", "cross_job:// references are Fireworks-only (tinker dialect)"
            )
        return None

    # The Fireworks SDK's operations the tinker wire has not.
    unload_model_body = staticmethod(
        refused("unload_model", "is Fireworks-only: the tinker dialect has none")
    )
    load_adapter_body = staticmethod(
        refused("load_adapter", "is Fireworks-only: the tinker dialect has none")
    )

    def checkpoint_load_reference(self, path: str) -> str:
        """The ``tinker://`` path itself."""
        return path

    def checkpoint_delete_path(self, path: str) -> str | None:
        """``/api/v1/training_runs/{run}/checkpoints/{checkpoint}`` of a ``tinker://`` path."""
        parsed = validate_tinker_path(path)
        checkpoint_id = path.removeprefix(f"tinker://{parsed.training_run_id}/")
        return paths.run_checkpoint(parsed.training_run_id, checkpoint_id)

    def checkpoint_ttl_path(self, path: str) -> str:
        """``/api/v1/training_runs/{run}/checkpoints/{checkpoint}/ttl`` of a ``tinker://`` path."""
        parsed = validate_tinker_path(path)
        checkpoint_id = path.removeprefix(f"tinker://{parsed.training_run_id}/")
        return paths.run_checkpoint_ttl(parsed.training_run_id, checkpoint_id)

    def external_weights_urls_path(self, path: str) -> str:
        """Where ``GET`` lists the signed download URLs of a
        ``tinker://{run}/external_weights/{name}`` checkpoint (another kind: ``InvalidInput``,
        as the SDK refuses it)."""
        parsed = validate_tinker_path(path, field="tinker_path")
        if parsed.kind != "external_weights":
            raise InvalidInput(
                "tinker_path",
                "get_external_weights_urls only takes external weights checkpoints "
                f"(tinker://<run>/external_weights/<name>), got {path!r}",
            )
        return paths.run_checkpoint_external_urls(
            parsed.training_run_id, f"external_weights/{parsed.name}"
        )


class TinkerDialect(TinkerProtocol):
    """The tinker SDK 0.38 wire (``protocol/tinker-wire.md``), byte for byte.

    Example::

        TINKER.fwdbwd_request("forward_backward", model_id="s:train:0", seq_id=1, data=batch,
                              loss_fn="cross_entropy", loss_fn_config=None, client_config={})
    """

    name: Literal["tinker"] = "tinker"
    fetches_client_config = True
    finishes_session = True
    fetches_info = True
    names_tokenizer = True
    fwdbwd_accept = _PROTO

    def __repr__(self) -> str:
        return "TinkerDialect()"

    # The tinker SDK's bodies as the module builds them.
    create_session_body = staticmethod(create_session_body)
    save_weights_body = staticmethod(save_weights_body)
    save_weights_external_body = staticmethod(save_weights_external_body)
    create_from_state_body = staticmethod(create_from_state_body)
    load_weights_body = staticmethod(load_weights_body)

    def create_model_body(
        self,
        spec: ModelSpec,
        *,
        session_id: str,
        model_seq_id: int,
        user_metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Body of ``create_model``; ``base_only`` and a LoRA ``alpha`` other than 32 do not
        exist in this dialect."""
        if spec.base_only:
            raise InvalidInput(
                "base_only", "the tinker dialect has no base-only (frozen reference) model"
            )
        if spec.lora_alpha != 32:
            raise InvalidInput("lora_alpha", "the tinker dialect cannot send a LoRA alpha")
        return create_model_body(
            session_id=session_id,
            model_seq_id=model_seq_id,
            base_model=spec.base_model,
            lora_rank=spec.lora_rank,
            user_metadata=user_metadata,
            seed=spec.seed,
            train_mlp=spec.train_mlp,
            train_attn=spec.train_attn,
            train_unembed=spec.train_unembed,
        )

    def split(
        self,
        data: Sequence[types.Datum],
        client_config: Mapping[str, Any],
        *,
        values: float | None = None,
    ) -> list[list[types.Datum]]:
        """Chunks by the server's ``client/config`` limits (the tinker SDK's estimate)."""
        return split_batch(
            data,
            max_len=_chunk_limit(client_config, "fwdbwd_max_chunk_len", 1024),
            max_bytes=_chunk_limit(client_config, "fwdbwd_max_chunk_bytes_count", 5_000_000),
            values=values,
        )

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
        """A protobuf ``forward_backward`` (``forward_only`` for ``forward``), zstd when the
        server's config asks for it."""
        body = encode_forward_backward_request(
            model_id=model_id,
            seq_id=seq_id,
            data=data,
            loss_fn=loss_fn,
            loss_fn_config=loss_fn_config,
            forward_only=op == "forward",
        )
        headers = None
        if client_config.get("proto_compress_fwdbwd"):
            body = zstandard.ZstdCompressor().compress(body)
            headers = {"Content-Encoding": "zstd"}
        return WireRequest(paths.operation("forward_backward"), body, _PROTO, headers)

    def decode_fwdbwd(self, done: Done) -> types.ForwardBackwardOutput:
        """The protobuf ``ForwardBackwardOutput``."""
        return decode_forward_backward_output(done.payload)

    def optim_step_body(
        self,
        *,
        model_id: str,
        seq_id: int,
        adam_params: types.AdamParams,
        grad_accumulation_normalization: str | None,
        emit_grad_norm_metrics: bool | str | None,
    ) -> dict[str, Any]:
        """Body of ``optim_step``; the Fireworks extras cannot be sent in this dialect."""
        for field, value in (
            ("grad_accumulation_normalization", grad_accumulation_normalization),
            ("emit_grad_norm_metrics", emit_grad_norm_metrics),
        ):
            if value is not None:
                raise InvalidInput(field, "is Fireworks-only: the tinker dialect cannot send it")
        return optim_step_body(model_id=model_id, seq_id=seq_id, adam_params=adam_params)

    def check_ttl(self, ttl_seconds: int | None) -> None:
        """``None`` or an int > 0."""
        validate_ttl(ttl_seconds)

    def check_load_path(
        self, path: str | types.SaveWeightsResponse, *, field: str = "path"
    ) -> str:
        """A ``tinker://`` path, or what ``save_state`` returned (its ``path``);
        ``cross_job://`` and logical names are Fireworks-only."""
        path = checkpoint_path_of(path, field=field)
        if path.startswith("cross_job://"):
            raise InvalidInput(
                field, "the tinker dialect cannot load a cross_job:// reference (Fireworks only)"
            )
        validate_tinker_path(path, field=field)
        return path

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
        """Body of a named ``save_weights_for_sampler`` (``kind: snapshot``); ``merged_base``,
        ``export_precision`` and ``metadata`` are Fireworks-only."""
        if checkpoint_type == "merged_base":
            raise InvalidInput(
                "checkpoint_type", "the tinker dialect cannot save a merged_base (Fireworks only)"
            )
        if export_precision is not None:
            raise InvalidInput("export_precision", "is Fireworks-only (tinker dialect)")
        if metadata is not None:
            raise InvalidInput("metadata", "is Fireworks-only (tinker dialect)")
        return save_weights_for_sampler_body(
            model_id=model_id,
            seq_id=seq_id,
            name=name,
            ttl_seconds=ttl_seconds,
            checkpoint_type=checkpoint_type,
        )


TINKER = TinkerDialect()
"""The tinker dialect."""
