"""``examples/deployment_rollouts.py`` runs (under trio), serves every step's rollouts from the
version published just before, and the reward rises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_example_deployment_rollouts_trio() -> None:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TINKER_TELEMETRY="0", PYTHONPATH=path)
    env.pop("FIREWORKS_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "deployment_rollouts.py"), "--steps", "4",
         "--backend", "trio"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line[:4].strip().isdigit()]
    assert len(rows) == 4
    for row in rows:  # step, published, served ([n]): the rollouts came from that version
        assert row[2] == f"[{row[1]}]", row
    match = re.search(r"first step ([0-9.]+), last step ([0-9.]+)", proc.stdout)
    assert match, proc.stdout
    assert float(match.group(2)) > float(match.group(1))
