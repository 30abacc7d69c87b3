"""``SamplingClient``: sampling and prompt logprobs from saved or base weights.

Two backends, one surface. In the tinker dialect a client samples from one of the trainer's
sampling sessions (``asample``, a protobuf reply). In the Fireworks dialect it is the Fireworks
SDK's ``FiretitanSamplingClient``: each ``sample`` is one completions request through a
:class:`DeploymentSampler` (a managed deployment's, or the serverless gateway's), with
``logprobs`` always and ``echo`` for prompt logprobs, turned back into a tinker
``SampleResponse``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tinker import types

from .._session._deadlines import Deadlines, call_deadlines
from .._session._pending import Pending, fail_pending, resolve_pending
from .._session._protocol import ClientSession
from ..errors import InvalidInput
from ..wire import paths
from ..wire.completions import completion_body, has_token_ids, prompt_token_ids
from ..wire.sample import decode_sample_response, prompt_logprobs_of, sample_request_body
from ..wire.validation import validate_sample_args, validate_topk
from ._fireworks_types import to_tinker_model_input, to_tinker_sampling_params

if TYPE_CHECKING:
    from ._deployment_sampler import DeploymentSampler, SampledCompletion

__all__ = ["SamplingClient"]

_PROTO = "application/x-protobuf"

T = TypeVar("T")
# Tells the server it may answer 429 to slow sampling down (the transport then backs off).
_BACKPRESSURE = {"X-Tinker-Sampling-Backpressure": "1"}


class SamplingClient:
    """Samples from saved sampler weights or a base model.

    Get one from :meth:`ServiceSession.create_sampling_client` or (tinker dialect)
    :meth:`TrainingClient.save_weights_and_get_sampling_client`. Sampling has no ordering:
    thousands of ``sample`` calls may be in flight at once. In the tinker dialect it samples
    from one of the trainer's sampling sessions; in the Fireworks dialect through a
    ``deployment_sampler`` (a managed deployment's, or the serverless gateway's completions
    endpoint), as the Fireworks SDK's ``FiretitanSamplingClient`` does: there
    ``topk_*_logprobs`` are refused.

    Example::

        prompt = types.ModelInput.from_ints(list(b"Hello"))
        out = await sampler.sample(prompt, 4, types.SamplingParams(max_tokens=16, temperature=0.7))
        first = bytes(t for t in out.sequences[0].tokens if t < 256).decode(errors="replace")
    """

    def __init__(
        self,
        session: ClientSession,
        sampling_session_id: str | None = None,
        *,
        model_path: str | None = None,
        base_model: str | None = None,
        deployment_sampler: DeploymentSampler | None = None,
    ) -> None:
        if (sampling_session_id is None) == (deployment_sampler is None):
            raise InvalidInput(
                "sampling_session_id",
                "give exactly one of sampling_session_id or deployment_sampler",
            )
        self._session = session
        #: The server's sampling session id (None when it samples through ``deployment_sampler``).
        self.sampling_session_id = sampling_session_id
        #: The :class:`DeploymentSampler` it samples through (Fireworks dialect), or None.
        self.deployment_sampler = deployment_sampler
        #: The sampler path this client samples from, if any.
        self.model_path = model_path
        #: The base model, when known.
        self.base_model = base_model
        self._next_seq = 0

    def __repr__(self) -> str:
        if self.deployment_sampler is not None:
            return f"SamplingClient(model={self.deployment_sampler.model!r})"
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
        if self.deployment_sampler is not None:
            return self._start(
                "sample",
                self._completions_run(
                    self.deployment_sampler, prompt, num_samples, sampling_params,
                    include_prompt_logprobs, topk_prompt_logprobs, topk_sample_logprobs,
                ),
                deadlines=deadlines,
            )
        assert self.sampling_session_id is not None
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

    @staticmethod
    def _completions_run(
        sampler: DeploymentSampler,
        prompt: types.ModelInput,
        num_samples: int,
        params: types.SamplingParams,
        include_prompt_logprobs: bool,
        topk_prompt_logprobs: int,
        topk_sample_logprobs: int,
    ) -> Callable[[Pending[types.SampleResponse]], Awaitable[types.SampleResponse]]:
        """One completions request, as the Fireworks SDK's ``FiretitanSamplingClient`` sends
        it (``logprobs`` always, ``echo`` for prompt logprobs, ``top_k`` only when >= 0);
        what the completions API cannot answer is refused before anything is sent."""
        if topk_prompt_logprobs:
            raise InvalidInput(
                "topk_prompt_logprobs", "a completions-backed sampling client has none "
                "(the Fireworks SDK's FiretitanSamplingClient refuses it too)"
            )
        if topk_sample_logprobs:
            raise InvalidInput(
                "topk_sample_logprobs", "a completions-backed sampling client has none"
            )
        tokens = prompt_token_ids(prompt)
        options: dict[str, object] = {}
        if params.top_p is not None:
            options["top_p"] = params.top_p
        if params.top_k is not None and params.top_k >= 0:
            options["top_k"] = params.top_k
        if params.seed is not None:
            options["seed"] = params.seed
        if params.stop is not None:
            options["stop"] = params.stop
        max_tokens = 1024 if params.max_tokens is None else params.max_tokens
        # Check the arguments now (InvalidInput names one, nothing is sent), as at the call in
        # the session backend; the sampler builds the same body again when it sends. Token-id
        # stops are left to the sampler: it decodes them with its tokenizer when it sends.
        checked = {k: v for k, v in options.items() if k != "stop" or not has_token_ids(v)}
        completion_body(
            sampler.model, tokens, n=num_samples, max_tokens=max_tokens,
            temperature=params.temperature, logprobs=True, echo=include_prompt_logprobs,
            **checked,  # type: ignore[arg-type]
        )

        async def run(pending: Pending[types.SampleResponse]) -> types.SampleResponse:
            completions = await sampler.sample(
                tokens, n=num_samples, max_tokens=max_tokens,
                temperature=params.temperature, logprobs=True, echo=include_prompt_logprobs,
                **options,  # type: ignore[arg-type]
            )
            if completions:
                pending.request_id = completions[0].request_id
            return sample_response_of(completions, include_prompt_logprobs)

        return run

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


def sample_response_of(
    completions: Sequence[SampledCompletion], include_prompt_logprobs: bool
) -> types.SampleResponse:
    """A tinker ``SampleResponse`` of completions (the Fireworks SDK's conversion: stop reason
    ``"length"`` or ``"stop"``, the sampling logprobs, the echoed prompt's logprobs).

    Example::

        sample_response_of(await sampler.sample(tokens, n=2, logprobs=True), False)
    """
    sequences = [
        types.SampledSequence(
            stop_reason="length" if c.finish_reason == "length" else "stop",
            sequence_id=f"{c.request_id}:{i}",
            tokens_np=np.asarray(c.tokens, dtype=np.int32),
            logprobs_np=None if c.logprobs is None else np.asarray(c.logprobs, dtype=np.float64),
        )
        for i, c in enumerate(completions)
    ]
    prompt_logprobs = None
    if include_prompt_logprobs and completions:
        values = completions[0].prompt_logprobs or []
        prompt_logprobs = np.asarray(
            [np.nan if v is None else v for v in values], dtype=np.float64
        )
    return types.SampleResponse(sequences=sequences, prompt_logprobs_np=prompt_logprobs)
