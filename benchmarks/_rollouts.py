"""Rollout sampling from a deployment: ours vs the Fireworks SDK's ``DeploymentSampler``.

One local server process (``TrainerProcess``) plays the deployment (``/inference/v1/
completions``, the tiny model, no added latency). Each measured run is its own process
(``python benchmarks/_rollouts.py --worker CLIENT --url URL``): it samples ``completions``
completions (``max_tokens`` tokens each) with ``inflight`` in flight (a fixed window of that
size for both clients) while a 1 ms ticker records the largest gap of the event loop. Runs
alternate (ours, SDK, ours, SDK, ...); figures are medians over the repetitions.

* ``rollouts_vs_fireworks_ratio``: our rollouts/s over the SDK's (goal >= 1.5), per pair;
* ``rollout_max_loop_stall_ms``: the largest ticker gap in our runs (goal <= 10);
* ``rollout_many_*``: ours again, the batch started by one ``sample_many`` call instead of a
  task per rollout;
* ``rollout_spawn_floor_stall_beside_gc_ms``: the caller's own share of the task-per-rollout
  form, measured alone: the same ``start_soon`` loop of tasks that only yield once, no
  sampler (anyio's cost, whoever the tasks call). The task-per-rollout stall cannot be below
  it; ``sample_many`` has no such loop.

Example::

    python benchmarks/run.py --rollouts --quick        # or: python benchmarks/_rollouts.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = "rollouts"
MODEL = f"accounts/local/deployments/{DEPLOYMENT}"
PROMPT = list(b"Once upon a time, ")

__all__ = ["run_rollouts"]


async def _measure(client: str, url: str, completions: int, inflight: int,
                   max_tokens: int) -> dict[str, Any]:
    import anyio

    if client == "spawn_floor":
        return await _spawn_floor(completions)
    if client in ("ours", "ours_many"):
        from firetitan_async import DeploymentSampler

        sampler = DeploymentSampler(url, MODEL, "local-key", concurrency=inflight)

        async def one() -> int:
            out = await sampler.sample(PROMPT, max_tokens=max_tokens, logprobs=True)
            return len(out[0].tokens)

        async def close() -> None:
            await sampler.aclose()
    else:
        from fireworks.training import sdk

        theirs = sdk.DeploymentSampler(
            inference_url=url, model=MODEL, api_key="local-key",
            concurrency_controller=sdk.FixedConcurrencyController(inflight),
        )

        async def one() -> int:
            out = await theirs.sample_with_prompt_tokens(
                PROMPT, n=1, max_tokens=max_tokens, logprobs=True
            )
            return int(out[0].completion_len)

        async def close() -> None:
            theirs.close()

    for _ in range(8):  # warm-up: connections, lazy imports
        await one()
    tokens = 0

    async def counted() -> None:
        nonlocal tokens
        n = await one()  # ``tokens += await one()`` would read ``tokens`` before the await
        tokens += n

    async def rollouts() -> None:
        nonlocal tokens
        if client == "ours_many":  # one call admits the batch as the window frees
            results = await sampler.sample_many(
                [PROMPT] * completions, max_tokens=max_tokens, logprobs=True
            )
            tokens = sum(len(r[0].tokens) for r in results)
        else:  # a task per rollout, started at once (as the SDK's users write it)
            async with anyio.create_task_group() as tasks:
                for _ in range(completions):
                    tasks.start_soon(counted)

    stalls = await _beside_ticker(rollouts)
    wall = stalls.pop("wall_s")
    await close()
    return {"client": client, "wall_s": wall, "rollouts_per_s": completions / wall,
            "tokens": tokens, **stalls}


async def _beside_ticker(body: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """Run ``body`` beside a 1 ms ticker; its wall time, the loop's largest gap (with and
    without the collector's pauses inside it) and the collector's largest pause."""
    import anyio
    from _stall_ticker import GcPauses, Ticker

    with GcPauses.installed() as pauses:
        ticker = Ticker(pauses)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker.run)
            await anyio.sleep(0.01)
            ticker.restart()
            t0 = time.perf_counter()
            await body()
            wall = time.perf_counter() - t0
            ticker.stop()
    return {"wall_s": wall, "max_loop_stall_ms": ticker.max_gap_s * 1e3,
            "max_stall_beside_gc_ms": ticker.max_gap_beside_gc_s * 1e3,
            "max_stall_cpu_beside_gc_ms": ticker.max_gap_cpu_beside_gc_s * 1e3,
            "max_gc_pause_ms": pauses.max_s * 1e3}


async def _spawn_floor(completions: int) -> dict[str, Any]:
    """The caller's own share of the task-per-rollout form: ``completions`` ``start_soon``
    calls in one loop turn, of tasks that only yield once (no sampler at all)."""
    import anyio
    import anyio.lowlevel

    async def nothing() -> None:
        await anyio.lowlevel.checkpoint()

    async def spawn() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(completions):
                tasks.start_soon(nothing)
        await anyio.sleep(0.005)

    stalls = await _beside_ticker(spawn)
    del stalls["wall_s"]
    return {"client": "spawn_floor", **stalls}


def _worker(ns: argparse.Namespace) -> int:
    import anyio

    figures = anyio.run(_measure, ns.worker, ns.url, ns.completions, ns.inflight, ns.max_tokens,
                        backend=ns.backend)
    print(json.dumps(figures))
    return 0


def _spawn(client: str, url: str, completions: int, inflight: int, max_tokens: int,
           backend: str) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__)), "--worker", client, "--url", url,
           "--completions", str(completions), "--inflight", str(inflight),
           "--max-tokens", str(max_tokens), "--backend", backend]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"rollout worker {client} failed: {done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def run_rollouts(*, reps: int = 3, completions: int = 2000, inflight: int = 256,
                 max_tokens: int = 8) -> dict[str, Any]:
    """Run the scenario (see the module docstring) and return its figures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _server import TrainerProcess

    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    many: list[dict[str, Any]] = []
    trio_runs: list[dict[str, Any]] = []
    with TrainerProcess(latency_ms=0) as server:
        httpx.post(f"{server.url}/v1/accounts/local/deployments?deploymentId={DEPLOYMENT}",
                   json={"baseModel": "local/tiny-byte-lm"}).raise_for_status()
        for _ in range(reps):
            ours = _spawn("ours", server.url, completions, inflight, max_tokens, "asyncio")
            theirs = _spawn("sdk", server.url, completions, inflight, max_tokens, "asyncio")
            pairs.append((ours, theirs))
            many.append(
                _spawn("ours_many", server.url, completions, inflight, max_tokens, "asyncio")
            )
        trio_runs.append(_spawn("ours", server.url, completions, inflight, max_tokens, "trio"))
        floors = [_spawn("spawn_floor", server.url, completions, inflight, max_tokens, "asyncio")
                  for _ in range(reps)]
    ratios = [o["rollouts_per_s"] / t["rollouts_per_s"] for o, t in pairs]
    return {
        "completions": completions,
        "inflight": inflight,
        "max_tokens": max_tokens,
        "reps": reps,
        "rollouts_vs_fireworks_ratio": statistics.median(ratios),
        "rollout_max_loop_stall_ms": statistics.median(o["max_loop_stall_ms"] for o, _ in pairs),
        "rollout_max_loop_stall_ms_worst": max(o["max_loop_stall_ms"] for o, _ in pairs),
        "rollout_max_stall_beside_gc_ms": statistics.median(
            o["max_stall_beside_gc_ms"] for o, _ in pairs
        ),
        "rollout_max_stall_cpu_beside_gc_ms": statistics.median(
            o["max_stall_cpu_beside_gc_ms"] for o, _ in pairs
        ),
        "rollout_max_gc_pause_ms": statistics.median(o["max_gc_pause_ms"] for o, _ in pairs),
        "ours_rollouts_per_s": statistics.median(o["rollouts_per_s"] for o, _ in pairs),
        "fireworks_rollouts_per_s": statistics.median(t["rollouts_per_s"] for _, t in pairs),
        "fireworks_max_loop_stall_ms": statistics.median(t["max_loop_stall_ms"] for _, t in pairs),
        "ours_many_rollouts_per_s": statistics.median(m["rollouts_per_s"] for m in many),
        "rollout_many_max_stall_beside_gc_ms": statistics.median(
            m["max_stall_beside_gc_ms"] for m in many
        ),
        "rollout_many_max_stall_cpu_beside_gc_ms": statistics.median(
            m["max_stall_cpu_beside_gc_ms"] for m in many
        ),
        "rollout_many_max_loop_stall_ms": statistics.median(
            m["max_loop_stall_ms"] for m in many
        ),
        "rollout_spawn_floor_stall_beside_gc_ms": statistics.median(
            f["max_stall_beside_gc_ms"] for f in floors
        ),
        "ours_trio_rollouts_per_s": trio_runs[0]["rollouts_per_s"],
        "ours_trio_max_loop_stall_ms": trio_runs[0]["max_loop_stall_ms"],
        "ratios": ratios,
    }


def main(argv: list[str] | None = None, *, quick: bool = False) -> int:
    """The scenario's command line (``--worker`` runs one measured client, internal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 repetitions (default 5)")
    parser.add_argument("--worker", choices=["ours", "ours_many", "sdk", "spawn_floor"])
    parser.add_argument("--url")
    parser.add_argument("--completions", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    ns = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if ns.worker:
        return _worker(ns)
    figures = run_rollouts(reps=3 if (quick or ns.quick) else 5, completions=ns.completions,
                           inflight=ns.inflight, max_tokens=ns.max_tokens)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
