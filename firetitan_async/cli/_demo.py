"""The RL demo behind ``firetitan-async demo``: a tiny byte model learns to say a word.

Everything runs against an embedded :class:`~firetitan_async.local.LocalTrainer` and, by
default, takes the shape of an RL run on Fireworks, started the way the Fireworks SDK's recipes
start one (``from_firetitan_config``): :meth:`ServiceSession.managed
<firetitan_async.ServiceSession.managed>` provisions the trainer job and the inference
deployment concurrently from one :class:`~firetitan_async.ManagedConfig`, waits for both and
owns them (deleted however the demo ends); then a pipelined RL loop runs:

* sample groups of completions of ``"Say: "`` from the deployment (its completions API, token
  ids in, token ids and logprobs out; each reply names the snapshot that served it);
* reward = fraction of the first ``len(target)`` bytes that match the target word, position by
  position. Credit is given per position: a token's advantage is its own match (1 or 0) minus
  the group's mean match at that position, so a lucky ``"a"`` is reinforced without also
  reinforcing the random bytes after it (with one advantage per sequence the policy tends to
  lock onto those and stop exploring);
* ``importance_sampling`` (or ``ppo``) ``forward_backward`` with the sampler's logprobs, then
  ``optim_step``, then the weights are published: a sampler snapshot (``base`` first, then
  ``delta``s, a new ``base`` after every ``base_every`` deltas) hot-loaded into the deployment;
* while that update runs on the trainer, the next batch is already being sampled from the
  previous version (at most one step of staleness, corrected by the importance ratio).

The loop is :func:`firetitan_async.loops.run_rl` with a
:class:`~firetitan_async.loops.DeploymentPolicy`. With ``dialect="tinker"`` (Tinker has no
trainer jobs or deployments) it opens a tinker-dialect session on the trainer and samples
from the trainer's own sampler snapshots (:class:`~firetitan_async.loops.TrainerPolicy`).
:class:`DemoTask` holds the task's rollout and advantage functions (picklable: the Ray test
runs them in actor workers).

Example::

    result = anyio.run(run_demo, DemoConfig(steps=20))
    print(result.first_reward, "->", result.last_reward)
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Literal

import attrs
import httpx
import numpy as np
from tinker import types

from .._clients._sampling import SamplingClient
from .._clients._snapshots import SamplerSnapshot
from .._clients._training import TrainingClient
from .._session._session import ServiceSession
from ..errors import InvalidInput
from ..local import LocalTrainer
from ..local._datums import encode_text
from ..local._shapes import DEPLOYMENT_SHAPE
from ..loops import (
    DeploymentPolicy,
    DeploymentPolicySampler,
    RLStep,
    Rollout,
    TrainerPolicy,
    run_rl,
)
from ..platform import ManagedConfig, ManagedSetup, WeightPublisher
from ..wire import dialect_named, resolve_dialect, validate_dialect_choice

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
DEPLOYMENT = "demo-rollouts"
_EOS = 256

#: What a rollout samples from: the deployment (fireworks) or the trainer (tinker).
DemoSampler = SamplingClient | DeploymentPolicySampler


@attrs.frozen
class DemoConfig:
    """Knobs of the demo; ``firetitan-async demo`` exposes steps, target, loss, seed, latency,
    warm-up and dialect. The defaults reach a mean reward near 1.0 in about 15 steps for most
    seeds.

    Example::

        DemoConfig(steps=12, latency_s=0.05, loss_fn="ppo", dialect="tinker")
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
    #: A full (``base``) snapshot, then ``delta``s: a new base after this many deltas
    #: (``WeightPublisher``), or every this many versions from the trainer (tinker dialect).
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
    #: ``"fireworks"``: a trainer job and a deployment, rollouts from the deployment;
    #: ``"tinker"``: a tinker-dialect session, rollouts from the trainer's sampler snapshots;
    #: ``"auto"``: the dialect a session would pick for the local trainer (``fireworks``).
    dialect: Literal["auto", "fireworks", "tinker"] = "fireworks"

    def __attrs_post_init__(self) -> None:
        if self.steps < 1:
            raise InvalidInput("steps", f"must be >= 1, got {self.steps}")
        if not self.target or len(self.target.encode()) > 32:
            raise InvalidInput("target", "must be 1 to 32 bytes")
        if self.group_size < 2:
            raise InvalidInput("group_size", "must be >= 2 (advantages are relative to the group)")
        if self.groups_per_step < 1 or self.base_every < 1:
            raise InvalidInput("groups_per_step", "groups_per_step and base_every must be >= 1")
        validate_dialect_choice(self.dialect)


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
    #: The snapshot this step published (policy version ``step``).
    snapshot: SamplerSnapshot
    elapsed_s: float
    #: The policy version the step published (its weights after the update) ...
    published: int = 0
    #: ... and the versions that served its rollouts (what the deployment, or the trainer's
    #: sampler, said produced the tokens): at most one behind ``published - 1``.
    served: tuple[int, ...] = ()


