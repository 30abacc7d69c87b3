"""``TrainingClient``: training operations on one model, pipelined and ordered by seq_id."""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import numpy as np
from tinker import types

from .._sdk_private import tensor_array
from .._session._deadlines import Deadlines, call_deadlines
from .._session._ordered_ops import OrderedOps, first_error
from .._session._pending import Pending
from .._session._protocol import ClientSession
from ..errors import FiretitanError, InvalidInput, ProtocolError, UsageError
from ..wire import Dialect, ModelSpec, paths
from ..wire.chunking import merge_outputs
from ..wire.futures import decode_json_result, parse_json_object
from ..wire.validation import (
    validate_adam_params,
    validate_checkpoint_name,
    validate_forward_backward,
    validate_optim_extras,
    validate_snapshot_options,
    validate_tinker_path,
    validate_user_metadata,
)
from ._custom_loss import (
    CustomLoss,
    TorchLoss,
    backward_batch,
    custom_loss_metrics,
    forward_batch,
    forward_logprobs,
    precomputed_logprobs,
    run_custom_loss,
)
from ._fireworks_types import to_tinker_adam, to_tinker_data
from ._loss_handles import LossHandle, handle_as_custom_loss
from ._snapshots import CheckpointEntry, CheckpointType, SamplerSnapshot, snapshot_name
from ._tokenizer import TokenizerCache

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ._sampling import SamplingClient

__all__ = ["TrainingClient"]

R = TypeVar("R")


