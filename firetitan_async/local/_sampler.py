"""Sampling and prompt logprobs from a ``TinyByteLM``'s sampler weights.

``sample`` draws ``num_samples`` continuations of a prompt, all advanced together one token per
step. Each step: logits → ``/ temperature`` → softmax, then top-k and top-p (nucleus) filtering,
renormalise, draw. The returned logprob of a token is its log-probability under the
temperature-scaled distribution before top-k/top-p filtering (the raw model distribution when
``temperature`` is 0, i.e. greedy, or 1).

Example::

    seqs = sample(model.sampler_weights(), np.array(b"ab", dtype=np.uint8).astype(np.int64),
                  num_samples=4, max_tokens=16, seed=1, rng=np.random.default_rng())
    seqs[0].tokens, seqs[0].logprobs, seqs[0].stop_reason
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import numpy as np

from ._input_error import ModelInputError
from ._model import (
    CONTEXT,
    EOS_TOKEN,
    context_indices,
    logits_from_weights,
    single_thread_blas,
    target_logprobs_from_weights,
    vocab_of,
)

__all__ = ["SampledSequence", "prompt_logprobs", "prompt_topk_logprobs", "sample"]

#: What fills a top-k row with no value (tinker's ``topk_logprobs.MASK_LOGPROB``, token 0).
MASK_LOGPROB = -99999.0

StopReason = Literal["stop", "length"]


@attrs.frozen(eq=False)
class SampledSequence:
    """One sampled continuation: ``tokens`` (int32), their ``logprobs`` (float32) and why it
    ended (``"stop"``: EOS or a stop sequence, both included in ``tokens``; ``"length"``).

    Example::

        seq.tokens.tolist(), float(seq.logprobs.sum()), seq.stop_reason
    """

    tokens: np.ndarray
    logprobs: np.ndarray
    stop_reason: StopReason
    #: With ``topk > 0``: the ``(len(tokens), k)`` token ids (int32) and logprobs (float32)
    #: of the most likely tokens at each sampled position, from the distribution the
    #: sampled token's logprob comes from.
    topk: tuple[np.ndarray, np.ndarray] | None = None


def sample(
    weights: Mapping[str, np.ndarray],
    prompt: np.ndarray,
    *,
    num_samples: int,
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int = -1,
    top_p: float = 1.0,
    stop: Sequence[Sequence[int]] = (),
    seed: int | None = None,
    rng: np.random.Generator,
    topk: int = 0,
) -> list[SampledSequence]:
    """Sample ``num_samples`` continuations of ``prompt`` (see the module docstring).

    ``top_k = -1`` and ``top_p = 1`` disable those filters. With ``seed`` the draws come from
    ``np.random.default_rng(seed)`` (deterministic, ``rng`` unused), else from ``rng``.
    With ``topk > 0`` each sequence also carries the ``topk`` most likely tokens at every
    sampled position. Raises ``ModelInputError`` for a bad argument.
    """
    vocab = vocab_of(weights)
    prompt_arr = _check_prompt(prompt, vocab)
    _check_int("num_samples", num_samples, 1)
    _check_int("max_tokens", max_tokens, 0)
    _check_int("top_k", top_k, -1)
    if top_k == 0:
        raise ModelInputError("top_k", "must be -1 (disabled) or >= 1")
    if not (_is_number(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ModelInputError("temperature", f"must be finite and >= 0, got {temperature!r}")
    if not (_is_number(top_p) and 0.0 < top_p <= 1.0):
        raise ModelInputError("top_p", f"must be in (0, 1], got {top_p!r}")
    stops = _check_stop(stop, vocab)
    _check_topk("topk_sample_logprobs", topk, vocab)
    if seed is not None:
        _check_int("seed", seed, None)
        rng = np.random.default_rng(seed)
    with single_thread_blas():
        return _sample(
            weights, prompt_arr, num_samples, max_tokens, temperature, top_k, top_p, stops, rng,
            topk,
        )


def _sample(
    weights: Mapping[str, np.ndarray],
    prompt_arr: np.ndarray,
    num_samples: int,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    stops: Sequence[list[int]],
    rng: np.random.Generator,
    topk: int = 0,
) -> list[SampledSequence]:

    tails = np.empty((num_samples, CONTEXT), dtype=np.int64)  # tails[:, k] = token at t - k
    tails[:] = _tail(prompt_arr, vocab_of(weights))
    generated: list[list[int]] = [[] for _ in range(num_samples)]
    logprobs: list[list[float]] = [[] for _ in range(num_samples)]
    reasons: list[StopReason] = ["length"] * num_samples
    top_rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num_samples)]
    stop_last = {int(seq[-1]) for seq in stops}
    active = np.arange(num_samples)
    for _ in range(max_tokens):
        if active.size == 0:
            break
        logits = logits_from_weights(weights, tails[active]).astype(np.float64)
        chosen, chosen_lp = _draw(logits, temperature, top_k, top_p, rng)
        if topk:  # the distribution chosen_lp comes from (temperature-scaled unless greedy)
            ids, lps = _topk_rows(_log_softmax(logits / (temperature or 1.0)), topk)
            for j, s in enumerate(active.tolist()):
                top_rows[s].append((ids[j], lps[j]))
        tails[active, 1:] = tails[active, :-1]
        tails[active, 0] = chosen
        still = chosen != EOS_TOKEN
        for j, (s, token, lp) in enumerate(
            zip(active.tolist(), chosen.tolist(), chosen_lp.tolist(), strict=True)
        ):
            generated[s].append(token)
            logprobs[s].append(lp)
            if token in stop_last and _ends_with_stop(generated[s], stops):
                still[j] = False
        for s in active[~still].tolist():
            reasons[s] = "stop"
        active = active[still]
    return [
        SampledSequence(
            tokens=np.asarray(generated[s], dtype=np.int32),
            logprobs=np.asarray(logprobs[s], dtype=np.float32),
            stop_reason=reasons[s],
            topk=_stack_rows(top_rows[s], topk) if topk else None,
        )
        for s in range(num_samples)
    ]


def prompt_topk_logprobs(
    weights: Mapping[str, np.ndarray], prompt: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most likely tokens at each prompt position under the raw model:
    ``(len(prompt), k)`` int32 ids and float32 logprobs, most likely first (ties: lower id
    first). Row 0 has no context and is all mask (token 0, ``MASK_LOGPROB``).

    Example::

        ids, lps = prompt_topk_logprobs(model.sampler_weights(), np.array([104, 105, 33]), 2)
    """
    vocab = vocab_of(weights)
    arr = _check_prompt(prompt, vocab)
    _check_topk("topk_prompt_logprobs", k, vocab)
    ids = np.zeros((arr.shape[0], k), dtype=np.int32)
    lps = np.full((arr.shape[0], k), MASK_LOGPROB, dtype=np.float32)
    if arr.shape[0] > 1:
        with single_thread_blas():
            logits = logits_from_weights(weights, context_indices(arr[:-1], pad=vocab))
        ids[1:], lps[1:] = _topk_rows(_log_softmax(logits.astype(np.float64)), k)
    return ids, lps


