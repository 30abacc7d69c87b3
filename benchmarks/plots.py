"""Draw the benchmark plots of the documentation site from a benchmark document.

    python benchmarks/run.py --quick --json bench.json
    python benchmarks/plots.py bench.json            # writes docs/img/bench-*.svg

Two charts, each a horizontal bar per client with its min–max range over the repetitions:
steps/s of the pipelined loop (higher is better) and the caller's largest event-loop stall
(lower is better), ours beside each SDK. Plain SVG written by hand: no plotting dependency.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "img"

#: (label in the document, what the chart calls it, bar colour)
CLIENTS: tuple[tuple[str, str, str], ...] = (
    ("ours", "firetitan_async (tinker dialect)", "#e8590c"),
    ("tinker", "tinker SDK 0.38", "#868e96"),
    ("ours_fw", "firetitan_async (fireworks dialect)", "#e8590c"),
    ("fireworks", "Fireworks SDK 1.2.30", "#868e96"),
)

WIDTH, LEFT, RIGHT, ROW, TOP = 720, 250, 110, 34, 62


def bar_chart(
    title: str, subtitle: str, unit: str, rows: Sequence[tuple[str, str, dict[str, float]]]
) -> str:
    """An SVG bar chart: one row per ``(name, colour, {"median", "min", "max"})``."""
    scale_max = max(r[2]["max"] for r in rows) or 1.0
    span = WIDTH - LEFT - RIGHT
    height = TOP + ROW * len(rows) + 16
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="10" y="42" fill="#495057">{escape(subtitle)}</text>',
    ]
    for i, (name, colour, s) in enumerate(rows):
        y = TOP + i * ROW
        w = span * s["median"] / scale_max
        lo, hi = LEFT + span * s["min"] / scale_max, LEFT + span * s["max"] / scale_max
        out += [
            f'<text x="{LEFT - 8}" y="{y + 16}" text-anchor="end">{escape(name)}</text>',
            f'<rect class="bar" x="{LEFT}" y="{y + 4}" width="{w:.1f}" height="18" '
            f'fill="{colour}" data-median="{s["median"]:.6g}"/>',
            f'<line x1="{lo:.1f}" x2="{hi:.1f}" y1="{y + 13}" y2="{y + 13}" stroke="#212529"/>',
            f'<text x="{max(LEFT + w, hi) + 6:.1f}" y="{y + 17}">'
            f"{s['median']:.3g} {escape(unit)}</text>",
        ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _rows(
    raw: dict[str, Any], scenario: str, figure: str
) -> list[tuple[str, str, dict[str, float]]]:
    by_label = raw.get(scenario, {})
    return [
        (name, colour, by_label[label][figure])
        for label, name, colour in CLIENTS
        if label in by_label and figure in by_label[label]
    ]


def render(document: dict[str, Any], out_dir: Path = OUT) -> list[Path]:
    """Write the charts the document has data for; return their paths."""
    raw = document["raw"]
    meta = document.get("meta", {})
    when = (
        f"bars: medians, lines: min–max; {meta.get('mode', '?')} run at commit "
        f"{meta.get('commit', '?')}"
    )
    charts = {
        "bench-steps.svg": (
            "Pipelined training steps per second at 50 ms latency (higher is better)",
            when,
            "steps/s",
            _rows(raw, "pipelined", "steps_per_s"),
        ),
        "bench-stall.svg": (
            "Largest event-loop stall: session start + pipelined steps (lower is better)",
            when,
            "ms",
            _rows(raw, "stall", "max_stall_ms"),
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, subtitle, unit, rows) in charts.items():
        if rows:
            path = out_dir / name
            path.write_text(bar_chart(title, subtitle, unit, rows))
            written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("document", type=Path, help="a benchmark document (run.py --json)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the SVGs go")
    args = parser.parse_args(argv)
    for path in render(json.loads(args.document.read_text()), args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