class TrainingClient:
    """Training operations on one model of a :class:`ServiceSession`.

    Every operation method is a plain (non-async) call that returns a :class:`Pending` at once:
    its sequence id is reserved at the call, its request leaves immediately (submissions are
    pipelined), and the server runs the operations in call order. Await the Pendings when you
    need the results. The session's dialect decides the wire; a call the dialect cannot express
    raises :class:`InvalidInput` before anything is sent. Every operation method also takes
    ``deadlines=``: a :class:`Deadlines` that replaces the session's budgets for that call.

    Example::

        client = await session.create_training_client("local/tiny-byte-lm", lora_rank=8)
        for batch in batches:
            fb = client.forward_backward(batch, "cross_entropy")
            step = client.optim_step(types.AdamParams(learning_rate=1e-3))
        print((await fb).metrics["loss:sum"]); await step
    """

    def __init__(
        self,
        session: ClientSession,
        *,
        model_id: str,
        spec: ModelSpec,
        info: types.GetInfoResponse | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> None:
        self._session = session
        self._codec = session.codec
        self._ops = OrderedOps(session)
        #: The server's model id (also the training-run id of checkpoint paths).
        self.model_id = model_id
        #: The base model name given at creation.
        self.base_model = spec.base_model
        #: 0 for full-parameter training, the LoRA rank otherwise.
        self.lora_rank = spec.lora_rank
        #: Whether this is a frozen base-only reference (``create_base_training_client``).
        self.base_only = spec.base_only
        #: The server's ``get_info`` reply (tinker dialect; ``None`` in the fireworks one).
        self.info = info
        caps = dict(capabilities or {})
        #: Every field of the ``create_model`` result besides ``model_id`` (Fireworks
        #: trainers advertise their capabilities there).
        self.capabilities: Mapping[str, Any] = caps
        #: ``"v1"`` or ``"v2"`` (Fireworks trainers; ``"v1"`` when not advertised).
        self.comms: str = str(caps.get("comms") or "v1")
        #: Capability flags, ``True`` only when the trainer advertised them (as the SDK).
        self.supports_router_replay = caps.get("supports_router_replay") is True
        self.supports_target_logprob_support = caps.get("supports_target_logprob_support") is True
        self.supports_reinforce = caps.get("supports_reinforce") is True
        self.supports_score_centering = caps.get("supports_score_centering") is True
        self.supports_policy_importance_sampling = (
            caps.get("supports_policy_importance_sampling") is True
        )
        self.supports_policy_diagnostics = caps.get("supports_policy_diagnostics") is True
        self.supports_rdma_weight_sync = caps.get("supports_rdma_weight_sync") is True
        #: The suffix of this client's sampler snapshot names: 8 random hex per client in the
        #: fireworks dialect (the Fireworks SDK's ``session_id``), derived from the session
        #: in the tinker dialect.
        self.snapshot_suffix = self._codec.new_snapshot_suffix()
        self._has_base_snapshot = False
        # the type of each sampler snapshot saved, by path and by name (the SDK's record, which
        # a later hot-load of the snapshot reads to chain a delta on what the deployment serves)
        self._snapshot_types: dict[str, CheckpointType] = {}
        self._unloading = False
        self._tokenizers = TokenizerCache()

    def __repr__(self) -> str:
        return (
            f"TrainingClient(model_id={self.model_id!r}, base_model={self.base_model!r}, "
            f"lora_rank={self.lora_rank}, dialect={self._codec.name!r})"
        )

    # -- forward / backward ----------------------------------------------------------------

    def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without changing gradients or weights.

        Example::

            out = await client.forward(batch, "cross_entropy")
            logprobs = out.loss_fn_outputs[0]["logprobs"].to_numpy()
        """
        return self._fwdbwd(
            "forward", data, loss_fn, loss_fn_config, forward_only=True, deadlines=deadlines
        )

    def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by :meth:`optim_step`).

        ``loss_fn`` is one of ``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``,
        ``dro`` (plus what the server supports); inputs are validated before sending, and a
        large batch is split into chunks exactly as the tinker SDK does.

        Example::

            out = await client.forward_backward(batch, "ppo", {"clip_low_threshold": 0.8})
            print(out.metrics["loss:sum"])
        """
        return self._fwdbwd(
            "forward_backward",
            data,
            loss_fn,
            loss_fn_config,
            forward_only=False,
            deadlines=deadlines,
        )

    def forward_backward_custom(
        self,
        data: Sequence[types.Datum],
        loss_fn: CustomLoss | TorchLoss[Any] | LossHandle,
        *,
        precomputed_forward: types.ForwardBackwardOutput | None = None,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.ForwardBackwardOutput]:
        """Train with a loss computed on the client from per-token logprobs (torch or numpy).

        Runs a ``forward``, calls ``loss_fn(data, logprobs)``, then a ``cross_entropy``
        ``forward_backward`` with weights ``-d(loss)/d(logprobs)``; both passes' sequence ids
        are reserved at this call. ``loss_fn`` is a :class:`TorchLoss` (torch tensors in,
        ``(loss, metrics)`` out, gradients by autograd; the ``torch`` extra) or a plain numpy
        :data:`CustomLoss` (``(loss, grads)`` or ``(loss, grads, metrics)``).
        ``precomputed_forward``: a ``forward(data, "cross_entropy")`` result already run on
        these weights for this batch; the forward is skipped and its logprobs are used.

        The loss's metrics are merged into the result's ``metrics``, and ``loss:sum`` is
        labelled as the dialect's SDK labels it: the Fireworks SDK reports the trainer's
        surrogate loss there (your loss is only in your metrics); tinker reports your loss
        there and the surrogate under ``surrogate_loss:sum``.

        Example::

            @TorchLoss
            def mean_nll(data, logprobs):
                loss = -torch.cat(logprobs).mean()
                return loss, {"nll": loss.item()}

            out = await client.forward_backward_custom(batch, mean_nll)
            print(out.metrics["nll"])

        A ``LossHandle`` from :meth:`ServiceSession.create_custom_loss` (tinker 0.38) runs the
        same way, with torch autograd; its metrics are added to the result's.
        """
        self._check_usable()
        deadlines = call_deadlines(deadlines)
        data = _convert_data(data)
        handle_metrics: dict[str, float] = {}
        if isinstance(loss_fn, LossHandle):
            loss_fn = handle_as_custom_loss(
                loss_fn, data, session_id=self._session.session_id, metrics=handle_metrics
            )
        fwd_data = forward_batch(data)
        validate_forward_backward(fwd_data, "cross_entropy", None, dialect=self._codec.name)
        if not callable(loss_fn):
            raise InvalidInput("loss_fn", "must be a callable (data, logprobs) -> (loss, ...)")
        given = (
            None if precomputed_forward is None else precomputed_logprobs(precomputed_forward, data)
        )
        chunks = self._split(fwd_data)
        n = len(chunks)
        n_forward = 0 if given is not None else n
        codec = self._codec

        async def run(
            seqs: range, pending: Pending[types.ForwardBackwardOutput]
        ) -> types.ForwardBackwardOutput:
            if given is None:
                forward = await self._run_chunks(
                    "forward", chunks, seqs[:n], "cross_entropy", None, True, pending
                )
                logprobs = forward_logprobs(forward, len(data))
            else:
                logprobs = given
            custom = run_custom_loss(loss_fn, data, logprobs)
            backward = backward_batch(fwd_data, custom.grads)
            back_chunks, offset = [], 0
            for chunk in chunks:  # the same boundaries: the reserved ids must all be used
                back_chunks.append(backward[offset : offset + len(chunk)])
                offset += len(chunk)
            result = await self._run_chunks(
                "forward_backward",
                back_chunks,
                seqs[n_forward:],
                "cross_entropy",
                None,
                False,
                pending if given is not None else None,
            )
            server = {**result.metrics, **handle_metrics}
            if codec.adds_response_tokens and "response_tokens" not in server:
                server["response_tokens"] = _response_tokens(backward)  # as for cross_entropy
            return types.ForwardBackwardOutput(
                loss_fn_output_type=result.loss_fn_output_type,
                loss_fn_outputs=result.loss_fn_outputs,
                metrics=custom_loss_metrics(
                    server, custom, surrogate_under_loss_sum=codec.custom_loss_sum_is_surrogate
                ),
            )

        tokens = partial(_input_tokens, data)
        return self._ops.start(
            "forward_backward_custom", n_forward + n, run, tokens=tokens, deadlines=deadlines
        )

    def _split(
        self, data: Sequence[types.Datum], values: float | None = None
    ) -> list[list[types.Datum]]:
        return self._codec.split(data, self._session.client_config, values=values)

    def _check_usable(self) -> None:
        self._session.check_open()
        if self._unloading:
            raise FiretitanError("this training client's model was unloaded (unload_model)")

    def _fwdbwd(
        self,
        name: Literal["forward", "forward_backward"],
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str | bool] | None,
        *,
        forward_only: bool,
        deadlines: Deadlines | None,
    ) -> Pending[types.ForwardBackwardOutput]:
        self._check_usable()
        deadlines = call_deadlines(deadlines)
        data = _convert_data(data)
        values = validate_forward_backward(data, loss_fn, loss_fn_config, dialect=self._codec.name)
        chunks = self._split(data, values)  # validation counted a plain batch's values
        add_response_tokens = self._codec.adds_response_tokens and loss_fn == "cross_entropy"
        # bound partials, not closures: two tracked objects a call instead of a dozen cells
        run = partial(
            self._run_fwdbwd, name, data, chunks, loss_fn, loss_fn_config, forward_only,
            add_response_tokens,
        )  # fmt: skip
        tokens = partial(_input_tokens, data)  # counted in the operation's task
        return self._ops.start(name, len(chunks), run, tokens=tokens, deadlines=deadlines)

    async def _run_fwdbwd(
        self,
        name: Literal["forward", "forward_backward"],
        data: Sequence[types.Datum],
        chunks: Sequence[Sequence[types.Datum]],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str | bool] | None,
        forward_only: bool,
        add_response_tokens: bool,
        seqs: range,
        pending: Pending[types.ForwardBackwardOutput],
    ) -> types.ForwardBackwardOutput:
        out = await self._run_chunks(
            name, chunks, seqs, loss_fn, loss_fn_config, forward_only, pending
        )
        if add_response_tokens and "response_tokens" not in out.metrics:
            # The Fireworks SDK's client-side metric: the non-zero weights of the batch.
            out.metrics["response_tokens"] = _response_tokens(data)
        return out

    async def _run_chunks(
        self,
        name: str,
        chunks: Sequence[Sequence[types.Datum]],
        seqs: range,
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        forward_only: bool,
        pending: Pending[Any] | None,
    ) -> types.ForwardBackwardOutput:
        codec = self._codec
        op: Literal["forward", "forward_backward"] = (
            "forward" if forward_only else "forward_backward"
        )

        async def one(index: int) -> types.ForwardBackwardOutput:
            build = partial(
                codec.fwdbwd_request,
                op,
                model_id=self.model_id,
                seq_id=seqs[index],
                data=chunks[index],
                loss_fn=loss_fn,
                loss_fn_config=loss_fn_config,
                client_config=self._session.client_config,
            )
            transport = self._session.transport
            # encoded inside the submission's CPU turn, not in the turn the task starts in
            accepted = await self._ops.submit(seqs[index], name, transport.submit(build=build))
            if pending is not None and index == 0:
                pending.request_id = accepted.request_id
            done = await self._ops.retrieve(
                transport,
                accepted.request_id,
                request_type=codec.request_type(name),
                accept=codec.fwdbwd_accept,
            )
            return codec.decode_fwdbwd(done)

        if len(chunks) == 1:
            return await one(0)
        results: list[types.ForwardBackwardOutput | None] = [None] * len(chunks)

        async def into(index: int) -> None:
            results[index] = await one(index)

        try:
            async with anyio.create_task_group() as tg:
                # The tinker SDK (and the Fireworks SDK's forward) sends the first chunk last;
                # the Fireworks SDK's forward_backward starts the leading chunk first.
                for index in codec.chunk_order(len(chunks), forward_only=forward_only):
                    tg.start_soon(into, index)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        return merge_outputs([r for r in results if r is not None])

    # -- optimizer and checkpoints ---------------------------------------------------------

    def optim_step(
        self,
        adam_params: types.AdamParams,
        *,
        grad_accumulation_normalization: str | None = None,
        emit_grad_norm_metrics: bool | str | None = None,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.OptimStepResponse]:
        """Apply the accumulated gradients with AdamW and clear them.

        Fireworks dialect extras: ``grad_accumulation_normalization`` (``"num_loss_tokens"``,
        ``"num_sequences"`` or ``"none"``; for raw-sum RL losses pass ``"num_loss_tokens"``)
        and ``emit_grad_norm_metrics`` (a bool, or ``"off"``/``"basic"``/``"detailed"``).

        Example::

            await client.optim_step(types.AdamParams(learning_rate=1e-4, weight_decay=0.01))
            await client.optim_step(params, grad_accumulation_normalization="num_loss_tokens")
        """
        self._check_usable()
        if emit_grad_norm_metrics is None and type(adam_params) is not types.AdamParams:
            # The Fireworks SDK's AdamParams carries it too (tinker's has no such field, and
            # asking pydantic for a missing field raises and catches an AttributeError: 3 µs).
            emit_grad_norm_metrics = getattr(adam_params, "emit_grad_norm_metrics", None)
        adam_params = _convert_adam(adam_params)
        validate_adam_params(adam_params)
        normalization, grad_norm = validate_optim_extras(
            grad_accumulation_normalization, emit_grad_norm_metrics
        )
        body = partial(
            _optim_body, self._codec, self.model_id, adam_params, normalization, grad_norm
        )  # a partial, not a closure (see _fwdbwd)
        body(0)  # refuses what the dialect cannot send, before sending
        return self._simple("optim_step", body, types.OptimStepResponse, deadlines)

    def save_state(
        self,
        name: str,
        *,
        ttl_seconds: int | None = None,
        user_metadata: dict[str, str] | None = None,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.SaveWeightsResponse]:
        """Save the full training state (weights and optimizer) as ``name``.

        With ``ttl_seconds`` the checkpoint expires after that long; ``user_metadata`` (str to
        str) is attached to the checkpoint and comes back in its listing rows. Both are the
        tinker dialect's: Fireworks does not support checkpoint TTLs or metadata, and the call
        raises ``InvalidInput``. The returned ``path`` is the one to load: a Fireworks trainer
        may store the state under its own name (e.g. ``step-N``).

        Example::

            saved = await client.save_state("step-100", ttl_seconds=86400,
                                            user_metadata={"stage": "sft"})
            print(saved.path)   # tinker://…/weights/step-100
        """
        self._check_usable()
        validate_checkpoint_name(name)
        self._codec.check_ttl(ttl_seconds)
        metadata = validate_user_metadata(user_metadata)
        self._codec.save_weights_body(  # refuses what the dialect cannot send, before sending
            model_id=self.model_id, seq_id=0, name=name, ttl_seconds=None, user_metadata=metadata
        )
        return self._simple(
            "save_weights",
            lambda seq: self._codec.save_weights_body(
                model_id=self.model_id,
                seq_id=seq,
                name=name,
                ttl_seconds=ttl_seconds,
                user_metadata=metadata,
            ),
            types.SaveWeightsResponse,
            deadlines,
        )

    def save_weights_external(
        self, name: str, *, ttl_seconds: int | None = None, deadlines: Deadlines | None = None
    ) -> Pending[types.SaveWeightsExternalResponse]:
        """Save the current weights in an external format (e.g. Hugging Face's) as ``name``
        (tinker 0.38; tinker dialect only). The result's ``path``
        (``tinker://…/external_weights/<name>``) is listed and deleted like any checkpoint, and
        :meth:`ServiceSession.get_external_weights_urls` gives its download URLs.

        Example::

            export = await client.save_weights_external("final", ttl_seconds=86400)
            urls = (await session.get_external_weights_urls(export.path)).urls
        """
        self._check_usable()
        validate_checkpoint_name(name)
        self._codec.check_ttl(ttl_seconds)
        self._codec.save_weights_external_body(  # refuses it in a dialect without it
            model_id=self.model_id, seq_id=0, name=name, ttl_seconds=ttl_seconds
        )

        async def run(
            seqs: range, pending: Pending[types.SaveWeightsExternalResponse]
        ) -> types.SaveWeightsExternalResponse:
            body = self._codec.save_weights_external_body(
                model_id=self.model_id, seq_id=seqs[0], name=name, ttl_seconds=ttl_seconds
            )
            saved = await self._submit_and_retrieve(
                "save_weights_external",
                seqs[0],
                body,
                types.SaveWeightsExternalResponseInternal,
                pending,
            )
            if saved.path is None:
                raise ProtocolError("save_weights_external result", "has no path")
            return types.SaveWeightsExternalResponse(path=saved.path)

        return self._ops.start(
            "save_weights_external", 1, run, deadlines=call_deadlines(deadlines)
        )

    def load_state(
        self, path: str | types.SaveWeightsResponse, *, deadlines: Deadlines | None = None
    ) -> Pending[types.LoadWeightsResponse]:
        """Load weights from a training checkpoint; the optimizer starts fresh.

        What :meth:`save_state` returned, or its ``path``, loads back in both dialects. Else:
        a ``tinker://`` path in the tinker dialect; a logical name, an
        ``<account>/run-<hex>/<name>`` path or a ``cross_job://`` reference in the fireworks
        dialect (checked by the Fireworks SDK's rules before anything is sent). The fireworks
        dialect sends a returned ``tinker://<run>/weights/<name>`` as the logical ``<name>``,
        as the Fireworks SDK loads: the trainer resolves it in its checkpoint store.

        Example::

            saved = await client.save_state("step-100")
            await client.load_state(saved)        # or saved.path
        """
        return self._load(path, optimizer=False, deadlines=deadlines)

    def load_state_with_optimizer(
        self, path: str | types.SaveWeightsResponse, *, deadlines: Deadlines | None = None
    ) -> Pending[types.LoadWeightsResponse]:
        """Load weights and optimizer state from a checkpoint (to resume a run); paths as in
        :meth:`load_state`.

        Example::

            await client.load_state_with_optimizer(saved)   # what save_state returned
            await client.load_state_with_optimizer(await other.resolve_checkpoint_path("step-100"))
        """
        return self._load(path, optimizer=True, deadlines=deadlines)

    def _load(
        self,
        saved: str | types.SaveWeightsResponse,
        *,
        optimizer: bool,
        deadlines: Deadlines | None,
    ) -> Pending[types.LoadWeightsResponse]:
        self._check_usable()
        path = self._codec.check_load_path(saved)
        return self._simple(
            "load_weights",
            lambda seq: self._codec.load_weights_body(
                model_id=self.model_id, seq_id=seq, path=path, optimizer=optimizer
            ),
            types.LoadWeightsResponse,
            deadlines,
        )

    def save_weights_for_sampler(
        self, name: str, *, ttl_seconds: int | None = None, deadlines: Deadlines | None = None
    ) -> Pending[types.SaveWeightsForSamplerResponse]:
        """Save the current weights for sampling as ``name``; the result has the path.

        In the fireworks dialect this is :meth:`save_weights_for_sampler_ext` with the
        automatic snapshot type (as the Fireworks SDK does), and ``ttl_seconds`` is refused.

        Example::

            saved = await client.save_weights_for_sampler("final")
            sampler = await session.create_sampling_client(model_path=saved.path)
        """
        self._check_usable()
        validate_checkpoint_name(name)
        self._codec.check_ttl(ttl_seconds)
        if self._codec.saves_sampler_as_snapshot:
            ext = self.save_weights_for_sampler_ext(name, deadlines=deadlines)

            async def run(
                seqs: range, pending: Pending[types.SaveWeightsForSamplerResponse]
            ) -> types.SaveWeightsForSamplerResponse:
                del seqs
                snap = await ext
                pending.request_id = ext.request_id
                return types.SaveWeightsForSamplerResponse(path=snap.path)

            return self._ops.start("save_weights_for_sampler", 0, run, deadlines=deadlines)
        return self._simple(
            "save_weights_for_sampler",
            lambda seq: self._codec.sampler_body(
                model_id=self.model_id,
                seq_id=seq,
                name=name,
                ttl_seconds=ttl_seconds,
                checkpoint_type=None,
            ),
            types.SaveWeightsForSamplerResponse,
            deadlines,
        )

    def save_weights_for_sampler_ext(
        self,
        name: str,
        checkpoint_type: Literal["base", "delta", "merged_base"] | None = None,
        *,
        export_precision: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_seconds: int | None = None,
        deadlines: Deadlines | None = None,
    ) -> Pending[SamplerSnapshot]:
        """Save a sampler snapshot: ``base`` (full weights), ``delta`` (a diff against the
        previous base) or ``merged_base`` (LoRA merged into the base; fireworks dialect).

        ``checkpoint_type=None`` is the Fireworks SDK's rule: a LoRA client always saves
        ``base``; a full-parameter client saves ``base`` first, then ``delta``. The name is
        qualified with a session-scoped suffix (see :class:`SamplerSnapshot`). A ``delta``
        before any ``base`` raises ``InvalidInput`` before anything is sent.
        ``export_precision`` (``"source"``, ``"bf16"``, ``"nvfp4"``, ``"mxfp8"``,
        ``"fp8_block128"``) and ``metadata`` are Fireworks-only.

        Example::

            base = await client.save_weights_for_sampler_ext("step-0000")
            delta = await client.save_weights_for_sampler_ext("step-0001")  # full-param: delta
        """
        self._check_usable()
        deadlines = call_deadlines(deadlines)
        validate_checkpoint_name(name)
        self._codec.check_ttl(ttl_seconds)
        validate_snapshot_options(checkpoint_type, export_precision, metadata)
        kind: CheckpointType
        if checkpoint_type is not None:
            kind = checkpoint_type
        elif self.lora_rank > 0 or not self._has_base_snapshot:
            kind = "base"
        else:
            kind = "delta"
        if kind == "delta" and not self._has_base_snapshot:
            raise InvalidInput(
                "checkpoint_type", "the first snapshot of a client must be 'base', not 'delta'"
            )
        if export_precision is None:
            export_precision = self._codec.default_export_precision(kind)
        if self.snapshot_suffix is not None:
            full_name = f"{name}-{self.snapshot_suffix}"
        else:
            full_name = snapshot_name(name, self._session.session_id)
        body = self._codec.sampler_body(  # refuses what the dialect cannot send, before sending
            model_id=self.model_id,
            seq_id=0,
            name=full_name,
            ttl_seconds=ttl_seconds,
            checkpoint_type=kind,
            export_precision=export_precision,
            metadata=metadata,
        )
        if kind in ("base", "merged_base"):
            self._has_base_snapshot = True

        async def run(seqs: range, pending: Pending[SamplerSnapshot]) -> SamplerSnapshot:
            saved = await self._submit_and_retrieve(
                "save_weights_for_sampler",
                seqs[0],
                {**body, "seq_id": seqs[0]},
                types.SaveWeightsForSamplerResponse,
                pending,
            )
            self._snapshot_types[saved.path] = self._snapshot_types[full_name] = kind
            return SamplerSnapshot(snapshot_name=full_name, path=saved.path, checkpoint_type=kind)

        return self._ops.start("save_weights_for_sampler_ext", 1, run, deadlines=deadlines)

    def saved_snapshot_type(self, path: str) -> CheckpointType | None:
        """The type (``"base"``, ``"delta"``, ``"merged_base"``) of a sampler snapshot this
        client saved, by the path the save returned or by its qualified name; ``None`` for a
        snapshot it did not save. A hot-load of a path reads it to know whether to chain a
        delta (as the Fireworks SDK's sampler backend remembers every save).

        Example::

            saved = await client.save_weights_for_sampler("step-2")
            client.saved_snapshot_type(saved.path)     # "delta" for a full-parameter client
        """
        return self._snapshot_types.get(path)

    async def save_weights_and_get_sampling_client(
        self, *, deadlines: Deadlines | None = None
    ) -> SamplingClient:
        """Snapshot the current weights into a new sampling session and return its client.

        Tinker dialect only: a Fireworks trainer has no sampling sessions and the Fireworks
        SDK's training client has no such method, so there it raises :class:`UsageError`
        before anything is sent; save with :meth:`save_weights_for_sampler` and sample with
        ``session.create_sampling_client(model_path=saved.path)`` (serverless or managed).

        Example::

            sampler = await client.save_weights_and_get_sampling_client()
            out = await sampler.sample(prompt, 4, types.SamplingParams(max_tokens=8))
        """
        from ._sampling import SamplingClient

        self._check_usable()
        if not self._codec.has_sampling_sessions:
            raise UsageError(
                "save_weights_and_get_sampling_client needs the trainer's sampling sessions, "
                "which a Fireworks trainer has not (nor the Fireworks SDK's training client): "
                "save with save_weights_for_sampler(name) and sample with "
                "session.create_sampling_client(model_path=saved.path) on a serverless or "
                "managed session"
            )
        sampling_seq = self._session.next_sampling_session_seq_id()
        pending = self._simple(
            "save_weights_for_sampler",
            lambda seq: self._codec.ephemeral_sampler_body(
                model_id=self.model_id, seq_id=seq, sampling_session_seq_id=sampling_seq
            ),
            types.SaveWeightsForSamplerResponseInternal,
            deadlines,
        )
        saved = await pending
        if not saved.sampling_session_id:
            raise FiretitanError("the server did not return a sampling session id")
        return SamplingClient(self._session, saved.sampling_session_id, base_model=self.base_model)

    async def get_tokenizer(self, tokenizer_model: str | None = None) -> PreTrainedTokenizerBase:
        """This model's Hugging Face tokenizer, loaded in a worker thread the event loop awaits
        (never blocking it), once per client: later calls return the same object.

        Tinker dialect: the ``tokenizer_id`` the server's ``get_info`` names, else the tinker
        SDK's rule for the model name (``tokenizer_model`` overrides both). Fireworks dialect:
        a trainer names none, so pass ``tokenizer_model`` (as the Fireworks SDK's managed
        config does; ``InvalidInput`` without it). A name is a hub id or a local directory.

        Example::

            tokenizer = await client.get_tokenizer()              # tinker dialect
            tokenizer = await client.get_tokenizer("Qwen/Qwen3-8B")  # fireworks dialect
            prompt = types.ModelInput.from_ints(tokenizer.encode("Hello"))
        """
        data = self.info.model_data if self.info is not None else None
        return await self._tokenizers.get(
            names_tokenizer=self._codec.names_tokenizer,
            tokenizer_model=tokenizer_model,
            model_name=(data.model_name if data is not None else None) or self.base_model,
            tokenizer_id=data.tokenizer_id if data is not None else None,
        )

    async def list_checkpoints(self) -> list[CheckpointEntry]:
        """The training checkpoints of this run. Errors raise (never a silent ``[]``).

        Tinker dialect: ``GET /api/v1/training_runs/{model_id}/checkpoints`` (expired ones
        are not listed). Fireworks dialect: ``GET /api/v1/list_checkpoints``, whose rows may
        carry names only (then ``path`` and ``time`` are ``None``).

        Example::

            for ckpt in await client.list_checkpoints():
                print(ckpt.name, ckpt.path, ckpt.expires_at)
        """
        self._session.check_open()
        rows_path = self._codec.checkpoint_rows_path
        if rows_path is not None:
            reply = await self._session.transport.call("GET", rows_path)
            try:
                return [_entry_of_row(row) for row in self._codec.parse_checkpoint_rows(reply)]
            except ProtocolError as exc:  # it quotes the reply: scrubbed as it leaves
                raise self._session.transport.redactor.scrubbed(exc) from None
        return await _list_checkpoints(self._session, paths.run_checkpoints(self.model_id))

    async def resolve_checkpoint_path(
        self, checkpoint_name: str, source_job_id: str | None = None
    ) -> str:
        """Turn a checkpoint name into a path :meth:`load_state` accepts.

        Fireworks dialect (offline, the SDK's rules): the name itself (checked), or with
        ``source_job_id`` the reference ``cross_job://<source_job_id>/<name>``.

        Tinker dialect: a bare name resolves against this run's checkpoints, or with
        ``source_job_id`` against another trainer job's (cross-job resume); a snapshot's short
        name (without the session suffix) also matches. A full ``tinker://`` path is checked
        to exist and returned. Raises ``InvalidInput`` naming what exists when nothing matches.

        Example::

            path = await client.resolve_checkpoint_path("step-100", source_job_id="old-job")
            await client.load_state_with_optimizer(path)
        """
        self._session.check_open()
        offline = self._codec.checkpoint_reference(checkpoint_name, source_job_id)
        if offline is not None:
            return offline
        if checkpoint_name.startswith("tinker://"):
            parsed = validate_tinker_path(checkpoint_name, field="checkpoint_name")
            checkpoints = await _list_checkpoints(
                self._session, paths.run_checkpoints(parsed.training_run_id)
            )
            if any(c.path == checkpoint_name for c in checkpoints):
                return checkpoint_name
            raise InvalidInput("checkpoint_name", f"no checkpoint at {checkpoint_name!r}")
        validate_checkpoint_name(checkpoint_name, field="checkpoint_name")
        if source_job_id is None:
            checkpoints = await _list_checkpoints(
                self._session, paths.run_checkpoints(self.model_id)
            )
        else:
            checkpoints = await _list_checkpoints(
                self._session,
                paths.CHECKPOINTS,
                params={"job_id": source_job_id, "limit": 1000},
            )
        return _match_checkpoint(checkpoints, checkpoint_name, source_job_id)

    def unload_model(
        self, *, deadlines: Deadlines | None = None
    ) -> Pending[types.UnloadModelResponse]:
        """Unload this model from the trainer once its accepted operations have finished
        (fireworks dialect). Later operations on this client raise at once.

        Example::

            await client.unload_model()
        """
        self._session.check_open()
        _require_extra(self._codec, "unload_model")
        body = self._codec.unload_model_body(model_id=self.model_id)
        deadlines = call_deadlines(deadlines)
        self._unloading = True
        earlier = self._ops.in_flight()

        async def run(
            seqs: range, pending: Pending[types.UnloadModelResponse]
        ) -> types.UnloadModelResponse:
            del seqs
            for op in earlier:  # drain: the model's queued operations finish first
                with contextlib.suppress(Exception):
                    await op
            transport = self._session.transport
            accepted = await transport.submit(paths.UNLOAD_MODEL, json_body=body)
            pending.request_id = accepted.request_id
            # The Fireworks SDK's literal request type for this poll.
            done = await self._ops.retrieve(
                transport, accepted.request_id, request_type="Unload model"
            )
            return decode_json_result(types.UnloadModelResponse, done.payload)

        return self._ops.start("unload_model", 0, run, deadlines=deadlines)

    def load_adapter(
        self, path: str, *, deadlines: Deadlines | None = None
    ) -> Pending[dict[str, Any]]:
        """Load a LoRA adapter into this model (fireworks dialect), in call order.

        Example::

            await client.load_adapter("accounts/me/models/my-adapter")
        """
        self._check_usable()
        _require_extra(self._codec, "load_adapter")
        if not isinstance(path, str) or not path.strip():
            raise InvalidInput("path", "must be a non-empty string")

        async def run(seqs: range, pending: Pending[dict[str, Any]]) -> dict[str, Any]:
            transport = self._session.transport
            accepted = await self._ops.submit(
                seqs[0],
                "load_adapter",
                transport.submit(
                    paths.LOAD_ADAPTER,
                    json_body=self._codec.load_adapter_body(
                        model_id=self.model_id, seq_id=seqs[0], adapter_path=path
                    ),
                ),
            )
            pending.request_id = accepted.request_id
            done = await self._ops.retrieve(
                transport, accepted.request_id, request_type="LoadAdapter"
            )
            return parse_json_object("load_adapter result", done.payload)

        return self._ops.start("load_adapter", 1, run, deadlines=call_deadlines(deadlines))

    # -- plumbing --------------------------------------------------------------------------

    def _simple(
        self, op: str, body: Any, result_type: type[R], deadlines: Deadlines | None = None
    ) -> Pending[R]:
        run = partial(self._run_simple, op, body, result_type)  # no closure cells (see above)
        return self._ops.start(op, 1, run, deadlines=call_deadlines(deadlines))

    async def _run_simple(
        self,
        op: str,
        body: Callable[[int], dict[str, Any]],
        result_type: type[R],
        seqs: range,
        pending: Pending[R],
    ) -> R:
        return await self._submit_and_retrieve(op, seqs[0], body(seqs[0]), result_type, pending)

    async def _submit_and_retrieve(
        self, op: str, seq: int, body: dict[str, Any], result_type: type[R], pending: Pending[Any]
    ) -> R:
        transport = self._session.transport
        accepted = await self._ops.submit(
            seq, op, transport.submit(paths.operation(op), json_body=body)
        )
        pending.request_id = accepted.request_id
        done = await self._ops.retrieve(
            transport, accepted.request_id, request_type=self._codec.request_type(op)
        )
        return decode_json_result(result_type, done.payload)


