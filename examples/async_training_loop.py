"""Supervised fine-tuning with pipelined steps, checkpoints and resume.

``sft_steps`` keeps ``--depth`` steps in flight (each step's ``forward_backward`` and
``optim_step`` are submitted at once), so the trainer never idles between steps. A
``CheckpointManager`` saves the training state every ``--save-every`` steps and at the end,
keeps the last two, and records each save (step, data cursor, config) in ``--run-dir``; run
again with the same ``--run-dir`` and it resumes where the last save left off.

    python examples/async_training_loop.py                     # embedded local trainer
    python examples/async_training_loop.py --steps 5 --backend trio
    python examples/async_training_loop.py --run-dir runs/sft  # again later: resumes
    FIREWORKS_API_KEY=... python examples/async_training_loop.py \\
        --base-url https://<trainer> --model accounts/fireworks/models/qwen3-8b

(Against a real trainer the byte-level "tokenizer" below is not the model's: bring your own.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import AsyncExitStack

import anyio
import numpy as np
from tinker import types

from firetitan_async import InvalidInput, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import CheckpointManager, TrainerCheckpoints, sft_steps

CORPUS = [
    "firetitan speaks asyncio and trio.",
    "every operation returns a pending future at once.",
    "the trainer runs operations in call order.",
    "await the result only when you need it.",
]
LEARNING_RATE = 1e-2


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


async def train(
    base_url: str, model: str, *, steps: int, depth: int, save_every: int, run_dir: str
) -> float:
    """Run (or resume) the SFT loop; returns the last step's loss per token."""
    batches = [[sft_datum(text) for text in CORPUS]] * steps
    # What defines the run: resuming under anything else is refused. (Not --steps: a resumed
    # run may go on for longer.)
    config = {"model": model, "learning_rate": LEARNING_RATE, "corpus": CORPUS}
    loss = float("nan")
    async with ServiceSession(base_url) as session:
        client = await session.create_training_client(model, lora_rank=0)
        print(f"training {client.model_id}; run directory {run_dir}")
        started = time.monotonic()
        async with CheckpointManager(
            TrainerCheckpoints(session, client),
            run_dir,
            config=config,
            every_steps=save_every,
            keep_last=2,
            prefix="sft",
        ) as checkpoints:
            start = await checkpoints.resume()
            if start is not None:
                print(f"resumed from {start.name} (step {start.step})")
            async for step in sft_steps(
                client,
                batches,
                adam=types.AdamParams(learning_rate=LEARNING_RATE),
                depth=depth,
                checkpoints=checkpoints,
                start=start,
            ):
                loss = step.loss
                if steps <= 20 or step.step % 10 == 0 or step.step == 1:
                    print(
                        f"step {step.step:4d}  loss/token {loss:.4f}  "
                        f"{step.tokens_per_s:6.0f} tokens/s  {step.wall_s * 1e3:5.0f} ms  "
                        f"({step.in_flight} in flight)"
                    )
        print(f"done in {time.monotonic() - started:.2f}s")
        for record in checkpoints.records:
            print(f"saved {record.name} at step {record.step}: {record.path}")

        # What the model learned, scored by a forward pass (a Fireworks trainer has no sampler
        # of its own: sampling goes through a deployment, see docs/deployments.md).
        scored = await client.forward([sft_datum(CORPUS[1])], "cross_entropy")
        per_byte = np.exp(scored.loss_fn_outputs[0]["logprobs"].to_numpy())
        print(f"score: mean next-byte probability {per_byte.mean():.3f} on {CORPUS[1]!r}")
    return loss


async def main(args: argparse.Namespace) -> None:
    async with AsyncExitStack() as stack:
        run_dir = args.run_dir or stack.enter_context(tempfile.TemporaryDirectory())
        base_url = args.base_url
        if base_url is None:
            # The embedded trainer keeps its checkpoint files in the run directory, so that a
            # second run with the same --run-dir can resume from them.
            local = await stack.enter_async_context(
                LocalTrainer(seed=args.seed, checkpoint_dir=f"{run_dir}/local-trainer")
            )
            base_url = local.base_url
        await train(
            base_url,
            args.model,
            steps=args.steps,
            depth=args.depth,
            save_every=args.save_every,
            run_dir=run_dir,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--base-url", help="trainer URL (None: an embedded local trainer)")
    parser.add_argument("--model", default="local/tiny-byte-lm", help="base model")
    parser.add_argument("--steps", type=int, default=60, help="training steps")
    parser.add_argument("--depth", type=int, default=3, help="steps kept in flight")
    parser.add_argument("--save-every", type=int, default=20, help="steps between checkpoints")
    parser.add_argument("--run-dir", help="where the checkpoint record lives (None: a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="model and data seed")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    try:
        anyio.run(main, arguments, backend=arguments.backend)
    except InvalidInput as exc:  # e.g. resuming a --run-dir made with another config
        raise SystemExit(f"error: {exc}") from None