def _topk_rows(logp: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-logp, axis=1, kind="stable")[:, :k]
    return order.astype(np.int32), np.take_along_axis(logp, order, axis=1).astype(np.float32)


def _stack_rows(rows: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros((0, k), dtype=np.int32), np.zeros((0, k), dtype=np.float32)
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def _check_topk(field: str, k: object, vocab: int) -> None:
    _check_int(field, k, 0)
    assert isinstance(k, int)
    if k > vocab:
        raise ModelInputError(field, f"must be <= the vocabulary size {vocab}, got {k}")


def prompt_logprobs(weights: Mapping[str, np.ndarray], prompt: np.ndarray) -> np.ndarray:
    """Float32 (len(prompt),): NaN at 0, then ``log p(prompt[t] | prompt[:t])``.

    Example::

        lp = prompt_logprobs(model.sampler_weights(), np.array([104, 105, 33]))
        # lp[0] is nan; lp[1:] equals forward logprobs of targets prompt[1:]
    """
    vocab = vocab_of(weights)
    arr = _check_prompt(prompt, vocab)
    out = np.full(arr.shape[0], np.nan, dtype=np.float32)
    if arr.shape[0] > 1 and "wc" in weights:  # factored: no (len, vocab) logits
        with single_thread_blas():
            ctx = context_indices(arr[:-1], pad=vocab)
            out[1:] = target_logprobs_from_weights(weights, ctx, arr[1:])
    elif arr.shape[0] > 1:
        with single_thread_blas():
            logits = logits_from_weights(weights, context_indices(arr[:-1]))
        logits = logits.astype(np.float64)
        logp = _log_softmax(logits)
        out[1:] = logp[np.arange(arr.shape[0] - 1), arr[1:]]
    return out


def _draw(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(logits.shape[0])
    if temperature == 0.0:
        chosen = np.argmax(logits, axis=1)
        return chosen, _log_softmax(logits)[rows, chosen]
    logp = _log_softmax(logits / temperature)
    probs = np.exp(logp)
    if top_k < 0 and top_p >= 1.0:  # no filtering: draw from the full distribution
        cdf = np.cumsum(probs, axis=1)
        u = rng.random(logits.shape[0]) * cdf[:, -1]
        chosen = np.minimum((cdf <= u[:, None]).sum(axis=1), cdf.shape[1] - 1)
        return chosen, logp[rows, chosen]
    # candidates by decreasing probability (stable: ties keep the lower token first)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=1)
    keep = np.ones_like(sorted_p, dtype=bool)
    if top_k > 0:
        keep[:, top_k:] = False
    if top_p < 1.0:
        before = np.cumsum(sorted_p, axis=1) - sorted_p  # mass of better candidates
        keep &= before < top_p
        keep[:, 0] = True
    kept = np.where(keep, sorted_p, 0.0)
    cdf = np.cumsum(kept, axis=1)
    u = rng.random(logits.shape[0]) * cdf[:, -1]
    pick = np.minimum((cdf <= u[:, None]).sum(axis=1), cdf.shape[1] - 1)
    # never land on a filtered-out slot (possible only through rounding at the top end)
    pick = np.where(keep[rows, pick], pick, keep.sum(axis=1) - 1)
    chosen = order[rows, pick]
    return chosen, logp[rows, chosen]


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


def _tail(prompt: np.ndarray, vocab: int) -> np.ndarray:
    tail = np.full(CONTEXT, vocab, dtype=np.int64)  # the pad entry is the vocabulary size
    recent = prompt[::-1][:CONTEXT]
    tail[: recent.shape[0]] = recent
    return tail


def _ends_with_stop(generated: list[int], stops: Sequence[list[int]]) -> bool:
    n = len(generated)
    return any(len(s) <= n and generated[n - len(s) :] == s for s in stops)


def _check_prompt(prompt: np.ndarray, vocab: int) -> np.ndarray:
    arr = np.asarray(prompt)
    if arr.ndim != 1:
        raise ModelInputError("prompt", f"must be 1-D tokens, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ModelInputError("prompt", "is empty")
    _check_token_values("prompt", arr, vocab)
    return arr.astype(np.int64, copy=False)


def _check_stop(stop: Sequence[Sequence[int]], vocab: int) -> list[list[int]]:
    out = []
    for i, seq in enumerate(stop):
        arr = np.asarray(seq)
        if arr.ndim != 1 or arr.shape[0] == 0:
            raise ModelInputError(f"stop[{i}]", "must be a non-empty sequence of tokens")
        _check_token_values(f"stop[{i}]", arr, vocab)
        out.append([int(t) for t in arr])
    return out


def _check_token_values(field: str, arr: np.ndarray, vocab: int) -> None:
    if arr.dtype.kind not in "iu":
        raise ModelInputError(field, f"must be integer tokens, got {arr.dtype}")
    if int(arr.min()) < 0 or int(arr.max()) >= vocab:
        raise ModelInputError(field, f"tokens must be in [0, {vocab})")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(field: str, value: object, minimum: int | None) -> None:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not ok or (minimum is not None and int(value) < minimum):  # type: ignore[call-overload]
        bound = "" if minimum is None else f" >= {minimum}"
        raise ModelInputError(field, f"must be an integer{bound}, got {value!r}")
