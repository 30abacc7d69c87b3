"""``SamplingClient``: sampling and prompt logprobs from saved or base weights."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from tinker import types

from .._session._deadlines import Deadlines, call_deadlines
from .._session._pending import Pending, fail_pending, resolve_pending
from .._session._protocol import ClientSession
from ..wire import paths
from ..wire.sample import decode_sample_response, prompt_logprobs_of, sample_request_body
from ..wire.validation import validate_sample_args, validate_topk
from ._fireworks_types import to_tinker_model_input, to_tinker_sampling_params

__all__ = ["SamplingClient"]

_PROTO = "application/x-protobuf"

T = TypeVar("T")
# Tells the server it may answer 429 to slow sampling down (the transport then backs off).
_BACKPRESSURE = {"X-Tinker-Sampling-Backpressure": "1"}


class SamplingClient:
    """Samples from one sampling session (saved sampler weights or a base model).

    Get one from :meth:`ServiceSession.create_sampling_client` or
    :meth:`TrainingClient.save_weights_and_get_sampling_client`. Sampling has no ordering:
    thousands of ``sample`` calls may be in flight at once.

    Example::

        prompt = types.ModelInput.from_ints(list(b"Hello"))
        out = await sampler.sample(prompt, 4, types.SamplingParams(max_tokens=16, temperature=0.7))
        first = bytes(t for t in out.sequences[0].tokens if t < 256).decode(errors="replace")
    """

    def __init__(
        self,
        session: ClientSession,
        sampling_session_id: str,
        *,
        model_path: str | None = None,
        base_model: str | None = None,
    ) -> None:
        self._session = session
        #: The server's sampling session id.
        self.sampling_session_id = sampling_session_id
        #: The ``tinker://`` sampler path this client samples from, if any.
        self.model_path = model_path
        #: The base model, when known.
        self.base_model = base_model
        self._next_seq = 0

    def __repr__(self) -> str:
        return f"SamplingClient(sampling_session_id={self.sampling_session_id!r})"

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        *,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        deadlines: Deadlines | None = None,
    ) -> Pending[types.SampleResponse]:
        """Draw ``num_samples`` continuations of ``prompt``; returns a :class:`Pending` at once.

        ``sampling_params`` carries ``max_tokens``, ``temperature``, ``top_k``, ``top_p``,
        ``stop`` and ``seed``; with ``include_prompt_logprobs`` the response also carries the
        prompt's per-token logprobs. As in tinker 0.38, ``topk_prompt_logprobs=k`` returns the
        ``k`` most likely tokens at each prompt position (``response.topk_prompt_logprobs``:
        ``None`` at position 0, else ``[(token_id, logprob), ...]``, most likely first) and
        ``topk_sample_logprobs=k`` those at each sampled position
        (``sequence.topk_logprobs``); the ``_np`` fields hold them as ``(n, k)`` matrices.

        Example::

            out = await sampler.sample(prompt, 2, types.SamplingParams(max_tokens=8, seed=1),
                                       topk_sample_logprobs=5)
            print(out.sequences[0].tokens, out.sequences[0].topk_logprobs[0])
        """
        self._session.check_open()
        deadlines = call_deadlines(deadlines)
        prompt = to_tinker_model_input(prompt)
        sampling_params = to_tinker_sampling_params(sampling_params)
        validate_sample_args(prompt, num_samples, sampling_params)
        validate_topk(topk_prompt_logprobs, "topk_prompt_logprobs")
        validate_topk(topk_sample_logprobs, "topk_sample_logprobs")
        body = sample_request_body(
            sampling_session_id=self.sampling_session_id,
            seq_id=self._reserve(),
            prompt=prompt,
            num_samples=num_samples,
            sampling_params=sampling_params,
            include_prompt_logprobs=include_prompt_logprobs,
            topk_prompt_logprobs=topk_prompt_logprobs,
            topk_sample_logprobs=topk_sample_logprobs,
        )

        async def run(pending: Pending[types.SampleResponse]) -> types.SampleResponse:
            transport = self._session.transport
            accepted = await transport.submit(paths.ASAMPLE, json_body=body, headers=_BACKPRESSURE)
            pending.request_id = accepted.request_id
            request_type = self._session.codec.request_type("sample")
            done = await transport.retrieve(
                accepted.request_id, request_type=request_type, accept=_PROTO
            )
            return decode_sample_response(done.payload, accepted.sample_sequence_ids or ())

        return self._start("sample", run, deadlines=deadlines)

    def compute_logprobs(
        self, prompt: types.ModelInput, *, deadlines: Deadlines | None = None
    ) -> Pending[list[float | None]]:
        """Per-token logprobs of ``prompt`` (``None`` for the first token).

        Example::

            lps = await sampler.compute_logprobs(types.ModelInput.from_ints(list(b"abc")))
        """
        prompt = to_tinker_model_input(prompt)
        inner = self.sample(
            prompt,
            1,
            types.SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            deadlines=deadlines,
        )

        async def run(pending: Pending[list[float | None]]) -> list[float | None]:
            response = await inner
            pending.request_id = inner.request_id
            return prompt_logprobs_of(response)

        return self._start("compute_logprobs", run, tracked=False)  # its `sample` is tracked

    def _reserve(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _start(
        self,
        name: str,
        run: Callable[[Pending[T]], Awaitable[T]],
        *,
        tracked: bool = True,
        deadlines: Deadlines | None = None,
    ) -> Pending[T]:
        deadlines = call_deadlines(deadlines)
        pending: Pending[T] = Pending(name)

        async def carry() -> None:
            try:
                if tracked:
                    work = self._session.track_operation(
                        pending, lambda: run(pending), deadlines=deadlines
                    )
                    resolve_pending(pending, await work)
                else:
                    resolve_pending(pending, await run(pending))
            except Exception as exc:
                fail_pending(pending, exc)
            finally:
                if not pending.done():
                    from ..errors import SessionClosed

                    fail_pending(pending,
                        SessionClosed(f"{name} was still running when its session closed")
                    )

        self._session.spawn_operation(carry, pending)
        return pending
