"""Input checks that run before anything is sent.

Each check raises :class:`~firetitan_async.errors.InvalidInput` naming the offending field
(and, for a batch, the datum index), so a bad batch fails at the call site with a precise
message instead of as a server error seconds later. The checks read arrays with numpy, not
per element in Python, and never change their input.

Example::

    validate_forward_backward(batch, "cross_entropy", None)
    # InvalidInput: data[3].loss_fn_inputs.weights: has 5 elements, model_input has 6 tokens
"""

from __future__ import annotations

import array as array_module
import math
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
from tinker import types

from .._sdk_private import routing_matrices, tensor_array
from ..errors import InvalidInput

__all__ = [
    "CHECKPOINT_TYPES",
    "EXPORT_PRECISIONS",
    "FIREWORKS_LOSS_INPUTS",
    "GRAD_ACC_NORMALIZATIONS",
    "GRAD_NORM_METRICS_MODES",
    "KNOWN_LOSS_FUNCTIONS",
    "MAX_LEARNING_RATE",
    "MAX_SAMPLES",
    "MAX_SAMPLE_TOKENS",
    "REQUIRED_LOSS_INPUTS",
    "ParsedPath",
    "checkpoint_path_of",
    "normalize_choice",
    "validate_adam_params",
    "validate_api_key",
    "validate_checkpoint_name",
    "validate_forward_backward",
    "validate_optim_extras",
    "validate_sample_args",
    "validate_seconds",
    "validate_snapshot_options",
    "validate_tinker_path",
    "validate_ttl",
]

#: The largest ``learning_rate`` accepted: no Adam run learns at a rate above 1, so 10 leaves
#: room for any schedule while a typo (``1e30``, a step count passed as the rate) is refused
#: before it reaches the weights.
MAX_LEARNING_RATE = 10.0
#: The most samples one sampling request may ask for (``num_samples`` / completions ``n``).
MAX_SAMPLES = 1024
#: The most tokens one sample may ask for (``max_tokens``): 2**20, beyond any context window.
MAX_SAMPLE_TOKENS = 1 << 20

_RL_INPUTS = ("target_tokens", "logprobs", "advantages")
REQUIRED_LOSS_INPUTS: Mapping[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": _RL_INPUTS,
    "ppo": _RL_INPUTS,
    "cispo": _RL_INPUTS,
    "dro": _RL_INPUTS,
    "gspo": _RL_INPUTS,
    "stable_reinforce": _RL_INPUTS,
}
"""The ``loss_fn_inputs`` each built-in loss needs (per token, shape ``(N,)``)."""

FIREWORKS_LOSS_INPUTS: Mapping[str, tuple[str, ...]] = {
    **{k: v for k, v in REQUIRED_LOSS_INPUTS.items() if k != "stable_reinforce"},
    "dapo": _RL_INPUTS,
    "dppo": _RL_INPUTS,
    "reinforce": ("target_tokens", "advantages"),
}
"""The losses of the Fireworks SDK's ``LossFnType`` and the inputs we require of them."""

KNOWN_LOSS_FUNCTIONS: frozenset[str] = frozenset(REQUIRED_LOSS_INPUTS)
"""The loss functions a forward/backward may name (``custom`` needs a server-side handle
and is not supported; use ``forward_backward_custom``)."""

