"""Keep using the tinker SDK, from trio: await its futures with ``firetitan_async.aresult``.

The tinker SDK runs its own asyncio loop on a background thread and hands back
``APIFuture`` objects; ``await fut`` only works inside asyncio. ``aresult(fut, timeout=...)``
waits for any of them (``APIFuture``, ``concurrent.futures.Future``, our ``Pending``) under
asyncio or trio, without a thread per wait and without blocking the loop; a timeout stops the
wait but never cancels the operation.

The SDK's first client creation still blocks while it bootstraps its session, so it goes to a
worker thread (``trio.to_thread.run_sync``); everything after that is plain awaiting. A ticker
task shows that the trio loop never stalls.

    python examples/tinker_interop.py                  # embedded local trainer
    python examples/tinker_interop.py --steps 3
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import numpy as np
import tinker
import trio
from tinker import types

from firetitan_async import aresult
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"
TEXT = "trio and the tinker sdk, together."


def datum(text: str) -> types.Datum:
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


async def ticker(max_gap: list[float]) -> None:
    """Tick every 10 ms and record the longest gap between ticks (a stalled loop shows here)."""
    last = time.monotonic()
    while True:
        await trio.sleep(0.01)
        now = time.monotonic()
        max_gap[0] = max(max_gap[0], now - last)
        last = now


async def train_with_tinker(base_url: str, steps: int) -> None:
    service = tinker.ServiceClient(base_url=base_url, api_key="tml-local")
    # Blocking bootstrap of the SDK's session: off the trio loop.
    creating = await trio.to_thread.run_sync(
        partial(service.create_lora_training_client, base_model=MODEL, rank=8)
    )
    training = await aresult(creating, timeout=60)
    print(f"tinker TrainingClient {training.model_id}")

    batch = [datum(TEXT)]
    adam = types.AdamParams(learning_rate=1e-2)
    for step in range(1, steps + 1):
        fb = training.forward_backward(batch, "cross_entropy")  # an APIFuture, at once
        opt = training.optim_step(adam)
        out = await aresult(fb, timeout=60)
        await aresult(opt, timeout=60)
        print(f"step {step}: loss/token {out.metrics['loss:sum'] / (len(TEXT) - 1):.4f}")

    saved = await aresult(training.save_weights_for_sampler("interop-final"), timeout=60)
    sampler = await aresult(service.create_sampling_client(model_path=saved.path), timeout=60)
    prompt = types.ModelInput.from_ints(list(b"trio "))
    out = await aresult(
        sampler.sample(prompt, 1, types.SamplingParams(max_tokens=20, temperature=0)), timeout=60
    )
    text = bytes(t for t in out.sequences[0].tokens if t < 256).decode(errors="replace")
    print(f"sample from {saved.path}: trio {text!r}")
    await aresult(service.close("success"), timeout=30)  # close() returns a future too


async def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("TINKER_TELEMETRY", "0")
    max_gap = [0.0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker, max_gap)
        if args.base_url is not None:
            await train_with_tinker(args.base_url, args.steps)
        else:
            async with LocalTrainer(seed=args.seed) as local:
                await train_with_tinker(local.base_url, args.steps)
        nursery.cancel_scope.cancel()
    print(f"longest trio loop stall: {max_gap[0] * 1000:.1f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--base-url", help="trainer URL (None: an embedded local trainer)")
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args())
