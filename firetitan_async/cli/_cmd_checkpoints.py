"""``firetitan-async checkpoints list``: the checkpoints a trainer holds."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from functools import partial
from typing import Any
from urllib.parse import quote

import anyio
from tinker import types

from .._http._environment import (
    CONTROL_PLANE_URL_VAR,
    DATA_PLANE_URL_VAR,
    resolve_api_key,
    resolve_setting,
)
from .._http._retry import RetryPolicy
from .._http._transport import Transport, check_url_security, is_loopback_url
from ..errors import APIStatusError, FiretitanError, ProtocolError
from ..platform._rest import DEFAULT_BASE_URL
from ..wire import paths
from ..wire.futures import validate_reply
from ._cli import CLI_RETRY, KEY_VARS, add_deprecated_alias, control_plane_url, print_table

__all__ = ["add_parser", "list_checkpoints"]



def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``checkpoints`` (with its ``list`` action).

    Example::

        firetitan-async checkpoints list --trainer-url http://127.0.0.1:8080 --run MODEL_ID
    """
    parser = subparsers.add_parser(
        "checkpoints",
        help="list a trainer's checkpoints (of one run, one job, or all of yours)",
        description="Inspect the checkpoints a Tinker-protocol trainer holds.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser(
        "list",
        help="list checkpoints",
        description=(
            "List checkpoints: those of one training run (--run), those made by one trainer "
            "job (--job), or all of yours. The API key comes from FIREWORKS_API_KEY, else "
            "TINKER_API_KEY (not needed for a local trainer started without one). Expired "
            "checkpoints are not listed."
        ),
    )
    listing.add_argument(
        "--trainer-url",
        default=None,
        metavar="URL",
        help=f"the trainer's data plane (default: ${DATA_PLANE_URL_VAR})",
    )
    listing.add_argument(
        "--control-plane-url",
        default=None,
        metavar="URL",
        help=f"with --control-plane: the Fireworks control plane (default: "
        f"${CONTROL_PLANE_URL_VAR}, else {DEFAULT_BASE_URL})",
    )
    add_deprecated_alias(
        listing,
        "--base-url",
        dest="base_url",
        instead="--trainer-url (or --control-plane-url with --control-plane)",
    )
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="MODEL_ID", help="a training run (its model id)")
    which.add_argument("--job", metavar="JOB_ID", help="a trainer job")
    listing.add_argument(
        "--limit", type=int, default=100, help="at most this many (all of yours / a job)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument(
        "--control-plane",
        action="store_true",
        help=(
            "list --job's checkpoints from the Fireworks control plane (--control-plane-url) "
            "instead, with whether each is promotable; works for stopped and deleted jobs too"
        ),
    )
    listing.set_defaults(func=_run_list)
    parser.set_defaults(func=partial(_no_action, parser))


def _no_action(parser: argparse.ArgumentParser, _args: argparse.Namespace) -> int:
    parser.print_help(sys.stderr)
    return 2


async def list_checkpoints(
    base_url: str,
    api_key: str | None,
    *,
    run: str | None = None,
    job: str | None = None,
    limit: int = 100,
    retry: RetryPolicy = CLI_RETRY,
) -> list[types.Checkpoint]:
    """The checkpoints of ``run`` (a model id), of ``job``, or all of the key's checkpoints.

    Opens no server-side session: it is one REST call, like the tinker SDK's ``RestClient``.

    Example::

        for ckpt in await list_checkpoints("http://127.0.0.1:8080", None, run=model_id):
            print(ckpt.checkpoint_id, ckpt.tinker_path)
    """
    records = await _fetch_records(base_url, api_key, run=run, job=job, limit=limit, retry=retry)
    return [validate_reply(types.Checkpoint, record, "checkpoint record") for record in records]


async def _fetch_records(
    base_url: str,
    api_key: str | None,
    *,
    run: str | None,
    job: str | None,
    limit: int,
    retry: RetryPolicy = CLI_RETRY,
) -> list[dict[str, Any]]:
    """The listing's raw records (with any extra fields the server adds, e.g. the Fireworks
    snapshot type), each checked to have the tinker ``Checkpoint`` shape."""
    transport = Transport(base_url, api_key, timeout=30.0, retry=retry)
    try:
        if run is not None:
            reply = await transport.call("GET", paths.run_checkpoints(quote(run, safe=":")))
        else:
            params: dict[str, str | int] = {"limit": limit}
            if job is not None:
                params["job_id"] = job
            reply = await transport.call("GET", paths.CHECKPOINTS, params=params)
    finally:
        await transport.aclose()
    # A malformed listing is a ProtocolError naming the fields only (pydantic's own message
    # quotes the values, cut: a cut key is one the redactor no longer recognises).
    validate_reply(types.CheckpointsListResponse, reply, "checkpoint listing")
    return [dict(record) for record in reply["checkpoints"]]


