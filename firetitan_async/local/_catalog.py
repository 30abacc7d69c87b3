"""The base models a local trainer serves: names real recipes send, each backed by the tiny model.

A real recipe names its base model the way its platform does: the Fireworks form
(``accounts/fireworks/models/qwen3-8b``) or the Hugging Face form (``Qwen/Qwen3-8B``). The
local trainer serves a configured list of such names (``LocalTrainer(models=...)``,
``firetitan-async serve --model NAME``); every one is backed by the same tiny numpy model, and
``local/tiny-byte-lm`` is always served (the demo's model). A name carries what the SDKs read
about it: the tokenizer id (tinker's ``get_info``), the context length and the MoE flag
(``GET /v1/accounts/{a}/models/{m}``, which the Fireworks SDK's ``model_is_moe`` reads).

Example::

    ServedModel.parse("accounts/fireworks/models/qwen3-8b,tokenizer_id=Qwen/Qwen3-8B")
    catalog = ModelCatalog(DEFAULT_MODELS)
    catalog.get("Qwen/Qwen3-8B", "base_model").tokenizer_id   # "Qwen/Qwen3-8B"
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from ._http_errors import ApiError
from ._model import MAX_VOCAB, VOCAB_SIZE
from ._tokenizer_dir import tokenizer_special_tokens, tokenizer_vocab_size

__all__ = [
    "BYTE_MODEL",
    "DEFAULT_MODELS",
    "MAX_CONTEXT_LENGTH",
    "ModelCatalog",
    "ServedModel",
    "served_models",
]

MAX_CONTEXT_LENGTH = 4096
"""The context length of every served model (the tiny model has no position limit of its own;
this bounds prompts and jobs as a real trainer's would)."""
BYTE_MODEL = "local/tiny-byte-lm"


def _check_name(instance: object, attribute: object, value: str) -> None:
    if not value or value != value.strip() or "," in value or "=" in value:
        raise ValueError(f"model name {value!r} must be non-empty, without spaces, ',' or '='")
    if value.startswith("accounts/"):
        parts = value.split("/")
        if len(parts) != 4 or parts[2] != "models" or not parts[1] or not parts[3]:
            raise ValueError(f"model name {value!r} is not accounts/<account>/models/<model>")


def _check_vocab(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be an integer in [2, {MAX_VOCAB}], got {value!r}")


def _check_context(instance: object, attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise ValueError(f"max_context_length must be an integer in [1, 2**20], got {value!r}")


@attrs.frozen
class ServedModel:
    """One base-model name the local trainer serves (backed by the tiny model).

    ``tokenizer_id`` is what tinker's ``get_info`` reports (``None``: the SDK derives one from
    the name); ``max_context_length`` bounds jobs and prompts; ``moe`` is the model record's
    ``baseModelDetails.moe``; ``vocab_size`` is the model's vocabulary (token ids
    ``[0, vocab_size)``; the byte model's 257 by default), so that every id a real tokenizer
    emits is in range (a vocabulary over 4096 gets the tiny model's class-factored output layer).
    ``special_tokens`` (text, id) are the tokenizer's special tokens (``tokenizer=DIR``): a
    deployment of the model stops at one when a ``stop`` string is its text.
    ``weights_path`` is set on a promoted model (``ModelCatalog.add_promoted``): the
    ``tinker://.../sampler_weights/...`` snapshot its weights start from (``None``: the tiny
    model's seeded initial weights).

    Example::

        ServedModel("accounts/acme/models/my-base", tokenizer_id="Qwen/Qwen3-8B",
                    vocab_size=151936)
    """

    name: str = attrs.field(validator=_check_name)
    tokenizer_id: str | None = None
    max_context_length: int = attrs.field(default=MAX_CONTEXT_LENGTH, validator=_check_context)
    moe: bool = False
    vocab_size: int = attrs.field(default=VOCAB_SIZE, validator=_check_vocab)
    special_tokens: tuple[tuple[str, int], ...] = ()
    weights_path: str | None = None

    @classmethod
    def parse(cls, spec: str) -> ServedModel:
        """A model from ``NAME[,tokenizer_id=ID][,context=N][,moe=true|false][,vocab=N]
        [,tokenizer=DIR]`` (the form of ``serve --model``); ``ValueError`` naming the bad part.
        ``tokenizer=DIR`` reads the vocabulary size from a local Hugging Face tokenizer
        directory (its ``tokenizer.json``, and ``config.json``'s ``vocab_size`` if larger).

        Example::

            ServedModel.parse("Qwen/Qwen3-8B,context=8192,vocab=151936")
        """
        name, *options = spec.split(",")
        fields: dict[str, Any] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or not value:
                raise ValueError(f"model option {option!r} in {spec!r} is not KEY=VALUE")
            if key == "tokenizer_id":
                fields["tokenizer_id"] = value
            elif key == "context":
                if not value.isdigit():
                    raise ValueError(f"context={value!r} in {spec!r} is not an integer")
                fields["max_context_length"] = int(value)
            elif key == "vocab":
                if not value.isdigit():
                    raise ValueError(f"vocab={value!r} in {spec!r} is not an integer")
                fields["vocab_size"] = int(value)
            elif key == "tokenizer":
                try:
                    fields["vocab_size"] = tokenizer_vocab_size(value)
                    fields["special_tokens"] = tuple(tokenizer_special_tokens(value).items())
                except (OSError, ValueError) as exc:
                    raise ValueError(f"tokenizer={value!r} in {spec!r}: {exc}") from None
            elif key == "moe":
                if value not in ("true", "false"):
                    raise ValueError(f"moe={value!r} in {spec!r} is not true or false")
                fields["moe"] = value == "true"
            else:
                raise ValueError(
                    f"unknown model option {key!r} in {spec!r} "
                    "(known: tokenizer_id, context, moe, vocab, tokenizer)"
                )
        return cls(name, **fields)

    def record(self) -> dict[str, Any]:
        """The Fireworks model record (``GET /v1/accounts/{a}/models/{m}``) of this base model."""
        return {
            "name": self.name,
            "displayName": self.name.rsplit("/", 1)[-1],
            "kind": "HF_BASE_MODEL",
            "state": "READY",
            "public": True,
            "contextLength": self.max_context_length,
            "supportsLora": True,
            "tunable": True,
            "baseModelDetails": {
                "modelType": "tiny-byte-lm",
                "moe": self.moe,
                "tunable": True,
                "worldSize": 1,
                "checkpointFormat": "NATIVE",
            },
            "vocabSize": self.vocab_size,
        }


DEFAULT_MODELS: tuple[ServedModel, ...] = (
    ServedModel(BYTE_MODEL),
    ServedModel("accounts/fireworks/models/qwen3-8b", tokenizer_id="Qwen/Qwen3-8B"),
    ServedModel("Qwen/Qwen3-8B", tokenizer_id="Qwen/Qwen3-8B"),
)
"""What a trainer serves when none are configured: the byte model and Qwen3-8B in both forms."""


def served_models(models: Iterable[str | ServedModel] | None) -> tuple[ServedModel, ...]:
    """The configured models (strings parsed as ``ServedModel.parse``), with the byte model
    first unless configured; ``None`` is ``DEFAULT_MODELS``. ``ValueError`` on a bad or
    repeated name.

    Example::

        served_models(["accounts/fireworks/models/llama-v3p1-8b-instruct"])
    """
    if models is None:
        return DEFAULT_MODELS
    parsed = [m if isinstance(m, ServedModel) else ServedModel.parse(m) for m in models]
    names = [m.name for m in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"models configured more than once: {repeated}")
    if BYTE_MODEL not in names:
        parsed.insert(0, ServedModel(BYTE_MODEL))
    return tuple(parsed)


class ModelCatalog:
    """The served models by name.

    Example::

        ModelCatalog(DEFAULT_MODELS).get("local/tiny-byte-lm", "base_model").max_context_length
    """

    def __init__(self, models: Iterable[ServedModel]) -> None:
        self._models = {m.name: m for m in models}

    @property
    def models(self) -> list[ServedModel]:
        """The served models, in configured order."""
        return list(self._models.values())

    def find(self, name: object) -> ServedModel | None:
        """The model called ``name``, or ``None``."""
        return self._models.get(name) if isinstance(name, str) else None

    def get(self, name: object, field: str) -> ServedModel:
        """The model called ``name``; ``ApiError(400)`` naming ``field`` if it is not served."""
        model = self.find(name)
        if model is None:
            raise ApiError(
                400,
                f"{field} {name!r} is not served by the local trainer (it serves "
                f"{sorted(self._models)}; add names with `serve --model NAME`)",
            )
        return model

    def add_promoted(self, name: str, base_model: str, weights_path: str) -> ServedModel | None:
        """Serve a promoted full-parameter model as a base model, as the Fireworks platform
        lets a promoted ``HF_BASE_MODEL`` be the ``baseModel`` of a new job: its tokenizer,
        context and vocabulary are its base model's, its weights the promoted snapshot's.
        ``None`` (nothing served) if ``base_model`` is not served.

        Example::

            catalog.add_promoted("accounts/local/models/sft-1",
                                 "accounts/fireworks/models/qwen3-8b",
                                 "tinker://run-1:train:0/sampler_weights/step-2")
        """
        base = self.find(base_model)
        if base is None:
            return None
        model = attrs.evolve(base, name=name, weights_path=weights_path)
        self._models[name] = model
        return model
