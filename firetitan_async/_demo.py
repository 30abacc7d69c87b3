"""The RL demo behind ``firetitan-async demo``: a tiny byte model learns to say a word.

Everything runs against an embedded :class:`~firetitan_async.local.LocalTrainer` and goes
through the same path as a real Fireworks trainer: create a trainer job on the control plane,
wait for it to become RUNNING (with a progress display), open a
:meth:`ServiceSession.from_job <firetitan_async.ServiceSession.from_job>` session, then run a
pipelined RL loop:

* sample groups of completions of ``"Say: "`` from the latest sampler snapshot;
* reward = fraction of the first ``len(target)`` bytes that match the target word, position by
  position. Credit is given per position: a token's advantage is its own match (1 or 0) minus
  the group's mean match at that position, so a lucky ``"a"`` is reinforced without also
  reinforcing the random bytes after it (with one advantage per sequence the policy tends to
  lock onto those and stop exploring);
* ``importance_sampling`` (or ``ppo``) ``forward_backward`` with the sampler's logprobs, then
  ``optim_step``, then a sampler snapshot (``base`` first and every ``base_every`` steps,
  ``delta`` in between);
* while that update runs on the trainer, the next batch is already being sampled from the
  previous snapshot (one step of staleness, corrected by the importance ratio).

The loop is :func:`firetitan_async.loops.run_rl` with a
:class:`~firetitan_async.loops.TrainerSampler`; :class:`DemoTask` holds the task's rollout and
advantage functions (picklable: the Ray test runs them in actor workers).

Example::

    result = anyio.run(run_demo, DemoConfig(steps=20))
    print(result.first_reward, "->", result.last_reward)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from typing import Literal

import attrs
import numpy as np
from tinker import types

from ._sampling import SamplingClient
from ._session import ServiceSession
from ._snapshots import SamplerSnapshot
from ._training import TrainingClient
from .local import LocalTrainer
from .local._datums import encode_text
from .loops import RLStep, Rollout, TrainerSampler, run_rl
from .platform import ReadinessProgress, TrainerJobConfig, TrainerJobs

__all__ = [
    "Completion",
    "DemoConfig",
    "DemoResult",
    "DemoRow",
    "DemoTask",
    "reward_of",
    "run_demo",
]

MODEL = "local/tiny-byte-lm"
_EOS = 256


@attrs.frozen
class DemoConfig:
    """Knobs of the demo; ``firetitan-async demo`` exposes steps, target, loss, seed, latency
    and warm-up. The defaults reach a mean reward near 1.0 in about 15 steps for most seeds.

    Example::

        DemoConfig(steps=12, latency_s=0.05, loss_fn="ppo")
    """

    steps: int = 30
    target: str = "async"
    prompt: str = "Say: "
    #: Completions sampled per group (one ``sample`` request per group).
    group_size: int = 32
    #: Groups per training step (sample requests in flight at once).
    groups_per_step: int = 4
    learning_rate: float = 1e-2
    temperature: float = 1.0
    loss_fn: Literal["importance_sampling", "ppo"] = "importance_sampling"
    #: A full (``base``) snapshot every this many steps; ``delta`` snapshots in between.
    base_every: int = 10
    lora_rank: int = 0
    seed: int = 0
    #: Local trainer reply latency, to see the pipelining hide it.
    latency_s: float = 0.0
    #: How long the local trainer job warms up before it is RUNNING.
    warmup_s: float = 1.0
    poll_interval_s: float = 0.1
    #: Samples shown before and after training.
    show_samples: int = 4

    def __attrs_post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.target or len(self.target.encode()) > 32:
            raise ValueError("target must be 1 to 32 bytes")
        if self.group_size < 2:
            raise ValueError("group_size must be >= 2 (advantages are relative to the group)")
        if self.groups_per_step < 1 or self.base_every < 1:
            raise ValueError("groups_per_step and base_every must be >= 1")


@attrs.frozen
class DemoRow:
    """One line of the live table."""

    step: int
    #: ``loss:sum`` of the step divided by the number of trained tokens.
    loss: float
    mean_reward: float
    #: Operations in flight while the step's update ran: the update itself (3) plus the
    #: most sample requests in flight beside it.
    in_flight: int
    snapshot: SamplerSnapshot
    elapsed_s: float


@attrs.frozen
class DemoResult:
    """What the demo did: the table rows, samples before/after, and timing.

    Example::

        assert result.last_reward > result.first_reward
    """

    job_id: str
    rows: tuple[DemoRow, ...]
    samples_before: tuple[str, ...]
    samples_after: tuple[str, ...]
    #: Mean reward of those samples (the same prompt and sampling settings).
    reward_before: float
    reward_after: float
    wall_s: float

    @property
    def first_reward(self) -> float:
        """Mean reward of the first training batch."""
        return self.rows[0].mean_reward

    @property
    def last_reward(self) -> float:
        """Mean reward of the last training batch."""
        return self.rows[-1].mean_reward

    def window_means(self, width: int = 3) -> tuple[float, float]:
        """Mean reward of the first and the last ``width`` steps (less noisy than one step)."""
        rewards = [row.mean_reward for row in self.rows]
        width = max(1, min(width, len(rewards)))
        return float(np.mean(rewards[:width])), float(np.mean(rewards[-width:]))


def reward_of(tokens: Sequence[int], target: bytes) -> float:
    """Fraction of ``target``'s bytes that ``tokens`` reproduces at the same position.

    Example::

        reward_of(list(b"asxnc"), b"async")   # 0.8
    """
    hits = sum(1 for got, want in zip(tokens, target, strict=False) if got == want)
    return hits / len(target)


@attrs.frozen
class Completion:
    """One sampled completion and, per target position, whether it got the byte right."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    matches: tuple[float, ...]

    @property
    def reward(self) -> float:
        return sum(self.matches) / len(self.matches)


