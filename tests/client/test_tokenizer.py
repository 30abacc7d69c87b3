"""``await client.get_tokenizer()`` in both dialects (asyncio and trio), from local tokenizer
directories built here with ``tokenizers`` (no network).

The tinker dialect names the tokenizer as the tinker SDK does (``get_info``'s ``tokenizer_id``,
else the model name, a hub id or a directory relative to the working directory); the
fireworks dialect takes ``tokenizer_model``. The load runs in a worker thread: a 1 ms ticker in
the caller's loop records the CPU time the loop's thread spends between two of its wake-ups
(as ``test_loop_stall.py``: unlike wall time it does not count the moments the shared machine
gives the CPU to another process), with the garbage collector paused while measuring. Loading
the larger tokenizer in the loop's thread costs it 100+ ms of CPU; the bound is 10 ms.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from firetitan_async import FiretitanError, InvalidInput, ServiceSession
from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
BOUND_MS = 10.0
TEXT = "héllo wörld"


def build_tokenizer(directory: Path, *, merge_chars: int = 0) -> Path:
    """A byte-level HF tokenizer: ids 0-255 are the bytes, 256 is ``<eos>``; with
    ``merge_chars`` it also merges every pair of the first ``merge_chars`` byte characters
    (``merge_chars**2`` merges: a tokenizer that takes a while to load)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable}  # the byte-level alphabet: the rest map past 255
    for extra, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + extra)
    vocab = {table[b]: b for b in range(256)}
    vocab["<eos>"] = 256
    pool = [table[b] for b in printable][:merge_chars]
    merges = [(left, right) for left in pool for right in pool]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<eos>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def trainer() -> Iterator[LocalTrainer]:
    with LocalTrainer(seed=2) as lt:
        yield lt


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "bytes")


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok") / "big", merge_chars=180)


@pytest.mark.parametrize("dialect", ["tinker", "fireworks"])
async def test_loading_does_not_stall_the_loop(
    trainer: LocalTrainer, big_dir: Path, tmp_path: Path, dialect: Any
) -> None:
    fresh = shutil.copytree(big_dir, tmp_path / "big")  # the tinker SDK caches loads by name
    gaps: list[float] = []
    wall: list[float] = []
    running = True

    async def ticker() -> None:
        last, last_wall = time.thread_time(), time.perf_counter()
        while running:
            await anyio.sleep(0.001)
            now, now_wall = time.thread_time(), time.perf_counter()
            gaps.append(now - last)
            wall.append(now_wall - last_wall)
            last, last_wall = now, now_wall

    async with ServiceSession(trainer.base_url, dialect=dialect) as session:
        client = await session.create_training_client(MODEL)
        gc.disable()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0.005)
                started = time.perf_counter()
                with anyio.fail_after(120):
                    tokenizer = await client.get_tokenizer(str(fresh))
                took = time.perf_counter() - started
                running = False
        finally:
            gc.enable()
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert len(tokenizer) > 30_000
    worst_ms = max(gaps) * 1e3
    print(f"load {took * 1e3:.0f} ms; loop CPU gap max {worst_ms:.1f} ms, wall gap max "
          f"{max(wall) * 1e3:.1f} ms over {len(gaps)} ticks")
    assert len(gaps) >= 2, len(gaps)  # the interval spanning the load is among them
    assert worst_ms <= BOUND_MS, f"{worst_ms:.1f} ms of CPU between two ticks (bound {BOUND_MS})"


async def test_tinker_names_it_by_the_model_name_then_the_tokenizer_id(
    trainer: LocalTrainer, byte_dir: Path, big_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tinker SDK's rule without a tokenizer_id: the model name, here a directory
    # relative to the working directory (as AutoTokenizer.from_pretrained reads it).
    build_tokenizer(byte_dir.parent / "cwd" / MODEL)
    monkeypatch.chdir(byte_dir.parent / "cwd")
    async with ServiceSession(trainer.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        assert client.info is not None and client.info.model_data.tokenizer_id is None
        by_name = await client.get_tokenizer()
        assert by_name.encode(TEXT) == list(TEXT.encode())  # ids are the bytes
        assert by_name.eos_token_id == 256
        assert await client.get_tokenizer() is by_name  # cached per client

        other = await session.create_training_client(MODEL, seed=1)
        data = other.info.model_data if other.info is not None else None
        assert data is not None
        other.info = other.info.model_copy(  # type: ignore[union-attr]
            update={"model_data": data.model_copy(update={"tokenizer_id": str(big_dir)})}
        )
        by_id = await other.get_tokenizer()
        assert len(by_id) > 30_000 and by_id is not by_name


async def test_fireworks_takes_tokenizer_model_and_caches_it(
    trainer: LocalTrainer, byte_dir: Path, big_dir: Path
) -> None:
    async with ServiceSession(trainer.base_url, dialect="fireworks") as session:
        client = await session.create_training_client(MODEL)
        with pytest.raises(InvalidInput, match="tokenizer_model"):
            await client.get_tokenizer()
        with pytest.raises(InvalidInput, match="tokenizer_model"):
            await client.get_tokenizer("  ")
        loaded: list[Any] = []

        async def get(name: str) -> None:
            loaded.append(await client.get_tokenizer(name))

        async with anyio.create_task_group() as tg:  # concurrent first calls: one load
            for _ in range(3):
                tg.start_soon(get, str(byte_dir))
        assert loaded[0] is loaded[1] is loaded[2]
        assert loaded[0].encode(TEXT) == list(TEXT.encode())
        big = await client.get_tokenizer(str(big_dir))
        assert big is not loaded[0] and await client.get_tokenizer(str(byte_dir)) is loaded[0]
        with pytest.raises(FiretitanError, match="could not load the tokenizer"):
            await client.get_tokenizer(str(byte_dir.parent / "missing"))
