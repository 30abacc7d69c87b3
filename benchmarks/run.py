"""Benchmarks: firetitan_async side by side with the tinker SDK on the same local trainer.

Usage::

    python benchmarks/run.py                 # full run (7 reps), writes benchmarks/RESULTS.md
    python benchmarks/run.py --quick --json out.json   # 3 reps, < 5 minutes
    python benchmarks/run.py --smoke         # tiny sizes, 1 rep (the test suite runs this)

A fresh local trainer runs in its own process (``python -m firetitan_async serve``) for every
measured client run, which is its own process too (``run.py --worker SCENARIO --client CLIENT``,
printing one JSON line), so the CPU time and RSS measured are the client's alone. Clients
alternate (A B A B …) within each scenario; each figure is reported as the median with
min–max over the repetitions, and ratios are ratios of medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs
from _report import GOALS, machine_info, render_markdown
from _scenarios import BACKENDS, CLIENTS, SCENARIOS, WorkerArgs, run_worker
from _server import TrainerProcess
from _stats import Summary, ratio, summarize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
NOTES_MD = HERE / "NOTES.md"


@attrs.frozen
class Plan:
    """The sizes of one benchmark run."""

    mode: str
    reps: int
    pipelined_steps: int = 20
    throughput_ops: int = 2000
    # The bare httpx loop costs ~50 ms of CPU per op at 256 in flight (httpcore's pool scans
    # every connection on each request and reply), and its per-op cost depends on the number
    # in flight, not on the total: fewer ops keep --quick under 5 minutes.
    httpx_ops: int = 2000
    inflight: int = 256
    stall_steps: int = 100
    batch: int = 8
    warmup: int = 16
    latency_ms: float = 50.0
    worker_timeout_s: float = 300.0
    # A fresh trainer process for every measured run (no run inherits another's server
    # state); the smoke run, which measures nothing, shares one per scenario.
    fresh_server: bool = True
    # The smoke run (which measures nothing) starts every scenario's client runs at once, each
    # scenario against its own server: 14 client processes side by side, ~2.5x less wall time
    # than one after the other (the suite runs it on 2 cores).
    side_by_side: bool = False


PLANS = {
    "full": Plan(mode="full", reps=7),
    "quick": Plan(mode="quick", reps=3, httpx_ops=500),
    "smoke": Plan(
        mode="smoke",
        reps=1,
        pipelined_steps=3,
        throughput_ops=48,
        httpx_ops=48,
        inflight=16,
        stall_steps=4,
        batch=2,
        warmup=4,
        worker_timeout_s=120.0,
        fresh_server=False,
        side_by_side=True,
    ),
}

# (label, client, backend) measured in each scenario, in the order of one round.
# "ours" speaks the tinker dialect beside the tinker SDK, "ours_fw" the fireworks dialect
# beside the Fireworks SDK.
_FIREWORKS = (("ours_fw", "ours_fw", "asyncio"), ("fireworks", "fireworks", "asyncio"))
CONTENDERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "pipelined": (("ours", "ours", "asyncio"), ("tinker", "tinker", "asyncio"), *_FIREWORKS),
    "throughput": (
        ("ours", "ours", "asyncio"),
        ("tinker", "tinker", "asyncio"),
        ("httpx", "httpx", "asyncio"),
        ("ours_trio", "ours", "trio"),
        *_FIREWORKS,
    ),
    "stall": (("ours", "ours", "asyncio"), ("tinker", "tinker", "asyncio"), *_FIREWORKS),
}

# The figures summarized per scenario (raw figures in the JSON and in RESULTS.md).
FIGURES: dict[str, tuple[str, ...]] = {
    "pipelined": ("steps_per_s", "wall_s", "server_compute_s", "cpu_s", "peak_rss_mb"),
    "throughput": ("ops_per_s", "cpu_per_op_us", "wall_s", "cpu_s", "peak_rss_mb"),
    "stall": (
        "max_stall_ms",
        "wall_s",
        "max_stall_ms_session_start",
        "max_stall_ms_submit",
        "max_stall_ms_await",
        "max_gc_pause_ms",
        "max_stall_beside_gc_ms",
        "max_stall_cpu_beside_gc_ms",
        "peak_rss_mb",
    ),
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _start_worker(
    args: WorkerArgs, files: contextlib.ExitStack
) -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
    """Start one measured client run in a fresh process (its output goes to temporary files,
    closed with ``files``, so runs started side by side never block on a full pipe)."""
    command = [
        sys.executable,
        str(HERE / "run.py"),
        "--worker",
        args.scenario,
        "--client",
        args.client,
        "--backend",
        args.backend,
        "--url",
        args.url,
        "--steps",
        str(args.steps),
        "--ops",
        str(args.ops),
        "--inflight",
        str(args.inflight),
        "--batch",
        str(args.batch),
        "--warmup",
        str(args.warmup),
    ]
    env = {**os.environ, "TINKER_TELEMETRY": "0", "PYTHONWARNINGS": "ignore"}
    out = files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed with files)
    err = files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (closed with files)
    proc = subprocess.Popen(command, stdout=out, stderr=err, env=env, cwd=ROOT)
    files.callback(proc.kill)  # a no-op once it has exited; else it is not left running
    return proc, out, err


def _finish_worker(
    args: WorkerArgs,
    started: tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]],
    timeout_s: float,
) -> dict[str, Any]:
    """Wait for a run ``_start_worker`` started and return its JSON figures."""
    proc, out, err = started
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    out.seek(0)
    lines = out.read().decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        err.seek(0)
        raise RuntimeError(
            f"worker {args.scenario}/{args.client}/{args.backend} failed "
            f"(exit {proc.returncode}):\n{err.read().decode(errors='replace')[-3000:]}"
        )
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


def _spawn_worker(args: WorkerArgs, timeout_s: float) -> dict[str, Any]:
    """Run one measured client run in a fresh process and return its JSON figures."""
    with contextlib.ExitStack() as files:
        return _finish_worker(args, _start_worker(args, files), timeout_s)


def _run_scenario(scenario: str, plan: Plan, steps: int) -> dict[str, list[dict[str, Any]]]:
    """All repetitions of one scenario, the contenders alternating A B A B …

    Every measured run gets a fresh local trainer, so no run inherits another's server
    state (finished futures, sessions, heartbeats) and every run meets the same server.
    """
    latency_ms = _latency_ms(scenario, plan)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in CONTENDERS[scenario]}
    with contextlib.ExitStack() as shared:
        server = None if plan.fresh_server else shared.enter_context(
            TrainerProcess(latency_ms=latency_ms, cwd=ROOT)
        )
        for rep in range(plan.reps):
            for label, client, backend in CONTENDERS[scenario]:
                with contextlib.ExitStack() as own:
                    url = (server or own.enter_context(
                        TrainerProcess(latency_ms=latency_ms, cwd=ROOT)
                    )).url
                    figures = _spawn_worker(
                        _worker_args(scenario, client, backend, url, plan, steps),
                        plan.worker_timeout_s,
                    )
                runs[label].append(figures)
                shown = ", ".join(f"{k}={figures[k]:.4g}" for k in FIGURES[scenario][:2])
                _log(f"  {scenario:<10} rep {rep + 1}/{plan.reps} {label:<9} {shown}")
    return runs


def _latency_ms(scenario: str, plan: Plan) -> float:
    return 0.0 if scenario == "throughput" else plan.latency_ms


def _run_side_by_side(
    scenarios: Sequence[str], plan: Plan, steps: dict[str, int]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every run of every scenario at once, a server per scenario (the smoke run: its
    figures are not judged, only that every run completes and reports them)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        scenario: {label: [] for label, _, _ in CONTENDERS[scenario]} for scenario in scenarios
    }
    urls: dict[str, str] = {}
    with contextlib.ExitStack() as servers:
        for rep in range(plan.reps):
            started = []
            for scenario in scenarios:
                if scenario not in urls:  # the next server starts beside the runs started
                    urls[scenario] = servers.enter_context(
                        TrainerProcess(latency_ms=_latency_ms(scenario, plan), cwd=ROOT)
                    ).url
                for label, client, backend in CONTENDERS[scenario]:
                    args = _worker_args(
                        scenario, client, backend, urls[scenario], plan, steps[scenario]
                    )
                    started.append((scenario, label, args, _start_worker(args, servers)))
            for scenario, label, args, worker in started:
                figures = _finish_worker(args, worker, plan.worker_timeout_s)
                runs[scenario][label].append(figures)
                shown = ", ".join(f"{k}={figures[k]:.4g}" for k in FIGURES[scenario][:2])
                _log(f"  {scenario:<10} rep {rep + 1}/{plan.reps} {label:<9} {shown}")
    return runs


def _worker_args(
    scenario: str, client: str, backend: str, url: str, plan: Plan, steps: int
) -> WorkerArgs:
    return WorkerArgs(
        scenario=scenario,  # type: ignore[arg-type]
        client=client,  # type: ignore[arg-type]
        url=url,
        steps=steps,
        ops=plan.httpx_ops if client == "httpx" else plan.throughput_ops,
        inflight=plan.inflight,
        batch=plan.batch,
        warmup=plan.warmup,
        backend=backend,  # type: ignore[arg-type]
    )


def _summaries(
    scenario: str, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Summary]]:
    return {
        label: {fig: summarize([float(r[fig]) for r in reps]) for fig in FIGURES[scenario]}
        for label, reps in runs.items()
    }


def _paired(
    runs: dict[str, list[dict[str, Any]]], a: str, b: str, figure: str
) -> dict[str, float | int]:
    """Per-repetition ratios ``a/b`` of adjacent runs (drift cancels), summarized."""
    values = [
        float(x[figure]) / float(y[figure])
        for x, y in zip(runs[a], runs[b], strict=True)
        if float(y[figure])
    ]
    return summarize(values).as_dict() if values else {}


def run_benchmarks(plan: Plan, only: Sequence[str] = SCENARIOS) -> dict[str, Any]:
    """Start the servers, run the scenarios (all, or ``only`` these), return the document."""
    started = time.monotonic()
    commit = _git_commit()
    load_before = os.getloadavg()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    _log(f"benchmarks ({plan.mode}: {plan.reps} rep(s)); latency {plan.latency_ms:g} ms")
    steps = {"pipelined": plan.pipelined_steps, "stall": plan.stall_steps, "throughput": 0}
    if plan.side_by_side:
        runs = _run_side_by_side([s for s in SCENARIOS if s in only], plan, steps)
    else:
        for scenario in SCENARIOS:
            if scenario in only:
                runs[scenario] = _run_scenario(scenario, plan, steps[scenario])
    raw = {scenario: _summaries(scenario, by_label) for scenario, by_label in runs.items()}

    keys: dict[str, float] = {}
    paired: dict[str, Any] = {}
    ideal = math.nan
    if "pipelined" in raw:
        ours_p = raw["pipelined"]["ours"]
        ideal = ours_p["server_compute_s"].median + 2 * plan.latency_ms / 1e3
        keys["pipelined_vs_tinker_steps_ratio"] = ratio(
            ours_p["steps_per_s"], raw["pipelined"]["tinker"]["steps_per_s"]
        )
        keys["pipelined_vs_ideal_ratio"] = ours_p["wall_s"].median / ideal
        paired["pipelined_vs_tinker_steps_ratio"] = _paired(
            runs["pipelined"], "ours", "tinker", "steps_per_s"
        )
        keys["pipelined_vs_fireworks_steps_ratio"] = ratio(
            raw["pipelined"]["ours_fw"]["steps_per_s"],
            raw["pipelined"]["fireworks"]["steps_per_s"],
        )
        paired["pipelined_vs_fireworks_steps_ratio"] = _paired(
            runs["pipelined"], "ours_fw", "fireworks", "steps_per_s"
        )
    if "throughput" in raw:
        thr = raw["throughput"]
        keys["throughput_vs_tinker_ratio"] = ratio(
            thr["ours"]["ops_per_s"], thr["tinker"]["ops_per_s"]
        )
        keys["throughput_vs_httpx_ratio"] = ratio(
            thr["ours"]["ops_per_s"], thr["httpx"]["ops_per_s"]
        )
        keys["cpu_per_op_vs_tinker_ratio"] = ratio(
            thr["ours"]["cpu_per_op_us"], thr["tinker"]["cpu_per_op_us"]
        )
        keys["throughput_vs_fireworks_ratio"] = ratio(
            thr["ours_fw"]["ops_per_s"], thr["fireworks"]["ops_per_s"]
        )
        keys["cpu_per_op_vs_fireworks_ratio"] = ratio(
            thr["ours_fw"]["cpu_per_op_us"], thr["fireworks"]["cpu_per_op_us"]
        )
        for key, ours, other, figure in (
            ("throughput_vs_tinker_ratio", "ours", "tinker", "ops_per_s"),
            ("throughput_vs_httpx_ratio", "ours", "httpx", "ops_per_s"),
            ("cpu_per_op_vs_tinker_ratio", "ours", "tinker", "cpu_per_op_us"),
            ("throughput_vs_fireworks_ratio", "ours_fw", "fireworks", "ops_per_s"),
            ("cpu_per_op_vs_fireworks_ratio", "ours_fw", "fireworks", "cpu_per_op_us"),
        ):
            paired[key] = _paired(runs["throughput"], ours, other, figure)
    if "stall" in raw:
        keys["max_loop_stall_ms"] = raw["stall"]["ours"]["max_stall_ms"].median
        keys["max_loop_stall_beside_gc_ms"] = raw["stall"]["ours"]["max_stall_beside_gc_ms"].median
        keys["max_loop_stall_cpu_beside_gc_ms"] = raw["stall"]["ours"][
            "max_stall_cpu_beside_gc_ms"
        ].median
        keys["tinker_max_loop_stall_ms"] = raw["stall"]["tinker"]["max_stall_ms"].median
        keys["fireworks_max_loop_stall_ms"] = raw["stall"]["fireworks"]["max_stall_ms"].median
        keys["ours_fw_max_loop_stall_ms"] = raw["stall"]["ours_fw"]["max_stall_ms"].median
    document: dict[str, Any] = dict(keys)
    document["goals"] = {
        goal.key: {"goal": goal.text, "met": goal.met(keys[goal.key])}
        for goal in GOALS
        if goal.key in keys
    }
    document["paired_ratios"] = paired
    document["raw"] = {
        scenario: {
            label: {fig: s.as_dict() for fig, s in figs.items()} for label, figs in by_label.items()
        }
        for scenario, by_label in raw.items()
    }
    document["meta"] = {
        "mode": plan.mode,
        "plan": attrs.asdict(plan),
        "scenarios": list(runs),
        "ideal_pipelined_wall_s": ideal,
        "duration_s": time.monotonic() - started,
        "load_average_before": load_before[0],
        "load_average_after": os.getloadavg()[0],
        "machine": machine_info(),
        "commit": commit,
        "command": "python benchmarks/run.py" + "".join(f" {a}" for a in sys.argv[1:]),
    }
    return document


def _git_commit() -> str:
    """The tree's commit (with ``+dirty`` when firetitan_async has uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "firetitan_async"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 repetitions (< 5 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition (< 30 s)")
    parser.add_argument("--json", metavar="FILE", help="write the result document here")
    parser.add_argument("--reps", type=int, help="override the number of repetitions")
    parser.add_argument(
        "--render",
        metavar="FILE",
        help="rewrite RESULTS.md (with NOTES.md) from a full run's saved --json document",
    )
    parser.add_argument(
        "--only",
        metavar="SCENARIOS",
        help=f"comma-separated subset of {','.join(SCENARIOS)} (no RESULTS.md then)",
    )
    parser.add_argument(
        "--rollouts", action="store_true", help="only the deployment rollouts (_rollouts.py)"
    )
    worker = parser.add_argument_group("worker mode (one measured client run; internal)")
    worker.add_argument("--worker", choices=SCENARIOS, help="run one scenario in this process")
    worker.add_argument("--client", choices=CLIENTS, default="ours")
    worker.add_argument("--backend", choices=BACKENDS, default="asyncio")
    worker.add_argument("--url")
    worker.add_argument("--steps", type=int, default=20)
    worker.add_argument("--ops", type=int, default=2000)
    worker.add_argument("--inflight", type=int, default=256)
    worker.add_argument("--batch", type=int, default=8)
    worker.add_argument("--warmup", type=int, default=16)
    worker.add_argument("--profile", metavar="FILE", help="worker: write a pyinstrument profile")
    return parser


