"""A rollout orchestrator: hundreds of concurrent sampling requests feed an RL trainer.

``run_rl`` (``firetitan_async.loops``) runs ``--concurrency`` rollouts at once (tasks, not
threads), each one ``sample`` request for a group of ``--group`` completions of one prompt,
against the latest published policy. Finished groups flow through a bounded stream to the
trainer, which takes ``--batch`` groups per step, then publishes the new weights as the next
policy version (a sampler snapshot: ``base`` first, then ``delta``). Every rollout is tagged
with the version that sampled it; staleness is bounded by pacing: a rollout starts only when
the policy is at most ``--max-staleness`` versions behind the one it will be trained under,
so nothing is sampled to be thrown away. A failing rollout stops everything, with its error.

The task: after ``"Say: "``, emit the bytes of ``--target`` (reward = fraction of positions
right); advantages are reward minus the group mean; loss ``importance_sampling`` with the
sampler's logprobs, which corrects for the (bounded) staleness.

    python examples/rollout_orchestrator.py                      # 256 requests in flight
    python examples/rollout_orchestrator.py --concurrency 32 --steps 3 --backend trio
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import anyio
import attrs
import numpy as np
from tinker import types

from firetitan_async import SamplingClient, ServiceSession
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import RLStep, Rollout, TrainerSampler, run_rl

MODEL = "local/tiny-byte-lm"
PROMPT = list(b"Say: ")


@attrs.frozen
class Completion:
    tokens: list[int]
    logprobs: list[float]
    reward: float


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


async def orchestrate(base_url: str, args: argparse.Namespace) -> list[float]:
    target = args.target.encode()
    counters = Counters()
    started = time.monotonic()

    async def rollout(sampler: SamplingClient, seed: int) -> list[Completion]:
        params = types.SamplingParams(max_tokens=len(target), seed=seed)
        counters.in_flight += 1
        counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
        try:
            out = await sampler.sample(types.ModelInput.from_ints(PROMPT), args.group, params)
        finally:
            counters.in_flight -= 1
        counters.sampled += 1
        return [
            Completion(seq.tokens, seq.logprobs or [], reward_of(seq.tokens, target))
            for seq in out.sequences
            if seq.tokens
        ]

    def report(step: RLStep[int, Completion]) -> None:
        rewards = [c.reward for r in step.rollouts for c in r.group]
        rate = counters.sampled / (time.monotonic() - started)
        print(
            f"{step.step:>4}  {np.mean(rewards):>6.3f}  {np.mean(step.staleness):>9.2f}  "
            f"{counters.in_flight:>9}  {rate:>10.0f}"
        )

    async with ServiceSession(base_url) as session:
        client = await session.create_training_client(MODEL)
        print("step  reward  staleness  in flight  requests/s")
        result = await run_rl(
            client,
            TrainerSampler(session, client, prefix="rollout"),
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
        f"peak sampling requests in flight: {counters.peak_in_flight}; "
        f"groups sampled {counters.sampled}, all trained (none discarded)"
    )
    if rewards:
        print(f"mean reward: first step {rewards[0]:.3f} -> last step {rewards[-1]:.3f}")
    return rewards


async def main(args: argparse.Namespace) -> None:
    if args.base_url is not None:
        await orchestrate(args.base_url, args)
        return
    async with LocalTrainer(seed=args.seed) as local:
        await orchestrate(local.base_url, args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="trainer URL (default: an embedded local trainer)")
    parser.add_argument("--concurrency", type=int, default=256, help="sampling requests in flight")
    parser.add_argument("--group", type=int, default=4, help="completions per request")
    parser.add_argument("--batch", type=int, default=64, help="groups per training step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--max-staleness", type=int, default=2, help="policy versions")
    parser.add_argument("--target", default="trio")
    parser.add_argument("--learning-rate", type=float, default=2e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
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
