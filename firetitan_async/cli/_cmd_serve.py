"""``firetitan-async serve``: run the local trainer until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING

from ..wire import paths
from ._cli import local_extra_missing

if TYPE_CHECKING:
    from ..local import LocalTrainer

__all__ = ["add_parser", "serve"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve``.

    Example::

        firetitan-async serve --port 8080 --latency-ms 20 --fault-rate 0.05 --log-level debug
    """
    parser = subparsers.add_parser(
        "serve",
        help="run the local trainer (Tinker data plane + trainer-job control plane)",
        description=(
            "Serve a wire-compatible Tinker trainer and the Fireworks trainer-job control plane "
            "on this machine, backed by a tiny numpy model under every base-model name it serves "
            "(--model). Point the "
            "tinker SDK at it with TINKER_BASE_URL, or firetitan_async with its base_url. "
            "Runs until Ctrl-C."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any)")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay every reply by this many ms"
    )
    parser.add_argument(
        "--warmup-s", type=float, default=0.0, help="how long a created trainer job warms up"
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="probability of a transient fault per data-plane request (0..1)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        dest="models",
        help="serve this base-model name (repeatable; 'accounts/<a>/models/<m>' or 'Org/Name', "
        "optionally ',tokenizer_id=ID,context=N,moe=false,vocab=N' or ',tokenizer=DIR' for "
        "the vocabulary size); local/tiny-byte-lm is always "
        "served. Default: accounts/fireworks/models/qwen3-8b and Qwen/Qwen3-8B",
    )
    parser.add_argument(
        "--deployment",
        action="append",
        default=None,
        metavar="ID[=MODEL]",
        dest="deployments",
        help="create this deployment (READY, hot-load enabled) at start, serving MODEL (default: "
        "the first served accounts/... model); recipes reattach to it with their deployment-id "
        "flag (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every model (default 0)")
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="where checkpoints are written (default: a temp dir removed on exit)",
    )
    parser.add_argument(
        "--api-key-env",
        default=None,
        metavar="VAR",
        help="require the API key held in environment variable VAR",
    )
    parser.add_argument(
        "--long-poll-s",
        type=float,
        default=30.0,
        help="longest hold of a retrieve_future poll (default 30)",
    )
    parser.add_argument(
        "--stall-s",
        type=float,
        default=0.0,
        help="stalled operations stay unfinished this long ('inf': forever; default 0: off)",
    )
    parser.add_argument(
        "--body-stall-s",
        type=float,
        default=0.0,
        help="a stalled operation's result body stops half-way this long ('inf': forever)",
    )
    parser.add_argument(
        "--stall-endpoint",
        default=None,
        help="only operations submitted here stall, e.g. forward_backward (default: any)",
    )
    parser.add_argument(
        "--stall-count",
        type=int,
        default=1,
        help="how many matching operations stall (0: all; default 1)",
    )
    parser.add_argument(
        "--no-fwdbwd-logprobs",
        action="store_true",
        help="forward_backward replies carry the aggregate loss but no per-token logprobs "
        "(like a dedicated Fireworks trainer)",
    )
    parser.add_argument(
        "--step-checkpoint-names",
        action="store_true",
        help="store every save_state as step-N, whatever name was asked for",
    )
    parser.add_argument(
        "--bare-checkpoint-list",
        action="store_true",
        help="leave timestamps and paths out of the tinker-form checkpoint listings",
    )
    parser.add_argument(
        "--inference-latency-ms",
        type=float,
        default=0.0,
        help="delay every completion of the local deployment by this many ms",
    )
    parser.add_argument(
        "--inference-max-concurrency",
        type=int,
        default=None,
        metavar="N",
        help="the local deployment answers 429 to completions beyond N in flight",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="'debug' logs one line per request",
    )
    parser.set_defaults(func=serve)


