"""Conformance: tinker-cookbook's recipes, unmodified, train against the local trainer.

tinker-cookbook (from the package registry, in a venv of its own: ``.ci/tinker-cookbook.txt``,
which ``.ci/run`` installs) runs four recipes as its users run them, ``python -m <recipe>
key=value ...``: the SL loop (``recipes/sl_loop.py``), the RL loop (``recipes/rl_loop.py``),
math RL (``recipes/math_rl/train.py``, the RL framework's loop) and DPO
(``recipes/preference/dpo/train.py``). What they get is configuration only: a model
name the cookbook's model table knows (served by the trainer under that name), a tokenizer
directory of that name in the working directory (``write_byte_tokenizer``: ids are bytes, as
the tiny model's), and a few rows of each dataset, written where ``datasets.load_dataset``
finds a hub name offline (a local directory of that name). The hub, W&B and telemetry are off.

The four recipes run at once (each is mostly interpreter start-up: torch, transformers,
datasets), each with its own session, so the trainer's counters tell the runs apart.

Which python runs them: ``FIRETITAN_TINKER_COOKBOOK_PYTHON`` (CI sets it; it must then exist),
else ``.venv-tinker-cookbook/bin/python`` in the repository if present, else the tests skip.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firetitan_async.local import LocalTrainer, write_byte_tokenizer

pytestmark = pytest.mark.conformance

COOKBOOK_VERSION = "0.5.8"
MODEL = "Qwen/Qwen3-8B-Base"  # in the cookbook's model table, with the role_colon renderer
STEPS = 2
TIMEOUT_S = 300.0
REPO = Path(__file__).resolve().parents[2]


def _cookbook_python() -> Path | None:
    configured = os.environ.get("FIRETITAN_TINKER_COOKBOOK_PYTHON")
    if configured:
        return Path(configured)
    default = REPO / ".venv-tinker-cookbook" / "bin" / "python"
    return default if default.exists() else None


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _write_datasets(root: Path) -> None:
    """A few rows of each hub dataset the three recipes load, in the dataset's own columns."""
    words = ["hi", "yes", "no", "ok", "red", "blue", "one", "two"]
    chats = [
        {
            "prompt": f"Say {w}.",
            "prompt_id": str(i),
            "messages": [
                {"role": "user", "content": f"Say {w}."},
                {"role": "assistant", "content": f"{w.capitalize()}!"},
            ],
            "category": "Chat",
        }
        for i, w in enumerate(words)
    ]
    _jsonl(root / "HuggingFaceH4" / "no_robots" / "train.jsonl", chats)
    _jsonl(root / "HuggingFaceH4" / "no_robots" / "test.jsonl", chats[:2])

    sums = [
        {
            "question": f"What is {a} + {b}?",
            "answer": f"{a} + {b} = <<{a}+{b}={a + b}>>.\n#### {a + b}",
        }
        for a, b in [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (7, 8), (8, 9)]
    ]
    gsm8k = root / "openai" / "gsm8k"
    _jsonl(gsm8k / "main" / "train.jsonl", sums)
    _jsonl(gsm8k / "main" / "test.jsonl", sums[:2])
    # The hub repository's layout: a dataset card naming the "main" configuration's files.
    (gsm8k / "README.md").write_text(
        "---\nconfigs:\n- config_name: main\n  data_files:\n"
        "  - split: train\n    path: main/train.jsonl\n"
        "  - split: test\n    path: main/test.jsonl\n---\n"
    )

    colours = ["Red", "Blue", "Green", "Teal", "Pink", "Gold", "Gray", "Navy"]
    pairs = [
        {
            "chosen": f"\n\nHuman: Name a colour.\n\nAssistant: {c}.",
            "rejected": "\n\nHuman: Name a colour.\n\nAssistant: I would rather not.",
        }
        for c in colours
    ]
    _jsonl(root / "Anthropic" / "hh-rlhf" / "train.jsonl", pairs)
    _jsonl(root / "Anthropic" / "hh-rlhf" / "test.jsonl", pairs[:4])


