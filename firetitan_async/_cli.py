"""The ``firetitan-async`` command line: one subcommand per module ``_cmd_<name>.py``.

Each command module exposes ``add_parser(subparsers)`` (registering its arguments and setting
``func``) and is listed in ``_COMMAND_MODULES`` below. What the control-plane commands share
(``--account-id``/``--base-url`` and their environment fallbacks, the short retry policy) is
here too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Final

from ._redact import Redactor
from ._retry import RetryPolicy
from .platform._rest import DEFAULT_BASE_URL

# The packages of the `local` extra: the local trainer needs them, the client never does.
_LOCAL_EXTRA_PACKAGES = frozenset({"starlette", "uvicorn", "threadpoolctl"})

# Subcommand modules, in the order ``--help`` lists them. Each is ``firetitan_async._cmd_<name>``.
_COMMAND_MODULES: tuple[str, ...] = ("serve", "demo", "wait", "jobs", "checkpoints")


#: A command should report an unreachable control plane in seconds, not after minutes of retries.
CLI_RETRY: Final = RetryPolicy(max_attempts=3, backoff_base_s=0.2, deadline_s=15.0)
ACCOUNT_VAR: Final = "FIREWORKS_ACCOUNT_ID"
CONTROL_PLANE_URL_VAR: Final = "FIREWORKS_BASE_URL"
#: Where the commands read API keys from (``serve --api-key-env VAR`` adds VAR).
KEY_VARS: Final = ("FIREWORKS_API_KEY", "TINKER_API_KEY")


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="firetitan-async",
        description="asyncio/trio-native client and local trainer for Tinker-protocol trainers.",
        epilog=(
            "examples:\n"
            "  firetitan-async demo                      # RL demo against an embedded trainer\n"
            "  firetitan-async serve --port 8080         # a local trainer for your own code\n"
            "  firetitan-async wait JOB_ID               # wait for a Fireworks trainer job\n"
            "  firetitan-async jobs list --orphans       # jobs/deployments nothing owns\n"
            "  firetitan-async checkpoints list --run MODEL_ID --base-url URL"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"firetitan_async._cmd_{name}")
        module.add_parser(subparsers)
    return parser


def local_extra_missing(command: str, exc: ImportError) -> int:
    """Explain that ``command`` needs the ``local`` extra and return exit code 2.

    Re-raises ``exc`` when the missing module is not one of the extra's packages.
    """
    package = (exc.name or "").split(".")[0]
    if package not in _LOCAL_EXTRA_PACKAGES:
        raise exc
    print(
        f"firetitan-async {command}: the local trainer needs the 'local' extra "
        f"({package} is not installed): pip install 'firetitan_async[local]'",
        file=sys.stderr,
    )
    return 2


def add_control_plane_args(parser: argparse.ArgumentParser) -> None:
    """Register ``--account-id`` and ``--base-url`` (the control plane) on ``parser``."""
    parser.add_argument(
        "--account-id",
        default=None,
        help=f"the Fireworks account (default: ${ACCOUNT_VAR}, else resolved from the key)",
    )
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"the control-plane URL (default: ${CONTROL_PLANE_URL_VAR}, else {DEFAULT_BASE_URL})",
    )


def control_plane_url(explicit: str | None) -> str:
    """``explicit``, else ``$FIREWORKS_BASE_URL``, else the Fireworks API."""
    return explicit or os.environ.get(CONTROL_PLANE_URL_VAR) or DEFAULT_BASE_URL


def control_plane_account(explicit: str | None) -> str | None:
    """``explicit``, else ``$FIREWORKS_ACCOUNT_ID``, else None (resolved from the key)."""
    return explicit or os.environ.get(ACCOUNT_VAR) or None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    # Every line the command prints, on stdout and stderr, passes the redactor: the keys it
    # may hold (a server's reply, an exception's text, a pydantic input_value) never show.
    redactor = Redactor.of(*(os.environ.get(v) for v in _key_vars(args)))
    with (
        contextlib.redirect_stdout(redactor.writer(sys.stdout)),
        contextlib.redirect_stderr(redactor.writer(sys.stderr)),
    ):
        try:
            return int(func(args))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _key_vars(args: argparse.Namespace) -> list[str]:
    """The environment variables that may hold an API key for this command."""
    names = list(KEY_VARS)
    if getattr(args, "api_key_env", None):
        names.append(args.api_key_env)
    return names