def _optim_body(
    codec: Dialect,
    model_id: str,
    adam_params: types.AdamParams,
    normalization: Any,
    grad_norm: Any,
    seq_id: int,
) -> dict[str, Any]:
    return codec.optim_step_body(
        model_id=model_id,
        seq_id=seq_id,
        adam_params=adam_params,
        grad_accumulation_normalization=normalization,
        emit_grad_norm_metrics=grad_norm,
    )


async def _list_checkpoints(
    session: ClientSession, path: str, params: dict[str, str | int] | None = None
) -> list[CheckpointEntry]:
    session.check_open()
    reply = await session.transport.call("GET", path, params=params)
    rows = reply.get("checkpoints") if isinstance(reply, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and isinstance(r.get("checkpoint_id"), str) for r in rows
    ):
        raise ProtocolError("checkpoint listing", "expected {'checkpoints': [{checkpoint_id…}]}")
    try:
        return [_entry_of_tinker(row) for row in rows]
    except ProtocolError as exc:  # it quotes the reply: scrubbed as it leaves
        raise session.transport.redactor.scrubbed(exc) from None


def _entry_of_tinker(row: Mapping[str, Any]) -> CheckpointEntry:
    """A tinker listing row; fields the trainer left out stay ``None`` (never invented)."""
    path = row.get("tinker_path")
    kind = row.get("checkpoint_type")
    size = row.get("size_bytes")
    return CheckpointEntry(
        name=str(row["checkpoint_id"]).split("/", 1)[-1],
        path=path if isinstance(path, str) else None,
        checkpoint_type=kind if isinstance(kind, str) else None,
        time=_timestamp(row.get("time")),
        expires_at=_timestamp(row.get("expires_at")),
        size_bytes=size if isinstance(size, int) and not isinstance(size, bool) else None,
        raw=dict(row),
    )


