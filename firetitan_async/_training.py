"""``TrainingClient``: training operations on one model, pipelined and ordered by seq_id."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio
import zstandard
from tinker import types

from ._custom_loss import CustomLoss, backward_batch, forward_batch, run_custom_loss
from ._ordered_ops import OrderedOps
from ._pending import Pending
from ._snapshots import CheckpointType, SamplerSnapshot, snapshot_name
from ._wire_bodies import (
    REQUEST_TYPE,
    ephemeral_sampler_body,
    load_weights_body,
    optim_step_body,
    save_weights_body,
    save_weights_for_sampler_body,
)
from ._wire_chunking import merge_outputs, split_batch
from ._wire_futures import decode_json_result
from ._wire_fwdbwd import decode_forward_backward_output, encode_forward_backward_request
from ._wire_validation import (
    validate_adam_params,
    validate_checkpoint_name,
    validate_forward_backward,
    validate_tinker_path,
    validate_ttl,
)
from .errors import FiretitanError, InvalidInput

if TYPE_CHECKING:
    from ._sampling import SamplingClient
    from ._session import ServiceSession

__all__ = ["TrainingClient"]

R = TypeVar("R")
_PROTO = "application/x-protobuf"


class TrainingClient:
    """Training operations on one model of a :class:`ServiceSession`.

    Every operation method is a plain (non-async) call that returns a :class:`Pending` at once:
    its sequence id is reserved at the call, its request leaves immediately (submissions are
    pipelined), and the server runs the operations in call order. Await the Pendings when you
    need the results.

    Example::

        client = await session.create_training_client("local/tiny-byte-lm", lora_rank=8)
        for batch in batches:
            fb = client.forward_backward(batch, "cross_entropy")
            step = client.optim_step(types.AdamParams(learning_rate=1e-3))
        print((await fb).metrics["loss:sum"]); await step
    """

    def __init__(
        self,
        session: ServiceSession,
        *,
        model_id: str,
        base_model: str,
        lora_rank: int,
        info: types.GetInfoResponse,
    ) -> None:
        self._session = session
        self._ops = OrderedOps(session)
        #: The server's model id (also the training-run id of checkpoint paths).
        self.model_id = model_id
        #: The base model name given at creation.
        self.base_model = base_model
        #: 0 for full-parameter training, the LoRA rank otherwise.
        self.lora_rank = lora_rank
        #: The server's ``get_info`` reply.
        self.info = info
        self._has_base_snapshot = False

    def __repr__(self) -> str:
        return (
            f"TrainingClient(model_id={self.model_id!r}, base_model={self.base_model!r}, "
            f"lora_rank={self.lora_rank})"
        )

    # -- forward / backward ----------------------------------------------------------------

    def forward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Pending[types.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without changing gradients or weights.

        Example::

            out = await client.forward(batch, "cross_entropy")
            logprobs = out.loss_fn_outputs[0]["logprobs"].to_numpy()
        """
        return self._fwdbwd("forward", data, loss_fn, loss_fn_config, forward_only=True)

    def forward_backward(
        self,
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> Pending[types.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by :meth:`optim_step`).

        ``loss_fn`` is one of ``cross_entropy``, ``importance_sampling``, ``ppo``, ``cispo``,
        ``dro`` (plus what the server supports); inputs are validated before sending, and a
        large batch is split into chunks exactly as the tinker SDK does.

        Example::

            out = await client.forward_backward(batch, "ppo", {"clip_low_threshold": 0.8})
            print(out.metrics["loss:sum"])
        """
        return self._fwdbwd("forward_backward", data, loss_fn, loss_fn_config, forward_only=False)

    def forward_backward_custom(
        self, data: Sequence[types.Datum], loss_fn: CustomLoss
    ) -> Pending[types.ForwardBackwardOutput]:
        """Train with a loss computed on the client from per-token logprobs (numpy; no torch).

        Runs a ``forward``, calls ``loss_fn(data, logprobs) -> (loss, grads)``, then a
        ``cross_entropy`` ``forward_backward`` with weights ``-grads``. Both passes' sequence
        ids are reserved at this call. In the result, ``metrics["loss:sum"]`` is your loss and
        ``metrics["surrogate_loss:sum"]`` the server's surrogate.

        Example::

            def mean_logprob(data, logprobs):
                n = sum(lp.size for lp in logprobs)
                loss = -sum(lp.sum() for lp in logprobs) / n
                return loss, [-np.ones_like(lp) / n for lp in logprobs]

            out = await client.forward_backward_custom(batch, mean_logprob)
        """
        self._session._check_open()
        fwd_data = forward_batch(data)
        validate_forward_backward(fwd_data, "cross_entropy", None)
        if not callable(loss_fn):
            raise InvalidInput("loss_fn", "must be a callable (data, logprobs) -> (loss, grads)")
        chunks = self._split(fwd_data)
        n = len(chunks)

        async def run(
            seqs: range, pending: Pending[types.ForwardBackwardOutput]
        ) -> types.ForwardBackwardOutput:
            forward = await self._run_chunks(
                "forward", chunks, seqs[:n], "cross_entropy", None, True, pending
            )
            loss, grads = run_custom_loss(loss_fn, data, forward)
            backward = backward_batch(fwd_data, grads)
            back_chunks, offset = [], 0
            for chunk in chunks:  # the same boundaries: the reserved ids must all be used
                back_chunks.append(backward[offset : offset + len(chunk)])
                offset += len(chunk)
            result = await self._run_chunks(
                "forward_backward", back_chunks, seqs[n:], "cross_entropy", None, False, None
            )
            metrics = dict(result.metrics)
            metrics["surrogate_loss:sum"] = metrics.pop("loss:sum", 0.0)
            metrics["loss:sum"] = loss
            return types.ForwardBackwardOutput(
                loss_fn_output_type=result.loss_fn_output_type,
                loss_fn_outputs=result.loss_fn_outputs,
                metrics=metrics,
            )

        tokens = sum(d.model_input.length for d in data)
        return self._ops.start("forward_backward_custom", 2 * n, run, tokens=tokens)

    def _split(self, data: Sequence[types.Datum]) -> list[list[types.Datum]]:
        config = self._session.client_config
        return split_batch(
            data,
            max_len=int(config.get("fwdbwd_max_chunk_len") or 1024),
            max_bytes=int(config.get("fwdbwd_max_chunk_bytes_count") or 5_000_000),
        )

    def _fwdbwd(
        self,
        name: Literal["forward", "forward_backward"],
        data: Sequence[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None,
        *,
        forward_only: bool,
    ) -> Pending[types.ForwardBackwardOutput]:
        self._session._check_open()
        validate_forward_backward(data, loss_fn, loss_fn_config)
        chunks = self._split(data)

        async def run(
            seqs: range, pending: Pending[types.ForwardBackwardOutput]
        ) -> types.ForwardBackwardOutput:
            return await self._run_chunks(
                name, chunks, seqs, loss_fn, loss_fn_config, forward_only, pending
            )

        tokens = sum(d.model_input.length for d in data)
        return self._ops.start(name, len(chunks), run, tokens=tokens)

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
        async def one(index: int) -> types.ForwardBackwardOutput:
            body = encode_forward_backward_request(
                model_id=self.model_id,
                seq_id=seqs[index],
                data=chunks[index],
                loss_fn=loss_fn,
                loss_fn_config=loss_fn_config,
                forward_only=forward_only,
            )
            transport = self._session.transport
            headers = None
            if self._session.client_config.get("proto_compress_fwdbwd"):
                body = zstandard.ZstdCompressor().compress(body)
                headers = {"Content-Encoding": "zstd"}
            accepted = await self._ops.submit(
                seqs[index],
                name,
                transport.submit(
                    "/api/v1/forward_backward", content=body, content_type=_PROTO, headers=headers
                ),
            )
            if pending is not None and index == 0:
                pending.request_id = accepted.request_id
            done = await transport.retrieve(
                accepted.request_id, request_type=REQUEST_TYPE[name], proto=True
            )
            return decode_forward_backward_output(done.payload)

        if len(chunks) == 1:
            return await one(0)
        results: list[types.ForwardBackwardOutput | None] = [None] * len(chunks)

        async def into(index: int) -> None:
            results[index] = await one(index)

        try:
            async with anyio.create_task_group() as tg:
                # The first chunk goes last, as the tinker SDK sends them.
                for index in [*range(1, len(chunks)), 0]:
                    tg.start_soon(into, index)
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
        return merge_outputs([r for r in results if r is not None])

    # -- optimizer and checkpoints ---------------------------------------------------------

    def optim_step(self, adam_params: types.AdamParams) -> Pending[types.OptimStepResponse]:
        """Apply the accumulated gradients with AdamW and clear them.

        Example::

            await client.optim_step(types.AdamParams(learning_rate=1e-4, weight_decay=0.01))
        """
        self._session._check_open()
        validate_adam_params(adam_params)
        return self._simple(
            "optim_step",
            lambda seq: optim_step_body(
                model_id=self.model_id, seq_id=seq, adam_params=adam_params
            ),
            types.OptimStepResponse,
        )

    def save_state(
        self, name: str, *, ttl_seconds: int | None = None
    ) -> Pending[types.SaveWeightsResponse]:
        """Save the full training state (weights and optimizer) as ``name``.

        With ``ttl_seconds`` the checkpoint expires after that long.

        Example::

            saved = await client.save_state("step-100", ttl_seconds=86400)
            print(saved.path)   # tinker://…/weights/step-100
        """
        self._session._check_open()
        validate_checkpoint_name(name)
        validate_ttl(ttl_seconds)
        return self._simple(
            "save_weights",
            lambda seq: save_weights_body(
                model_id=self.model_id, seq_id=seq, name=name, ttl_seconds=ttl_seconds
            ),
            types.SaveWeightsResponse,
        )

    def load_state(self, path: str) -> Pending[types.LoadWeightsResponse]:
        """Load weights from a ``tinker://`` training checkpoint; the optimizer starts fresh.

        Example::

            await client.load_state(saved.path)
        """
        return self._load(path, optimizer=False)

    def load_state_with_optimizer(self, path: str) -> Pending[types.LoadWeightsResponse]:
        """Load weights and optimizer state from a ``tinker://`` checkpoint (to resume a run).

        Example::

            await client.load_state_with_optimizer(await other.resolve_checkpoint_path("step-100"))
        """
        return self._load(path, optimizer=True)

    def _load(self, path: str, *, optimizer: bool) -> Pending[types.LoadWeightsResponse]:
        self._session._check_open()
        validate_tinker_path(path)
        return self._simple(
            "load_weights",
            lambda seq: load_weights_body(
                model_id=self.model_id, seq_id=seq, path=path, optimizer=optimizer
            ),
            types.LoadWeightsResponse,
        )

    def save_weights_for_sampler(
        self, name: str, *, ttl_seconds: int | None = None
    ) -> Pending[types.SaveWeightsForSamplerResponse]:
        """Save the current weights for sampling as ``name``; the result has the path.

        Example::

            saved = await client.save_weights_for_sampler("final")
            sampler = await session.create_sampling_client(model_path=saved.path)
        """
        self._session._check_open()
        validate_checkpoint_name(name)
        validate_ttl(ttl_seconds)
        return self._simple(
            "save_weights_for_sampler",
            lambda seq: save_weights_for_sampler_body(
                model_id=self.model_id, seq_id=seq, name=name, ttl_seconds=ttl_seconds
            ),
            types.SaveWeightsForSamplerResponse,
        )

    def save_weights_for_sampler_ext(
        self,
        name: str,
        *,
        checkpoint_type: Literal["base", "delta"] = "base",
        ttl_seconds: int | None = None,
    ) -> Pending[SamplerSnapshot]:
        """Save a Fireworks sampler snapshot: ``base`` (full weights) or ``delta`` (XOR diff).

        The name is qualified with a session-scoped suffix (see :class:`SamplerSnapshot`).
        The first snapshot of a client must be ``base``: a ``delta`` before any ``base`` raises
        ``ValueError`` before anything is sent.

        Example::

            base = await client.save_weights_for_sampler_ext("step-0000")
            delta = await client.save_weights_for_sampler_ext("step-0001", checkpoint_type="delta")
        """
        self._session._check_open()
        validate_checkpoint_name(name)
        validate_ttl(ttl_seconds)
        if checkpoint_type not in ("base", "delta"):
            raise InvalidInput(
                "checkpoint_type", f"must be 'base' or 'delta', got {checkpoint_type!r}"
            )
        if checkpoint_type == "delta" and not self._has_base_snapshot:
            raise InvalidInput(
                "checkpoint_type", "the first snapshot of a client must be 'base', not 'delta'"
            )
        if checkpoint_type == "base":
            self._has_base_snapshot = True
        full_name = snapshot_name(name, self._session.session_id)
        kind: CheckpointType = checkpoint_type

        async def run(seqs: range, pending: Pending[SamplerSnapshot]) -> SamplerSnapshot:
            saved = await self._submit_and_retrieve(
                "save_weights_for_sampler",
                seqs[0],
                save_weights_for_sampler_body(
                    model_id=self.model_id,
                    seq_id=seqs[0],
                    name=full_name,
                    ttl_seconds=ttl_seconds,
                    checkpoint_type=kind,
                ),
                types.SaveWeightsForSamplerResponse,
                pending,
            )
            return SamplerSnapshot(snapshot_name=full_name, path=saved.path, checkpoint_type=kind)

        return self._ops.start("save_weights_for_sampler_ext", 1, run)

    async def save_weights_and_get_sampling_client(self) -> SamplingClient:
        """Snapshot the current weights into a new sampling session and return its client.

        Example::

            sampler = await client.save_weights_and_get_sampling_client()
            out = await sampler.sample(prompt, 4, types.SamplingParams(max_tokens=8))
        """
        from ._sampling import SamplingClient

        self._session._check_open()
        sampling_seq = self._session.next_sampling_session_seq_id()
        pending = self._simple(
            "save_weights_for_sampler",
            lambda seq: ephemeral_sampler_body(
                model_id=self.model_id, seq_id=seq, sampling_session_seq_id=sampling_seq
            ),
            types.SaveWeightsForSamplerResponseInternal,
        )
        saved = await pending
        if not saved.sampling_session_id:
            raise FiretitanError("the server did not return a sampling session id")
        return SamplingClient(self._session, saved.sampling_session_id, base_model=self.base_model)

    async def list_checkpoints(self) -> list[types.Checkpoint]:
        """The checkpoints of this training run (expired ones are not listed).

        Example::

            for ckpt in await client.list_checkpoints():
                print(ckpt.checkpoint_id, ckpt.tinker_path, ckpt.expires_at)
        """
        return await _list_checkpoints(
            self._session, f"/api/v1/training_runs/{self.model_id}/checkpoints"
        )

    async def resolve_checkpoint_path(self, name_or_path: str, *, job_id: str | None = None) -> str:
        """Turn a checkpoint name (or path) into a ``tinker://`` path this trainer can load.

        A bare name resolves against this run's checkpoints, or with ``job_id`` against the
        checkpoints made by another trainer job (cross-job resume); a snapshot's short name
        (without the session suffix) also matches. A full ``tinker://`` path is checked to
        exist and returned. Raises ``InvalidInput`` naming what exists when nothing matches.

        Example::

            path = await client.resolve_checkpoint_path("step-100", job_id="old-job")
            await client.load_state_with_optimizer(path)
        """
        self._session._check_open()
        if name_or_path.startswith("tinker://"):
            parsed = validate_tinker_path(name_or_path, field="name_or_path")
            checkpoints = await _list_checkpoints(
                self._session, f"/api/v1/training_runs/{parsed.training_run_id}/checkpoints"
            )
            if any(c.tinker_path == name_or_path for c in checkpoints):
                return name_or_path
            raise InvalidInput("name_or_path", f"no checkpoint at {name_or_path!r}")
        validate_checkpoint_name(name_or_path, field="name_or_path")
        if job_id is None:
            checkpoints = await self.list_checkpoints()
        else:
            checkpoints = await _list_checkpoints(
                self._session, "/api/v1/checkpoints", params={"job_id": job_id, "limit": 1000}
            )
        return _match_checkpoint(checkpoints, name_or_path, job_id)

    # -- plumbing --------------------------------------------------------------------------

    def _simple(self, op: str, body: Any, result_type: type[R]) -> Pending[R]:
        async def run(seqs: range, pending: Pending[R]) -> R:
            return await self._submit_and_retrieve(op, seqs[0], body(seqs[0]), result_type, pending)

        return self._ops.start(op, 1, run)

    async def _submit_and_retrieve(
        self, op: str, seq: int, body: dict[str, Any], result_type: type[R], pending: Pending[Any]
    ) -> R:
        transport = self._session.transport
        accepted = await self._ops.submit(
            seq, op, transport.submit(f"/api/v1/{op}", json_body=body)
        )
        pending.request_id = accepted.request_id
        done = await transport.retrieve(
            accepted.request_id, request_type=REQUEST_TYPE[op], proto=False
        )
        return decode_json_result(result_type, done.payload)


async def _list_checkpoints(
    session: ServiceSession, path: str, params: dict[str, str | int] | None = None
) -> list[types.Checkpoint]:
    session._check_open()
    reply = await session.transport.call("GET", path, params=params)
    return list(types.CheckpointsListResponse.model_validate(reply).checkpoints)


def _match_checkpoint(
    checkpoints: Sequence[types.Checkpoint], name: str, job_id: str | None
) -> str:
    exact = [c for c in checkpoints if c.checkpoint_id.split("/", 1)[-1] == name]
    if not exact:
        # A snapshot's short name: "step-1" matches "step-1-<8 hex>".
        exact = [
            c
            for c in checkpoints
            if (short := c.checkpoint_id.split("/", 1)[-1]).startswith(name + "-")
            and len(short) == len(name) + 9
        ]
    if len(exact) == 1:
        return exact[0].tinker_path
    where = f"job {job_id!r}" if job_id else "this run"
    if not exact:
        known = ", ".join(sorted(c.checkpoint_id for c in checkpoints)) or "none"
        raise InvalidInput(
            "name_or_path", f"no checkpoint named {name!r} in {where} (have: {known})"
        )
    # Prefer a training checkpoint (loadable state) over sampler weights of the same name.
    training = [c for c in exact if c.checkpoint_type == "training"]
    if len(training) == 1:
        return training[0].tinker_path
    raise InvalidInput(
        "name_or_path",
        f"{name!r} is ambiguous in {where}: " + ", ".join(c.tinker_path for c in exact),
    )


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    from .errors import SubmissionLost

    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if isinstance(exc, SubmissionLost):
            return exc
    return leaves[0]