@attrs.frozen
class DemoResult:
    """What the demo did: the table rows, samples before/after, and timing.

    Example::

        assert result.last_reward > result.first_reward
    """

    #: The trainer job (None in the tinker dialect: no control plane).
    job_id: str | None
    rows: tuple[DemoRow, ...]
    samples_before: tuple[str, ...]
    samples_after: tuple[str, ...]
    #: Mean reward of those samples (the same prompt and sampling settings).
    reward_before: float
    reward_after: float
    wall_s: float
    dialect: Literal["fireworks", "tinker"] = "fireworks"
    #: The deployment's name (None in the tinker dialect).
    deployment: str | None = None
    #: Hot-loads and completion requests the local deployment counted.
    hotloads: int = 0
    completions: int = 0

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
    #: The policy version that produced it, when the sampler says (a deployment does).
    served: int | None = None

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

    async def rollout(self, sampler: DemoSampler, seed: int) -> list[Completion]:
        """One group: ``group_size`` completions of the prompt, scored per position, from
        the trainer's sampler or a deployment (one request either way)."""
        if isinstance(sampler, DeploymentPolicySampler):
            completions = await sampler.sample(
                list(self.prompt), n=self.group_size, max_tokens=len(self.target),
                temperature=self.temperature, logprobs=True, seed=seed,
            )
            return [
                self._scored(c.tokens, c.logprobs, sampler.version_of(c)) for c in completions
            ]
        out = await sampler.sample(
            types.ModelInput.from_ints(list(self.prompt)), self.group_size, self.params(seed)
        )
        return [self._scored(seq.tokens, seq.logprobs, None) for seq in out.sequences]

    def _scored(
        self, tokens: Sequence[int], logprobs: Sequence[float] | None, served: int | None
    ) -> Completion:
        assert logprobs is not None, "the sampler returned no logprobs"
        matches = [0.0] * len(self.target)
        for t, (got, want) in enumerate(zip(tokens, self.target, strict=False)):
            matches[t] = float(got == want)
        return Completion(tuple(tokens), tuple(logprobs), tuple(matches), served)

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
        self.publisher: TrainerPolicy | DeploymentPolicy | None = None

    def seeds(self) -> Iterator[int]:
        """One sampling seed per group, in ticket order (step by step, group by group)."""
        cfg = self.config
        for step in range(cfg.steps):
            for group in range(cfg.groups_per_step):
                yield (cfg.seed * 1_000_003 + step * 1_009 + group) % (2**31)

    async def rollout(self, sampler: DemoSampler, seed: int) -> list[Completion]:
        self.sampling += 1
        self.peak = max(self.peak, self.sampling)
        try:
            return await self.task.rollout(sampler, seed)
        finally:
            self.sampling -= 1

    async def publish(self, version: int) -> DemoSampler:
        """The demo's publisher: the trainer's sampler or the deployment (once it serves the
        version), noting the sampling beside the update."""
        assert self.publisher is not None
        sampler: DemoSampler = await self.publisher.publish(version)  # the update is done
        self.beside_update = self.peak
        return sampler

    def snapshot(self, version: int) -> SamplerSnapshot:
        """The snapshot published as ``version`` (the latest one, for the trainer's sampler)."""
        if isinstance(self.publisher, DeploymentPolicy):
            v = self.publisher.published[version]
            return SamplerSnapshot(v.snapshot, v.path, v.checkpoint_type)
        assert self.publisher is not None and self.publisher.last_snapshot is not None
        return self.publisher.last_snapshot

    def to_datums(self, rollouts: Sequence[Rollout[int, Completion]]) -> list[types.Datum]:
        self.peak = self.sampling  # the step's update is submitted right after this
        return self.task.to_datums(rollouts)

    async def samples(self, sampler: DemoSampler, version: int) -> tuple[tuple[str, ...], float]:
        n = max(self.config.show_samples, 16)
        task = attrs.evolve(self.task, group_size=n)
        group = await task.rollout(sampler, self.config.seed + 7)
        shown = tuple(_show(c.tokens) for c in group[: self.config.show_samples])
        return shown, float(np.mean([c.reward for c in group]))

    async def train(
        self,
        session: ServiceSession,
        client: TrainingClient,
        job_id: str | None,
        started: float,
        setup: ManagedSetup[ServiceSession] | None = None,
    ) -> DemoResult:
        """Train; through the managed setup's deployment, or, with None, sampling from the
        trainer."""
        if setup is None:
            self.publisher = TrainerPolicy(
                session, client, prefix="demo", base_every=self.config.base_every
            )
            result = await self._train(client, job_id, started)
            return attrs.evolve(result, dialect="tinker")
        async with self._deployment(client, setup) as policy:
            self.publisher = policy
            result = await self._train(client, job_id, started)
        stats = await _inference_stats(setup.deployments.base_url)
        return attrs.evolve(
            result,
            deployment=policy.sampler.model,
            hotloads=int(stats["hotloads"]),
            completions=int(stats["completions"]),
            wall_s=time.monotonic() - started,
        )

    @asynccontextmanager
    async def _deployment(
        self, client: TrainingClient, setup: ManagedSetup[ServiceSession]
    ) -> AsyncIterator[DeploymentPolicy]:
        """The managed deployment's weight publisher (a base, then deltas) and a sampler."""
        cfg = self.config
        assert setup.deployment_id is not None
        if cfg.latency_s:  # the local deployment's own reply latency, like the trainer's
            await _set_inference_latency(setup.deployments.base_url, cfg.latency_s)
        async with WeightPublisher(
            client, setup.deployments, setup.deployment_id, base_model=MODEL,
            base_every=cfg.base_every, poll_interval_s=cfg.poll_interval_s,
        ) as weights:
            completions = await setup.create_deployment_sampler(
                concurrency=2 * cfg.groups_per_step
            )
            yield DeploymentPolicy(weights, completions, prefix="demo")

    async def _train(
        self, client: TrainingClient, job_id: str | None, started: float
    ) -> DemoResult:
        cfg = self.config
        rows: list[DemoRow] = []

        def on_step(step: RLStep[int, Completion]) -> None:
            snapshot = self.snapshot(step.step)
            completions = [c for r in step.rollouts for c in r.group]
            n_tokens = sum(len(c.tokens) for c in completions)
            # The step's update (forward_backward, optim_step, snapshot) and the most
            # sample requests in flight beside it.
            in_flight = 3 + self.beside_update
            # What served the rollouts: the deployment says per completion; the trainer's
            # sampler served the version each rollout was started under.
            said = {c.served for c in completions}
            served = (
                tuple(sorted(v for v in said if v is not None))
                if None not in said
                else tuple(sorted({r.version for r in step.rollouts}))
            )
            row = DemoRow(
                step=step.step,
                loss=step.metrics.get("loss:sum", float("nan")) / max(1, n_tokens),
                mean_reward=float(np.mean([c.reward for c in completions])),
                in_flight=in_flight,
                snapshot=snapshot,
                elapsed_s=time.monotonic() - started,
                published=step.version + 1,
                served=served,
            )
            rows.append(row)
            if step.step == 1:
                self.emit("")
                self.emit(
                    f"{'step':>4}  {'loss':>8}  {'reward':>6}  {'in flight':>9}  "
                    f"{'published / served':>18}  snapshot"
                )
            shown = str(served[0]) if served[0] == served[-1] else f"{served[0]}-{served[-1]}"
            self.emit(
                f"{row.step:>4}  {row.loss:>8.4f}  {row.mean_reward:>6.3f}  {in_flight:>9}  "
                f"{row.published:>9} / {shown:<6}  "
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


async def _inference_stats(local_url: str) -> dict[str, int]:
    """The local deployment's counters (``GET /_local/inference/stats``, a local test hook)."""
    async with httpx.AsyncClient(base_url=local_url) as http:
        response = await http.get("/_local/inference/stats")
        response.raise_for_status()
        stats: dict[str, int] = response.json()
        return stats


async def _set_inference_latency(local_url: str, latency_s: float) -> None:
    async with httpx.AsyncClient(base_url=local_url) as http:
        response = await http.post("/_local/inference/config", json={"latency_s": latency_s})
        response.raise_for_status()


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
        dialect = dialect_named(resolve_dialect(cfg.dialect, control_plane_url, None))
        if not dialect.has_trainer_jobs:
            result = await _run_tinker(demo, control_plane_url, started)
        else:
            result = await _run_managed(demo, control_plane_url, started)
    _summary(result, cfg.prompt, emit)
    return result


async def _run_managed(demo: _Demo, control_plane_url: str, started: float) -> DemoResult:
    """The fireworks dialect, through the managed setup (the Fireworks SDK's
    ``from_firetitan_config``): one call provisions the trainer job and the deployment
    concurrently and owns both (deleted however the demo ends)."""
    cfg = demo.config
    config = ManagedConfig(
        base_model=MODEL, lora_rank=cfg.lora_rank, learning_rate=cfg.learning_rate,
        deployment_id=DEPLOYMENT, deployment_shape=DEPLOYMENT_SHAPE,
        poll_interval_s=cfg.poll_interval_s, trainer_timeout_s=60.0, deployment_timeout_s=60.0,
    )
    demo.emit(f"managed setup: trainer job and deployment {DEPLOYMENT} for {MODEL}")
    async with ServiceSession.managed(config, base_url=control_plane_url) as setup:
        assert setup.deployment is not None
        elapsed = time.monotonic() - started
        job_name = await setup.jobs.job_name(setup.trainer_job_id)
        verb = "created" if f"deployment {DEPLOYMENT}" in setup.created else "re-attached"
        demo.emit(f"  trainer job {job_name} RUNNING and {verb} deployment "
                  f"{setup.deployment.name} {setup.deployment.state} after {elapsed:.2f}s")
        client = await setup.training_client()
        demo.emit(f"training client {client.model_id} on session {setup.session.session_id}")
        return await demo.train(setup.session, client, setup.trainer_job_id, started, setup)


async def _run_tinker(demo: _Demo, base_url: str, started: float) -> DemoResult:
    """The tinker dialect: no trainer job, no deployment; rollouts from the trainer."""
    cfg = demo.config
    async with ServiceSession(base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, lora_rank=cfg.lora_rank)
        demo.emit(f"training client {client.model_id} on tinker session {session.session_id}")
        return await demo.train(session, client, None, started)


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
    where = f"job {result.job_id}" if result.job_id else f"{result.dialect} dialect, no job"
    emit(f"wall time {result.wall_s:.1f}s for {len(result.rows)} steps ({where})")
    if result.deployment:
        emit(
            f"rollouts from deployment {result.deployment}: {result.completions} completion "
            f"requests, {result.hotloads} hot-loads (a base, then deltas)"
        )