def _fail(message: str, code: int = 1) -> int:
    print(f"firetitan-async checkpoints: {message}", file=sys.stderr)
    return code


def _run_control_plane_list(args: argparse.Namespace) -> int:
    from ..platform import JobCheckpoint, TrainerJobs  # only this mode needs the control plane

    if not args.job:
        return _fail("--control-plane lists one trainer job's checkpoints: pass --job JOB_ID", 2)
    base_url = control_plane_url(args.control_plane_url or getattr(args, "base_url", None))
    try:
        jobs = TrainerJobs(base_url=base_url, retry=CLI_RETRY)
    except (ValueError, FiretitanError) as exc:  # bad URL, missing key
        return _fail(str(exc), 2)

    async def fetch() -> list[JobCheckpoint]:
        async with jobs:
            return await jobs.list_checkpoints(args.job)

    try:
        rows = anyio.run(fetch)
    except APIStatusError as exc:
        if exc.status_code in (401, 403):
            return _fail(f"the control plane at {base_url} refused the API key ({exc})")
        if exc.status_code == 404:
            return _fail(f"the control plane at {base_url} knows no job {args.job!r} ({exc})")
        return _fail(f"the control plane at {base_url} answered {exc}")
    except FiretitanError as exc:
        return _fail(f"cannot reach the control plane at {base_url}: {exc}")
    if args.json:
        print(json.dumps([dict(row.raw) for row in rows], indent=2))
        return 0
    if not rows:
        print("no checkpoints")
        return 0
    print_table(
        ("CHECKPOINT", "TYPE", "PROMOTABLE", "CREATED"),
        [
            (
                row.checkpoint_id,
                row.checkpoint_type or "-",
                "yes" if row.promotable else "no",
                row.create_time or "-",
            )
            for row in rows
        ],
    )
    return 0


def _run_list(args: argparse.Namespace) -> int:
    if args.control_plane:
        return _run_control_plane_list(args)
    trainer_url = args.trainer_url or getattr(args, "base_url", None)
    base_url = resolve_setting(trainer_url, DATA_PLANE_URL_VAR)
    if not base_url:
        return _fail(f"no trainer URL: pass --trainer-url URL or set {DATA_PLANE_URL_VAR}", 2)
    try:
        base_url = check_url_security(base_url, allow_insecure_http=False)
    except ValueError as exc:
        return _fail(str(exc), 2)
    api_key = resolve_api_key(None)
    if api_key is None and not is_loopback_url(base_url):
        return _fail(f"no API key: set {' or '.join(KEY_VARS)}", 2)
    if args.limit < 1:
        return _fail(f"--limit must be >= 1, got {args.limit}", 2)
    try:
        records = anyio.run(
            partial(_fetch_records, base_url, api_key, run=args.run, job=args.job, limit=args.limit)
        )
    except APIStatusError as exc:
        if exc.status_code in (401, 403):
            hint = "set FIREWORKS_API_KEY" if api_key is None else "check FIREWORKS_API_KEY"
            return _fail(f"the trainer at {base_url} refused the API key ({exc}); {hint}")
        if exc.status_code == 404 and (args.run or args.job):
            what = f"run {args.run!r}" if args.run else f"job {args.job!r}"
            return _fail(f"the trainer at {base_url} knows no {what} ({exc})")
        return _fail(f"the trainer at {base_url} answered {exc}")
    except ProtocolError as exc:
        return _fail(f"the trainer at {base_url} sent an unexpected listing: {exc}")
    except FiretitanError as exc:
        return _fail(f"cannot reach the trainer at {base_url}: {exc}")
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        _print_table(records)
    return 0


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    size = value / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _print_table(records: list[dict[str, Any]]) -> None:
    if not records:
        print("no checkpoints")
        return
    rows = []
    for record in records:
        ckpt = types.Checkpoint.model_validate(record)
        kind: str = ckpt.checkpoint_type
        if isinstance(snapshot := record.get("snapshot_type"), str):
            kind = f"{kind}/{snapshot}"  # Fireworks base/delta sampler snapshots
        rows.append(
            (
                ckpt.checkpoint_id,
                kind,
                _when(ckpt.time),
                _when(ckpt.expires_at),
                _size(ckpt.size_bytes),
                ckpt.tinker_path,
            )
        )
    print_table(("CHECKPOINT", "TYPE", "CREATED", "EXPIRES", "SIZE", "PATH"), rows)