def _timestamp(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ProtocolError("checkpoint listing", f"bad timestamp {value!r}") from None


def _require_extra(codec: Dialect, operation: str) -> None:
    """Refuse, before sending, an operation the dialect does not have."""
    if operation not in codec.extras:
        raise InvalidInput(operation, f"is Fireworks-only: the {codec.name} dialect has none")


def _entry_of_row(row: Mapping[str, Any]) -> CheckpointEntry:
    """A Fireworks list row: whatever the trainer sent, nothing invented."""
    path = row.get("path") or row.get("tinker_path")
    kind = row.get("checkpoint_type") or row.get("checkpointType")
    return CheckpointEntry(
        name=str(row["name"]),
        path=path if isinstance(path, str) else None,
        checkpoint_type=kind if isinstance(kind, str) else None,
        raw=dict(row),
    )


def _response_tokens(data: Sequence[types.Datum]) -> float:
    """The Fireworks SDK's ``response_tokens``: non-zero ``weights`` (else target tokens)."""
    total = 0.0
    for datum in data:
        weights = datum.loss_fn_inputs.get("weights")
        if weights is not None:
            if weights.sparse_crow_indices is not None:
                total += float(np.count_nonzero(tensor_array(weights)))
            else:
                total += float(np.count_nonzero(weights.to_numpy()))
            continue
        targets = datum.loss_fn_inputs.get("target_tokens")
        if targets is not None:
            total += float(tensor_array(targets).size)
    return total


def _input_tokens(data: Sequence[types.Datum]) -> int:
    """The input tokens of a batch (for its events)."""
    return sum(d.model_input.length for d in data)


def _convert_data(data: Sequence[Any]) -> list[types.Datum]:
    return to_tinker_data(data)


def _convert_adam(params: Any) -> types.AdamParams:
    return to_tinker_adam(params)


def _match_checkpoint(checkpoints: Sequence[CheckpointEntry], name: str, job_id: str | None) -> str:
    exact = [c for c in checkpoints if c.name == name]
    if not exact:
        # A snapshot's short name: "step-1" matches "step-1-<8 hex>".
        exact = [
            c for c in checkpoints if c.name.startswith(name + "-") and len(c.name) == len(name) + 9
        ]
    where = f"job {job_id!r}" if job_id else "this run"
    if not exact:
        known = ", ".join(sorted(c.checkpoint_id for c in checkpoints)) or "none"
        raise InvalidInput(
            "checkpoint_name", f"no checkpoint named {name!r} in {where} (have: {known})"
        )
    if len(exact) > 1:
        # Prefer a training checkpoint (loadable state) over sampler weights of the same name.
        exact = [c for c in exact if c.checkpoint_type == "training"] or exact
    if len(exact) > 1:
        raise InvalidInput(
            "checkpoint_name",
            f"{name!r} is ambiguous in {where}: " + ", ".join(c.checkpoint_id for c in exact),
        )
    if exact[0].path is None:
        raise InvalidInput(
            "checkpoint_name",
            f"the trainer listed {name!r} in {where} without its path: load it by the path "
            "save_state returned",
        )
    return exact[0].path
