"""A training client's tokenizer: which one (as each SDK decides) and loading it off the loop.

Loading a Hugging Face tokenizer is blocking work: the first one imports ``transformers``
(seconds), then reads files from disk or downloads them. It runs in a worker thread that the
caller's event loop awaits (``anyio.to_thread.run_sync``), once per client and name: later
calls, and calls made while a load is under way, get the same object.

Which tokenizer, as the SDKs decide:

* tinker dialect: the ``tokenizer_id`` of the model's ``get_info`` reply, else tinker's rule
  for the model name (the tinker SDK's own loader is used, so its special cases come along);
* fireworks dialect: the trainer names none, so the caller passes ``tokenizer_model`` (the
  Fireworks SDK's ``tokenizer_model`` of its managed config), loaded with
  ``AutoTokenizer.from_pretrained``.

A name may be a Hugging Face hub id or a local directory (``save_pretrained`` output).

Example::

    cache = TokenizerCache()
    tokenizer = await cache.get("fireworks", tokenizer_model="Qwen/Qwen3-8B",
                                model_name="accounts/fireworks/models/qwen3-8b",
                                tokenizer_id=None)
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ..errors import FiretitanError, InvalidInput

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["TokenizerCache"]


class TokenizerCache:
    """One client's tokenizers, by name; each loaded once, in a worker thread.

    Example::

        tokenizer = await TokenizerCache().get(names_tokenizer=True, tokenizer_model=None,
                                               model_name="Qwen/Qwen3-8B", tokenizer_id=None)
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None], PreTrainedTokenizerBase] = {}
        self._lock: anyio.Lock | None = None

    async def get(
        self,
        *,
        names_tokenizer: bool,
        tokenizer_model: str | None,
        model_name: str,
        tokenizer_id: str | None,
    ) -> PreTrainedTokenizerBase:
        """The tokenizer, loaded on the first call (``InvalidInput`` when none is named)."""
        if tokenizer_model is not None and (
            not isinstance(tokenizer_model, str) or not tokenizer_model.strip()
        ):
            raise InvalidInput(
                "tokenizer_model", f"must be a non-empty str, got {tokenizer_model!r}"
            )
        if not names_tokenizer:
            if tokenizer_model is None:
                raise InvalidInput(
                    "tokenizer_model",
                    "is required here (the fireworks dialect): the trainer does not name its "
                    "tokenizer (the Fireworks SDK takes it from its managed config); pass a "
                    "Hugging Face name or a local directory",
                )
            key: tuple[str, str | None] = (tokenizer_model, None)
            load = partial(_load_pretrained, tokenizer_model)
        else:
            # tinker: an explicit name wins, as a tokenizer_id would.
            tid = tokenizer_model if tokenizer_model is not None else tokenizer_id
            key = (model_name, tid)
            load = partial(_load_tinker, model_name, tid)
        found = self._loaded.get(key)
        if found is not None:
            return found
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:  # one load at a time: a second caller waits for the first
            found = self._loaded.get(key)
            if found is None:
                found = await anyio.to_thread.run_sync(load)
                self._loaded[key] = found
        return found


def _load_pretrained(name: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name)``, as the Fireworks SDK loads (worker thread)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise _missing(exc) from None
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise FiretitanError(f"could not load the tokenizer {name!r}: {exc}") from None
    return tokenizer


def _load_tinker(model_name: str, tokenizer_id: str | None) -> PreTrainedTokenizerBase:
    """The tinker SDK's loader for a model name and ``tokenizer_id`` (worker thread)."""
    from .._sdk_private import load_tinker_tokenizer

    try:
        tokenizer: Any = load_tinker_tokenizer(model_name, tokenizer_id)
    except ImportError as exc:
        raise _missing(exc) from None
    except (OSError, ValueError, RuntimeError) as exc:
        name = tokenizer_id or model_name
        raise FiretitanError(f"could not load the tokenizer {name!r}: {exc}") from None
    return tokenizer  # type: ignore[no-any-return]


def _missing(exc: ImportError) -> FiretitanError:
    return FiretitanError(
        f"get_tokenizer needs Hugging Face transformers (pip install transformers): {exc}"
    )