RECIPES: dict[str, list[str]] = {
    "sl_loop": [
        "tinker_cookbook.recipes.sl_loop",
        f"model_name={MODEL}",
        "batch_size=4",
        f"max_steps={STEPS}",
    ],
    "rl_loop": [
        "tinker_cookbook.recipes.rl_loop",
        f"model_name={MODEL}",
        "batch_size=2",
        "group_size=4",
        "max_tokens=16",
        f"max_steps={STEPS}",
    ],
    "dpo": [
        "tinker_cookbook.recipes.preference.dpo.train",
        f"model_name={MODEL}",
        "dataset=hhh",
        "batch_size=4",
        f"max_steps={STEPS}",
        "behavior_if_log_dir_exists=delete",
    ],
    "math_rl": [
        "tinker_cookbook.recipes.math_rl.train",
        f"model_name={MODEL}",
        "env=arithmetic",
        "group_size=4",
        "groups_per_batch=2",
        "max_tokens=8",
        f"max_steps={STEPS}",
        "behavior_if_log_dir_exists=delete",
    ],
}


@dataclass
class Run:
    """One recipe's run: its exit status, output and log directory."""

    returncode: int
    output: str
    log_path: Path
    seconds: float

    def metrics(self) -> list[dict[str, Any]]:
        lines = (self.log_path / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def final_checkpoint(self) -> dict[str, Any]:
        lines = (self.log_path / "checkpoints.jsonl").read_text().splitlines()
        finals: list[dict[str, Any]] = [json.loads(line) for line in lines if '"final"' in line]
        assert len(finals) == 1, lines
        return finals[0]

    def model_id(self) -> str:
        # tinker://<model id>/weights/final
        state_path = str(self.final_checkpoint()["state_path"])
        assert state_path.startswith("tinker://") and state_path.endswith("/weights/final")
        return state_path.removeprefix("tinker://").removesuffix("/weights/final")


@dataclass
class Runs:
    trainer: LocalTrainer
    before: dict[str, Any]
    runs: dict[str, Run]

    def ok(self, name: str) -> Run:
        run = self.runs[name]
        assert run.returncode == 0, f"{name} exited {run.returncode}:\n{run.output[-6000:]}"
        return run


@pytest.fixture(scope="module")
def cookbook_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    python = _cookbook_python()
    if python is None:
        pytest.skip(
            "tinker-cookbook is not installed: python3 -m venv .venv-tinker-cookbook && "
            ".venv-tinker-cookbook/bin/pip install -r .ci/tinker-cookbook.txt "
            "--extra-index-url https://download.pytorch.org/whl/cpu"
        )
    assert python.exists(), f"FIRETITAN_TINKER_COOKBOOK_PYTHON={python} does not exist"
    version = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; "
            "print(m.version('tinker-cookbook'), m.version('tinker'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert version[0] == COOKBOOK_VERSION and version[1].startswith("0.38."), version

    work = tmp_path_factory.mktemp("tinker_cookbook")
    write_byte_tokenizer(work / MODEL)
    _write_datasets(work)

    with LocalTrainer(seed=0, models=[f"{MODEL},tokenizer_id={MODEL}"]) as trainer:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PYTHON", "VIRTUAL_ENV", "TINKER_", "HF_", "WANDB_"))
        }
        env.update(
            TINKER_BASE_URL=trainer.base_url,
            TINKER_API_KEY="tml-local-cookbook",
            TINKER_TELEMETRY="0",
            HF_HOME=str(work / "hf-home"),
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            WANDB_MODE="disabled",
            TOKENIZERS_PARALLELISM="false",
        )
        before = trainer.stats()
        started = time.monotonic()
        procs = {}
        for name, argv in RECIPES.items():
            with (work / f"{name}.out").open("w") as out:
                procs[name] = subprocess.Popen(
                    [str(python), "-m", *argv, f"log_path={work / 'runs' / name}"],
                    cwd=work,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        runs: dict[str, Run] = {}
        try:
            for name, proc in procs.items():
                left = max(1.0, TIMEOUT_S - (time.monotonic() - started))
                try:
                    code = proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait()
                runs[name] = Run(
                    returncode=code,
                    output=(work / f"{name}.out").read_text(errors="replace"),
                    log_path=work / "runs" / name,
                    seconds=time.monotonic() - started,
                )
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        print({name: round(run.seconds, 1) for name, run in runs.items()}, file=sys.stderr)
        yield Runs(trainer, before, runs)


def _finite(values: list[Any]) -> bool:
    return bool(values) and all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_sl_loop_trains_on_the_chat_rows_and_saves_a_checkpoint(cookbook_runs: Runs) -> None:
    run = cookbook_runs.ok("sl_loop")
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(STEPS))
    nll = [m["train_mean_nll"] for m in metrics]
    assert _finite(nll) and all(v > 0 for v in nll), metrics
    # batch_size=4 conversations of a few dozen byte tokens each.
    assert all(m["num_sequences"] == 4 and m["num_tokens"] > 4 * 10 for m in metrics), metrics
    assert run.final_checkpoint()["sampler_path"].endswith("/sampler_weights/final")
    stats = cookbook_runs.trainer.stats()
    assert stats["optim_steps_applied"][run.model_id()] == STEPS


