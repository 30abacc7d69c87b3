"""``firetitan-async jobs list [--orphans] [--delete]``: live trainer jobs and deployments, with
their owners (see :mod:`firetitan_async.platform._orphans` for what "owned" means)."""

from __future__ import annotations

import argparse
import sys
from functools import partial

import anyio

from ..errors import FiretitanError
from ..platform import Deployments, TrainerJobs
from ..platform._orphans import LiveResource, live_resources
from ._cli import (
    CLI_RETRY,
    add_control_plane_args,
    control_plane_account,
    control_plane_url,
    print_table,
)

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``jobs list``.

    Example::

        firetitan-async jobs list --orphans --control-plane-url http://127.0.0.1:8080
    """
    parser = subparsers.add_parser(
        "jobs",
        help="list live trainer jobs and deployments and who owns them (--orphans)",
        description=(
            "List trainer jobs (CREATING, PENDING, RUNNING) and deployments (not deleted, not "
            "scaled to zero) with their owner: 'owned' (the firetitan-async process that "
            "created it still runs), 'orphan' (that process, on this host, is gone), 'unknown' "
            "(created on another host) or 'unmanaged' (no owner tag). The API key comes from "
            "$FIREWORKS_API_KEY (not needed for a local trainer on loopback). Exit status: 0, "
            "or 1 if the control plane failed, 3 if --orphans found some."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list live jobs and deployments")
    listing.add_argument("--orphans", action="store_true", help="only the orphans")
    listing.add_argument(
        "--delete", action="store_true", help="delete the orphans listed (implies --orphans)"
    )
    listing.add_argument(
        "--no-deployments", action="store_true", help="trainer jobs only"
    )
    add_control_plane_args(listing)
    listing.set_defaults(func=_run_list)


def _run_list(args: argparse.Namespace) -> int:
    account_id = control_plane_account(args.account_id)
    base_url = control_plane_url(args.control_plane_url)
    orphans_only = args.orphans or args.delete
    try:
        found = anyio.run(
            partial(_list, base_url, account_id, not args.no_deployments, args.delete)
        )
    except (ValueError, FiretitanError) as exc:  # bad URL, missing key, control plane
        print(f"firetitan-async jobs: {exc}", file=sys.stderr)
        return 1
    shown = [r for r in found if r.is_orphan or not orphans_only]
    if shown:
        print_table(
            ("KIND", "ID", "STATE", "OWNER STATUS", "OWNER"),
            [
                (item.kind, item.resource_id, item.state, item.owner_status, item.owner or "-")
                for item in shown
            ],
        )
    else:
        print("no orphans" if orphans_only else "nothing live", file=sys.stderr)
    return 3 if args.orphans and not args.delete and shown else 0


async def _list(
    base_url: str, account_id: str | None, with_deployments: bool, delete: bool
) -> list[LiveResource]:
    async with (
        TrainerJobs(account_id=account_id, base_url=base_url, retry=CLI_RETRY) as jobs,
        Deployments(account_id=account_id, base_url=base_url, retry=CLI_RETRY) as deployments,
    ):
        found = await live_resources(jobs, deployments if with_deployments else None)
        if delete:
            for item in found:
                if not item.is_orphan:
                    continue
                if item.kind == "job":
                    await jobs.delete(item.resource_id)
                else:
                    await deployments.delete(item.resource_id)
                print(f"deleted {item.kind} {item.resource_id}", file=sys.stderr)
        return found
