"""A rollout orchestrator: hundreds of concurrent sampling requests feed an RL trainer.

``--concurrency`` rollout workers (tasks, not threads) each keep one ``sample`` request (a
group of ``--group`` completions of one prompt) in flight against the latest published
sampler. Finished groups flow through a bounded memory stream to the trainer, which takes
``--batch`` groups per step. Every rollout is tagged with
the policy version that produced it; the trainer drops rollouts more than ``--max-staleness``
versions old (the bounded staleness window), and workers never start a request on a sampler
that is already too old. After each ``optim_step`` the trainer saves a sampler snapshot
(``base`` first, then ``delta``) and publishes it as the next version.

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

import anyio
import attrs
import numpy as np
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from tinker import types

from firetitan_async import SamplingClient, ServiceSession, TrainingClient
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"
PROMPT = list(b"Say: ")


@attrs.frozen
class Completion:
    tokens: list[int]
    logprobs: list[float]
    reward: float


@attrs.frozen
class Rollout:
    """One sampled group, tagged with the policy version that produced it."""

    version: int
    completions: list[Completion]


@attrs.define
class Policy:
    """The latest published sampler; ``changed`` fires when a new version is published."""

    version: int
    sampler: SamplingClient
    changed: anyio.Event = attrs.field(factory=anyio.Event)

    def publish(self, sampler: SamplingClient) -> None:
        self.version += 1
        self.sampler = sampler
        self.changed.set()
        self.changed = anyio.Event()


@attrs.define
class Counters:
    in_flight: int = 0
    peak_in_flight: int = 0
    sampled: int = 0
    dropped_stale: int = 0


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


async def rollout_worker(
    worker: int,
    policy: Policy,
    trainer_version: list[int],
    max_staleness: int,
    target: bytes,
    group: int,
    send: MemoryObjectSendStream[Rollout],
    counters: Counters,
) -> None:
    seed = worker * 7919
    with send:
        while True:
            # Never start a request on a policy that is already outside the window.
            while trainer_version[0] - policy.version > max_staleness:
                await policy.changed.wait()
            version, sampler = policy.version, policy.sampler
            seed += 1
            params = types.SamplingParams(max_tokens=len(target), seed=seed % 2**31)
            counters.in_flight += 1
            counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
            try:
                out = await sampler.sample(types.ModelInput.from_ints(PROMPT), group, params)
            finally:
                counters.in_flight -= 1
            counters.sampled += 1
            completions = [
                Completion(seq.tokens, seq.logprobs or [], reward_of(seq.tokens, target))
                for seq in out.sequences
                if seq.tokens
            ]
            try:
                await send.send(Rollout(version, completions))
            except anyio.BrokenResourceError:  # the trainer is done
                return


async def trainer_loop(
    session: ServiceSession,
    client: TrainingClient,
    policy: Policy,
    trainer_version: list[int],
    receive: MemoryObjectReceiveStream[Rollout],
    args: argparse.Namespace,
    counters: Counters,
) -> list[float]:
    adam = types.AdamParams(learning_rate=args.learning_rate, beta2=0.99)
    mean_rewards: list[float] = []
    started = time.monotonic()
    print("step  reward  staleness  dropped  in flight  requests/s")
    with receive:
        for step in range(1, args.steps + 1):
            batch: list[Rollout] = []
            while len(batch) < args.batch:
                rollout = await receive.receive()
                if trainer_version[0] - rollout.version > args.max_staleness:
                    counters.dropped_stale += 1
                    continue
                batch.append(rollout)
            datums = []
            for rollout in batch:
                rewards = np.array([c.reward for c in rollout.completions])
                for completion, advantage in zip(
                    rollout.completions, rewards - rewards.mean(), strict=True
                ):
                    datums.append(rl_datum(completion, float(advantage)))
            rewards = np.array([c.reward for r in batch for c in r.completions])
            in_flight = counters.in_flight
            client.forward_backward(datums, "importance_sampling")
            client.optim_step(adam)
            snapshot = await client.save_weights_for_sampler_ext(
                f"rollout-{step:04d}", checkpoint_type="delta"
            )
            trainer_version[0] = step
            policy.publish(await session.create_sampling_client(model_path=snapshot.path))
            staleness = np.mean([step - 1 - r.version for r in batch])
            mean_rewards.append(float(rewards.mean()))
            rate = counters.sampled / (time.monotonic() - started)
            print(
                f"{step:>4}  {rewards.mean():>6.3f}  {staleness:>9.2f}  "
                f"{counters.dropped_stale:>7}  {in_flight:>9}  {rate:>10.0f}"
            )
    return mean_rewards


async def orchestrate(base_url: str, args: argparse.Namespace) -> list[float]:
    target = args.target.encode()
    counters = Counters()
    async with ServiceSession(base_url) as session:
        client = await session.create_training_client(MODEL)
        base = await client.save_weights_for_sampler_ext("rollout-0000", checkpoint_type="base")
        policy = Policy(0, await session.create_sampling_client(model_path=base.path))
        trainer_version = [0]
        # A buffer of one batch: when the trainer is busy, workers wait (backpressure).
        send, receive = anyio.create_memory_object_stream[Rollout](max_buffer_size=args.batch)
        async with anyio.create_task_group() as tg:
            for worker in range(args.concurrency):
                tg.start_soon(
                    rollout_worker,
                    worker,
                    policy,
                    trainer_version,
                    args.max_staleness,
                    target,
                    args.group,
                    send.clone(),
                    counters,
                )
            send.close()
            rewards = await trainer_loop(
                session, client, policy, trainer_version, receive, args, counters
            )
            tg.cancel_scope.cancel()  # stop the workers; in-flight samples finish server-side
    print(
        f"peak sampling requests in flight: {counters.peak_in_flight}; "
        f"groups sampled {counters.sampled}, dropped as stale {counters.dropped_stale}"
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
