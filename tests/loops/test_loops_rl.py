"""The RL pipeline (firetitan_async.loops.run_rl) against the real local trainer."""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import pytest
import sniffio
from tinker import types

from firetitan_async import FiretitanError, RolloutsFailing, SamplingClient, ServiceSession
from firetitan_async.errors import InvalidInput
from firetitan_async.local import LocalTrainer
from firetitan_async.loops import (
    CheckpointManager,
    RetryGroup,
    RLResult,
    RLStep,
    Rollout,
    TrainerPolicy,
    TrainerSamplerHandle,
    run_rl,
)

pytestmark = pytest.mark.anyio

MODEL = "local/tiny-byte-lm"
PROMPT = types.ModelInput.from_ints(list(b"Say: "))
ADAM = types.AdamParams(learning_rate=1e-2)


def _running_task_names() -> list[str]:
    """Names of every task alive right now, on either backend."""
    if sniffio.current_async_library() == "asyncio":
        import asyncio

        return [task.get_name() for task in asyncio.all_tasks()]
    import trio

    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return names


async def _sample(sampler: SamplingClient, seed: int) -> list[list[int]]:
    out = await sampler.sample(PROMPT, 2, types.SamplingParams(max_tokens=3, seed=seed))
    return [list(seq.tokens) for seq in out.sequences]


def _datums(rollouts: Sequence[Rollout[int, list[int]]]) -> list[types.Datum]:
    """Plain next-token datums on prompt + completion (the loss does not matter here)."""
    import numpy as np

    datums = []
    for rollout in rollouts:
        for tokens in rollout.group:
            seq = [*b"Say: ", *tokens]
            datums.append(
                types.Datum(
                    model_input=types.ModelInput.from_ints(seq[:-1]),
                    loss_fn_inputs={
                        "target_tokens": types.TensorData.from_numpy(
                            np.asarray(seq[1:], dtype=np.int64)
                        ),
                        "weights": types.TensorData.from_numpy(
                            np.ones(len(seq) - 1, dtype=np.float32)
                        ),
                    },
                )
            )
    return datums


async def test_under_fail_a_rollout_that_raises_ends_the_pipeline_with_that_error(
    anyio_backend: str,
) -> None:
    calls = 0
    active = 0
    raised: list[tuple[BaseException, float]] = []

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        nonlocal calls, active
        calls += 1
        active += 1
        try:
            if calls == 37:
                error = RuntimeError("rollout 37 failed")
                raised.append((error, time.monotonic()))
                raise error
            await anyio.sleep(0.01 * (seed % 5))  # finishing out of order
            return await _sample(sampler, seed)
        finally:
            active -= 1

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        with anyio.fail_after(10), pytest.raises(RuntimeError) as caught:
            await run_rl(
                client,
                TrainerPolicy(session, client),
                range(10_000),
                rollout,
                _datums,
                adam=ADAM,
                loss_fn="cross_entropy",
                groups_per_step=4,
                concurrency=8,
                max_staleness=2,
                on_rollout_error="fail",
            )
        ended = time.monotonic()
        assert caught.value is raised[0][0]  # the original error, not a group
        assert ended - raised[0][1] < 1.0
        assert active == 0
        assert not [name for name in _running_task_names() if "loops._rl" in name]
        assert calls < 37 + 8  # nothing was started after the failure was seen


async def test_staleness_is_paced_not_discarded(anyio_backend: str) -> None:
    calls = 0

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        nonlocal calls
        calls += 1
        return await _sample(sampler, seed)  # fast: the trainer is the bottleneck

    async def slow_trainer(step: RLStep[int, list[int]]) -> None:
        await anyio.sleep(0.05)

    async def evaluate(sampler: SamplingClient, version: int) -> int:
        return len(await _sample(sampler, 1_000 + version))

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        result: RLResult[Any, Any, Any] = await run_rl(
            client,
            TrainerPolicy(session, client),
            range(30),  # 7 full steps of 4 and a last one of 2
            rollout,
            _datums,
            adam=ADAM,
            loss_fn="cross_entropy",
            groups_per_step=4,
            concurrency=16,  # four steps' worth: only pacing keeps them near the policy
            max_staleness=1,
            evaluate=evaluate,
            eval_every=3,
            on_step=slow_trainer,
        )
    assert [len(s.rollouts) for s in result.steps] == [4] * 7 + [2]
    trained = [r.index for s in result.steps for r in s.rollouts]
    assert sorted(trained) == list(range(30)) and calls == 30  # none discarded, none twice
    staleness = [x for s in result.steps for x in s.staleness]
    assert max(staleness) <= 1
    assert staleness.count(1) >= 10, staleness  # producers did run ahead, by one version
    assert [s.version for s in result.steps] == list(range(8))
    assert result.final_version == 8
    assert [v for v, _ in result.evaluations] == [0, 3, 6]