@attrs.frozen
class DemoTask:
    """The demo's RL task as plain functions of the pipeline (picklable, for Ray workers).

    Example::

        task = DemoTask.from_config(DemoConfig())
        group = await task.rollout(sampler, seed=1)     # group_size completions of the prompt
    """

    target: bytes
    prompt: tuple[int, ...]
    group_size: int
    temperature: float

    @classmethod
    def from_config(cls, cfg: DemoConfig) -> DemoTask:
        return cls(
            cfg.target.encode(), tuple(encode_text(cfg.prompt)), cfg.group_size, cfg.temperature
        )

    def params(self, seed: int) -> types.SamplingParams:
        return types.SamplingParams(
            max_tokens=len(self.target), temperature=self.temperature, seed=seed
        )

    async def rollout(self, sampler: SamplingClient, seed: int) -> list[Completion]:
        """One group: ``group_size`` completions of the prompt, scored per position."""
        out = await sampler.sample(
            types.ModelInput.from_ints(list(self.prompt)), self.group_size, self.params(seed)
        )
        group = []
        for seq in out.sequences:
            assert seq.logprobs is not None, "the sampler returned no logprobs"
            matches = [0.0] * len(self.target)
            for t, (got, want) in enumerate(zip(seq.tokens, self.target, strict=False)):
                matches[t] = float(got == want)
            group.append(Completion(tuple(seq.tokens), tuple(seq.logprobs), tuple(matches)))
        return group

    def to_datums(self, rollouts: Sequence[Rollout[int, Completion]]) -> list[types.Datum]:
        """Per-position advantages: a token's match minus the group's mean match there."""
        datums = []
        for rollout in rollouts:
            matches = np.array([c.matches for c in rollout.group], dtype=np.float32)
            advantages = matches - matches.mean(axis=0, keepdims=True)
            for completion, adv in zip(rollout.group, advantages, strict=True):
                if completion.tokens:
                    datums.append(self._datum(completion, adv[: len(completion.tokens)]))
        return datums

    def _datum(self, completion: Completion, advantages: np.ndarray) -> types.Datum:
        """An ``importance_sampling``/``ppo`` datum; prompt positions get advantage 0."""
        prompt = list(self.prompt)
        tokens = prompt + list(completion.tokens)
        n_prompt = len(prompt) - 1
        logprobs = np.zeros(len(tokens) - 1, dtype=np.float32)
        logprobs[n_prompt:] = completion.logprobs
        token_advantages = np.zeros(len(tokens) - 1, dtype=np.float32)
        token_advantages[n_prompt:] = advantages
        return types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": types.TensorData.from_numpy(
                    np.asarray(tokens[1:], dtype=np.int64)
                ),
                "logprobs": types.TensorData.from_numpy(logprobs),
                "advantages": types.TensorData.from_numpy(token_advantages),
            },
        )


