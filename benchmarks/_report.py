"""The goals of issue 6, the machine description, and the RESULTS.md rendering.

Example::

    GOALS[0].met(2.4)                     # True: pipelined_vs_tinker_steps_ratio >= 2.0
    Path("benchmarks/RESULTS.md").write_text(render_markdown(document))
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import attrs

__all__ = ["GOALS", "Goal", "machine_info", "render_markdown"]


@attrs.frozen
class Goal:
    """One key of the result document and its target (``at_least`` or at most ``bound``)."""

    key: str
    bound: float
    at_least: bool
    scenario: str

    @property
    def text(self) -> str:
        """``"≥ 2.0"`` or ``"≤ 1.3"``."""
        return f"{'≥' if self.at_least else '≤'} {self.bound:g}"

    def met(self, value: float | None) -> bool:
        """Whether ``value`` reaches the goal (a missing value never does)."""
        if value is None or value != value:  # None or NaN
            return False
        return value >= self.bound if self.at_least else value <= self.bound


GOALS: tuple[Goal, ...] = (
    Goal(
        "pipelined_vs_tinker_steps_ratio",
        2.0,
        True,
        "steps of forward_backward + optim_step, 50 ms latency: our steps/s ÷ the SDK's",
    ),
    Goal(
        "pipelined_vs_ideal_ratio",
        1.3,
        False,
        "our wall time for that loop ÷ (server compute + 2 × latency)",
    ),
    Goal(
        "throughput_vs_tinker_ratio",
        3.0,
        True,
        "`forward` calls on a small datum, 256 in flight, no latency: our ops/s ÷ the SDK's",
    ),
    Goal(
        "throughput_vs_httpx_ratio",
        0.7,
        True,
        "the same, ours ÷ a bare `httpx.AsyncClient` loop (same two round trips per op)",
    ),
    Goal(
        "cpu_per_op_vs_tinker_ratio",
        0.33,
        False,
        "client-process CPU s (user+sys) per op in the throughput run, ours ÷ the SDK's",
    ),
    Goal(
        "pipelined_vs_fireworks_steps_ratio",
        4.0,
        True,
        "the pipelined steps, ours in the fireworks dialect ÷ the Fireworks SDK",
    ),
    Goal(
        "throughput_vs_fireworks_ratio",
        2.0,
        True,
        "the throughput run, ours in the fireworks dialect ÷ the Fireworks SDK (ops/s)",
    ),
    Goal(
        "cpu_per_op_vs_fireworks_ratio",
        0.5,
        False,
        "client CPU per op in that run, ours in the fireworks dialect ÷ the Fireworks SDK",
    ),
    Goal(
        "max_loop_stall_ms",
        10.0,
        False,
        "largest gap of a 1 ms ticker in the caller's loop: session start + pipelined steps",
    ),
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    """``nproc``, CPU model, OS, Python and library versions, and the date (UTC)."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "tinker": _version("tinker"),
        "httpx": _version("httpx"),
        "anyio": _version("anyio"),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _fmt(value: Any, digits: str = ".3g") -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int | float):
        return format(value, digits)
    return str(value)


def _summary_text(summary: Mapping[str, Any], digits: str = ".3g") -> str:
    median, low, high = summary["median"], summary["min"], summary["max"]
    if summary.get("n", 1) <= 1:
        return _fmt(median, digits)
    return f"{_fmt(median, digits)} ({_fmt(low, digits)}–{_fmt(high, digits)})"


_FIGURE_TITLES = {
    "steps_per_s": "steps/s",
    "ops_per_s": "ops/s",
    "cpu_per_op_us": "CPU µs/op",
    "wall_s": "wall s",
    "cpu_s": "CPU s",
    "server_compute_s": "server compute s",
    "peak_rss_mb": "peak RSS MB",
    "max_stall_ms": "max loop stall ms",
    "max_stall_beside_gc_ms": "max stall less GC ms",
    "max_stall_cpu_beside_gc_ms": "max CPU in a stall less GC ms",
    "max_gc_pause_ms": "max GC pause ms",
}


def render_markdown(document: Mapping[str, Any]) -> str:
    """RESULTS.md: goals table, raw figures per scenario, command, machine and date."""
    meta = document["meta"]
    machine = meta["machine"]
    plan = meta["plan"]
    lines = [
        "# Benchmarks: firetitan_async vs the tinker SDK on the same local trainer",
        "",
        f"Command: `{meta['command']}` ({plan['reps']} repetitions per client, alternating;"
        f" took {meta['duration_s']:.0f} s), at commit `{meta.get('commit', 'unknown')}`.",
        "",
        f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['os']}, "
        f"Python {machine['python']}, tinker {machine['tinker']}, httpx {machine['httpx']}, "
        f"anyio {machine['anyio']}. Date: {machine['date']}.",
        "",
        "Figures are medians over the repetitions (min–max in brackets); ratios are ratios of",
        'medians, and "per-rep ratios" are the ratios of each adjacent A/B pair (median, min–max),',
        "which cancel slow drift of the machine. The local trainer and every client run are",
        "separate processes, so CPU and RSS are the client's alone. Load average (1 min) before",
        f"and after the run: {meta.get('load_average_before', 0):.2f} / "
        f"{meta.get('load_average_after', 0):.2f}.",
        "",
        "| key | figure | goal | met? | per-rep ratios | scenario |",
        "|---|---|---|---|---|---|",
    ]
    paired = document.get("paired_ratios", {})
    for goal in GOALS:
        met = document["goals"][goal.key]["met"]
        per_rep = _summary_text(paired[goal.key]) if paired.get(goal.key) else "—"
        lines.append(
            f"| `{goal.key}` | {_fmt(document.get(goal.key))} | {goal.text} | "
            f"{'yes' if met else '**no**'} | {per_rep} | {goal.scenario} |"
        )
    lines.append(
        f"| `tinker_max_loop_stall_ms` | {_fmt(document.get('tinker_max_loop_stall_ms'))} | "
        "— | — | — | the same ticker with the tinker SDK |"
    )
    for key, who in (
        ("ours_fw_max_loop_stall_ms", "ours in the fireworks dialect"),
        ("fireworks_max_loop_stall_ms", "the Fireworks SDK"),
    ):
        lines.append(
            f"| `{key}` | {_fmt(document.get(key))} | — | — | — | the same ticker with {who} |"
        )
    lines += [
        "",
        f"Sizes: pipelined {plan['pipelined_steps']} steps of batch {plan['batch']} at "
        f"{plan['latency_ms']:g} ms latency; throughput {plan['throughput_ops']} forwards, "
        f"{plan['inflight']} in flight, no latency (the bare httpx loop: "
        f"{plan['httpx_ops']} forwards); stall {plan['stall_steps']} steps at "
        f"{plan['latency_ms']:g} ms. Ideal pipelined wall time (server compute + 2 × latency): "
        f"{meta['ideal_pipelined_wall_s']:.3f} s.",
    ]
    for scenario, by_label in document["raw"].items():
        figures = list(next(iter(by_label.values())).keys())
        lines += [
            "",
            f"## Raw figures: {scenario}",
            "",
            "| client | " + " | ".join(_FIGURE_TITLES.get(f, f) for f in figures) + " |",
            "|---|" + "---|" * len(figures),
        ]
        for label, figs in by_label.items():
            lines.append(
                f"| {label} | " + " | ".join(_summary_text(figs[f]) for f in figures) + " |"
            )
    notes = document.get("notes")
    if notes:
        lines += ["", str(notes).rstrip()]
    return "\n".join(lines) + "\n"
