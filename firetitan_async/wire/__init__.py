"""The sans-IO wire codec: request bodies and reply parsing, in two dialects.

Nothing here does I/O. The shared parts are datum validation (:mod:`.validation`), chunking
and the merge of chunk results (:mod:`.chunking`), the server-side futures of
``retrieve_future`` (:mod:`.futures`), the protobuf codecs (:mod:`.fwdbwd`, :mod:`.sample`)
and the control plane's checkpoint promotion body (:mod:`.promotion`).
Every ``/api/v1/...`` path, for the client and the local trainer alike, is in :mod:`.paths`.
Each dialect is one module with one :class:`Dialect` object: :mod:`.tinker` (the tinker SDK
0.38 wire) and :mod:`.fireworks` (the Fireworks Training SDK 1.2.30 wire).

May import: ``firetitan_async.errors``, ``firetitan_async._sdk_private``, ``tinker.types``
(nothing above it; no I/O, no anyio).

Example::

    from firetitan_async.wire import dialect_named
    codec = dialect_named("fireworks")
    body = codec.create_session_body(user_metadata=None)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NoReturn, Protocol
from urllib.parse import urlsplit

import attrs
from tinker import types

from ..errors import InvalidInput
from .futures import Done

__all__ = [
    "DIALECT_CHOICES",
    "Dialect",
    "DialectName",
    "ModelSpec",
    "WireRequest",
    "dialect_named",
    "job_dialect",
    "refused",
    "resolve_dialect",
    "validate_dialect_choice",
]

DialectName = Literal["tinker", "fireworks"]
DIALECT_CHOICES: tuple[str, ...] = ("auto", "fireworks", "tinker")
"""What a user may ask for: a dialect by name, or ``"auto"`` (see :func:`resolve_dialect`)."""
_TINKER_HOSTS = ("thinkingmachines.dev", "thinkingmachines.ai")


@attrs.frozen
class ModelSpec:
    """What ``create_model`` asks for (also the key that makes a training client unique).

    Example::

        ModelSpec(base_model="local/tiny-byte-lm", lora_rank=8)
    """

    base_model: str
    lora_rank: int = 0
    seed: int | None = None
    train_mlp: bool = True
    train_attn: bool = True
    train_unembed: bool = True
    lora_alpha: int = 32
    base_only: bool = False


@attrs.frozen
class WireRequest:
    """One submission: where it goes and its encoded body.

    Example::

        WireRequest(paths.operation("forward"), b"{...}", "application/json")
    """

    path: str
    content: bytes = attrs.field(repr=lambda c: f"<{len(c)} bytes>")
    content_type: str
    headers: Mapping[str, str] | None = None


class Dialect(Protocol):
    """What the training client asks of a dialect: build request X for op Y; parse its result.

    Example::

        codec = dialect_named("tinker")
        request = codec.fwdbwd_request("forward", model_id=m, seq_id=1, data=batch,
                                       loss_fn="cross_entropy", loss_fn_config=None,
                                       client_config={})
    """

    @property
    def name(self) -> DialectName:
        """``"tinker"`` or ``"fireworks"``."""
        ...

    fetches_client_config: bool
    """Whether the bootstrap asks ``client/config`` first."""
    finishes_session: bool
    """Whether leaving the session sends ``sessions/{id}/finish``."""
    fetches_info: bool
    """Whether ``create_model`` is followed by ``get_info``."""
    names_tokenizer: bool
    """Whether the trainer names its tokenizer (``get_info``'s ``tokenizer_id``); otherwise
    the caller names it (``get_tokenizer(tokenizer_model)``, as the Fireworks SDK takes it)."""
    fwdbwd_accept: str
    """``Accept`` of a forward/forward_backward result poll."""
    extras: frozenset[str]
    """The operations only this dialect has (``"unload_model"``, ``"load_adapter"``)."""
    saves_sampler_as_snapshot: bool
    """Whether ``save_weights_for_sampler`` is a typed snapshot (``..._ext``, automatic type)."""
    adds_response_tokens: bool
    """Whether a ``cross_entropy`` result gets the SDK's client-side ``response_tokens`` metric."""
    custom_loss_sum_is_surrogate: bool
    """Whether ``forward_backward_custom``'s ``loss:sum`` is the trainer's surrogate loss (the
    Fireworks SDK) rather than the custom loss, with the surrogate under ``surrogate_loss:sum``
    (tinker)."""
    cancels_timed_out_samples: bool
    """Whether a timed-out ``sample`` is cancelled on the server (``cancel_future``)."""
    unloads_models_on_close: bool
    """Whether leaving the session unloads the models it created (``unload_model``)."""
    has_trainer_jobs: bool
    """Whether the platform behind it manages trainer jobs and deployments (a control plane)."""
    has_sampling_sessions: bool
    """Whether the trainer samples (tinker's sampling sessions: ``create_sampling_session``,
    ``asample``, the ephemeral ``save_weights_for_sampler``); otherwise a sampling client
    samples through a completions endpoint (a deployment, or a serverless gateway), as the
    Fireworks SDK's ``FiretitanSamplingClient`` does."""
    checkpoint_rows_path: str | None
    """Where the trainer lists its checkpoints as rows (``None``: per training run, over REST)."""

    def request_type(self, op: str) -> str:
        """The ``X-Tinker-Request-Type`` of ``op``'s ``retrieve_future`` polls."""
        ...

    def client_config_body(self) -> dict[str, Any]:
        """Body of ``client/config`` (sent when :attr:`fetches_client_config`)."""
        ...

    def session_heartbeat_body(self, session_id: str) -> dict[str, Any]:
        """Body of ``session_heartbeat``."""
        ...

    def finish_session_body(
        self, session_id: str, status: Literal["success", "errored", "interrupted"]
    ) -> dict[str, Any]:
        """Body of ``sessions/{id}/finish`` (sent when :attr:`finishes_session`)."""
        ...

    def get_info_body(self, model_id: str) -> dict[str, Any]:
        """Body of ``get_info`` (sent when :attr:`fetches_info`)."""
        ...

    def create_sampling_session_body(
        self,
        *,
        session_id: str,
        sampling_session_seq_id: int,
        model_path: str | None,
        base_model: str | None,
    ) -> dict[str, Any]:
        """Body of ``create_sampling_session``."""
        ...

    def ephemeral_sampler_body(
        self, *, model_id: str, seq_id: int, sampling_session_seq_id: int
    ) -> dict[str, Any]:
        """Body of an unnamed ``save_weights_for_sampler`` that yields a sampling session."""
        ...

    def cancel_future_body(self, request_id: str) -> dict[str, Any]:
        """Body of ``cancel_future`` (sent when :attr:`cancels_timed_out_samples`)."""
        ...

    def new_snapshot_suffix(self) -> str | None:
        """The suffix of a new training client's snapshot names (``None``: from the session)."""
        ...

    def chunk_order(self, n_chunks: int, *, forward_only: bool) -> list[int]:
        """The order in which the chunks of one forward/forward_backward batch are started."""
        ...

    def default_export_precision(self, checkpoint_type: str) -> str | None:
        """The ``export_precision`` a snapshot of that type gets when none is given."""
        ...

    def parse_checkpoint_rows(self, reply: Any) -> list[dict[str, Any]]:
        """The rows of a :attr:`checkpoint_rows_path` reply."""
        ...

    def checkpoint_reference(self, name: str, source_job_id: str | None) -> str | None:
        """A checkpoint reference resolved offline, or ``None`` when the server must be asked
        (raises ``InvalidInput`` for a reference the dialect cannot express)."""
        ...

    def unload_model_body(self, *, model_id: str) -> dict[str, Any]:
        """Body of ``unload_model`` (``InvalidInput`` where the dialect has none)."""
        ...

    def checkpoint_load_reference(self, path: str) -> str:
        """What ``load_state*`` is given to restore the checkpoint saved at ``path``."""
        ...

    def checkpoint_delete_path(self, path: str) -> str | None:
        """The ``DELETE`` path of the checkpoint at ``path`` (``None``: the platform keeps it)."""
        ...

    def load_adapter_body(self, *, model_id: str, seq_id: int, adapter_path: str) -> dict[str, Any]:
        """Body of ``load_adapter`` (``InvalidInput`` where the dialect has none)."""
        ...

    def create_session_body(self, *, user_metadata: Mapping[str, str] | None) -> dict[str, Any]:
        """Body of ``create_session``."""
        ...

    def create_model_body(
        self,
        spec: ModelSpec,
        *,
        session_id: str,
        model_seq_id: int,
        user_metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Body of ``create_model`` (raises ``InvalidInput`` for what the dialect lacks)."""
        ...

    def split(
        self,
        data: Sequence[types.Datum],
        client_config: Mapping[str, Any],
        *,
        values: float | None = None,
    ) -> list[list[types.Datum]]:
        """The chunks a forward/forward_backward batch is sent in (``values``: what
        ``validate_forward_backward`` returned for it, if it ran)."""
        ...

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
        """One chunk's submission."""
        ...

    def decode_fwdbwd(self, done: Done) -> types.ForwardBackwardOutput:
        """One chunk's result."""
        ...

    def optim_step_body(
        self,
        *,
        model_id: str,
        seq_id: int,
        adam_params: types.AdamParams,
        grad_accumulation_normalization: str | None,
        emit_grad_norm_metrics: bool | str | None,
    ) -> dict[str, Any]:
        """Body of ``optim_step`` (the extras raise ``InvalidInput`` where not expressible)."""
        ...

    def check_ttl(self, ttl_seconds: int | None) -> None:
        """Refuse a TTL the dialect cannot express."""
        ...

    def check_load_path(
        self, path: str | types.SaveWeightsResponse, *, field: str = "path"
    ) -> str:
        """The checkpoint reference ``load_state*`` sends for a path or for what
        ``save_state`` returned, normalised (else ``InvalidInput``)."""
        ...

    def save_weights_body(
        self,
        *,
        model_id: str,
        seq_id: int,
        name: str,
        ttl_seconds: int | None,
        user_metadata: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Body of ``save_weights`` (``save_state``)."""
        ...

    def create_from_state_body(
        self,
        *,
        session_id: str,
        model_seq_id: int,
        path: str,
        optimizer: bool,
        base_model: str | None,
        user_metadata: Mapping[str, str] | None,
    ) -> dict[str, Any]:
        """Body of the ``load_weights`` that creates a model from a checkpoint
        (``create_training_client_from_state*``), or ``InvalidInput`` naming the dialect."""
        ...

    def checkpoint_ttl_path(self, path: str) -> str:
        """Where ``PUT`` sets a ``tinker://`` checkpoint's TTL (else ``InvalidInput``)."""
        ...

    def checkpoint_ttl_body(self, ttl_seconds: int | None) -> dict[str, Any]:
        """Body of the checkpoint TTL ``PUT`` (``None`` removes the expiry)."""
        ...

    def external_weights_urls_path(self, path: str) -> str:
        """Where ``GET`` lists an external-weights checkpoint's signed download URLs."""
        ...

    def save_weights_external_body(
        self, *, model_id: str, seq_id: int, name: str, ttl_seconds: int | None
    ) -> dict[str, Any]:
        """Body of ``save_weights_external`` (else ``InvalidInput`` naming the dialect)."""
        ...

    def load_weights_body(
        self, *, model_id: str, seq_id: int, path: str, optimizer: bool
    ) -> dict[str, Any]:
        """Body of ``load_weights`` (``load_state*``)."""
        ...

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
        """Body of a named ``save_weights_for_sampler``."""
        ...


def refused(field: str, reason: str) -> Callable[..., Any]:
    """A :class:`Dialect` member the dialect does not have: a call raises
    ``InvalidInput(field, reason)``, before anything is sent (bind it with ``staticmethod``).
    It is typed to return ``Any`` so that the other dialect may override it with its builder.

    Example::

        class TinkerProtocol:
            unload_model_body = staticmethod(
                refused("unload_model", "is Fireworks-only: the tinker dialect has none")
            )
    """

    def refuse(*args: object, **kwargs: object) -> NoReturn:
        del args, kwargs
        raise InvalidInput(field, reason)

    return refuse


def dialect_named(name: DialectName) -> Dialect:
    """The dialect object of that name.

    Example::

        dialect_named("fireworks").name   # "fireworks"
    """
    from .fireworks import FIREWORKS
    from .tinker import TINKER

    return FIREWORKS if name == "fireworks" else TINKER


def resolve_dialect(
    dialect: Literal["auto", "fireworks", "tinker"], base_url: str, api_key: str | None
) -> DialectName:
    """The dialect ``"auto"`` picks: ``tinker`` for a ``tml-`` key or one of Tinker's hosted
    URLs (``*.thinkingmachines.dev``/``.ai``), ``fireworks`` for everything else.

    Example::

        resolve_dialect("auto", "http://127.0.0.1:8080", None)   # "fireworks"
        resolve_dialect("auto", "http://127.0.0.1:8080", "tml-x") # "tinker"
    """
    if dialect in ("fireworks", "tinker"):
        return dialect
    if dialect != "auto":
        raise InvalidInput("dialect", f"must be 'auto', 'fireworks' or 'tinker', got {dialect!r}")
    if api_key is not None and api_key.startswith("tml-"):
        return "tinker"
    host = (urlsplit(base_url).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _TINKER_HOSTS):
        return "tinker"
    return "fireworks"


def validate_dialect_choice(dialect: object, *, field: str = "dialect") -> None:
    """Refuse anything but ``"auto"``, ``"fireworks"`` or ``"tinker"``.

    Example::

        validate_dialect_choice("auto")
    """
    if dialect not in DIALECT_CHOICES:
        raise InvalidInput(field, f"must be auto, fireworks or tinker, got {dialect!r}")


def job_dialect(requested: object) -> DialectName:
    """The dialect of a session on a trainer job: Fireworks (``"auto"`` picks it too).

    Example::

        job_dialect("auto")  # "fireworks"
    """
    if requested not in ("auto", "fireworks"):
        raise InvalidInput("dialect", "a trainer job speaks the fireworks dialect only")
    return "fireworks"