async def test_bad_limits_are_refused_before_anything_runs(anyio_backend: str) -> None:
    class NeverPublish:
        async def publish(self, version: int) -> None:
            raise AssertionError("published")

    async def rollout(sampler: None, prompt: int) -> list[int]:
        raise AssertionError("sampled")

    for field, kwargs in (
        ("groups_per_step", {"groups_per_step": 0}),
        ("concurrency", {"groups_per_step": 1, "concurrency": 0}),
        ("max_staleness", {"groups_per_step": 1, "max_staleness": -1}),
    ):
        with pytest.raises(InvalidInput, match=field):
            await run_rl(
                None,  # type: ignore[arg-type]
                NeverPublish(),
                [1],
                rollout,
                lambda rollouts: [],
                adam=ADAM,
                **kwargs,  # type: ignore[arg-type]
            )


@pytest.mark.parametrize("where", ["to_datums", "evaluate", "publish"])
async def test_a_failure_on_the_trainer_side_is_raised_as_is(
    anyio_backend: str, where: str
) -> None:
    error = LookupError(f"{where} failed")

    def to_datums(rollouts: Sequence[Rollout[int, list[int]]]) -> list[types.Datum]:
        if where == "to_datums" and rollouts[0].index >= 8:
            raise error
        return _datums(rollouts)

    async def evaluate(sampler: SamplingClient, version: int) -> None:
        if where == "evaluate" and version == 2:
            raise error

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        inner = TrainerPolicy(session, client)

        class Publisher:
            async def publish(self, version: int) -> SamplingClient:
                if where == "publish" and version == 3:
                    raise error
                return await inner.publish(version)

        with anyio.fail_after(10), pytest.raises(LookupError) as caught:
            await run_rl(
                client,
                Publisher(),
                range(10_000),
                lambda sampler, seed: _sample(sampler, seed),
                to_datums,
                adam=ADAM,
                loss_fn="cross_entropy",
                groups_per_step=4,
                concurrency=8,
                evaluate=evaluate,
            )
        assert caught.value is error
        assert not [name for name in _running_task_names() if "loops._rl" in name]


