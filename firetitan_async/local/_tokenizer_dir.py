"""A Hugging Face tokenizer directory that matches the byte model: token id = byte value.

Recipes written for real models load their tokenizer by name (``AutoTokenizer.from_pretrained``
in tinker-cookbook's ``get_tokenizer``, ``--tokenizer-model`` in the Fireworks cookbook). With
no network, a name resolves to a local directory of that name; this writes one whose ids are
the 256 byte values and whose EOS is 256, the vocabulary of ``local/tiny-byte-lm``.

Built with ``tokenizers`` (the ``cookbooks`` extra): a byte-level BPE with no merges, so every
string encodes to exactly its UTF-8 bytes and every byte sequence decodes back.

Example::

    from firetitan_async.local import write_byte_tokenizer

    write_byte_tokenizer("Qwen/Qwen3-8B-Base")   # ./Qwen/Qwen3-8B-Base/tokenizer.json, ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ._model import EOS_TOKEN

EOS_TEXT = "<|endoftext|>"
"""The EOS token's text (id ``EOS_TOKEN``)."""


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character map, the one ``tokenizers``' ByteLevel pre-tokenizer uses."""
    from tokenizers.pre_tokenizers import ByteLevel

    # ByteLevel.alphabet() lists the 256 characters; the byte each stands for is GPT-2's
    # rule: printable Latin-1 bytes stand for themselves, the rest map to 256, 257, ... in
    # byte order.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    assert set(mapping.values()) == set(ByteLevel.alphabet())
    return mapping


def tokenizer_special_tokens(directory: str | os.PathLike[str]) -> dict[str, int]:
    """The special tokens of a local Hugging Face tokenizer directory (its ``tokenizer.json``'s
    ``added_tokens`` marked ``special``), text to id: a deployment of the model stops at one
    when a request's ``stop`` string is its text (``"<|im_end|>"``), as a real deployment,
    which matches stop strings against the text it decodes, does. ``OSError`` if there is no
    ``tokenizer.json``.

    Example::

        tokenizer_special_tokens(write_byte_tokenizer("Qwen/Qwen3-8B-Base"))
        # {"<|endoftext|>": 256}
    """
    data = json.loads((Path(directory) / "tokenizer.json").read_text(encoding="utf-8"))
    return {
        t["content"]: t["id"]
        for t in data.get("added_tokens") or ()
        if t.get("special") and isinstance(t.get("content"), str) and t["content"]
        and isinstance(t.get("id"), int) and not isinstance(t.get("id"), bool)
    }


def tokenizer_vocab_size(directory: str | os.PathLike[str]) -> int:
    """The vocabulary size of a local Hugging Face tokenizer directory: one more than the
    largest id in its ``tokenizer.json`` (the model's vocabulary and the added tokens), or
    ``config.json``'s ``vocab_size`` if that is larger (models pad their embedding).
    ``OSError`` if there is no ``tokenizer.json``; ``ValueError`` if it holds no ids.

    Example::

        tokenizer_vocab_size(write_byte_tokenizer("Qwen/Qwen3-8B-Base"))   # 257
    """
    path = Path(directory)
    data = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    ids: list[int] = []
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        ids.extend(v for v in vocab.values() if isinstance(v, int))
    elif isinstance(vocab, list) and vocab:  # Unigram: [[piece, score], ...], id = position
        ids.append(len(vocab) - 1)
    ids.extend(
        t["id"] for t in data.get("added_tokens") or () if isinstance(t.get("id"), int)
    )
    config = path / "config.json"
    if config.is_file():
        size = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
        if isinstance(size, int) and not isinstance(size, bool) and size > 0:
            ids.append(size - 1)
    if not ids:
        raise ValueError(f"{path / 'tokenizer.json'} holds no token ids")
    return max(ids) + 1


def write_byte_tokenizer(directory: str | os.PathLike[str]) -> Path:
    """Write a Hugging Face tokenizer (``tokenizer.json``, ``tokenizer_config.json``) whose
    token ids are the UTF-8 bytes of the text and whose EOS (``<|endoftext|>``) is 256, into
    ``directory`` (created if missing); returns the directory.

    Needs ``tokenizers`` (``pip install 'firetitan_async[cookbooks]'``).

    Example::

        write_byte_tokenizer("meta-llama/Llama-3.2-1B")
        # transformers.AutoTokenizer.from_pretrained("meta-llama/Llama-3.2-1B").encode("hi")
        # == [104, 105]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = _byte_alphabet()
    tokenizer = Tokenizer(models.BPE(vocab={alphabet[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS_TEXT])
    assert tokenizer.token_to_id(EOS_TEXT) == EOS_TOKEN

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TEXT,
        "pad_token": EOS_TEXT,
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path
