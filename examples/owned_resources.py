"""Nothing left billing: a trainer job and a deployment that live exactly as long as the run.

``cleanup_on_signals()`` turns Ctrl-C and SIGTERM (a scheduler's preemption, ``kill``) into
cancellation; the job (``create_and_wait``) and the deployment (``create_or_get``) are opened
as ``async with`` blocks, so however the run ends — done, an error, Ctrl-C, SIGTERM — the
session is finished, the deployment deleted (or scaled to zero) and the job deleted, within
``grace_s``. Press Ctrl-C while it trains to see it.

    python examples/owned_resources.py                       # embedded local trainer
    python examples/owned_resources.py --steps 200 --backend trio
    firetitan-async serve --port 8080 &  python examples/owned_resources.py \\
        --control-plane-url http://127.0.0.1:8080
    firetitan-async jobs list --orphans --control-plane-url http://127.0.0.1:8080   # nothing left
"""

from __future__ import annotations

import argparse
from contextlib import AsyncExitStack

import anyio
from tinker import types

from firetitan_async import (
    DeploymentConfig,
    Deployments,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
    cleanup_on_signals,
)
from firetitan_async.local import LocalTrainer, sft_datum

MODEL = "local/tiny-byte-lm"


async def run(control_plane_url: str, steps: int) -> None:
    """Create a job and a deployment owned by this run, then train ``steps`` steps."""
    async with AsyncExitStack() as stack:
        jobs = await stack.enter_async_context(TrainerJobs(base_url=control_plane_url))
        deployments = await stack.enter_async_context(Deployments(base_url=control_plane_url))
        endpoint = await stack.enter_async_context(
            jobs.create_and_wait(TrainerJobConfig(base_model=MODEL), poll_interval_s=0.1)
        )
        print(f"job {endpoint.job_id} is RUNNING", flush=True)
        deployment = await stack.enter_async_context(
            deployments.create_or_get(DeploymentConfig("rollouts", MODEL), cleanup="delete")
        )
        print(f"deployment {deployment.deployment_id} is {deployment.state}", flush=True)
        session = await stack.enter_async_context(ServiceSession(endpoint.base_url))
        client = await session.create_training_client(MODEL)
        adam = types.AdamParams(learning_rate=1e-2)
        for step in range(1, steps + 1):
            fb = client.forward_backward([sft_datum("owned, then released.")], "cross_entropy")
            await client.optim_step(adam)
            loss = (await fb).metrics.get("loss:sum", float("nan"))
            print(f"step {step}: loss {loss:.3f}", flush=True)
    print("released: session finished, deployment and job deleted", flush=True)


async def main(args: argparse.Namespace) -> None:
    async with cleanup_on_signals():
        if args.control_plane_url:
            await run(args.control_plane_url, args.steps)
            return
        async with LocalTrainer() as lt:
            await run(lt.control_plane_url, args.steps)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop"
    )
    parser.add_argument(
        "--control-plane-url", default=None, help="control plane (None: an embedded local one)"
    )
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)  # a signal: exit status 130 / 143
