"""The sans-IO wire codec: request bodies and reply parsing, in two dialects.

Nothing here does I/O. The shared parts are datum validation (:mod:`.validation`), chunking
and the merge of chunk results (:mod:`.chunking`), the server-side futures of
``retrieve_future`` (:mod:`.futures`) and the protobuf codecs (:mod:`.fwdbwd`, :mod:`.sample`).
Each dialect is one module with one :class:`Dialect` object: :mod:`.tinker` (the tinker SDK
0.38 wire) and :mod:`.fireworks` (the Fireworks Training SDK 1.2.30 wire).

Example::

    from firetitan_async.wire import dialect_named
    codec = dialect_named("fireworks")
    body = codec.create_session_body(user_metadata=None)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs
from tinker import types

from .futures import Done

__all__ = ["Dialect", "DialectName", "ModelSpec", "WireRequest", "dialect_named"]

DialectName = Literal["tinker", "fireworks"]


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

        WireRequest("/api/v1/forward", b"{...}", "application/json")
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
    fwdbwd_accept: str
    """``Accept`` of a forward/forward_backward result poll."""

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
        self, data: Sequence[types.Datum], client_config: Mapping[str, Any]
    ) -> list[list[types.Datum]]:
        """The chunks a forward/forward_backward batch is sent in."""
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
        self, *, model_id: str, seq_id: int, name: str, ttl_seconds: int | None
    ) -> dict[str, Any]:
        """Body of ``save_weights`` (``save_state``)."""
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


def dialect_named(name: DialectName) -> Dialect:
    """The dialect object of that name.

    Example::

        dialect_named("fireworks").name   # "fireworks"
    """
    from .fireworks import FIREWORKS
    from .tinker import TINKER

    return FIREWORKS if name == "fireworks" else TINKER
