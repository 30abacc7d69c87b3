"""Packaging: a plain install pulls only the client; the server lives behind the `local` extra.

The wheel's metadata is built from pyproject.toml (no network: setuptools' own build backend,
on a copy of the sources) and its ``Requires-Dist`` lines are read. Imports are checked in a
fresh interpreter, since this test process has the server loaded already.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_PACKAGES = ("starlette", "uvicorn", "threadpoolctl")


def _requires_dist(tmp_path: Path) -> list[str]:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "firetitan_async",
        src / "firetitan_async",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    out = tmp_path / "meta"
    out.mkdir()
    script = (
        "import sys\n"
        "from setuptools import build_meta\n"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    dist_info = out / proc.stdout.strip().splitlines()[-1]
    metadata = Parser().parsestr((dist_info / "METADATA").read_text())
    return list(metadata.get_all("Requires-Dist") or [])


def _name(requirement: str) -> str:
    for stop in "<>=!~[; ":
        requirement = requirement.split(stop)[0]
    return requirement.strip().lower()


def test_wheel_requires_no_server_package_without_an_extra(tmp_path: Path) -> None:
    requires = _requires_dist(tmp_path)
    plain = {_name(r) for r in requires if "extra ==" not in r}
    local = {_name(r) for r in requires if "extra == \"local\"" in r}
    dev = {_name(r) for r in requires if "extra == \"dev\"" in r}
    # What the client imports directly is declared.
    assert {"anyio", "httpx", "pydantic", "tinker", "numpy"} <= plain, plain
    # No server package (nor trio) in a plain install; the `local` extra has them all.
    assert plain.isdisjoint({*SERVER_PACKAGES, "trio"}), plain
    assert set(SERVER_PACKAGES) <= local, local
    assert "trio" in local, local  # the demo and the examples advertise --backend trio
    docs = {_name(r) for r in requires if "extra == \"docs\"" in r}
    assert {"mkdocs", "mkdocs-material", "mkdocstrings"} <= docs, docs
    assert "fireworks-ai" in dev, dev
    # torch (custom losses in torch) only behind its extra, which dev includes.
    torch_extra = {_name(r) for r in requires if "extra == \"torch\"" in r}
    assert "torch" not in plain and torch_extra == {"torch"}, torch_extra


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    "code",
    [
        "import firetitan_async",
        # `wait` and `checkpoints` parse and run without the local trainer.
        "from firetitan_async.cli._cli import build_parser; "
        "build_parser().parse_args(['wait', 'j'])",
    ],
)
def test_client_imports_no_server_package(code: str) -> None:
    proc = _fresh(
        f"{code}\nimport sys\n"
        f"print(sorted(m for m in {(*SERVER_PACKAGES, 'trio')!r} if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_the_client_imports_without_torch_and_a_torch_loss_names_the_extra() -> None:
    proc = _fresh(
        "import sys; sys.modules['torch'] = None\n"
        "import firetitan_async\n"
        "from firetitan_async._clients._custom_loss import run_custom_loss\n"
        "try:\n"
        "    run_custom_loss(firetitan_async.TorchLoss(print), [], [])\n"
        "except firetitan_async.InvalidInput as exc:\n"
        "    print(exc)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'firetitan_async[torch]'" in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("blocked", ["starlette", "uvicorn"])
def test_server_commands_name_the_extra_when_it_is_missing(command: str, blocked: str) -> None:
    proc = _fresh(
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from firetitan_async.cli._cli import main\n"
        f"raise SystemExit(main([{command!r}]))"
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "pip install 'firetitan_async[local]'" in proc.stderr, proc.stderr
    assert blocked in proc.stderr, proc.stderr
