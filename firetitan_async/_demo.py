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

Example::

    result = anyio.run(run_demo, DemoConfig(steps=20))
    print(result.first_reward, "->", result.last_reward)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import anyio
import attrs
import numpy as np
from tinker import types

from ._pending import Pending
from ._sampling import SamplingClient
from ._session import ServiceSession
from ._snapshots import SamplerSnapshot
from ._training import TrainingClient
from .local import LocalTrainer
from .local._datums import encode_text
from .platform import ReadinessPoller, ReadinessProgress, TrainerJobConfig, TrainerJobs

__all__ = ["DemoConfig", "DemoResult", "DemoRow", "reward_of", "run_demo"]

MODEL = "local/tiny-byte-lm"
_EOS = 256
# How long the demo may take to delete its trainer job when it ends.
_DELETE_GRACE_S = 10.0


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
    #: A local trainer already running (``firetitan-async serve``) instead of an embedded one.
    server_url: str | None = None

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
    #: Operations in flight right after the step's update was submitted (sampling included).
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


def _token_datum(
    prompt: list[int], completion: list[int], sampler_logprobs: list[float], advantages: np.ndarray
) -> types.Datum:
    """An ``importance_sampling``/``ppo`` datum with one advantage per completion token (prompt
    positions get advantage 0, so they are not trained)."""
    tokens = prompt + completion
    n_prompt = len(prompt) - 1
    logprobs = np.zeros(len(tokens) - 1, dtype=np.float32)
    logprobs[n_prompt:] = sampler_logprobs
    token_advantages = np.zeros(len(tokens) - 1, dtype=np.float32)
    token_advantages[n_prompt:] = advantages
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "logprobs": types.TensorData.from_numpy(logprobs),
            "advantages": types.TensorData.from_numpy(token_advantages),
        },
    )


def _show(tokens: Sequence[int]) -> str:
    """Printable ASCII as is, EOS as ``⏎``, every other byte as ``·``."""
    return "".join("⏎" if t == _EOS else chr(t) if 32 <= t < 127 else "·" for t in tokens)


class _InFlight:
    """Counts operations that have been started and not yet finished."""

    def __init__(self) -> None:
        self._ops: list[Pending[Any]] = []

    def add(self, pending: Pending[Any]) -> None:
        self._ops.append(pending)

    def count(self) -> int:
        self._ops = [op for op in self._ops if not op.done()]
        return len(self._ops)


