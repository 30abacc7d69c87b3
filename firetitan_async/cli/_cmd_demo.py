"""``firetitan-async demo``: the RL demo against an embedded local trainer."""

from __future__ import annotations

import argparse
import sys

import anyio

from .._signals import Interrupted, cleanup_on_signals
from ..errors import FiretitanError
from ._cli import local_extra_missing

__all__ = ["add_parser"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``.

    Example::

        firetitan-async demo --steps 30 --backend trio --latency-ms 20
    """
    parser = subparsers.add_parser(
        "demo",
        help="run an RL loop (trainer job + deployment) on an embedded local trainer (8–11 s)",
        description=(
            "Start an embedded local trainer and run an RL loop the way it runs on Fireworks: "
            "create a trainer job on its control plane and wait until it is RUNNING, create an "
            "inference deployment, then train a tiny byte-level model to answer 'Say: ' with a "
            "target word, publishing the weights to the deployment every step (a base, then "
            "deltas) and sampling the rollouts from it. Prints a live table (step, loss, mean "
            "reward, operations in flight, published / served policy version, snapshot) and "
            "samples before and after. --dialect tinker samples from the trainer instead (no "
            "job, no deployment). Needs no network and no API key."
        ),
    )
    parser.add_argument(
        "--steps", type=_positive_int, default=30, help="training steps (default: 30)"
    )
    parser.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop to run on (default: asyncio)",
    )
    parser.add_argument(
        "--latency-ms",
        type=_non_negative_float,
        default=0.0,
        help="delay every local trainer reply by this much, to watch pipelining hide it",
    )
    parser.add_argument("--seed", type=int, default=0, help="model and sampling seed")
    parser.add_argument(
        "--target", default="async", help="the word the model learns to say (default: async)"
    )
    parser.add_argument(
        "--loss",
        choices=("importance_sampling", "ppo"),
        default="importance_sampling",
        help="policy-gradient loss (default: importance_sampling)",
    )
    parser.add_argument(
        "--warmup-s",
        type=_non_negative_float,
        default=1.0,
        help="how long the local trainer job warms up before it is RUNNING (default: 1)",
    )
    parser.add_argument(
        "--dialect",
        choices=("fireworks", "tinker", "auto"),
        default="fireworks",
        help="fireworks: trainer job + deployment, rollouts from the deployment (default); "
        "tinker: a tinker session, rollouts from the trainer; auto: what a session picks",
    )
    parser.add_argument(
        "--control-plane-url",
        default=None,
        metavar="URL",
        help="use the local trainer at URL (firetitan-async serve) instead of an embedded one",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        from ._demo import DemoConfig, run_demo  # the `local` extra: imported only to run
    except ImportError as exc:
        return local_extra_missing("demo", exc)

    try:
        config = DemoConfig(
            steps=args.steps,
            target=args.target,
            loss_fn=args.loss,
            seed=args.seed,
            latency_s=args.latency_ms / 1000.0,
            warmup_s=args.warmup_s,
            dialect=args.dialect,
        )
    except ValueError as exc:
        print(f"firetitan-async demo: {exc}", file=sys.stderr)
        return 2

    def emit(line: str) -> None:
        print(line, flush=True)

    async def main() -> None:
        # SIGINT/SIGTERM cancel the run: the session ends and the trainer job is deleted.
        async with cleanup_on_signals():
            await run_demo(config, emit=emit, control_plane_url=args.control_plane_url)

    try:
        anyio.run(main, backend=args.backend)
    except Interrupted as exc:
        print(f"firetitan-async demo: {exc}", file=sys.stderr)
        return exc.exit_code
    except FiretitanError as exc:
        print(f"firetitan-async demo: failed: {exc}", file=sys.stderr)
        return 1
    return 0
