"""``TinyByteLM``: the local trainer's tiny causal byte-level language model, in numpy.

Architecture (all float32 by default): the token at position ``t`` and the ``CONTEXT - 1``
tokens before it (a ``PAD`` embedding before the start) are embedded (``EMBED_DIM`` each) and
concatenated into ``x``; then ``h = tanh(x @ w1 + b1)`` (``HIDDEN_DIM``) and
``logits = h @ w2 + b2`` over ``VOCAB_SIZE`` tokens. Gradients are exact and hand-written.

LoRA (``lora_rank = r > 0``): ``w1`` and ``w2`` become ``W + (LORA_ALPHA / r)·A @ B`` with ``A``
random and ``B`` zero (so the initial model equals the base); only ``A``/``B`` train.
With ``lora_rank = 0`` every parameter (embeddings, weights, biases) trains.

Example::

    model = TinyByteLM(seed=0)
    toks = np.frombuffer(b"hello world", dtype=np.uint8).astype(np.int64)
    datum = DatumArrays(tokens=toks[:-1], inputs={"target_tokens": toks[1:],
                                                  "weights": np.ones(len(toks) - 1, np.float32)})
    out = model.forward_backward([datum], "cross_entropy", backward=True)
    model.optim_step(AdamConfig(learning_rate=1e-2))
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from ._input_error import ModelInputError
from ._losses import FLOAT_INPUTS, REQUIRED_INPUTS, compute_loss, loss_input, resolve_config
from ._optim import AdamConfig, AdamW, global_norm

__all__ = [
    "CONTEXT",
    "DENSE_MAX_VOCAB",
    "EMBED_DIM",
    "EOS_TOKEN",
    "HASH_BUCKETS",
    "HIDDEN_DIM",
    "LORA_ALPHA",
    "LORA_MAX_RANK",
    "MODEL_NAME",
    "PAD_INDEX",
    "VOCAB_SIZE",
    "AdamConfig",
    "DatumArrays",
    "FwdBwdResult",
    "ModelInputError",
    "TinyByteLM",
    "check_token_range",
    "checked_datums",
    "context_indices",
    "logits_from_weights",
    "single_thread_blas",
    "target_logprobs_from_weights",
    "vocab_of",
]

MODEL_NAME = "local/tiny-byte-lm"
VOCAB_SIZE = 257  # tokens 0..255 are bytes, 256 is EOS
EOS_TOKEN = 256
PAD_INDEX = VOCAB_SIZE  # embedding row for "before the start"; never a token
CONTEXT = 4  # tokens seen per position: the current one and 3 before it
EMBED_DIM = 32
HIDDEN_DIM = 128
LORA_ALPHA = 32.0
LORA_MAX_RANK = 256
LORA_TARGETS = ("w1", "w2")
INIT_METHODS = frozenset({"kaiming", "nora"})
"""LoRA ``init_method`` values: ``kaiming`` (A Gaussian with std 1/sqrt(fan_in), B zero) and
``nora`` (as kaiming, then each input's row of A scaled to unit L2 norm over the rank)."""
NORMALIZATIONS = frozenset({None, "none", "num_loss_tokens", "num_sequences"})
"""``grad_accumulation_normalization`` values (``None`` is the same as ``"none"``)."""

DENSE_MAX_VOCAB = 4096
"""Vocabularies up to this size get the dense output layer (``h @ w2 + b2`` over every token);
larger ones (a real tokenizer's 32k-256k) the class-factored one below."""
HASH_BUCKETS = 16384
"""Input embedding rows of a factored model: token ``t`` uses row
``(t * _HASH_MULT) % HASH_BUCKETS`` (collisions are fine for a toy; the pad row is
``HASH_BUCKETS``)."""
_HASH_MULT = 2654435761  # Knuth's multiplicative hash constant
MAX_VOCAB = 1 << 20


def _base_shapes(vocab: int) -> dict[str, tuple[int, ...]]:
    """Weight shapes for a vocabulary of ``vocab`` tokens.

    Dense (``vocab <= DENSE_MAX_VOCAB``, the byte model's 257): ``embed`` has a row per token
    plus the pad row, ``w2``/``b2`` a column per token. Factored (larger): ``log p(t) =
    log p(c | h) + log p(j | h, c)`` with ``t = c·S + j``, ``S = ceil(sqrt(vocab))`` slots per
    class and ``C = ceil(vocab / S)`` classes: class logits ``h @ wc + bc`` (C), slot logits
    ``h @ w2 + b2[c·S : c·S + S]`` (S; the last class's slots past ``vocab`` are masked). Both
    softmaxes are exact, so the distribution over the ``vocab`` tokens is normalised, and a
    training step costs O(sqrt(vocab)) per position, not O(vocab).
    """
    if vocab <= DENSE_MAX_VOCAB:
        return {
            "embed": (vocab + 1, EMBED_DIM),
            "w1": (CONTEXT * EMBED_DIM, HIDDEN_DIM),
            "b1": (HIDDEN_DIM,),
            "w2": (HIDDEN_DIM, vocab),
            "b2": (vocab,),
        }
    slots = math.isqrt(vocab - 1) + 1
    classes = -(-vocab // slots)
    return {
        "embed": (HASH_BUCKETS + 1, EMBED_DIM),
        "w1": (CONTEXT * EMBED_DIM, HIDDEN_DIM),
        "b1": (HIDDEN_DIM,),
        "w2": (HIDDEN_DIM, slots),
        "b2": (vocab,),
        "wc": (HIDDEN_DIM, classes),
        "bc": (classes,),
    }


_BASE_SHAPES = _base_shapes(VOCAB_SIZE)


def vocab_of(weights: Mapping[str, np.ndarray]) -> int:
    """The vocabulary size of a model's weights (``b2`` has one entry per token).

    Example::

        vocab_of(model.sampler_weights())   # 257 for the byte model
    """
    return int(weights["b2"].shape[0])


def _embed_rows(ctx: np.ndarray, vocab: int) -> np.ndarray:
    """Embedding rows of context entries (tokens, ``vocab`` = pad): the entries themselves
    for a dense model, hashed buckets for a factored one."""
    if vocab <= DENSE_MAX_VOCAB:
        return ctx
    out: np.ndarray = np.where(ctx == vocab, HASH_BUCKETS, (ctx * _HASH_MULT) % HASH_BUCKETS)
    return out


def _slot_bias(b2: np.ndarray, classes: int, slots: int) -> np.ndarray:
    """``b2`` as a (classes, slots) matrix, the slots past the vocabulary at ``-inf``."""
    out = np.full(classes * slots, -np.inf, dtype=b2.dtype)
    out[: b2.shape[0]] = b2
    return out.reshape(classes, slots)


def _factored_targets(
    h_u: np.ndarray, inverse: np.ndarray, weights: Mapping[str, np.ndarray], targets: np.ndarray
) -> dict[str, np.ndarray]:
    """Target logprobs of a factored model from the hidden states of unique contexts ``h_u``
    (position ``i`` has context ``inverse[i]``), with what the backward pass needs."""
    wc, w2 = weights["wc"], weights["w2"]
    classes, slots = wc.shape[1], w2.shape[1]
    cls, slot = targets // slots, targets % slots
    rows = np.arange(targets.shape[0])
    lc = _log_softmax(h_u @ wc + weights["bc"])[inverse]
    ls = _log_softmax((h_u @ w2)[inverse] + _slot_bias(weights["b2"], classes, slots)[cls])
    return {"lc": lc, "ls": ls, "cls": cls, "slot": slot,
            "lp": lc[rows, cls] + ls[rows, slot]}


@attrs.frozen(eq=False)
class DatumArrays:
    """One datum as arrays: model input ``tokens`` (N,) and ``loss_fn_inputs`` by name.

    ``inputs["target_tokens"][t]`` is the token after ``tokens[t]``; float inputs (``weights``,
    ``advantages``, ``logprobs``) are per token too, each of shape (N,).

    Example::

        DatumArrays(tokens=np.array([104, 105]), inputs={"target_tokens": np.array([105, 256]),
                                                         "weights": np.ones(2, np.float32)})
    """

    tokens: np.ndarray
    inputs: Mapping[str, np.ndarray]


@attrs.frozen(eq=False)
class FwdBwdResult:
    """Per-datum target logprobs (float32, shape (N,)) and ``name:reduction`` metrics.

    Example::

        res = model.forward_backward(batch, "cross_entropy", backward=False)
        res.metrics["loss:sum"], res.logprobs[0]
    """

    logprobs: list[np.ndarray]
    metrics: dict[str, float]


def context_indices(
    tokens: np.ndarray, starts: np.ndarray | None = None, pad: int = PAD_INDEX
) -> np.ndarray:
    """Tokens seen at each position: shape (M, CONTEXT), column k = token at ``t - k``.

    ``tokens`` may be several sequences concatenated, with ``starts`` (M,) the index where the
    sequence of each position begins (default: one sequence). Before a start: ``pad`` (the
    vocabulary size: ``PAD_INDEX`` for the byte model).
    """
    m = tokens.shape[0]
    idx = np.arange(m)
    pos = idx if starts is None else idx - starts
    ctx = np.full((m, CONTEXT), pad, dtype=np.int64)
    ctx[:, 0] = tokens
    for k in range(1, CONTEXT):
        valid = pos >= k
        ctx[valid, k] = tokens[idx[valid] - k]
    return ctx


def logits_from_weights(weights: Mapping[str, np.ndarray], ctx: np.ndarray) -> np.ndarray:
    """Logits (M, vocab) for context rows ``ctx`` (from ``context_indices``, padded with the
    vocabulary size), given effective weights as from ``TinyByteLM.sampler_weights()``. For a
    factored model these are the full log-probabilities (O(M·vocab): for sampling a few rows).
    """
    vocab = vocab_of(weights)
    x = weights["embed"][_embed_rows(ctx, vocab)].reshape(ctx.shape[0], -1)
    h = np.tanh(x @ weights["w1"] + weights["b1"])
    if "wc" not in weights:
        out: np.ndarray = h @ weights["w2"] + weights["b2"]
        return out
    wc, w2 = weights["wc"], weights["w2"]
    classes, slots = wc.shape[1], w2.shape[1]
    lc = _log_softmax(h @ wc + weights["bc"])  # (M, C)
    z = (h @ w2)[:, None, :] + _slot_bias(weights["b2"], classes, slots)[None]  # (M, C, S)
    full = (lc[:, :, None] + _log_softmax(z)).reshape(ctx.shape[0], classes * slots)
    out = full[:, :vocab]
    return out


def target_logprobs_from_weights(
    weights: Mapping[str, np.ndarray], ctx: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """``log p(targets[i] | ctx[i])`` (M,) without the full (M, vocab) logits of a factored
    model (a dense one computes them).

    Example::

        lp = target_logprobs_from_weights(weights, context_indices(toks[:-1], pad=vocab),
                                          toks[1:])
    """
    rows = np.arange(targets.shape[0])
    if "wc" not in weights:
        logits = logits_from_weights(weights, ctx).astype(np.float64)
        lp: np.ndarray = _log_softmax(logits)[rows, targets]
        return lp
    vocab = vocab_of(weights)
    x = weights["embed"][_embed_rows(ctx, vocab)].reshape(ctx.shape[0], -1)
    h = np.tanh(x @ weights["w1"] + weights["b1"])
    lp = _factored_targets(h, rows, weights, targets)["lp"]
    return lp


def _optional_threadpoolctl() -> Any:
    try:
        return importlib.import_module("threadpoolctl")
    except ImportError:  # pragma: no cover - optional dependency
        return None


# Keeps BLAS to one thread: a tiny model gains nothing from threads, and under CPU contention
# OpenBLAS's spinning worker threads make a 1 ms step take 100 ms. A module, not mutable state.
_THREADPOOLCTL: Any = _optional_threadpoolctl()


@functools.cache
def _blas_controller() -> Any:
    """The process's ``ThreadpoolController`` (None without ``threadpoolctl``): its scan of the
    loaded libraries (reading ``/proc/self/maps``) is done once. ``threadpool_limits()`` scans
    on every call: 1.5-2 ms in a process with many libraries loaded (a test run), which was
    half the local server's CPU per completion. BLAS is loaded with numpy, before any scan."""
    return None if _THREADPOOLCTL is None else _THREADPOOLCTL.ThreadpoolController()


def single_thread_blas() -> contextlib.AbstractContextManager[Any]:
    """A context in which numpy's BLAS uses one thread (a no-op without ``threadpoolctl``).

    Example::

        with single_thread_blas():
            logits = logits_from_weights(weights, ctx)
    """
    controller = _blas_controller()
    if controller is None:
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = controller.limit(limits=1, user_api="blas")
    return limits


class _BlasLimiter:
    """Per-model ``single_thread_blas``."""

    def __init__(self) -> None:
        self._controller: Any = _blas_controller()

    def __call__(self) -> contextlib.AbstractContextManager[Any]:
        if self._controller is None:
            return contextlib.nullcontext()
        limits: contextlib.AbstractContextManager[Any] = self._controller.limit(
            limits=1, user_api="blas"
        )
        return limits


def _unique_rows(ctx: np.ndarray, rows: int = VOCAB_SIZE + 1) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(ctx, axis=0, return_inverse=True)`` (same rows, same order: entries are in
    ``[0, rows)``, so each row is one base-``rows`` number) at half the cost."""
    radix = np.array([rows ** (CONTEXT - 1 - k) for k in range(CONTEXT)], np.int64)
    _, first, inverse = np.unique(ctx @ radix, return_index=True, return_inverse=True)
    return ctx[first], inverse.reshape(-1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=-1, keepdims=True)
    out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return out


class TinyByteLM:
    """The tiny byte-level model with its gradients and AdamW state (see module docstring).

    ``forward_backward(..., backward=True)`` accumulates gradients; ``optim_step`` applies and
    clears them. Same ``seed`` and same sequence of calls give bit-identical weights.
    ``dtype=np.float64`` is for gradient checks.

    Example::

        model = TinyByteLM(seed=0, lora_rank=8)
        model.forward_backward(batch, "ppo", {"clip_high_threshold": 1.1}, backward=True)
        model.optim_step(AdamConfig(learning_rate=1e-3))
    """

    lora_rank: int

    def __init__(
        self,
        *,
        seed: int,
        lora_rank: int = 0,
        dtype: type[np.floating] = np.float32,
        lora_alpha: float = LORA_ALPHA,
        init_method: str = "kaiming",
        lora_seed: int | None = None,
        vocab_size: int = VOCAB_SIZE,
    ) -> None:
        if (
            isinstance(vocab_size, bool)
            or not isinstance(vocab_size, int)
            or not 2 <= vocab_size <= MAX_VOCAB
        ):
            raise ModelInputError(
                "vocab_size", f"must be an integer in [2, {MAX_VOCAB}], got {vocab_size!r}"
            )
        if (
            isinstance(lora_rank, bool)
            or not isinstance(lora_rank, int)
            or not 0 <= lora_rank <= LORA_MAX_RANK
        ):
            raise ModelInputError(
                "lora_rank", f"must be an integer in [0, {LORA_MAX_RANK}], got {lora_rank!r}"
            )
        if isinstance(lora_alpha, bool) or not isinstance(lora_alpha, int | float) or not (
            0 < lora_alpha < float("inf")
        ):
            raise ModelInputError("lora_config.alpha", f"must be > 0, got {lora_alpha!r}")
        if init_method not in INIT_METHODS:
            raise ModelInputError(
                "lora_config.init_method",
                f"must be one of {sorted(INIT_METHODS)}, got {init_method!r}",
            )
        self.lora_rank = lora_rank
        self.vocab_size = vocab_size
        self._base_shapes = shapes = _base_shapes(vocab_size)
        self._factored = "wc" in shapes
        self.lora_alpha = float(lora_alpha)
        self.seed = seed
        self._dtype = dtype
        rng = np.random.default_rng(seed)
        p: dict[str, np.ndarray] = {}
        p["embed"] = rng.standard_normal(shapes["embed"]).astype(dtype)
        p["w1"] = (rng.standard_normal(shapes["w1"]) / np.sqrt(CONTEXT * EMBED_DIM)).astype(dtype)
        p["b1"] = np.zeros(shapes["b1"], dtype=dtype)
        p["w2"] = (rng.standard_normal(shapes["w2"]) / np.sqrt(HIDDEN_DIM)).astype(dtype)
        p["b2"] = np.zeros(shapes["b2"], dtype=dtype)
        if self._factored:
            p["wc"] = (rng.standard_normal(shapes["wc"]) / np.sqrt(HIDDEN_DIM)).astype(dtype)
            p["bc"] = np.zeros(shapes["bc"], dtype=dtype)
        if lora_rank:
            if lora_seed is not None:  # the adapters' own seed; the base stays ``seed``'s
                rng = np.random.default_rng([seed, lora_seed])
            for name in LORA_TARGETS:
                fan_in, fan_out = shapes[name]
                a = rng.standard_normal((fan_in, lora_rank)) / np.sqrt(fan_in)
                if init_method == "nora":  # each input's row of A has unit L2 norm over the rank
                    a /= np.linalg.norm(a, axis=1, keepdims=True)
                p[f"{name}.lora_a"] = a.astype(dtype)
                p[f"{name}.lora_b"] = np.zeros((lora_rank, fan_out), dtype=dtype)
            self._trainable = tuple(f"{n}.lora_{ab}" for n in LORA_TARGETS for ab in "ab")
        else:
            self._trainable = tuple(shapes)
        self._params = p
        # LoRA-merged w1/w2 (``_effective``), dropped whenever a parameter changes: every write
        # to ``_params`` must go through ``_params_changed``.
        self._merged: dict[str, np.ndarray] = {}
        self._acc_tokens = 0
        self._acc_sequences = 0
        self._shapes = {k: v.shape for k, v in p.items()}
        self._grads = {k: np.zeros_like(p[k]) for k in self._trainable}
        self._adam = AdamW({k: self._shapes[k] for k in self._trainable}, dtype)
        self._blas = _BlasLimiter()

    # ----------------------------------------------------------------- weights

    @property
    def lora_scale(self) -> float:
        """``lora_alpha / lora_rank`` (0 without LoRA)."""
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    @property
    def optim_steps(self) -> int:
        """How many optimizer steps have been applied (restored by ``load_state``)."""
        return self._adam.step_count

    def _effective(self, name: str) -> np.ndarray:
        """The weight the model computes with (LoRA merged; read-only for callers)."""
        w = self._params[name]
        if self.lora_rank and name in LORA_TARGETS:
            eff = self._merged.get(name)
            if eff is None:
                a, b = self._params[f"{name}.lora_a"], self._params[f"{name}.lora_b"]
                eff = self._merged[name] = w + self._dtype(self.lora_scale) * (a @ b)
            return eff
        return w

    def _params_changed(self) -> None:
        self._merged.clear()

    def sampler_weights(self) -> dict[str, np.ndarray]:
        """Float32 copies of the effective weights (LoRA merged): what a sampler needs."""
        with self._blas():
            return {
                k: np.array(self._effective(k), dtype=np.float32) for k in self._base_shapes
            }

    def trainable_weights(self) -> dict[str, np.ndarray]:
        """Copies of the trained parameters (LoRA adapters when ``lora_rank > 0``)."""
        return {k: self._params[k].copy() for k in self._trainable}

    def has_adapter_delta(self) -> bool:
        """Whether the LoRA adapters change the weights (``B`` not all zero)."""
        return any(
            np.any(self._params[f"{name}.lora_b"]) for name in LORA_TARGETS if self.lora_rank
        )

    def gradients(self) -> dict[str, np.ndarray]:
        """Copies of the accumulated (not yet applied) gradients of the trained parameters."""
        return {k: g.copy() for k, g in self._grads.items()}

    def zero_grad(self) -> None:
        """Drop the accumulated gradients (and their loss-token and sequence counts)."""
        for g in self._grads.values():
            g.fill(0.0)
        self._acc_tokens = 0
        self._acc_sequences = 0

    @property
    def accumulated(self) -> tuple[int, int]:
        """``(loss tokens, sequences)`` with a non-zero gradient since the last step."""
        return self._acc_tokens, self._acc_sequences

    # ------------------------------------------------------------------ state

    def state(self, *, optimizer: bool) -> dict[str, np.ndarray]:
        """Copies of everything needed to restore: ``param/<name>`` for every parameter,
        ``lora_rank``, and with ``optimizer`` the Adam state under ``adam/``. npz-friendly.

        Example::

            np.savez(path, **model.state(optimizer=True))
        """
        out = {f"param/{k}": v.copy() for k, v in self._params.items()}
        out["lora_rank"] = np.asarray(self.lora_rank, dtype=np.int64)
        if optimizer:
            out.update({f"adam/{k}": v for k, v in self._adam.state().items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray], *, optimizer: bool) -> None:
        """Restore from ``state()`` output; drops accumulated gradients.

        With ``optimizer=False`` the Adam state is reset. Raises ``ModelInputError`` (and
        changes nothing) on a LoRA-rank or shape mismatch or missing optimizer state.
        """
        if "lora_rank" in state:
            rank = np.asarray(state["lora_rank"])
            if rank.shape != () or int(rank) != self.lora_rank:
                raise ModelInputError(
                    "state.lora_rank",
                    f"checkpoint has LoRA rank {rank}, this model has {self.lora_rank}",
                )
        for name, shape in self._shapes.items():
            key = f"param/{name}"
            if key not in state:
                raise ModelInputError("state", f"missing {key!r} (LoRA rank or model mismatch?)")
            arr = np.asarray(state[key])
            if arr.shape != shape:
                raise ModelInputError(f"state.{key}", f"shape {arr.shape}, expected {shape}")
            if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise ModelInputError(f"state.{key}", "must be finite floating point")
        extra = sorted(
            k[len("param/") :]
            for k in state
            if k.startswith("param/") and k[len("param/") :] not in self._shapes
        )
        if extra:
            raise ModelInputError("state", f"unexpected parameters {extra} (LoRA rank mismatch?)")
        adam_state = {k[len("adam/") :]: v for k, v in state.items() if k.startswith("adam/")}
        if optimizer:
            self._adam.check_state(adam_state)
        # validated: now mutate
        for name in self._shapes:
            self._params[name][...] = state[f"param/{name}"]
        self._params_changed()
        if optimizer:
            self._adam.load_state(adam_state)
        else:
            self._adam.reset()
        self.zero_grad()

    def load_base_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Take the base weights of a ``sampler_weights()`` snapshot (a promoted model's): the
        LoRA adapters (if any) stay at their initial values, the optimizer state is reset.
        Raises ``ModelInputError`` (and changes nothing) if a weight is missing or misshapen.

        Example::

            TinyByteLM(seed=1, lora_rank=4).load_base_weights(trained.sampler_weights())
        """
        for name, shape in self._base_shapes.items():
            arr = np.asarray(weights.get(name))
            if arr.shape != shape or arr.dtype.kind != "f" or not np.all(np.isfinite(arr)):
                raise ModelInputError(
                    "base_model", f"the model's {name} does not fit ({arr.shape}, expected {shape})"
                )
        for name in self._base_shapes:
            self._params[name][...] = weights[name]
        self._params_changed()
        self._adam.reset()
        self.zero_grad()

    def load_adapter(self, state: Mapping[str, np.ndarray]) -> None:
        """Take the LoRA adapters (``param/<w>.lora_a|b``) of a ``state()`` checkpoint; the
        base weights and the optimizer state are left alone, gradients are dropped."""
        keys = [f"{n}.lora_{ab}" for n in LORA_TARGETS for ab in "ab"] if self.lora_rank else []
        if not keys:
            raise ModelInputError("adapter_path", "this model has no LoRA adapters")
        for key in keys:
            arr = np.asarray(state.get(f"param/{key}"))
            if arr.shape != self._shapes[key] or arr.dtype.kind != "f":
                raise ModelInputError("adapter_path", f"the checkpoint's {key} does not fit")
        for key in keys:
            self._params[key][...] = state[f"param/{key}"]
        self._params_changed()
        self.zero_grad()

    # ------------------------------------------------------------- training

    def forward_backward(
        self,
        batch: Sequence[DatumArrays],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str | bool] | None = None,
        *,
        backward: bool,
    ) -> FwdBwdResult:
        """Target logprobs and the loss of ``batch``; with ``backward``, add its gradient to
        the accumulated gradients (``backward=False`` is ``forward``: no gradient change).

        Everything is validated first: on ``ModelInputError`` no state has changed.
        """
        config = resolve_config(loss_fn, loss_fn_config)
        tokens, inputs, lengths = _validate_batch(batch, loss_fn, self.vocab_size)
        with self._blas():
            return self._forward_backward(tokens, inputs, lengths, loss_fn, config, backward)

    def _forward_backward(
        self,
        tokens: np.ndarray,
        inputs: dict[str, np.ndarray],
        lengths: np.ndarray,
        loss_fn: str,
        config: Mapping[str, float],
        backward: bool,
    ) -> FwdBwdResult:
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        ctx = context_indices(tokens, starts, self.vocab_size)
        targets = inputs["target_tokens"]
        if self._factored:
            ctx = _embed_rows(ctx, self.vocab_size)
            cache = self._forward_factored(ctx, targets)
            lp = cache["lp"]
        else:
            cache = self._forward(ctx)
            logp_all: np.ndarray = cache["logp_all"]
            lp = logp_all[np.arange(targets.shape[0]), targets]
        out = compute_loss(loss_fn, lp, inputs, config)
        if backward:
            if not np.all(np.isfinite(out.grad)):
                raise ModelInputError(
                    "loss_fn_inputs.logprobs",
                    "the importance ratio exp(logprobs_model - logprobs) overflows; "
                    "are the sampler logprobs right?",
                )
            if self._factored:
                self._backward_factored(ctx, out.grad, cache)
            else:
                self._backward(ctx, targets, out.grad, cache)
            nonzero = out.grad != 0
            self._acc_tokens += int(np.count_nonzero(nonzero))
            per_sequence = np.add.reduceat(nonzero.astype(np.int64), starts_of(lengths))
            self._acc_sequences += int(np.count_nonzero(per_sequence))
        split = np.split(lp.astype(np.float32), np.cumsum(lengths)[:-1])
        return FwdBwdResult(logprobs=split, metrics=dict(out.metrics))

    def pooled_hidden(self, tokens: Sequence[np.ndarray], pooling: str) -> np.ndarray:
        """Each sequence's hidden states ``tanh(x @ w1 + b1)`` pooled over its positions
        (``"mean"`` or ``"last"``): a float64 (len(tokens), HIDDEN_DIM) embedding matrix.

        Example::

            z = model.pooled_hidden([np.array([104, 105])], "mean")   # shape (1, 128)
        """
        with self._blas():
            _, h, pool = self._hidden(tokens, pooling)
        out: np.ndarray = pool @ h.astype(np.float64)
        return out

    def backward_pooled(
        self, tokens: Sequence[np.ndarray], pooling: str, grad: np.ndarray
    ) -> None:
        """Accumulate the gradient of ``sum(grad * pooled_hidden(tokens, pooling))`` (grad is
        (len(tokens), HIDDEN_DIM)) into the trained parameters, as ``forward_backward`` does."""
        grad = np.asarray(grad, dtype=np.float64)
        if grad.shape != (len(tokens), HIDDEN_DIM) or not np.all(np.isfinite(grad)):
            raise ModelInputError(
                "loss_fn_inputs.embedding_grads",
                f"must be finite with shape ({len(tokens)}, {HIDDEN_DIM}), got {grad.shape}",
            )
        dt = self._dtype
        with self._blas():
            rows, h, pool = self._hidden(tokens, pooling)
            dh = (pool.T @ grad).astype(dt)
            da = dh * (dt(1.0) - h * h)
            x = self._params["embed"][rows].reshape(rows.shape[0], -1)
            dw1 = x.T @ da
            if self.lora_rank:
                self._add_lora_grads(w1=dw1)
            else:
                self._grads["w1"] += dw1
                self._grads["b1"] += da.sum(axis=0)
                dx = (da @ self._effective("w1").T).reshape(rows.shape[0] * CONTEXT, EMBED_DIM)
                np.add.at(self._grads["embed"], rows.reshape(-1), dx)
        self._acc_tokens += int(sum(len(t) for t in tokens))
        self._acc_sequences += len(tokens)

    def _hidden(
        self, tokens: Sequence[np.ndarray], pooling: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embedding rows (M, CONTEXT), hidden states (M, HIDDEN_DIM) and the (B, M) pooling
        matrix of checked sequences."""
        if pooling not in ("mean", "last"):
            raise ModelInputError(
                "loss_fn_config.pooling", f"must be mean or last, got {pooling!r}"
            )
        if not tokens:
            raise ModelInputError("data", "the batch is empty")
        for i, toks in enumerate(tokens):
            if np.asarray(toks).ndim != 1 or len(toks) == 0:
                raise ModelInputError("model_input", "must be a non-empty 1-D sequence", index=i)
            check_token_range("model_input", np.asarray(toks), i, self.vocab_size)
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in tokens])
        starts = starts_of(lengths)
        ctx = context_indices(flat, np.repeat(starts, lengths), self.vocab_size)
        rows = _embed_rows(ctx, self.vocab_size)
        x = self._params["embed"][rows].reshape(rows.shape[0], -1)
        h = np.tanh(x @ self._effective("w1") + self._params["b1"])
        pool = np.zeros((len(tokens), flat.shape[0]))
        for i, (start, n) in enumerate(zip(starts.tolist(), lengths.tolist(), strict=True)):
            if pooling == "mean":
                pool[i, start : start + n] = 1.0 / n
            else:
                pool[i, start + n - 1] = 1.0
        return rows, h, pool

    def optim_step(
        self,
        adam: AdamConfig,
        *,
        normalization: str | None = None,
        grad_norm_metrics: str = "off",
    ) -> dict[str, float]:
        """Apply the accumulated gradients with AdamW, then clear them.

        ``normalization`` (``grad_accumulation_normalization``) first divides the accumulated
        gradient by the number of loss tokens (``"num_loss_tokens"``) or sequences
        (``"num_sequences"``) with a non-zero gradient since the last step (``None``/``"none"``:
        as is; a count of 0 leaves the zero gradient alone). Returns metrics
        ``grad_norm:mean`` (after normalization, before clipping) and ``learning_rate:mean``;
        ``grad_norm_metrics`` ``"basic"`` adds ``grad_norm/global:mean`` (the same norm),
        ``grad_norm/rms:mean`` (it over the square root of the element count) and
        ``grad_norm/clipped:mean`` (after clipping); ``"detailed"`` also adds
        ``grad_norm/param/<name>:mean`` per trained parameter.
        """
        adam.validate()
        if normalization not in NORMALIZATIONS:
            raise ModelInputError(
                "grad_accumulation_normalization",
                f"must be one of {sorted(n for n in NORMALIZATIONS if n)}, got {normalization!r}",
            )
        if grad_norm_metrics not in ("off", "basic", "detailed"):
            raise ModelInputError(
                "adam_params.emit_grad_norm_metrics",
                f"must be off, basic, detailed or a bool, got {grad_norm_metrics!r}",
            )
        count = {"num_loss_tokens": self._acc_tokens, "num_sequences": self._acc_sequences}.get(
            normalization or "none", 0
        )
        with self._blas():
            if count > 1:
                for g in self._grads.values():
                    g *= self._dtype(1.0 / count)
            extra: dict[str, float] = {}
            if grad_norm_metrics != "off":
                norm = global_norm(self._grads)
                size = sum(g.size for g in self._grads.values())
                clip = adam.grad_clip_norm
                extra = {
                    "grad_norm/global:mean": norm,
                    "grad_norm/rms:mean": norm / math.sqrt(size),
                    "grad_norm/clipped:mean": min(norm, clip) if clip > 0 else norm,
                }
                if grad_norm_metrics == "detailed":
                    for name, g in self._grads.items():
                        extra[f"grad_norm/param/{name}:mean"] = global_norm({name: g})
            try:
                metrics = self._adam.step(self._params, self._grads, adam)
            finally:
                self._params_changed()
        self.zero_grad()
        return {**metrics, **extra}

    def _forward(self, ctx: np.ndarray) -> dict[str, np.ndarray]:
        # Each distinct context row is computed once: BLAS gemm rounds a row differently
        # depending on where it sits in the matrix (OpenBLAS picks kernels by position and
        # size), so identical positions of identical datums came out different in the last bit.
        uniq, inverse = _unique_rows(ctx, self.vocab_size + 1)
        x_u = self._params["embed"][uniq].reshape(uniq.shape[0], -1)
        w1, w2 = self._effective("w1"), self._effective("w2")
        h_u = np.tanh(x_u @ w1 + self._params["b1"])
        logp_u = _log_softmax(h_u @ w2 + self._params["b2"])
        return {"x": x_u[inverse], "h": h_u[inverse], "w1": w1, "w2": w2,
                "logp_all": logp_u[inverse]}

    def _forward_factored(self, rows: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        # ``rows``: embedding rows (hashed). As in ``_forward``, each distinct context once.
        uniq, inverse = _unique_rows(rows, HASH_BUCKETS + 1)
        x_u = self._params["embed"][uniq].reshape(uniq.shape[0], -1)
        w1, w2 = self._effective("w1"), self._effective("w2")
        h_u = np.tanh(x_u @ w1 + self._params["b1"])
        weights = {"wc": self._params["wc"], "bc": self._params["bc"], "w2": w2,
                   "b2": self._params["b2"]}
        cache = _factored_targets(h_u, inverse, weights, targets)
        cache.update(x=x_u[inverse], h=h_u[inverse], w1=w1, w2=w2)
        return cache

    def _backward_factored(
        self, ctx: np.ndarray, dlp: np.ndarray, cache: Mapping[str, np.ndarray]
    ) -> None:
        dt = self._dtype
        g = dlp.astype(dt)
        rows = np.arange(g.shape[0])
        cls, slot = cache["cls"], cache["slot"]
        # d lp / d z = onehot - softmax, for the class and the slot softmax alike
        dzc = -np.exp(cache["lc"]) * g[:, None]
        dzc[rows, cls] += g
        dzs = -np.exp(cache["ls"]) * g[:, None]  # masked slots: exp(-inf) = 0
        dzs[rows, slot] += g
        h, x, wc, w2 = cache["h"], cache["x"], self._params["wc"], cache["w2"]
        dw2 = h.T @ dzs
        dh = dzc @ wc.T + dzs @ w2.T
        da = dh * (dt(1.0) - h * h)
        dw1 = x.T @ da
        if self.lora_rank:
            self._add_lora_grads(w1=dw1, w2=dw2)
            return
        classes, slots = wc.shape[1], w2.shape[1]
        # the slot bias gradient, summed per class in a fixed order (sorted by class)
        order = np.argsort(cls, kind="stable")
        sorted_cls = cls[order]
        firsts = np.flatnonzero(np.r_[True, sorted_cls[1:] != sorted_cls[:-1]])
        dbias = np.zeros((classes, slots), dtype=dt)
        dbias[sorted_cls[firsts]] = np.add.reduceat(dzs[order], firsts, axis=0)
        self._grads["b2"] += dbias.reshape(-1)[: self.vocab_size]
        self._grads["wc"] += h.T @ dzc
        self._grads["bc"] += dzc.sum(axis=0)
        self._grads["w2"] += dw2
        self._grads["w1"] += dw1
        self._grads["b1"] += da.sum(axis=0)
        dx = (da @ cache["w1"].T).reshape(ctx.shape[0] * CONTEXT, EMBED_DIM)
        np.add.at(self._grads["embed"], ctx.reshape(-1), dx)

    def _add_lora_grads(self, **full_grads: np.ndarray) -> None:
        """Fold each full-weight gradient into its LoRA factors' (W = W0 + s·A·B):
        dA += s·dW·Bᵀ, dB += s·Aᵀ·dW."""
        s = self._dtype(self.lora_scale)
        for name, dw in full_grads.items():
            a, b = self._params[f"{name}.lora_a"], self._params[f"{name}.lora_b"]
            self._grads[f"{name}.lora_a"] += s * (dw @ b.T)
            self._grads[f"{name}.lora_b"] += s * (a.T @ dw)

    def _backward(
        self,
        ctx: np.ndarray,
        targets: np.ndarray,
        dlp: np.ndarray,
        cache: Mapping[str, np.ndarray],
    ) -> None:
        dt = self._dtype
        g = dlp.astype(dt)
        rows = np.arange(targets.shape[0])
        # d lp / d z = onehot(target) - softmax(z)
        dz = -np.exp(cache["logp_all"]) * g[:, None]
        dz[rows, targets] += g
        h, x = cache["h"], cache["x"]
        dw2 = h.T @ dz
        dh = dz @ cache["w2"].T
        da = dh * (dt(1.0) - h * h)
        dw1 = x.T @ da
        if self.lora_rank:
            self._add_lora_grads(w1=dw1, w2=dw2)
            return
        self._grads["w2"] += dw2
        self._grads["b2"] += dz.sum(axis=0)
        self._grads["w1"] += dw1
        self._grads["b1"] += da.sum(axis=0)
        dx = (da @ cache["w1"].T).reshape(ctx.shape[0] * CONTEXT, EMBED_DIM)
        np.add.at(self._grads["embed"], ctx.reshape(-1), dx)


def starts_of(lengths: np.ndarray) -> np.ndarray:
    """Start index of each sequence in the concatenation of sequences of ``lengths``."""
    out: np.ndarray = np.cumsum(lengths) - lengths
    return out


def checked_datums(
    batch: Sequence[DatumArrays], loss_fn: str, vocab: int
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Each datum of ``batch``, checked: its tokens (int64) and the inputs ``loss_fn``
    requires (float64 or int64). ``ModelInputError`` names the field (and datum) of the first
    problem: an empty batch or datum, tokens outside ``[0, vocab)``, a missing, misshapen or
    non-finite input. The one copy of these checks: the submission checks run it to refuse a
    bad batch at once, the model to train on it.

    Example::

        for tokens, inputs in checked_datums(batch, "cross_entropy", vocab=256): ...
    """
    if len(batch) == 0:
        raise ModelInputError("data", "the batch is empty")
    required = REQUIRED_INPUTS[loss_fn]
    for i, datum in enumerate(batch):
        toks = np.asarray(datum.tokens)
        if toks.ndim != 1:
            raise ModelInputError("model_input", f"must be 1-D, got shape {toks.shape}", index=i)
        n = toks.shape[0]
        if n == 0:
            raise ModelInputError("model_input", "is empty", index=i)
        check_token_range("model_input", toks, i, vocab)
        inputs: dict[str, np.ndarray] = {}
        for name in required:
            field = f"loss_fn_inputs.{name}"
            value = loss_input(datum.inputs, name)
            if value is None:
                raise ModelInputError(field, f"is required by {loss_fn!r}", index=i)
            arr = np.asarray(value)
            if arr.shape != (n,):
                raise ModelInputError(
                    field, f"must have shape ({n},) like model_input, got {arr.shape}", index=i
                )
            if name in FLOAT_INPUTS:
                if arr.dtype.kind not in "iuf":
                    raise ModelInputError(field, f"must be numeric, got {arr.dtype}", index=i)
                arr = arr.astype(np.float64)
                if not np.all(np.isfinite(arr)):
                    raise ModelInputError(field, "has non-finite values", index=i)
            else:
                check_token_range(field, arr, i, vocab)
                arr = arr.astype(np.int64, copy=False)
            inputs[name] = arr
        yield toks.astype(np.int64, copy=False), inputs


def _validate_batch(
    batch: Sequence[DatumArrays], loss_fn: str, vocab: int
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Check every datum; return concatenated tokens, required inputs and lengths."""
    tokens_parts: list[np.ndarray] = []
    parts: dict[str, list[np.ndarray]] = {name: [] for name in REQUIRED_INPUTS[loss_fn]}
    for toks, inputs in checked_datums(batch, loss_fn, vocab):
        tokens_parts.append(toks)
        for name, arr in inputs.items():
            parts[name].append(arr)
    lengths = np.array([t.shape[0] for t in tokens_parts], dtype=np.int64)
    tokens = np.concatenate(tokens_parts)
    inputs = {name: np.concatenate(arrs) for name, arrs in parts.items()}
    return tokens, inputs, lengths


def check_token_range(field: str, arr: np.ndarray, index: int | None, vocab: int) -> None:
    """``ModelInputError`` naming ``field`` (and datum ``index``) unless ``arr`` holds integer
    tokens in ``[0, vocab)``."""
    if arr.dtype.kind not in "iu":
        raise ModelInputError(field, f"must be integer tokens, got {arr.dtype}", index=index)
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab):
        bad = int(arr[(arr < 0) | (arr >= vocab)][0])
        raise ModelInputError(field, f"token {bad} is out of range [0, {vocab})", index=index)
