"""``firetitan-async wait JOB_ID``: wait until a trainer job is ready, showing its progress."""

from __future__ import annotations

import argparse
import math
import sys
from functools import partial
from typing import TextIO

import anyio

from .._http._environment import API_KEY_VARS
from ..errors import (
    APIStatusError,
    FiretitanError,
    InvalidInput,
    ReadinessTimeout,
    TrainerJobFailed,
)
from ..platform import ReadinessProgress, TrainerEndpoint, TrainerJobs
from ._cli import CLI_RETRY, add_control_plane_args, control_plane_account, control_plane_url

__all__ = ["add_parser", "wait_for_job"]



def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``wait``.

    Example::

        firetitan-async wait my-job --control-plane-url http://127.0.0.1:8080
    """
    parser = subparsers.add_parser(
        "wait",
        help="wait until a trainer job is RUNNING and its trainer answers",
        description=(
            "Poll a service-mode trainer job until it is RUNNING and its trainer answers, "
            "printing a line per state change on stderr and finally the trainer URL on stdout. "
            f"The API key comes from ${API_KEY_VARS[0]} or ${API_KEY_VARS[1]} "
            "(not needed for a local trainer on loopback). "
            "Exit status: 0 ready, 1 failed or timed out, 2 usage error."
        ),
    )
    parser.add_argument("job_id", metavar="JOB_ID", help="the job id (or its full resource name)")
    add_control_plane_args(parser)
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, metavar="S", help="seconds between polls"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        metavar="S",
        help="give up after S seconds once the job has capacity (not PENDING)",
    )
    parser.add_argument(
        "--pending-timeout",
        type=float,
        default=48 * 3600.0,
        metavar="S",
        help="give up after S seconds waiting for capacity (PENDING; default 48 h)",
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="do not wait for the trainer's health check, only for the RUNNING state",
    )
    parser.set_defaults(func=_run_wait)


async def wait_for_job(
    jobs: TrainerJobs,
    job_id: str,
    *,
    poll_interval_s: float = 5.0,
    timeout_s: float = 900.0,
    pending_timeout_s: float = 48 * 3600.0,
    probe_data_plane: bool = True,
    out: TextIO | None = None,
) -> TrainerEndpoint:
    """Wait for ``job_id`` like :meth:`TrainerJobs.wait_for_ready`, writing a line to ``out``
    (default stderr) each time the job's state (or what it waits for) changes.

    Example::

        async with TrainerJobs() as jobs:
            endpoint = await wait_for_job(jobs, "my-job", poll_interval_s=2)
    """
    stream = out if out is not None else sys.stderr
    shown: list[tuple[str, str | None]] = []

    def show(progress: ReadinessProgress) -> None:
        key = (progress.state, progress.message)
        if shown and shown[-1] == key:
            return
        shown.append(key)
        detail = f"  ({progress.message})" if progress.message else ""
        print(f"{progress.state:<10} after {progress.elapsed_s:7.1f}s{detail}", file=stream)
        stream.flush()

    return await jobs.wait_for_ready(
        job_id,
        poll_interval_s=poll_interval_s,
        timeout_s=timeout_s,
        pending_timeout_s=pending_timeout_s,
        on_progress=show,
        probe_data_plane=probe_data_plane,
    )


def _fail(message: str, code: int = 1) -> int:
    print(f"firetitan-async wait: {message}", file=sys.stderr)
    return code


def _run_wait(args: argparse.Namespace) -> int:
    account_id = control_plane_account(args.account_id)
    base_url = control_plane_url(args.control_plane_url)
    for name, value in (
        ("--poll-interval", args.poll_interval),
        ("--timeout", args.timeout),
        ("--pending-timeout", args.pending_timeout),
    ):
        if not math.isfinite(value) or value <= 0:
            return _fail(f"{name} must be a number > 0, got {value}", 2)
    try:
        jobs = TrainerJobs(account_id=account_id, base_url=base_url, retry=CLI_RETRY)
    except (ValueError, FiretitanError) as exc:  # bad URL, bad account, missing key
        return _fail(str(exc), 2)
    try:
        endpoint = anyio.run(
            partial(
                _wait,
                jobs,
                args.job_id,
                poll_interval_s=args.poll_interval,
                timeout_s=args.timeout,
                pending_timeout_s=args.pending_timeout,
                probe_data_plane=not args.no_probe,
            )
        )
    except InvalidInput as exc:
        return _fail(str(exc), 2)
    except TrainerJobFailed as exc:
        return _fail(str(exc))
    except ReadinessTimeout as exc:
        return _fail(str(exc))
    except APIStatusError as exc:
        if exc.status_code in (401, 403):
            var = API_KEY_VARS[0]
            hint = f"set {var}" if not jobs.has_api_key else f"check {var}"
            return _fail(f"the control plane at {base_url} refused the API key ({exc}); {hint}")
        if exc.status_code == 404:
            where = f"account {account_id!r}" if account_id else "the key's account"
            return _fail(f"no trainer job {args.job_id!r} in {where} ({exc})")
        return _fail(f"the control plane at {base_url} answered {exc}")
    except FiretitanError as exc:
        return _fail(f"cannot reach the control plane at {base_url}: {exc}")
    print(endpoint.base_url)
    return 0


async def _wait(
    jobs: TrainerJobs,
    job_id: str,
    *,
    poll_interval_s: float,
    timeout_s: float,
    pending_timeout_s: float,
    probe_data_plane: bool,
) -> TrainerEndpoint:
    async with jobs:
        await jobs.get(job_id)  # fail fast on a bad URL, key or job id before polling
        return await wait_for_job(
            jobs,
            job_id,
            poll_interval_s=poll_interval_s,
            timeout_s=timeout_s,
            pending_timeout_s=pending_timeout_s,
            probe_data_plane=probe_data_plane,
        )