def _show(tokens: Sequence[int]) -> str:
    """Printable ASCII as is, EOS as ``⏎``, every other byte as ``·``."""
    return "".join("⏎" if t == _EOS else chr(t) if 32 <= t < 127 else "·" for t in tokens)


class _Demo:
    def __init__(self, config: DemoConfig, emit: Callable[[str], None]) -> None:
        self.config = config
        self.emit = emit
        self.task = DemoTask.from_config(config)
        self.sampling = 0  # sample requests in flight
        self.peak = 0  # their peak since the current step's update was submitted
        self.beside_update = 0  # that peak when the update's snapshot was published
        self.publisher: TrainerSampler | None = None

    def seeds(self) -> Iterator[int]:
        """One sampling seed per group, in ticket order (step by step, group by group)."""
        cfg = self.config
        for step in range(cfg.steps):
            for group in range(cfg.groups_per_step):
                yield (cfg.seed * 1_000_003 + step * 1_009 + group) % (2**31)

    async def rollout(self, sampler: SamplingClient, seed: int) -> list[Completion]:
        self.sampling += 1
        self.peak = max(self.peak, self.sampling)
        try:
            return await self.task.rollout(sampler, seed)
        finally:
            self.sampling -= 1

    async def publish(self, version: int) -> SamplingClient:
        """The demo's publisher: the trainer's sampler, noting the sampling beside the update."""
        assert self.publisher is not None
        sampler = await self.publisher.publish(version)  # returns once the update is done
        self.beside_update = self.peak
        return sampler

    def to_datums(self, rollouts: Sequence[Rollout[int, Completion]]) -> list[types.Datum]:
        self.peak = self.sampling  # the step's update is submitted right after this
        return self.task.to_datums(rollouts)

    async def samples(self, sampler: SamplingClient, version: int) -> tuple[tuple[str, ...], float]:
        n = max(self.config.show_samples, 16)
        task = attrs.evolve(self.task, group_size=n)
        group = await task.rollout(sampler, self.config.seed + 7)
        shown = tuple(_show(c.tokens) for c in group[: self.config.show_samples])
        return shown, float(np.mean([c.reward for c in group]))

    async def train(
        self, session: ServiceSession, client: TrainingClient, job_id: str, started: float
    ) -> DemoResult:
        cfg = self.config
        publisher = TrainerSampler(session, client, prefix="demo", base_every=cfg.base_every)
        self.publisher = publisher
        rows: list[DemoRow] = []

        def on_step(step: RLStep[int, Completion]) -> None:
            snapshot = publisher.last_snapshot
            assert snapshot is not None
            completions = [c for r in step.rollouts for c in r.group]
            n_tokens = sum(len(c.tokens) for c in completions)
            # The step's update (forward_backward, optim_step, snapshot) and the most
            # sample requests in flight beside it.
            in_flight = 3 + self.beside_update
            row = DemoRow(
                step=step.step,
                loss=step.metrics.get("loss:sum", float("nan")) / max(1, n_tokens),
                mean_reward=float(np.mean([c.reward for c in completions])),
                in_flight=in_flight,
                snapshot=snapshot,
                elapsed_s=time.monotonic() - started,
            )
            rows.append(row)
            if step.step == 1:
                self.emit("")
                self.emit(f"{'step':>4}  {'loss':>8}  {'reward':>6}  {'in flight':>9}  snapshot")
            self.emit(
                f"{row.step:>4}  {row.loss:>8.4f}  {row.mean_reward:>6.3f}  {in_flight:>9}  "
                f"{snapshot.checkpoint_type:<5} {snapshot.snapshot_name}"
            )

        result = await run_rl(
            client,
            self,
            self.seeds(),
            self.rollout,
            self.to_datums,
            adam=types.AdamParams(learning_rate=cfg.learning_rate, beta1=0.9, beta2=0.99),
            groups_per_step=cfg.groups_per_step,
            loss_fn=cfg.loss_fn,
            loss_fn_config=(
                {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
                if cfg.loss_fn == "ppo"
                else None
            ),
            # The next step's groups are sampled while this step trains, one version behind;
            # the importance ratio corrects for that.
            concurrency=2 * cfg.groups_per_step,
            max_staleness=1,
            evaluate=self.samples,
            eval_every=cfg.steps,  # before training (version 0) and after the last step
            on_step=on_step,
        )
        (_, (before, reward_before)), (_, (after, reward_after)) = result.evaluations
        return DemoResult(
            job_id=job_id,
            rows=tuple(rows),
            samples_before=before,
            samples_after=after,
            reward_before=reward_before,
            reward_after=reward_after,
            wall_s=time.monotonic() - started,
        )


async def run_demo(
    config: DemoConfig | None = None,
    *,
    emit: Callable[[str], None] = print,
    control_plane_url: str | None = None,
) -> DemoResult:
    """Run the demo end to end against an embedded local trainer (or the one at
    ``control_plane_url``, e.g. ``firetitan-async serve``); ``emit`` gets each line.

    The trainer job is owned by the run: deleted however it ends (an error, cancellation, or
    SIGINT/SIGTERM under :func:`~firetitan_async.cleanup_on_signals`, as the CLI runs it).
    Works under asyncio and trio. Raises :class:`~firetitan_async.FiretitanError` subclasses
    when the trainer misbehaves.

    Example::

        result = trio.run(run_demo)            # or anyio.run(run_demo, backend="trio")
        print(f"{result.first_reward:.2f} -> {result.last_reward:.2f} in {result.wall_s:.1f}s")
    """
    cfg = config or DemoConfig()
    demo = _Demo(cfg, emit)
    started = time.monotonic()
    async with AsyncExitStack() as stack:
        if control_plane_url is None:
            lt = await stack.enter_async_context(
                LocalTrainer(warmup_s=cfg.warmup_s, latency_s=cfg.latency_s, seed=cfg.seed)
            )
            emit(f"local trainer at {lt.base_url} (control plane {lt.control_plane_url})")
            control_plane_url = lt.control_plane_url
        jobs = await stack.enter_async_context(TrainerJobs(base_url=control_plane_url))
        job_config = TrainerJobConfig(
            base_model=MODEL, lora_rank=cfg.lora_rank, learning_rate=cfg.learning_rate
        )
        endpoint = await stack.enter_async_context(  # deleted when this block exits
            jobs.create_and_wait(
                job_config,
                poll_interval_s=cfg.poll_interval_s,
                timeout_s=60.0,
                on_progress=_readiness_display(emit),
            )
        )
        emit(f"trainer job {endpoint.job_name}")
        session = await stack.enter_async_context(ServiceSession(endpoint.base_url))
        client = await session.create_training_client(MODEL, lora_rank=cfg.lora_rank)
        emit(f"training client {client.model_id} on session {session.session_id}")
        result = await demo.train(session, client, endpoint.job_id, started)
    _summary(result, cfg.prompt, emit)
    return result


def _readiness_display(emit: Callable[[str], None]) -> Callable[[ReadinessProgress], None]:
    last: list[str] = []

    def on_progress(progress: ReadinessProgress) -> None:
        if not last or last[-1] != progress.state:
            last.append(progress.state)
            emit(f"  job {progress.state:<9} after {progress.elapsed_s:5.2f}s")

    return on_progress


def _summary(result: DemoResult, prompt: str, emit: Callable[[str], None]) -> None:
    emit("")
    emit("samples before training:")
    for text in result.samples_before:
        emit(f"  {prompt}{text}")
    emit("samples after training:")
    for text in result.samples_after:
        emit(f"  {prompt}{text}")
    first3, last3 = result.window_means()
    emit("")
    emit(
        f"mean reward: first step {result.first_reward:.3f} -> last step {result.last_reward:.3f} "
        f"(first 3 steps {first3:.3f}, last 3 steps {last3:.3f}); "
        f"held-out samples {result.reward_before:.3f} -> {result.reward_after:.3f}"
    )
    emit(f"wall time {result.wall_s:.1f}s for {len(result.rows)} steps (job {result.job_id})")
