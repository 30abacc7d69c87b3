"""Supervised fine-tuning with pipelined steps and checkpoints.

Each step's ``forward_backward`` and ``optim_step`` are submitted at once (they return
``Pending`` futures); the loop keeps ``--depth`` steps in flight and only then waits for the
oldest one, so the trainer never idles between steps. Every ``--save-every`` steps it saves
the training state with a TTL; at the end it lists the run's checkpoints and samples from the
trained weights.

    python examples/async_training_loop.py                     # embedded local trainer
    python examples/async_training_loop.py --steps 5 --backend trio
    FIREWORKS_API_KEY=... python examples/async_training_loop.py \\
        --base-url https://<trainer> --model accounts/fireworks/models/qwen3-8b

(Against a real trainer the byte-level "tokenizer" below is not the model's: bring your own.)
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from contextlib import AsyncExitStack

import anyio
import numpy as np
from tinker import types

from firetitan_async import Pending, ServiceSession
from firetitan_async.local import LocalTrainer

CORPUS = [
    "firetitan speaks asyncio and trio.",
    "every operation returns a pending future at once.",
    "the trainer runs operations in call order.",
    "await the result only when you need it.",
]


def sft_datum(text: str) -> types.Datum:
    """Next-token prediction on ``text`` (byte tokens), every position weighted 1."""
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


async def train(base_url: str, model: str, *, steps: int, depth: int, save_every: int) -> float:
    """Run the SFT loop; returns the last step's loss per token."""
    batch = [sft_datum(text) for text in CORPUS]
    n_tokens = sum(len(d.model_input.to_ints()) for d in batch)
    adam = types.AdamParams(learning_rate=1e-2)
    async with ServiceSession(base_url) as session:
        client = await session.create_training_client(model, lora_rank=0)
        print(f"training {client.model_id}")
        in_flight: deque[tuple[int, Pending[types.ForwardBackwardOutput]]] = deque()
        saves: list[Pending[types.SaveWeightsResponse]] = []
        started = time.monotonic()
        loss = float("nan")
        for step in range(1, steps + 1):
            fb = client.forward_backward(batch, "cross_entropy")
            client.optim_step(adam)  # ordered after fb; its result is not needed
            if step % save_every == 0 or step == steps:
                saves.append(client.save_state(f"sft-{step:04d}", ttl_seconds=3600))
            in_flight.append((step, fb))
            while len(in_flight) >= depth or (step == steps and in_flight):
                done_step, oldest = in_flight.popleft()
                loss = (await oldest).metrics["loss:sum"] / n_tokens
                if steps <= 20 or done_step % 10 == 0 or done_step == 1:
                    print(
                        f"step {done_step:4d}  loss/token {loss:.4f}  ({len(in_flight)} in flight)"
                    )
        for saved in saves:
            print(f"saved {(await saved).path}")
        print(f"{steps} steps in {time.monotonic() - started:.2f}s")

        for ckpt in await client.list_checkpoints():
            print(f"checkpoint {ckpt.checkpoint_id}  expires {ckpt.expires_at}")

        sampler = await client.save_weights_and_get_sampling_client()
        prompt = types.ModelInput.from_ints(list(b"every "))
        out = await sampler.sample(prompt, 1, types.SamplingParams(max_tokens=40, temperature=0))
        text = bytes(t for t in out.sequences[0].tokens if t < 256).decode(errors="replace")
        print(f"sample: every {text!r}")
    return loss


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        base_url = args.base_url
        if base_url is None:
            local = await stack.enter_async_context(LocalTrainer(seed=args.seed))
            base_url = local.base_url
        await train(
            base_url, args.model, steps=args.steps, depth=args.depth, save_every=args.save_every
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="trainer URL (default: an embedded local trainer)")
    parser.add_argument("--model", default="local/tiny-byte-lm")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--depth", type=int, default=3, help="steps kept in flight")
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