@pytest.mark.parametrize("shape", ["plain", "async"])
async def test_training_goes_on_while_a_plain_publish_completes(
    anyio_backend: str, shape: str
) -> None:
    events: list[tuple[str, int]] = []

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        return await _sample(sampler, seed)

    def to_datums(rollouts: Sequence[Rollout[int, list[int]]]) -> list[types.Datum]:
        events.append(("update", rollouts[0].index // 4 + 1))
        return _datums(rollouts)

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        inner = TrainerPolicy(session, client)

        async def slow(version: int, saving: Awaitable[SamplingClient]) -> SamplingClient:
            sampler = await saving
            await anyio.sleep(0.15)  # e.g. a hot-load onto a deployment
            events.append(("published", version))
            return sampler

        class Plain:  # the save is submitted by the call itself
            def publish(self, version: int) -> Awaitable[SamplingClient]:
                return slow(version, inner.publish(version))

        class Async:  # runs only when awaited
            async def publish(self, version: int) -> SamplingClient:
                return await slow(version, inner.publish(version))

        result: RLResult[Any, Any, Any] = await run_rl(
            client,
            Plain() if shape == "plain" else Async(),
            range(16),
            rollout,
            to_datums,
            adam=ADAM,
            loss_fn="cross_entropy",
            groups_per_step=4,
            concurrency=16,
            max_staleness=2,
        )
    assert [s.version for s in result.steps] == [0, 1, 2, 3] and result.final_version == 4
    assert max(x for s in result.steps for x in s.staleness) <= 2
    assert [v for kind, v in events if kind == "published"] == [0, 1, 2, 3, 4]
    if shape == "plain":  # step 2's update went out before version 1 was served
        assert events.index(("update", 2)) < events.index(("published", 1)), events
    else:
        assert events.index(("published", 1)) < events.index(("update", 2)), events


async def test_publish_every_two_steps_from_an_async_prompt_source(anyio_backend: str) -> None:
    async def prompts() -> AsyncIterator[int]:
        for seed in range(22):  # 5 full steps of 4 and a last one of 2
            await anyio.lowlevel.checkpoint()
            yield seed

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        return await _sample(sampler, seed)

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        result: RLResult[Any, Any, Any] = await run_rl(
            client,
            TrainerPolicy(session, client),
            prompts(),
            rollout,
            _datums,
            adam=ADAM,
            loss_fn="cross_entropy",
            groups_per_step=4,
            concurrency=12,
            max_staleness=0,  # on-policy: every rollout sampled from the version it trains
            publish_every=2,
        )
    assert [len(s.rollouts) for s in result.steps] == [4, 4, 4, 4, 4, 2]
    assert [s.version for s in result.steps] == [0, 0, 1, 1, 2, 2]
    assert [s.published for s in result.steps] == [False, True] * 3
    assert {x for s in result.steps for x in s.staleness} == {0}
    assert result.final_version == 3


async def test_a_sampler_handle_rebuilds_a_client_elsewhere(anyio_backend: str) -> None:
    key = "fw-secret-key-1234"
    async with LocalTrainer(seed=0, api_key=key) as lt:
        async with ServiceSession(lt.base_url, api_key=key, dialect="tinker") as session:
            client = await session.create_training_client(MODEL)
            handle = await TrainerPolicy(session, client).handles().publish(0)
            text = handle.encode()
            assert TrainerSamplerHandle.decode(text) == handle
            assert key not in text and key.encode() not in pickle.dumps(handle)
            expected = await _sample(await handle.sampler(session), 5)
        # "Another process": a session of its own, with the key from its environment.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FIREWORKS_API_KEY", key)
            rebuilt = TrainerSamplerHandle.decode(text)
            async with rebuilt.session() as other:
                assert await _sample(await rebuilt.sampler(other), 5) == expected
    with pytest.raises(InvalidInput, match="handle"):
        TrainerSamplerHandle.decode("not a handle")


async def test_a_failed_group_is_retried_with_a_fresh_call_then_skipped_and_nothing_else_stops(
    anyio_backend: str,
) -> None:
    calls: dict[int, int] = {}
    finished: list[int] = []

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        calls[seed] = calls.get(seed, 0) + 1
        if seed == 3 and calls[seed] <= 2:
            raise ConnectionError("env 3 reset")  # fails twice, then succeeds
        if seed == 6:
            raise ConnectionError("env 6 is broken")  # always: skipped
        if seed == 7:
            await anyio.sleep(0.2)  # in flight while 6 fails: must not be cancelled
        out = await _sample(sampler, seed)
        finished.append(seed)
        return out

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        policies: list[tuple[RetryGroup | Literal["skip"], int]] = [
            (RetryGroup(times=2), 3),
            ("skip", 1),
        ]
        for policy, retries in policies:
            calls.clear()
            finished.clear()
            with anyio.fail_after(10):
                result: RLResult[Any, Any, Any] = await run_rl(
                    client,
                    TrainerPolicy(session, client),
                    range(12),
                    rollout,
                    _datums,
                    adam=ADAM,
                    loss_fn="cross_entropy",
                    groups_per_step=4,
                    concurrency=8,
                    on_rollout_error=policy,
                )
            assert calls[6] == retries  # the rollout function was called again each time
            trained = [r.index for s in result.steps for r in s.rollouts]
            skipped = [i for s in result.steps for i in s.skipped]
            if retries == 3:
                assert calls[3] == 3 and 3 in trained
                assert skipped == [6]
            else:
                assert calls[3] == 1 and skipped == [3, 6]
            assert sorted(trained + skipped) == list(range(12))
            assert sorted(finished) == sorted(trained) and 7 in finished
            assert [len(s.rollouts) for s in result.steps] == [4 - (retries == 1), 3, 4]


async def test_the_breaker_opens_on_consecutive_failures_naming_count_and_cause(
    anyio_backend: str,
) -> None:
    class EnvDown(Exception):
        pass

    async def rollout(sampler: SamplingClient, seed: int) -> list[list[int]]:
        if seed >= 6:
            raise EnvDown(f"env {seed} down")
        return await _sample(sampler, seed)

    async with LocalTrainer(seed=0) as lt, ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        with anyio.fail_after(10), pytest.raises(RolloutsFailing) as caught:
            await run_rl(
                client,
                TrainerPolicy(session, client),
                range(10_000),
                rollout,
                _datums,
                adam=ADAM,
                loss_fn="cross_entropy",
                groups_per_step=2,
                concurrency=4,
                on_rollout_error=RetryGroup(times=1, max_consecutive_failures=5),
            )
        assert isinstance(caught.value, FiretitanError)
        assert caught.value.count == 5
        assert isinstance(caught.value.last_cause, EnvDown)
        assert caught.value.__cause__ is caught.value.last_cause
        assert "5 rollout attempts failed in a row" in str(caught.value)
        assert "EnvDown: env" in str(caught.value)
        assert not [name for name in _running_task_names() if "loops._rl" in name]

        # A success in between resets the count: alternate failures never open it.
        async def every_other(sampler: SamplingClient, seed: int) -> list[list[int]]:
            if seed % 2:
                raise EnvDown(f"env {seed} down")
            return await _sample(sampler, seed)

        result: RLResult[Any, Any, Any] = await run_rl(
            client,
            TrainerPolicy(session, client),
            range(8),
            every_other,
            _datums,
            adam=ADAM,
            loss_fn="cross_entropy",
            groups_per_step=4,
            concurrency=1,  # one at a time: failure, success, failure, ...
            on_rollout_error=RetryGroup(times=0, max_consecutive_failures=2),
        )
        assert [s.skipped for s in result.steps] == [(1, 3), (5, 7)]
    with pytest.raises(InvalidInput, match="max_consecutive_failures"):
        RetryGroup(max_consecutive_failures=0)
    with pytest.raises(InvalidInput, match="on_rollout_error"):
        await run_rl(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]  # refused before the client or publisher is used
            [1],
            rollout,
            _datums,
            adam=ADAM,
            groups_per_step=1,
            on_rollout_error="retry",  # type: ignore[arg-type]
        )


async def test_a_run_dir_of_another_loop_or_shape_is_refused_before_the_trainer_is_touched(
    anyio_backend: str, tmp_path: Path
) -> None:
    class Store:
        def save(self, name: str) -> Awaitable[str]:
            raise AssertionError("saved")

        async def restore(self, path: str) -> None:
            raise AssertionError("restored")

        async def delete(self, path: str) -> None:
            raise AssertionError("deleted")

    class NeverPublish:
        async def publish(self, version: int) -> None:
            raise AssertionError("published")

    async def rollout(sampler: None, prompt: int) -> list[int]:
        raise AssertionError("sampled")

    record = {
        "name": "ckpt-0000003",
        "path": "tinker://x/ckpt-0000003",
        "step": 3,
        "tokens": 0,
        "optimizer_state": True,
        "config": {},
        "final": False,
        "saved_at": 0.0,
    }
    rl = {"loop": 1, "step": 3, "version": 3, "groups_per_step": 4, "publish_every": 1}
    for cursor, field in (
        (3, "checkpoints"),
        (rl | {"groups_per_step": 2}, "groups_per_step"),
        (rl | {"publish_every": 3}, "publish_every"),
    ):
        (tmp_path / "checkpoints.json").write_text(
            json.dumps({"saves": [record | {"cursor": cursor}]})
        )
        manager = CheckpointManager(Store(), tmp_path, config={})
        with pytest.raises(InvalidInput, match=field):
            await run_rl(
                None,  # type: ignore[arg-type]
                NeverPublish(),
                range(8),
                rollout,
                lambda rollouts: [],
                adam=ADAM,
                groups_per_step=4,
                checkpoints=manager,
            )
    # The same shape passes and goes on to restore the save.
    (tmp_path / "checkpoints.json").write_text(json.dumps({"saves": [record | {"cursor": rl}]}))
    with pytest.raises(AssertionError, match="restored"):
        await run_rl(
            None,  # type: ignore[arg-type]
            NeverPublish(),
            range(8),
            rollout,
            lambda rollouts: [],
            adam=ADAM,
            groups_per_step=4,
            checkpoints=CheckpointManager(Store(), tmp_path, config={}),
        )
