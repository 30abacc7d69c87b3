"""The benchmark harness cannot rot: ``benchmarks/run.py --smoke`` runs end to end.

The smoke mode starts the real local trainer in its own process and runs every scenario once
with tiny sizes, ours beside the tinker SDK and the Fireworks SDK; the figures are not judged
here, only that every key (issues 6, 12 and 16) is present and numeric.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

KEYS = (
    "pipelined_vs_tinker_steps_ratio",
    "pipelined_vs_ideal_ratio",
    "throughput_vs_tinker_ratio",
    "throughput_vs_httpx_ratio",
    "cpu_per_op_vs_tinker_ratio",
    "max_loop_stall_ms",
    "tinker_max_loop_stall_ms",
    "pipelined_vs_fireworks_steps_ratio",
    "throughput_vs_fireworks_ratio",
    "cpu_per_op_vs_fireworks_ratio",
    "fireworks_max_loop_stall_ms",
)


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def test_smoke_run_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = {**os.environ, "TINKER_TELEMETRY": "0"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        # 14 worker processes, run side by side (about 35 s on a loaded 2-core box).
        timeout=240,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(out.read_text())
    for key in KEYS:
        value = document.get(key)
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)
    assert set(document["raw"]) == {"pipelined", "throughput", "stall"}
    assert {"ours", "tinker", "httpx", "ours_fw", "fireworks"} <= set(document["raw"]["throughput"])
    for goal in document["goals"].values():
        assert isinstance(goal["met"], bool)
    # The smoke run never overwrites the full run's RESULTS.md.
    assert document["meta"]["mode"] == "smoke"
    # The site's plots are drawn from such a document.
    plots = subprocess.run(
        [sys.executable, str(BENCHMARKS / "plots.py"), str(out), "--out", str(tmp_path / "img")],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert plots.returncode == 0, plots.stderr
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == [
        "bench-stall.svg", "bench-steps.svg"
    ]


@pytest.mark.usefixtures("bench_modules")
def test_summaries_and_goals() -> None:
    from _report import GOALS
    from _stats import ratio, summarize

    s = summarize([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert ratio(summarize([4.0, 6.0]), summarize([2.0])) == pytest.approx(2.5)
    assert math.isnan(ratio(s, summarize([0.0])))
    with pytest.raises(ValueError):
        summarize([])
    goals = {g.key: g for g in GOALS}
    assert goals["pipelined_vs_tinker_steps_ratio"].met(2.0)
    assert not goals["pipelined_vs_tinker_steps_ratio"].met(1.99)
    assert goals["throughput_vs_httpx_ratio"].met(0.7)
    assert not goals["throughput_vs_httpx_ratio"].met(0.5)
    assert goals["max_loop_stall_ms"].met(9.5)
    assert not goals["max_loop_stall_ms"].met(10.5)
    assert not goals["cpu_per_op_vs_tinker_ratio"].met(math.nan)
    assert set(goals) == set(KEYS) - {"tinker_max_loop_stall_ms", "fireworks_max_loop_stall_ms"}
    assert goals["throughput_vs_tinker_ratio"].met(3.0)
    assert not goals["throughput_vs_tinker_ratio"].met(2.9)
    assert goals["pipelined_vs_fireworks_steps_ratio"].met(4.0)
    assert not goals["cpu_per_op_vs_fireworks_ratio"].met(0.51)


@pytest.mark.usefixtures("bench_modules")
def test_plots_draw_each_client_to_scale(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from plots import render

    def fig(median: float) -> dict[str, float]:
        return {"median": median, "min": median * 0.9, "max": median * 1.1, "n": 3}

    document = {
        "raw": {
            "pipelined": {
                "ours": {"steps_per_s": fig(80.0)},
                "tinker": {"steps_per_s": fig(8.0)},
                "ours_fw": {"steps_per_s": fig(90.0)},
                "fireworks": {"steps_per_s": fig(6.0)},
            },
            "stall": {"ours": {"max_stall_ms": fig(50.0)}, "tinker": {"max_stall_ms": fig(300.0)}},
        },
        "meta": {"mode": "quick", "commit": "abc1234"},
    }
    written = {p.name: p for p in render(document, tmp_path)}
    assert set(written) == {"bench-steps.svg", "bench-stall.svg"}
    ns = {"svg": "http://www.w3.org/2000/svg"}
    bars = ET.parse(written["bench-steps.svg"]).getroot().findall("svg:rect", ns)
    widths = [float(b.get("width", "0")) for b in bars]
    assert [float(b.get("data-median", "0")) for b in bars] == [80.0, 8.0, 90.0, 6.0]
    assert widths[0] / widths[1] == pytest.approx(10.0, rel=1e-3)  # drawn to scale
    assert max(widths) == widths[2]
    stall = ET.parse(written["bench-stall.svg"]).getroot()
    assert len(stall.findall("svg:rect", ns)) == 2  # only the clients the document has
    assert "abc1234" in "".join(stall.itertext())
