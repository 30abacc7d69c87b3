"""Conformance, Fireworks SDK 1.2.9 (the version the fw-ai cookbook locks, with tinker 0.23):
the unmodified SDK drives the local trainer through the cookbook's managed flows.

1.2.9 cannot share a venv with the dev venv's 1.2.30, so a session fixture builds one under a
cache directory (``$FIRETITAN_SDK_CACHE`` or ``~/.cache/firetitan-async``) with
``fireworks-ai[training-sdk]==1.2.9`` from the package registry, once; later runs reuse it.
The test is skipped (saying why) only when the registry cannot be reached. The SDK side is
``_fireworks_sdk_1_2_9_flow.py``, run with that venv's python; it prints what it observed.
"""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import pytest

from firetitan_async.local import LocalTrainer

pytestmark = pytest.mark.conformance

REQUIREMENT = "fireworks-ai[training-sdk]==1.2.9"
KEY = "fw-sdk-129-key-0123456789"
FLOW = Path(__file__).with_name("_fireworks_sdk_1_2_9_flow.py")
_UNREACHABLE = ("No matching distribution", "Could not find a version", "NewConnectionError",
                "Temporary failure in name resolution", "Network is unreachable")


@pytest.fixture(scope="session")
def sdk_1_2_9_python() -> Path:
    """The python of a venv holding ``REQUIREMENT`` (built once per cache directory)."""
    cache = Path(os.environ.get("FIRETITAN_SDK_CACHE") or Path.home() / ".cache/firetitan-async")
    root = cache / "venv-fireworks-ai-1.2.9"
    python = root / "bin" / "python"
    stamp = root / "installed.txt"
    if stamp.is_file() and stamp.read_text() == REQUIREMENT and python.is_file():
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
        capture_output=True, text=True, timeout=900, check=False,
    )
    if done.returncode != 0:
        if any(marker in done.stderr for marker in _UNREACHABLE):
            pytest.skip(f"the package registry is unreachable: cannot install {REQUIREMENT}")
        raise AssertionError(f"installing {REQUIREMENT} failed:\n{done.stderr[-3000:]}")
    stamp.write_text(REQUIREMENT)
    return python


def test_cookbook_managed_flows_under_sdk_1_2_9(sdk_1_2_9_python: Path) -> None:
    model = "accounts/fireworks/models/qwen3-8b"
    with LocalTrainer(api_key=KEY, seed=2) as lt:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FIREWORKS_", "TINKER_"))},
            "FIREWORKS_API_KEY": KEY,
            "FIREWORKS_BASE_URL": lt.control_plane_url,
        }
        done = subprocess.run(
            [str(sdk_1_2_9_python), str(FLOW), model],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        live = lt.stats()["live"]
    assert report["sdk_version"] == "1.2.9" and report["moe"] is False
    for flow in ("full", "lora"):
        seen = report[flow]
        losses = seen["losses"]
        assert losses[0] > losses[1] > losses[2], (flow, losses)  # it trains
        assert seen["reference_is_base"] and seen["reference_frozen"], (flow, seen)
        assert seen["saved_path"].startswith("tinker://") and seen["saved_path"].endswith(
            "/weights/conformance-1"
        )
    # The promoted full-parameter model is a base model holding the trained weights.
    assert report["full"]["promoted"] == {
        "name": "accounts/local/models/conformance-sft", "kind": "HF_BASE_MODEL"
    }
    assert report["promoted_moe"] is False
    trained, served = report["full"]["trained"], report["from_promoted"]
    assert [len(row) for row in served] == [len(row) for row in trained]
    assert max(abs(a - b) for x, y in zip(served, trained, strict=True)
               for a, b in zip(x, y, strict=True)) < 1e-5
    # Full-parameter: a separate reference trainer; LoRA: one shared trainer. All closed.
    assert live["jobs"] == 0, live
