"""``firetitan_async.local``: a local, wire-compatible trainer with a tiny real model.

:class:`LocalTrainer` serves the Tinker data plane (``/api/v1/...``) and the Fireworks
trainer-job control plane (``/v1/accounts/{account_id}/rlorTrainerJobs``) on loopback, backed
by ``local/tiny-byte-lm``, a byte-level numpy model that trains in milliseconds.

May import: of the package only :mod:`firetitan_async.wire.paths` (its route table); nothing
of the client imports ``local/`` (only the CLI, lazily).

Example::

    from firetitan_async.local import LocalTrainer

    async with LocalTrainer(seed=0) as lt:
        print(lt.base_url)

``LocalTrainer(models=...)`` serves base-model names (strings or :class:`ServedModel`), each
backed by the tiny model. ``sft_datum`` / ``rl_datum`` build training data for the byte model
from text; ``write_byte_tokenizer`` writes a Hugging Face tokenizer directory that matches it
(for recipes that load a tokenizer by name, e.g. tinker-cookbook's).
"""

from __future__ import annotations

from ._catalog import ServedModel
from ._datums import encode_text, rl_datum, sft_datum
from ._tokenizer_dir import write_byte_tokenizer
from ._trainer import LocalTrainer

__all__ = [
    "LocalTrainer",
    "ServedModel",
    "encode_text",
    "rl_datum",
    "sft_datum",
    "write_byte_tokenizer",
]
