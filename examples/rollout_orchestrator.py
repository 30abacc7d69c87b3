"""A rollout orchestrator: hundreds of concurrent rollouts from a deployment feed an RL trainer.

The Fireworks shape (the default): a trainer job is created on the control plane and waited
for, an inference deployment is created beside it, and ``run_rl`` (``firetitan_async.loops``)
runs ``--concurrency`` rollouts at once (tasks, not threads), each one completions request
(token ids in, token ids and logprobs out) for a group of ``--group`` completions of one
prompt, through one ``DeploymentSampler`` whose adaptive window is shared by every rollout.
Finished groups flow through a bounded stream to the trainer, which takes ``--batch`` groups
per step, then publishes the new weights as the next policy version: a sampler snapshot
(``base`` first, then ``delta``s) hot-loaded into the deployment (``WeightPublisher``, through
``DeploymentPolicy``), while the trainer goes on. Every completion says which snapshot served
it; staleness is that version's distance from the step that trains it, bounded by pacing: a
rollout starts only when the served policy is at most ``--max-staleness`` versions behind the
one it will be trained under, so nothing is sampled to be thrown away. A failing rollout stops
everything, with its error.

``--dialect tinker`` keeps the trainer-sampler shape (Tinker has no jobs or deployments): a
tinker-dialect session, rollouts sampled from the trainer's own sampler snapshots.

The task: after ``"Say: "``, emit the bytes of ``--target`` (reward = fraction of positions
right); advantages are reward minus the group mean; loss ``importance_sampling`` with the
sampler's logprobs, which corrects for the (bounded) staleness.

    python examples/rollout_orchestrator.py                      # 256 requests in flight
    python examples/rollout_orchestrator.py --concurrency 32 --steps 3 --backend trio
    python examples/rollout_orchestrator.py --dialect tinker
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import attrs
import numpy as np
from tinker import types

from firetitan_async import (
    AdaptiveConcurrency,
    DeploymentConfig,
    Deployments,
    DeploymentSampler,
    SamplingClient,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
    TrainingClient,
    WeightPublisher,
)
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import (
    DeploymentPolicy,
    DeploymentPolicySampler,
    Publisher,
    RLResult,
    RLStep,
    Rollout,
    TrainerPolicy,
    run_rl,
)

MODEL = "local/tiny-byte-lm"
PROMPT = list(b"Say: ")


@attrs.frozen
class Completion:
    tokens: list[int]
    logprobs: list[float]
    reward: float
    #: The policy version that served it (the deployment says; None from the trainer).
    served: int | None = None


def reward_of(tokens: list[int], target: bytes) -> float:
    return sum(1 for a, b in zip(tokens, target, strict=False) if a == b) / len(target)


def rl_datum(completion: Completion, advantage: float) -> types.Datum:
    """An importance-sampling datum: only the completion's positions are trained."""
    tokens = PROMPT + completion.tokens
    n_prompt = len(PROMPT) - 1
    logprobs = np.zeros(len(tokens) - 1, dtype=np.float32)
    logprobs[n_prompt:] = completion.logprobs
    advantages = np.zeros(len(tokens) - 1, dtype=np.float32)
    advantages[n_prompt:] = advantage
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "logprobs": types.TensorData.from_numpy(logprobs),
            "advantages": types.TensorData.from_numpy(advantages),
        },
    )


def advantages(rollouts: Sequence[Rollout[int, Completion]]) -> list[types.Datum]:
    """Each completion's reward minus its group's mean."""
    datums = []
    for rollout in rollouts:
        rewards = np.array([c.reward for c in rollout.group])
        for completion, advantage in zip(rollout.group, rewards - rewards.mean(), strict=True):
            datums.append(rl_datum(completion, float(advantage)))
    return datums


@attrs.define
class Counters:
    in_flight: int = 0
    peak_in_flight: int = 0
    sampled: int = 0


Sampler = SamplingClient | DeploymentPolicySampler