class _Demo:
    def __init__(self, config: DemoConfig, emit: Callable[[str], None]) -> None:
        self.config = config
        self.emit = emit
        self.target = config.target.encode()
        self.prompt = encode_text(config.prompt)
        self.in_flight = _InFlight()

    def params(self, seed: int) -> types.SamplingParams:
        return types.SamplingParams(
            max_tokens=len(self.target), temperature=self.config.temperature, seed=seed
        )

    def start_batch(
        self, sampler: SamplingClient, step: int
    ) -> list[Pending[types.SampleResponse]]:
        cfg = self.config
        batch = []
        for group in range(cfg.groups_per_step):
            seed = (cfg.seed * 1_000_003 + step * 1_009 + group) % (2**31)
            pending = sampler.sample(
                types.ModelInput.from_ints(self.prompt), cfg.group_size, self.params(seed)
            )
            self.in_flight.add(pending)
            batch.append(pending)
        return batch

    def score(
        self, responses: Sequence[types.SampleResponse]
    ) -> tuple[list[types.Datum], float, int]:
        """The batch's datums, its mean reward and the number of trained tokens."""
        datums: list[types.Datum] = []
        all_rewards: list[float] = []
        n_tokens = 0
        width = len(self.target)
        for response in responses:
            # matches[i, t]: sample i got the target byte right at position t.
            matches = np.zeros((len(response.sequences), width), dtype=np.float32)
            for i, seq in enumerate(response.sequences):
                for t, (got, want) in enumerate(zip(seq.tokens, self.target, strict=False)):
                    matches[i, t] = float(got == want)
            all_rewards.extend(matches.mean(axis=1).tolist())
            advantages = matches - matches.mean(axis=0, keepdims=True)
            for i, seq in enumerate(response.sequences):
                if not seq.tokens:
                    continue
                assert seq.logprobs is not None, "the sampler returned no logprobs"
                n = len(seq.tokens)
                datums.append(
                    _token_datum(self.prompt, seq.tokens, seq.logprobs, advantages[i, :n])
                )
                n_tokens += n
        return datums, float(np.mean(all_rewards)), n_tokens

    async def samples(self, sampler: SamplingClient, seed: int) -> tuple[tuple[str, ...], float]:
        n = max(self.config.show_samples, 16)
        out = await sampler.sample(types.ModelInput.from_ints(self.prompt), n, self.params(seed))
        rewards = [reward_of(seq.tokens, self.target) for seq in out.sequences]
        shown = tuple(_show(seq.tokens) for seq in out.sequences[: self.config.show_samples])
        return shown, float(np.mean(rewards))

    async def train(
        self, session: ServiceSession, client: TrainingClient, job_id: str, started: float
    ) -> DemoResult:
        cfg = self.config
        adam = types.AdamParams(learning_rate=cfg.learning_rate, beta1=0.9, beta2=0.99)
        loss_config = (
            {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
            if cfg.loss_fn == "ppo"
            else None
        )
        base = await client.save_weights_for_sampler_ext("demo-0000", checkpoint_type="base")
        self.emit(f"saved base snapshot {base.snapshot_name} ({base.path})")
        sampler = await session.create_sampling_client(model_path=base.path)
        before, reward_before = await self.samples(sampler, seed=cfg.seed + 7)

        self.emit("")
        self.emit(f"{'step':>4}  {'loss':>8}  {'reward':>6}  {'in flight':>9}  snapshot")
        rows: list[DemoRow] = []
        next_batch = self.start_batch(sampler, 0)
        for step in range(1, cfg.steps + 1):
            responses = [await pending for pending in next_batch]
            datums, mean_reward, n_tokens = self.score(responses)
            fb = client.forward_backward(datums, cfg.loss_fn, loss_config)
            opt = client.optim_step(adam)
            kind: Literal["base", "delta"] = "base" if step % cfg.base_every == 0 else "delta"
            snap = client.save_weights_for_sampler_ext(f"demo-{step:04d}", checkpoint_type=kind)
            for pending in (fb, opt, snap):
                self.in_flight.add(pending)
            # While the trainer runs this update, sample the next batch from the previous
            # snapshot: the importance ratio corrects for that one step of staleness.
            next_batch = self.start_batch(sampler, step) if step < cfg.steps else []
            in_flight = self.in_flight.count()
            out = await fb
            await opt
            snapshot = await snap
            sampler = await session.create_sampling_client(model_path=snapshot.path)
            row = DemoRow(
                step=step,
                loss=out.metrics.get("loss:sum", float("nan")) / max(1, n_tokens),
                mean_reward=mean_reward,
                in_flight=in_flight,
                snapshot=snapshot,
                elapsed_s=time.monotonic() - started,
            )
            rows.append(row)
            self.emit(
                f"{step:>4}  {row.loss:>8.4f}  {row.mean_reward:>6.3f}  {in_flight:>9}  "
                f"{snapshot.checkpoint_type:<5} {snapshot.snapshot_name}"
            )
        after, reward_after = await self.samples(sampler, seed=cfg.seed + 7)
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
    config: DemoConfig | None = None, *, emit: Callable[[str], None] = print
) -> DemoResult:
    """Run the demo end to end against an embedded local trainer; ``emit`` gets each line.

    Works under asyncio and trio. Raises :class:`~firetitan_async.FiretitanError` subclasses
    when the trainer misbehaves.

    Example::

        result = trio.run(run_demo)            # or anyio.run(run_demo, backend="trio")
        print(f"{result.first_reward:.2f} -> {result.last_reward:.2f} in {result.wall_s:.1f}s")
    """
    cfg = config or DemoConfig()
    demo = _Demo(cfg, emit)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        if cfg.server_url is None:
            lt = await stack.enter_async_context(
                LocalTrainer(warmup_s=cfg.warmup_s, latency_s=cfg.latency_s, seed=cfg.seed)
            )
            url, account = lt.control_plane_url, lt.account_id
            emit(f"local trainer at {lt.base_url} (control plane {lt.control_plane_url})")
        else:
            url, account = cfg.server_url, "local"
            emit(f"local trainer at {url}")
        async with TrainerJobs(account_id=account, base_url=url) as jobs:
            created = await jobs.create(
                TrainerJobConfig(
                    base_model=MODEL,
                    lora_rank=cfg.lora_rank,
                    learning_rate=cfg.learning_rate,
                    display_name="firetitan-async demo",
                )
            )
            emit(f"created trainer job {created.job_name}")
            try:
                async with (
                    ServiceSession.from_job(
                        jobs, created.job_id, poll_interval_s=cfg.poll_interval_s
                    ) as session,
                    anyio.create_task_group() as tg,
                ):
                    tg.start_soon(_show_readiness, jobs, created.job_id, cfg, emit)
                    # Gated by the session's readiness poller: returns once the job is RUNNING.
                    client = await session.create_training_client(MODEL, lora_rank=cfg.lora_rank)
                    emit(f"training client {client.model_id} on session {session.session_id}")
                    result = await demo.train(session, client, created.job_id, started)
            finally:  # however the demo ends (Ctrl-C, SIGTERM, an error), its job stops billing
                with anyio.move_on_after(_DELETE_GRACE_S, shield=True):
                    await jobs.delete(created.job_id)
    _summary(result, cfg.prompt, emit)
    return result


async def _show_readiness(
    jobs: TrainerJobs, job_id: str, cfg: DemoConfig, emit: Callable[[str], None]
) -> None:
    last: list[str] = []

    def on_progress(progress: ReadinessProgress) -> None:
        if not last or last[-1] != progress.state:
            last.append(progress.state)
            emit(f"  job {progress.state:<9} after {progress.elapsed_s:5.2f}s")

    poller = ReadinessPoller(
        jobs, job_id, poll_interval_s=cfg.poll_interval_s, timeout_s=60.0, on_progress=on_progress
    )
    await poller.run()


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