# The wire dtypes each well-known input may have (the first is the SDKs' default for plain
# lists). Integer weights (masks) are accepted by both SDKs and the trainers as they are.
_INPUT_DTYPE: Mapping[str, tuple[str, ...]] = {
    "target_tokens": ("int64",),
    "weights": ("float32", "int64"),
    "advantages": ("float32",),
    "logprobs": ("float32",),
    "clip_low_threshold": ("float32",),
    "clip_high_threshold": ("float32",),
    "sequence_ratio_mask": ("float32",),
}
_MUST_BE_FINITE = frozenset({"weights", "advantages", "logprobs"})
_VALUE_CHECKED = _MUST_BE_FINITE | {"target_tokens"}
_WIRE_DTYPES = ("float32", "int64")  # what any other input may be
_INT32_MAX = 2**31 - 1
_TOP_BYTE = 3 if sys.byteorder == "little" else 0  # a packed uint32's most significant byte
_CLIP_KEYS = ("clip_low_threshold", "clip_high_threshold")
_ADAM_FIELDS = ("learning_rate", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_MAX_NAME_LEN = 128
_PATH_KINDS = frozenset({"weights", "sampler_weights", "external_weights"})
_TINKER_SCHEME = "tinker://"


@attrs.frozen
class ParsedPath:
    """The parts of ``tinker://{training_run_id}/{kind}/{name}``.

    Example::

        validate_tinker_path("tinker://s:train:0/weights/step-1")
        # ParsedPath(training_run_id="s:train:0", kind="weights", name="step-1")
    """

    training_run_id: str
    kind: str
    name: str

    @property
    def checkpoint_id(self) -> str:
        """``"{kind}/{name}"``, the server's checkpoint id."""
        return f"{self.kind}/{self.name}"


# -- forward / forward_backward --------------------------------------------------------------


def validate_forward_backward(
    data: Sequence[types.Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, Any] | None,
    *,
    dialect: str = "tinker",
) -> float:
    """Check a ``forward``/``forward_backward`` call before it is sent.

    Returns the number of values (tokens and tensor values) of a plain batch (one-chunk
    token inputs, dense 1-D tensors, no routing matrices), ``inf`` for any other: the
    ``values`` :func:`~firetitan_async.wire.chunking.split_batch` takes to skip sizing a
    batch that is clearly one chunk.

    Rejects: a batch that is empty or not a list of ``Datum``; an unknown ``loss_fn``; a bad
    ``loss_fn_config`` (values must be numbers or strings; clip thresholds positive with
    low <= high); per datum an empty ``model_input``, negative or non-int32 token ids, an
    image-asset-pointer chunk, missing required inputs, 1-D inputs whose length is not the
    number of input tokens, the wrong dtype, non-finite ``weights``/``advantages``/
    ``logprobs``, negative target tokens, inconsistent sparse tensors.

    Example::

        validate_forward_backward([datum], "ppo", {"clip_low_threshold": 0.8,
                                                   "clip_high_threshold": 1.2})
    """
    losses = FIREWORKS_LOSS_INPUTS if dialect == "fireworks" else REQUIRED_LOSS_INPUTS
    if not isinstance(loss_fn, str) or loss_fn not in losses:
        hint = " (use forward_backward_custom for a custom loss)" if loss_fn == "custom" else ""
        raise InvalidInput(
            "loss_fn",
            f"unknown loss function {loss_fn!r} in the {dialect} dialect; expected one of "
            f"{', '.join(sorted(losses))}{hint}",
        )
    _validate_loss_fn_config(loss_fn_config, allow_bool=dialect == "fireworks")
    if isinstance(data, (str, bytes)) or not isinstance(data, Sequence):
        raise InvalidInput("data", f"must be a list of Datum, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidInput("data", "is empty; pass at least one Datum")
    required = losses[loss_fn]
    # The call's cost is the loop's stall (a burst of calls runs in one turn), so the common
    # case is checked inline and in bulk: one-chunk token inputs and plain 1-D tensors of the
    # right dtype and length take no function call; token ranges and values (finiteness,
    # sign) are one numpy pass over the batch per input name; anything else, or a failure,
    # goes through the exact per-datum checks that name the datum and the field.
    # (8 datums of ~40 tokens: 38 -> 27 us a call, thread CPU; the whole forward_backward
    # call in a running session 48 -> 41 us.)
    values: dict[str, list[np.ndarray[Any, Any]]] = {}
    batch_tokens: list[int] = []
    plain_values: float = 0
    for index, datum in enumerate(data):
        if type(datum) is not types.Datum and not isinstance(datum, types.Datum):
            raise InvalidInput(
                "datum", f"is a {type(datum).__name__}, not a tinker.types.Datum", index=index
            )
        model_input = datum.model_input
        if (
            type(model_input) is types.ModelInput  # not a subclass: no routing matrices
            and len(chunks := model_input.chunks) == 1
            and type(chunk := chunks[0]) is types.EncodedTextChunk
            and (tokens := chunk.tokens)
        ):
            n_tokens: int | None = len(tokens)
            batch_tokens.extend(tokens)
            plain_values += len(tokens)
        else:
            n_tokens = _check_model_input(model_input, index, for_training=True)
            plain_values = math.inf
            routing = routing_matrices(model_input)
            if routing is not None:
                _check_routing(routing, n_tokens, index, dialect)
        inputs = datum.loss_fn_inputs
        for name in required:
            if name not in inputs:
                raise InvalidInput(
                    f"loss_fn_inputs.{name}",
                    f"is required by loss_fn {loss_fn!r} (has: {', '.join(inputs) or 'none'})",
                    index=index,
                )
        plain_shape = (n_tokens,)
        for name, td in inputs.items():
            # tinker's TensorData holds its array in its dtype and (dense) reshaped to its
            # ``shape``, so an array of shape (n_tokens,) is a dense 1-D input of that length
            # whose shape, if given, is [n_tokens] or [-1] (the first element tells them apart).
            if (
                type(td) is types.TensorData
                and td.sparse_crow_indices is None
                and td.dtype in _INPUT_DTYPE.get(name, _WIRE_DTYPES)
                and (array := tensor_array(td)).shape == plain_shape
                and ((shape := td.shape) is None or shape[0] == n_tokens)
            ):
                plain_values += len(array)
            else:
                _check_input_tensor(name, td, n_tokens, index)
                array = tensor_array(td)
                plain_values = math.inf
            if name in _VALUE_CHECKED:
                bucket = values.get(name)
                if bucket is None:
                    values[name] = bucket = []
                bucket.append(array)
    if batch_tokens and not _int32_ids(batch_tokens):
        for index, datum in enumerate(data):  # name the first datum out of range
            _check_model_input(datum.model_input, index, for_training=True)
    for name, arrays in values.items():
        if not _values_ok(name, arrays):  # find the datum (the batch has a bad value)
            _check_values(name, [
                (index, tensor_array(datum.loss_fn_inputs[name]))
                for index, datum in enumerate(data) if name in datum.loss_fn_inputs
            ])  # fmt: skip
    return plain_values


def _int32_ids(tokens: list[int]) -> bool:
    """Whether every token id is in ``[0, 2**31)``: packed as uint32 (which refuses a negative
    or larger id), then no id may have its top bit set, i.e. each one's most significant byte
    is below 0x80 (``isascii``). 298 ids: 2.9 us, against 4.5 with numpy reading the packed
    ids as int32 and 10 for ``min`` and ``max``."""
    try:
        packed = array_module.array("I", tokens)
    except OverflowError:
        return False
    return packed.tobytes()[_TOP_BYTE::4].isascii()


def _values_ok(name: str, arrays: list[np.ndarray[Any, Any]]) -> bool:
    """One pass over a batch's values of one input: target tokens not negative, the rest
    finite (a sum is finite only if every term is; summed in float64, float32 values cannot
    overflow it, so no overflow warning either). ``False`` sends the caller to the exact check,
    which names the datum."""
    flat = np.concatenate(arrays, axis=None)
    if name == "target_tokens":
        return flat.size == 0 or bool(np.minimum.reduce(flat) >= 0)
    return flat.dtype.kind in "iub" or math.isfinite(np.add.reduce(flat, dtype=np.float64))


def _check_routing(routing: Any, n_tokens: int | None, index: int, dialect: str) -> None:
    """The Fireworks SDK's ``routing_matrices``: one base64 string per input token."""
    field = "model_input.routing_matrices"
    if dialect != "fireworks":
        raise InvalidInput(
            field, f"router replay is Fireworks-only: the {dialect} dialect cannot send it",
            index=index,
        )
    if not all(isinstance(m, str) for m in routing):
        bad = next(m for m in routing if not isinstance(m, str))
        raise InvalidInput(
            field, f"must be base64 strings, got a {type(bad).__name__}", index=index
        )
    if n_tokens is not None and len(routing) != n_tokens:
        raise InvalidInput(
            field,
            f"has {len(routing)} matrices, model_input has {n_tokens} tokens (one per token)",
            index=index,
        )


def _check_values(name: str, arrays: list[tuple[int, np.ndarray[Any, Any]]]) -> None:
    """Name the first datum whose ``name`` values :func:`_values_ok` refused the batch for."""
    if name == "target_tokens":
        for index, values in arrays:
            if values.size and values.min() < 0:
                raise InvalidInput(
                    f"loss_fn_inputs.{name}",
                    f"has a negative token id ({values.min()})",
                    index=index,
                )
        return
    for index, values in arrays:
        finite = np.isfinite(values.reshape(-1))
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            raise InvalidInput(
                f"loss_fn_inputs.{name}",
                f"has a non-finite value ({values.reshape(-1)[bad]}) at {bad}",
                index=index,
            )


def _validate_loss_fn_config(config: Mapping[str, Any] | None, *, allow_bool: bool) -> None:
    if config is None:
        return
    if not isinstance(config, Mapping):
        raise InvalidInput("loss_fn_config", f"must be a dict, got {type(config).__name__}")
    for key, value in config.items():
        field = f"loss_fn_config.{key}"
        if not isinstance(key, str) or not key:
            raise InvalidInput("loss_fn_config", f"keys must be non-empty strings, got {key!r}")
        if isinstance(value, str) or (allow_bool and isinstance(value, bool)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kinds = "a float, a str or a bool" if allow_bool else "a float or a str"
            raise InvalidInput(field, f"must be {kinds}, got {type(value).__name__}")
        if not math.isfinite(value):
            raise InvalidInput(field, f"must be finite, got {value!r}")
    low, high = (config.get(k) for k in _CLIP_KEYS)
    for key, value in zip(_CLIP_KEYS, (low, high), strict=True):
        if value is None:
            continue
        if isinstance(value, (str, bool)):
            raise InvalidInput(f"loss_fn_config.{key}", "must be a number")
        if value <= 0:
            raise InvalidInput(f"loss_fn_config.{key}", f"must be > 0, got {value!r}")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
        raise InvalidInput(
            "loss_fn_config.clip_low_threshold",
            f"{low!r} is greater than clip_high_threshold {high!r}",
        )


def _check_model_input(model_input: Any, index: int | None, *, for_training: bool) -> int | None:
    """Check the chunks; return the token length, or None when an image hides it."""
    field = "model_input" if for_training else "prompt"
    if not isinstance(model_input, types.ModelInput):
        raise InvalidInput(
            field,
            f"must be a tinker.types.ModelInput, got {type(model_input).__name__}",
            index=index,
        )
    chunks = model_input.chunks
    if not chunks:
        raise InvalidInput(field, "is empty (no chunks)", index=index)
    length: int | None = 0
    for j, chunk in enumerate(chunks):
        if isinstance(chunk, types.EncodedTextChunk):  # the common case: no text built
            tokens = chunk.tokens
            if len(tokens):
                low, high = min(tokens), max(tokens)
                if low < 0:
                    raise InvalidInput(
                        f"{field}.chunks[{j}].tokens",
                        f"has a negative token id ({low})",
                        index=index,
                    )
                if high > _INT32_MAX:
                    raise InvalidInput(
                        f"{field}.chunks[{j}].tokens",
                        f"token id {high} does not fit in int32",
                        index=index,
                    )
            if length is not None:
                length += len(tokens)
            continue
        where = f"{field}.chunks[{j}]"
        if isinstance(chunk, types.ImageAssetPointerChunk) and for_training:
            raise InvalidInput(
                where,
                "is an image_asset_pointer chunk, which forward_backward cannot send; "
                "load the image and pass an ImageChunk with its bytes",
                index=index,
            )
        elif isinstance(chunk, (types.ImageChunk, types.ImageAssetPointerChunk)):
            if length is not None:
                length = None if chunk.expected_tokens is None else length + chunk.expected_tokens
        elif isinstance(chunk, types.DmelChunk):
            if not chunk.dmel:
                raise InvalidInput(where, "is an empty dmel chunk", index=index)
            length = None
        else:
            raise InvalidInput(where, f"unsupported chunk type {type(chunk).__name__}", index=index)
    if length == 0:
        raise InvalidInput(field, "has no tokens", index=index)
    return length


def _check_input_tensor(name: str, td: Any, n_tokens: int | None, index: int) -> None:
    field = "loss_fn_inputs." + name
    if not isinstance(td, types.TensorData):
        raise InvalidInput(field, f"must be TensorData, got {type(td).__name__}", index=index)
    want = _INPUT_DTYPE.get(name)
    dtype = td.dtype
    if dtype != "float32" and dtype != "int64":
        raise InvalidInput(field, f"dtype {dtype!r} is not float32 or int64", index=index)
    if want is not None and dtype not in want:
        raise InvalidInput(field, f"must be {' or '.join(want)}, got {dtype}", index=index)
    if td.sparse_crow_indices is not None:
        _check_sparse(field, td, index)
    else:
        shape = tensor_array(td).shape if td.shape is None else td.shape
        if len(shape) == 0:
            raise InvalidInput(field, "is a scalar; expected one value per token", index=index)
        if len(shape) == 1 and n_tokens is not None and shape[0] != n_tokens:
            raise InvalidInput(
                field,
                f"has {shape[0]} elements, model_input has {n_tokens} tokens",
                index=index,
            )


def _check_sparse(field: str, td: types.TensorData, index: int) -> None:
    crow, col, shape = td.sparse_crow_indices, td.sparse_col_indices, td.shape
    if col is None:
        raise InvalidInput(field, "sparse_col_indices is required with crow indices", index=index)
    if shape is None or len(shape) != 2:
        raise InvalidInput(field, "a sparse CSR tensor needs a 2-D shape", index=index)
    assert crow is not None
    if len(crow) != shape[0] + 1:
        raise InvalidInput(
            field, f"has {len(crow)} crow indices for {shape[0]} rows (want rows+1)", index=index
        )
    nnz = tensor_array(td).size
    if len(col) != nnz or (len(crow) and (crow[0] != 0 or crow[-1] != nnz)):
        raise InvalidInput(field, f"CSR indices do not match its {nnz} stored values", index=index)


# -- optimizer -------------------------------------------------------------------------------


def validate_adam_params(params: types.AdamParams) -> None:
    """Check AdamW hyperparameters: all finite, ``0 < learning_rate <= MAX_LEARNING_RATE``,
    ``0 <= beta1, beta2 < 1``, ``eps > 0``, ``weight_decay >= 0``, ``grad_clip_norm >= 0``.

    Example::

        validate_adam_params(types.AdamParams(learning_rate=1e-4))
    """
    if not isinstance(params, types.AdamParams):
        raise InvalidInput(
            "adam_params", f"must be tinker.types.AdamParams, got {type(params).__name__}"
        )

    def bad(name: str, rule: str) -> InvalidInput:
        value = getattr(params, name)
        return InvalidInput(f"adam_params.{name}", f"must be finite and {rule}, got {value!r}")

    values = {name: float(getattr(params, name)) for name in _ADAM_FIELDS}
    for name, value in values.items():
        if not math.isfinite(value):
            raise bad(name, "a number")
    if not 0 < values["learning_rate"] <= MAX_LEARNING_RATE:
        raise bad("learning_rate", f"in (0, {MAX_LEARNING_RATE:g}]")
    for name in ("beta1", "beta2"):
        if not 0 <= values[name] < 1:
            raise bad(name, "in [0, 1)")
    if values["eps"] <= 0:
        raise bad("eps", "> 0")
    if values["weight_decay"] < 0:
        raise bad("weight_decay", ">= 0")
    if values["grad_clip_norm"] < 0:
        raise bad("grad_clip_norm", ">= 0 (0 disables clipping)")


# -- checkpoints -----------------------------------------------------------------------------


def validate_checkpoint_name(name: str, *, field: str = "name") -> None:
    """Check a checkpoint name: 1–128 characters from ``[A-Za-z0-9._-]`` (no ``/``, no
    whitespace or control characters), and not ``.`` or ``..``.

    Example::

        validate_checkpoint_name("step-0001")   # ok
        validate_checkpoint_name("a/b")          # InvalidInput: name: must not contain '/'
    """
    if not isinstance(name, str):
        raise InvalidInput(field, f"must be a str, got {type(name).__name__}")
    if not name:
        raise InvalidInput(field, "is empty")
    if len(name) > _MAX_NAME_LEN:
        raise InvalidInput(field, f"is {len(name)} characters long (max {_MAX_NAME_LEN})")
    if "/" in name:
        raise InvalidInput(field, f"must not contain '/': {name!r}")
    if any(c.isspace() or not c.isprintable() for c in name):
        raise InvalidInput(field, f"must not contain whitespace or control characters: {name!r}")
    if not _NAME_RE.fullmatch(name):
        raise InvalidInput(field, f"may only use letters, digits, '.', '_' and '-': {name!r}")
    if name in (".", ".."):
        raise InvalidInput(field, f"{name!r} is not a valid name")


def checkpoint_path_of(saved: str | types.SaveWeightsResponse, *, field: str = "path") -> str:
    """The checkpoint path ``load_state*`` was given: a ``str``, or the ``path`` of what
    ``save_state`` returned (``SaveWeightsResponse``); anything else raises ``InvalidInput``.

    Example::

        checkpoint_path_of(await client.save_state("step-4"))   # "tinker://…/weights/step-4"
    """
    if isinstance(saved, types.SaveWeightsResponse):
        return saved.path
    if not isinstance(saved, str):
        raise InvalidInput(
            field,
            f"must be a checkpoint path (str) or what save_state returned, got "
            f"{type(saved).__name__}",
        )
    return saved


def validate_ttl(ttl_seconds: int | None, *, field: str = "ttl_seconds") -> None:
    """Check a time-to-live: ``None`` (never expires) or an ``int > 0``.

    Example::

        validate_ttl(3600)   # ok
        validate_ttl(0)      # InvalidInput: ttl_seconds: must be > 0
    """
    if ttl_seconds is None:
        return
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise InvalidInput(field, f"must be an int or None, got {type(ttl_seconds).__name__}")
    if ttl_seconds <= 0:
        raise InvalidInput(field, f"must be > 0, got {ttl_seconds}")


def validate_user_metadata(
    user_metadata: Mapping[str, str] | None, *, field: str = "user_metadata"
) -> dict[str, str] | None:
    """Check user metadata as the tinker SDK types it (``dict[str, str]``); returns a copy.

    Example::

        validate_user_metadata({"run": "a"})   # {"run": "a"}
        validate_user_metadata({"step": 3})    # InvalidInput: user_metadata: ... 'step'
    """
    if user_metadata is None:
        return None
    if not isinstance(user_metadata, Mapping):
        raise InvalidInput(
            field, f"must be a dict of str to str, got {type(user_metadata).__name__}"
        )
    for key, value in user_metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidInput(
                field, f"must map str to str; {key!r:.40} maps to a {type(value).__name__}"
            )
    return dict(user_metadata)


def validate_tinker_path(path: str, *, field: str = "path") -> ParsedPath:
    """Parse and check ``tinker://{training_run_id}/{weights|sampler_weights|external_weights}/{name}``.

    Example::

        validate_tinker_path("tinker://s:train:0/sampler_weights/snap").kind  # "sampler_weights"
    """
    if not isinstance(path, str):
        raise InvalidInput(field, f"must be a str, got {type(path).__name__}")
    if not path.startswith(_TINKER_SCHEME):
        raise InvalidInput(field, f"must start with {_TINKER_SCHEME!r}: {path!r}")
    parts = path[len(_TINKER_SCHEME) :].split("/")
    if len(parts) != 3:
        raise InvalidInput(field, f"must look like tinker://<run_id>/<kind>/<name>, got {path!r}")
    run_id, kind, name = parts
    if not run_id:
        raise InvalidInput(field, f"has an empty training run id: {path!r}")
    if kind not in _PATH_KINDS:
        raise InvalidInput(
            field, f"kind {kind!r} is not one of {', '.join(sorted(_PATH_KINDS))}: {path!r}"
        )
    if not name:
        raise InvalidInput(field, f"has an empty checkpoint name: {path!r}")
    if any(c.isspace() or not c.isprintable() for c in run_id + name):
        raise InvalidInput(field, f"must not contain whitespace or control characters: {path!r}")
    return ParsedPath(training_run_id=run_id, kind=kind, name=name)


# -- sampling --------------------------------------------------------------------------------


def validate_sample_args(
    prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
) -> None:
    """Check a ``sample`` call: a non-empty prompt with valid token ids, ``num_samples`` in
    ``[1, MAX_SAMPLES]``, ``max_tokens`` in ``[1, MAX_SAMPLE_TOKENS]`` if set,
    ``temperature >= 0``, ``0 < top_p <= 1``, ``top_k == -1`` or ``>= 1``.

    Example::

        validate_sample_args(types.ModelInput.from_ints([1, 2]), 4,
                             types.SamplingParams(max_tokens=16, temperature=0.7))
    """
    _check_model_input(prompt, None, for_training=False)
    if getattr(prompt, "routing_matrices", None) is not None:
        raise InvalidInput("prompt.routing_matrices", "router replay applies to training data")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int):
        raise InvalidInput("num_samples", f"must be an int, got {type(num_samples).__name__}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise InvalidInput("num_samples", f"must be in [1, {MAX_SAMPLES}], got {num_samples}")
    if not isinstance(params, types.SamplingParams):
        raise InvalidInput(
            "sampling_params", f"must be tinker.types.SamplingParams, got {type(params).__name__}"
        )
    max_tokens = params.max_tokens
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_SAMPLE_TOKENS
    ):
        raise InvalidInput(
            "sampling_params.max_tokens", f"must be in [1, {MAX_SAMPLE_TOKENS}], got {max_tokens!r}"
        )
    temperature = params.temperature
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidInput(
            "sampling_params.temperature", f"must be finite and >= 0, got {temperature!r}"
        )
    top_p = params.top_p
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InvalidInput("sampling_params.top_p", f"must be in (0, 1], got {top_p!r}")
    top_k = params.top_k
    if top_k != -1 and top_k < 1:
        raise InvalidInput("sampling_params.top_k", f"must be -1 (no limit) or >= 1, got {top_k}")


MAX_TOPK_LOGPROBS = 1024
"""Our bound on a top-k logprobs width (a server also bounds ``len(prompt) * k``)."""


def validate_topk(k: int, field: str) -> None:
    """Check a top-k logprobs width: an int in ``[0, MAX_TOPK_LOGPROBS]`` (0: none).

    Example::

        validate_topk(5, "topk_sample_logprobs")    # ok
        validate_topk(-1, "topk_prompt_logprobs")   # InvalidInput
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise InvalidInput(field, f"must be an int, got {type(k).__name__}")
    if not 0 <= k <= MAX_TOPK_LOGPROBS:
        raise InvalidInput(field, f"must be in [0, {MAX_TOPK_LOGPROBS}], got {k}")


CHECKPOINT_TYPES = ("base", "delta", "merged_base")
EXPORT_PRECISIONS = ("source", "bf16", "nvfp4", "mxfp8", "fp8_block128")
GRAD_ACC_NORMALIZATIONS = ("num_loss_tokens", "num_sequences", "none")
GRAD_NORM_METRICS_MODES = ("off", "basic", "detailed")
"""The option values of the Fireworks extras (checked before a dialect refuses them)."""


def normalize_choice(
    value: Any, choices: Sequence[str], field: str, *, allow_bool: bool = False
) -> Any:
    """``value`` as its wire string (enums by ``.value``, case-insensitive), or ``None``.

    Example::

        normalize_choice("NUM_LOSS_TOKENS", GRAD_ACC_NORMALIZATIONS, "x")  # "num_loss_tokens"
    """
    if value is None:
        return None
    if isinstance(value, bool):
        if allow_bool:
            return value
        raise InvalidInput(field, f"must be one of {', '.join(choices)}, got {value!r}")
    text = str(getattr(value, "value", value)).lower()
    if text not in choices:
        extra = "a bool or " if allow_bool else ""
        raise InvalidInput(field, f"must be {extra}one of {', '.join(choices)}, got {value!r}")
    return text


def validate_optim_extras(
    grad_accumulation_normalization: Any, emit_grad_norm_metrics: Any
) -> tuple[str | None, bool | str | None]:
    """``optim_step``'s extras as wire values (``InvalidInput`` naming the field otherwise).

    Example::

        validate_optim_extras("NUM_LOSS_TOKENS", True)  # ("num_loss_tokens", True)
    """
    normalization = normalize_choice(
        grad_accumulation_normalization,
        GRAD_ACC_NORMALIZATIONS,
        "grad_accumulation_normalization",
    )
    grad_norm = normalize_choice(
        emit_grad_norm_metrics,
        GRAD_NORM_METRICS_MODES,
        "emit_grad_norm_metrics",
        allow_bool=True,
    )
    return normalization, grad_norm


def validate_snapshot_options(
    checkpoint_type: str | None, export_precision: str | None, metadata: Any
) -> None:
    """Refuse a sampler snapshot's unknown type or precision, or a non-dict ``metadata``.

    Example::

        validate_snapshot_options("delta", None, None)
    """
    if checkpoint_type is not None and checkpoint_type not in CHECKPOINT_TYPES:
        raise InvalidInput(
            "checkpoint_type",
            f"must be one of {', '.join(CHECKPOINT_TYPES)} or None, got {checkpoint_type!r}",
        )
    if export_precision is not None and export_precision not in EXPORT_PRECISIONS:
        raise InvalidInput(
            "export_precision",
            f"must be one of {', '.join(EXPORT_PRECISIONS)}, got {export_precision!r}",
        )
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInput("metadata", f"must be a dict, got {type(metadata).__name__}")
# -- configuration -----------------------------------------------------------------------------


def validate_api_key(key: object, *, field: str = "api_key") -> None:
    """Check an API key: ``None`` or a string of printable ASCII without spaces (``""``, like
    ``None``, means no key to the callers that accept it).

    A key with a CR/LF (pasted with its newline) cannot go into a header: refused here, at
    construction, instead of failing every request as if the network were down. The message
    names the position of the bad character, never the key.

    Example::

        validate_api_key(os.environ.get("FIREWORKS_API_KEY"))
    """
    if key is None:
        return
    if not isinstance(key, str):
        raise InvalidInput(field, f"must be a string, got {type(key).__name__}")
    for at, char in enumerate(key):
        if not (char.isascii() and char.isprintable()) or char.isspace():
            what = "whitespace" if char.isspace() else "a control or non-ASCII character"
            raise InvalidInput(field, f"holds {what} at position {at} (a pasted newline?)")


def validate_seconds(value: object, field: str, *, allow_none: bool = False) -> float | None:
    """Check a duration: a finite number of seconds > 0 (or ``None`` when ``allow_none``);
    returns it as a float.

    Example::

        timeout = validate_seconds(timeout, "timeout")
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(field, f"must be a number of seconds, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInput(field, f"must be finite and > 0, got {value!r}")
    return float(value)


def validate_keepalive_expiry(value: object) -> float:
    """Check a connection pool's ``keepalive_expiry``: finite seconds >= 0 (0: no reuse).

    Example::

        validate_keepalive_expiry(30.0)
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        math.isfinite(value) and value >= 0
    ):
        raise InvalidInput("keepalive_expiry", f"must be finite and >= 0, got {value!r}")
    return float(value)