def test_rl_loop_samples_groups_scores_them_and_saves_a_checkpoint(cookbook_runs: Runs) -> None:
    run = cookbook_runs.ok("rl_loop")
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(STEPS))
    # A random byte model never writes "\boxed{N}": every group scores 0, so the loop skips its
    # training step (it trains only on groups whose rewards differ). The math RL run below is
    # the one whose RL step reaches the trainer.
    assert [m["reward/total"] for m in metrics] == [0.0] * STEPS, metrics
    for batch in range(STEPS):
        assert f"Sampling batch {batch}: 100%" in run.output
        assert f"Batch {batch}: all advantages zero, skipping training step" in run.output
    assert run.final_checkpoint()["state_path"].endswith("/weights/final")
    assert run.model_id() not in cookbook_runs.trainer.stats()["optim_steps_applied"]


def test_math_rl_trains_with_importance_sampling_on_its_own_samples(cookbook_runs: Runs) -> None:
    run = cookbook_runs.ok("math_rl")
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(STEPS))
    for m in metrics:
        # groups_per_batch=2 x group_size=4 single-turn episodes of at most max_tokens=8.
        assert m["env/all/total_episodes"] == 8, m
        assert 0 < m["env/all/ac_tokens_per_turn"] <= 8, m
        assert _finite([m["env/all/reward/total"], m["optim/entropy"]]), m
        # The sampler's logprobs of the sampled tokens are the trainer's (same weights, same
        # model): the sampled-vs-trained KL the recipe measures is ~0.
        assert abs(m["optim/kl_sample_train_v1"]) < 1e-3, m
        assert 0.0 < m["optim/entropy"] <= math.log(257) + 1e-3, m
    assert cookbook_runs.trainer.stats()["optim_steps_applied"][run.model_id()] == STEPS


def test_dpo_trains_on_the_preference_pairs_against_a_reference(cookbook_runs: Runs) -> None:
    run = cookbook_runs.ok("dpo")
    metrics = run.metrics()
    assert [m["step"] for m in metrics] == list(range(STEPS))
    losses = [m["dpo_loss"] for m in metrics]
    assert _finite(losses), metrics
    # The first step's policy is the reference: the DPO loss is ln 2, margins 0.
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3), losses
    assert all(m["num_pairs"] == 4 for m in metrics), metrics
    assert _finite([m["test/nll"] for m in metrics])
    stats = cookbook_runs.trainer.stats()
    assert stats["optim_steps_applied"][run.model_id()] == STEPS


def test_the_trainer_saw_each_recipes_operations(cookbook_runs: Runs) -> None:
    for name in RECIPES:
        cookbook_runs.ok(name)
    before = cookbook_runs.before["requests"]
    after = cookbook_runs.trainer.stats()["requests"]
    seen = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # One training session per recipe (DPO's reference is a sampling client of the base model).
    assert seen["create_model"] == len(RECIPES), seen
    # SL, DPO and math RL train STEPS times each (the RL loop skips, see above).
    assert seen["forward_backward"] >= 3 * STEPS, seen
    assert seen["optim_step"] == 3 * STEPS, seen
    # RL loop: one sample request per prompt per step; math RL: one per episode per step.
    assert seen["asample"] >= 2 * STEPS + 8 * STEPS, seen
    # Both RL recipes save sampler weights every step; every recipe saves them at the end.
    assert seen["save_weights_for_sampler"] >= 2 * STEPS + len(RECIPES), seen
    # Every recipe's final checkpoint: state and sampler weights.
    assert seen["save_weights"] >= len(RECIPES), seen