def _worker_main(ns: argparse.Namespace) -> int:
    if not ns.url:
        raise SystemExit("--worker needs --url")
    args = WorkerArgs(
        scenario=ns.worker,
        client=ns.client,
        url=ns.url,
        steps=ns.steps,
        ops=ns.ops,
        inflight=ns.inflight,
        batch=ns.batch,
        warmup=ns.warmup,
        backend=ns.backend,
    )
    if ns.profile:
        from _profile import profiled

        with profiled(ns.profile):
            figures = run_worker(args)
    else:
        figures = run_worker(args)
    sys.stdout.write(json.dumps(figures) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (the SDK's loop thread is never joined)


def _num(value: Any) -> str:
    return f"{value:>10.4g}" if isinstance(value, int | float) else f"{value!s:>10}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or, with ``--worker``, one measured client run)."""
    ns = _parser().parse_args(argv)
    if str(ROOT) not in sys.path:  # measure this tree's firetitan_async, installed or not
        sys.path.insert(0, str(ROOT))
    if ns.worker:
        return _worker_main(ns)
    if ns.rollouts:
        from _rollouts import main as rollouts_main

        return rollouts_main([], quick=ns.quick)
    if ns.render:
        _write_results(json.loads(Path(ns.render).read_text()))
        return 0
    plan = PLANS["smoke" if ns.smoke else "quick" if ns.quick else "full"]
    if ns.reps:
        plan = attrs.evolve(plan, reps=ns.reps)
    only = tuple(ns.only.split(",")) if ns.only else SCENARIOS
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    document = _finite_or_none(run_benchmarks(plan, only))
    text = json.dumps(document, indent=2)
    if ns.json:
        Path(ns.json).write_text(text + "\n")
    for goal in GOALS:
        if goal.key in document["goals"]:
            verdict = "met" if document["goals"][goal.key]["met"] else "MISSED"
            _log(f"{goal.key:<34} {_num(document[goal.key])}  goal {goal.text:<7} {verdict}")
    for key in ("tinker_max_loop_stall_ms", "fireworks_max_loop_stall_ms"):
        if key in document:
            _log(f"{key:<34} {_num(document[key])}")
    if plan.mode == "full" and not ns.reps and only == SCENARIOS:
        _write_results(document)
    return 0


def _write_results(document: dict[str, Any]) -> None:
    if document.get("meta", {}).get("mode") != "full":
        raise SystemExit("RESULTS.md holds a full run only")
    if NOTES_MD.exists():  # the analysis of the figures, kept beside the generated tables
        document["notes"] = NOTES_MD.read_text()
    RESULTS_MD.write_text(render_markdown(document))
    _log(f"wrote {RESULTS_MD}")


if __name__ == "__main__":
    sys.exit(main())
