"""``write_byte_tokenizer``: a Hugging Face tokenizer directory whose ids are the byte values."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from firetitan_async.local import write_byte_tokenizer
from firetitan_async.local._model import EOS_TOKEN

TEXTS = [
    "User: Say hi.\n\nAssistant: hi!",
    " leading space, tabs\tand\r\nline ends",
    "Grüße, 東京, emoji 🙂 and \x00\x01 control bytes",
    "\\boxed{42} <|im_start|> looks special but is not",
]


def test_ids_are_the_utf8_bytes_and_eos_is_256(tmp_path: Path) -> None:
    directory = write_byte_tokenizer(tmp_path / "Qwen" / "Qwen3-8B-Base")
    assert directory == tmp_path / "Qwen" / "Qwen3-8B-Base"
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))

    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == list(text.encode("utf-8")), text
        assert tokenizer.decode(ids) == text
    every_byte = bytes(range(256))
    assert tokenizer.encode(every_byte.decode("latin-1")).ids != list(every_byte)  # not UTF-8
    assert [tokenizer.token_to_id(str(tokenizer.id_to_token(b))) for b in every_byte] == list(
        every_byte
    )
    assert tokenizer.decode(list(every_byte[:128])) == every_byte[:128].decode("ascii")
    assert tokenizer.get_vocab_size() == EOS_TOKEN + 1
    assert tokenizer.token_to_id("<|endoftext|>") == EOS_TOKEN
    assert tokenizer.encode("a<|endoftext|>").ids == [ord("a"), EOS_TOKEN]

    config = json.loads((directory / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"
    assert config["bos_token"] is None


def test_rewriting_a_directory_is_idempotent(tmp_path: Path) -> None:
    first = (write_byte_tokenizer(tmp_path) / "tokenizer.json").read_bytes()
    second = (write_byte_tokenizer(tmp_path) / "tokenizer.json").read_bytes()
    assert first == second