def _configure(trainer: LocalTrainer, args: argparse.Namespace, api_key: str | None) -> str | None:
    """Post the inference knobs and create the ``--deployment`` deployments on the running
    trainer; the error to print, or ``None``."""
    deployments = getattr(args, "deployments", None) or []
    if not (args.inference_latency_ms or args.inference_max_concurrency or deployments):
        return None
    import httpx

    from ..local._shapes import DEPLOYMENT_SHAPE

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if args.inference_latency_ms or args.inference_max_concurrency:
        knobs = {"latency_s": args.inference_latency_ms / 1000.0,
                 "max_concurrency": args.inference_max_concurrency}
        try:
            httpx.post(
                f"{trainer.base_url}/_local/inference/config", json=knobs, headers=headers
            ).raise_for_status()
        except httpx.HTTPError as exc:
            return f"configuring the local deployment failed: {exc}"
    fireworks_form = [m for m in trainer.model_names if m.startswith("accounts/")]
    url = f"{trainer.control_plane_url}/v1/accounts/{trainer.account_id}/deployments"
    for spec in deployments:
        dep_id, _, model = spec.partition("=")
        model = model or (fireworks_form or trainer.model_names)[0]
        body = {"baseModel": model, "enableHotLoad": True, "minReplicaCount": 1,
                "maxReplicaCount": 1, "deploymentShape": DEPLOYMENT_SHAPE}
        try:
            r = httpx.post(url, params={"deploymentId": dep_id}, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"creating deployment {dep_id!r} failed: {exc}"
        if r.status_code != 200:
            return f"creating deployment {dep_id!r} failed: {r.json().get('message', r.text)}"
    return None


def serve(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run the server described by ``args`` until Ctrl-C (or ``stop`` is set)."""
    try:
        from ..local import LocalTrainer  # the `local` extra: only here, when serving
    except ImportError as exc:
        return local_extra_missing("serve", exc)

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            print(f"error: environment variable {args.api_key_env} is not set", file=sys.stderr)
            return 2
    if args.inference_latency_ms < 0 or (args.inference_max_concurrency or 1) < 1:
        print("error: need --inference-latency-ms >= 0, --inference-max-concurrency >= 1",
              file=sys.stderr)
        return 2
    try:
        trainer = LocalTrainer(
            host=args.host,
            port=args.port,
            latency_s=args.latency_ms / 1000.0,
            warmup_s=args.warmup_s,
            fault_rate=args.fault_rate,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            api_key=api_key,
            long_poll_s=args.long_poll_s,
            stall_s=args.stall_s,
            body_stall_s=args.body_stall_s,
            stall_endpoint=args.stall_endpoint,
            stall_count=args.stall_count,
            forward_backward_logprobs=not args.no_fwdbwd_logprobs,
            checkpoint_step_names=args.step_checkpoint_names,
            checkpoint_list_details=not args.bare_checkpoint_list,
            models=getattr(args, "models", None),
        )
        trainer.start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    error = _configure(trainer, args, api_key)
    if error is not None:  # the trainer is running: stop it before leaving
        trainer.stop()
        print(f"error: {error}", file=sys.stderr)
        return 2
    stop = stop or threading.Event()
    try:
        print(f"local trainer serving {trainer.base_url}", flush=True)
        print(f"  data plane:    {trainer.base_url}{paths.PREFIX}/...", flush=True)
        print(
            f"  control plane: {trainer.control_plane_url}/v1/accounts/{trainer.account_id}"
            "/rlorTrainerJobs",
            flush=True,
        )
        print(
            f"  deployments:   {trainer.control_plane_url}/v1/accounts/{trainer.account_id}"
            "/deployments (hot-load, /inference/v1/completions)",
            flush=True,
        )
        print(f"  serverless:    {trainer.base_url}{paths.SERVERLESS_PREFIX}", flush=True)
        print(f"  base models:   {', '.join(trainer.model_names)}", flush=True)
        print(f"  export TINKER_BASE_URL={trainer.base_url}  (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        trainer.stop()
    return 0
