"""A trainer job's whole life on the Fireworks control plane, with ``TrainerJobs``.

Resolve a training shape, create a job on it, wait for it (showing progress) and train a few
steps through the trainer gateway, save a sampler snapshot, list the job's checkpoints,
promote the newest promotable one to a model, then delete the job.

    python examples/trainer_jobs.py                        # embedded local trainer
    python examples/trainer_jobs.py --backend trio
    FIREWORKS_API_KEY=... python examples/trainer_jobs.py --base-url https://api.fireworks.ai \\
        --shape accounts/fireworks/trainingShapes/<shape> --model accounts/fireworks/models/<m>

(Against a real trainer the byte-level "tokenizer" below is not the model's: bring your own.)
"""

from __future__ import annotations

import argparse
import uuid
from contextlib import AsyncExitStack

import anyio
import numpy as np
from tinker import types

from firetitan_async import (
    ReadinessProgress,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
)

TEXT = b"trainer jobs, from create to promote."


def show(progress: ReadinessProgress) -> None:
    print(f"  {progress.state:<9} after {progress.elapsed_s:5.1f}s  {progress.message or ''}")


async def run(base_url: str | None, shape: str | None, model: str, steps: int) -> str:
    """The whole flow; returns the promoted model's name."""
    async with AsyncExitStack() as stack:
        if base_url is None:  # no control plane given: an embedded local trainer
            from firetitan_async.local import LocalTrainer

            lt = await stack.enter_async_context(LocalTrainer(warmup_s=1.0))
            base_url = lt.control_plane_url
            shape = f"accounts/{lt.account_id}/trainingShapes/tiny-byte-lm-full"
        jobs = await stack.enter_async_context(TrainerJobs(base_url=base_url))
        print(f"account {await jobs.account_id()}")

        config = TrainerJobConfig(base_model=model, display_name="firetitan example")
        if shape is not None:
            profile = await jobs.resolve_training_profile(shape)
            print(f"shape {profile.training_shape_version} ({profile.trainer_mode})")
            config = TrainerJobConfig(
                base_model=model, training_shape_ref=profile.training_shape, display_name="example"
            )
        created = await jobs.create(config)
        print(f"created {created.job_name}")
        try:
            endpoint = await jobs.wait_for_ready(
                created.job_id, poll_interval_s=0.2, on_progress=show
            )
            print(f"trainer at {endpoint.base_url}")
            tokens = list(TEXT)
            datum = types.Datum(
                model_input=types.ModelInput.from_ints(tokens[:-1]),
                loss_fn_inputs={
                    "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], np.int64)),
                    "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, np.float32)),
                },
            )
            async with ServiceSession(endpoint.base_url) as session:
                client = await session.create_training_client(model)
                for step in range(steps):
                    fb = client.forward_backward([datum], "cross_entropy")
                    client.optim_step(types.AdamParams(learning_rate=1e-2))
                    print(f"  step {step}: loss {(await fb).metrics['loss:sum']:.2f}")
                await client.save_weights_for_sampler_ext("example")

            rows = await jobs.list_checkpoints(created.job_id)
            for row in rows:
                print(
                    f"  {row.checkpoint_id:<24} {row.checkpoint_type}  promotable={row.promotable}"
                )
            newest = [row for row in rows if row.promotable][-1]
            promoted = await jobs.promote_checkpoint(
                name=newest.name,
                output_model_id=f"example-{uuid.uuid4().hex[:8]}",
                base_model=model,
                poll_interval_s=1.0,
            )
            print(f"promoted {newest.checkpoint_id} to {promoted.name} ({promoted.state})")
            return promoted.name
        finally:
            await jobs.delete(created.job_id)
            print(f"deleted {created.job_id}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--base-url", help="control plane (None: an embedded local trainer)")
    parser.add_argument("--shape", help="a training shape (accounts/<a>/trainingShapes/<s>)")
    parser.add_argument("--model", default="local/tiny-byte-lm", help="base model")
    parser.add_argument("--steps", type=int, default=3, help="training steps")
    parser.add_argument(
        "--backend", choices=["asyncio", "trio"], default="asyncio", help="event loop"
    )
    args = parser.parse_args()

    async def go() -> None:
        await run(args.base_url, args.shape, args.model, args.steps)

    anyio.run(go, backend=args.backend)


if __name__ == "__main__":
    main()