async def orchestrate(
    client: TrainingClient, publisher: Publisher[Sampler], args: argparse.Namespace
) -> list[float]:
    target = args.target.encode()
    counters = Counters()
    started = time.monotonic()

    async def sample(sampler: Sampler, seed: int) -> list[Completion]:
        if isinstance(sampler, DeploymentPolicySampler):  # the deployment's completions API
            completions = await sampler.sample(
                PROMPT, n=args.group, max_tokens=len(target), logprobs=True, seed=seed
            )
            return [
                Completion(c.tokens, c.logprobs or [], reward_of(c.tokens, target),
                           sampler.version_of(c))
                for c in completions
            ]
        params = types.SamplingParams(max_tokens=len(target), seed=seed)  # the trainer's
        out = await sampler.sample(types.ModelInput.from_ints(PROMPT), args.group, params)
        return [Completion(s.tokens, s.logprobs or [], reward_of(s.tokens, target))
                for s in out.sequences]

    async def rollout(sampler: Sampler, seed: int) -> list[Completion]:
        counters.in_flight += 1
        counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
        try:
            group = await sample(sampler, seed)
        finally:
            counters.in_flight -= 1
        counters.sampled += 1
        return [c for c in group if c.tokens]

    def report(step: RLStep[int, Completion]) -> None:
        rewards = [c.reward for r in step.rollouts for c in r.group]
        # The version that served each completion (the deployment's word; from the trainer,
        # the version the rollout was started under), and its staleness at this step.
        served = [c.served if c.served is not None else r.version
                  for r in step.rollouts for c in r.group]
        rate = counters.sampled / (time.monotonic() - started)
        span = f"{min(served)}" if min(served) == max(served) else f"{min(served)}-{max(served)}"
        print(
            f"{step.step:>4}  {np.mean(rewards):>6.3f}  {step.version + 1:>9} / {span:<6}  "
            f"{step.version - np.mean(served):>9.2f}  {counters.in_flight:>9}  {rate:>10.0f}"
        )

    print("step  reward  published / served  staleness  in flight  requests/s")
    result: RLResult[Any, Any, Any] = await run_rl(
        client,
        publisher,
        (args.seed * 7919 + n for n in range(args.steps * args.batch)),  # sampling seeds
        rollout,
        advantages,
        adam=types.AdamParams(learning_rate=args.learning_rate, beta2=0.99),
        groups_per_step=args.batch,
        concurrency=args.concurrency,
        max_staleness=args.max_staleness,
        on_step=report,
    )
    rewards = [
        float(np.mean([c.reward for r in s.rollouts for c in r.group])) for s in result.steps
    ]
    print(
        f"peak rollouts in flight: {counters.peak_in_flight}; "
        f"groups sampled {counters.sampled}, all trained (none discarded)"
    )
    if rewards:
        print(f"mean reward: first step {rewards[0]:.3f} -> last step {rewards[-1]:.3f}")
    return rewards


@asynccontextmanager
async def fireworks_shape(control_plane_url: str, args: argparse.Namespace) -> AsyncIterator[
    tuple[TrainingClient, DeploymentPolicy]
]:
    """A trainer job (waited for), a deployment (waited for) and the policy publishing to it."""
    async with (
        TrainerJobs(base_url=control_plane_url) as jobs,
        Deployments(base_url=control_plane_url) as deployments,
    ):
        job = await jobs.create(TrainerJobConfig(base_model=MODEL, lora_rank=0))
        print(f"trainer job {job.job_id} created; deployment {args.deployment} too")
        await deployments.create_or_get(DeploymentConfig(args.deployment, MODEL))
        async with ServiceSession.from_job(jobs, job.job_id, poll_interval_s=0.1) as session:
            client = await session.create_training_client(MODEL)  # waits until RUNNING
            info = await deployments.wait_for_ready(args.deployment, poll_interval_s=0.1)
            window = AdaptiveConcurrency(initial=32, max_window=512)
            async with (
                WeightPublisher(client, deployments, args.deployment, base_model=MODEL,
                                base_every=5, poll_interval_s=0.1) as weights,
                DeploymentSampler(deployments.inference_url, info.inference_model,
                                  api_key=deployments.api_key, concurrency=window) as sampler,
            ):
                policy = DeploymentPolicy(weights, sampler, prefix="rollout")
                yield client, policy
                kinds = "".join(policy.published[v].checkpoint_type[0]
                                for v in sorted(policy.published))
                print(f"published {len(policy.published)} versions ({kinds}: b=base, d=delta); "
                      f"adaptive window at the end: {window.window} requests")


async def main(args: argparse.Namespace) -> None:
    async with LocalTrainer(seed=args.seed) as local:
        url = args.base_url or local.base_url  # an embedded local trainer unless --base-url
        if args.dialect == "tinker":
            async with ServiceSession(url, dialect="tinker") as session:
                client = await session.create_training_client(MODEL)
                await orchestrate(client, TrainerPolicy(session, client, prefix="rollout"), args)
            return
        async with fireworks_shape(url, args) as (client, policy):
            await orchestrate(client, policy, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dialect", choices=("fireworks", "tinker"), default="fireworks",
        help="fireworks: trainer job + deployment; tinker: sample from the trainer",
    )
    parser.add_argument(
        "--base-url",
        help="control plane (fireworks) or trainer (tinker) URL (None: an embedded local one)",
    )
    parser.add_argument("--deployment", default="rollouts", help="deployment id (fireworks)")
    parser.add_argument("--concurrency", type=int, default=256, help="sampling requests in flight")
    parser.add_argument("--group", type=int, default=4, help="completions per request")
    parser.add_argument("--batch", type=int, default=64, help="groups per training step")
    parser.add_argument("--steps", type=int, default=8, help="training steps")
    parser.add_argument("--max-staleness", type=int, default=2, help="policy versions")
    parser.add_argument("--target", default="trio", help="the word the policy learns")
    parser.add_argument("--learning-rate", type=float, default=2e-2, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="model and sampling seed")
    parser.add_argument(
        "--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop"
    )
    args = parser.parse_args(argv)
    if min(args.concurrency, args.batch, args.steps) < 1 or args.max_staleness < 0:
        parser.error("--concurrency, --batch and --steps must be >= 1, --max-staleness >= 0")
    if args.group < 2:
        parser.error("--group must be >= 2 (advantages are relative to the group)")
    if not math.isfinite(args.learning_rate) or args.learning_rate <= 0:
        parser.error("--learning-rate must be > 0")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
