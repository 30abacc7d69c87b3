"""The ``firetitan-async`` command line: one subcommand per module ``_cmd_<name>.py``.

Each command module exposes ``add_parser(subparsers)`` (registering its arguments and setting
``func``) and is listed in ``_COMMAND_MODULES`` below. What the control-plane commands share
(``--account-id``/``--control-plane-url`` and their environment fallbacks, the short retry
policy) is here too, and so are the rules every subcommand's help follows: one meaning per
flag (``--control-plane-url`` is the Fireworks control plane, ``--trainer-url`` a trainer's data
plane), defaults shown in ``--help``, and deprecated spellings that still work but say so on
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, Final

from .._http._environment import (
    ACCOUNT_VAR,
    API_KEY_VARS,
    CONTROL_PLANE_URL_VAR,
    resolve_setting,
)
from .._http._redact import Redactor
from .._http._retry import RetryPolicy
from .._version import __version__
from ..platform._rest import DEFAULT_BASE_URL

# The packages of the `local` extra: the local trainer needs them, the client never does.
_LOCAL_EXTRA_PACKAGES = frozenset({"starlette", "uvicorn", "threadpoolctl"})

# Subcommand modules, in the order ``--help`` lists them. Each is ``cli._cmd_<name>``.
_COMMAND_MODULES: tuple[str, ...] = ("serve", "demo", "wait", "jobs", "checkpoints")


#: A command should report an unreachable control plane in seconds, not after minutes of retries.
CLI_RETRY: Final = RetryPolicy(max_attempts=3, backoff_base_s=0.2, deadline_s=15.0)
#: Where the commands read API keys from (``serve --api-key-env VAR`` adds VAR).
KEY_VARS: Final = API_KEY_VARS


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default in ``--help`` (unless its help already states it, or there
    is none to show: ``None``, a flag's ``False``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.option_strings
            and action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and "default" not in text
            and text != argparse.SUPPRESS
        ):
            text = f"{text} (default: %(default)s)".lstrip()
        return text


class _EpilogHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: its epilog of examples keeps its lines."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help shows defaults; its subparsers are ``_Parser`` too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores like the new one and warns on stderr.

    Kept one release after the rename, then removed.
    """

    def __init__(self, *args: Any, instead: str, **kwargs: Any) -> None:
        self.instead = instead
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the "
            f"next release; use {self.instead}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, *, dest: str, instead: str
) -> None:
    """Register ``old`` as a deprecated spelling that stores into ``dest`` and warns."""
    parser.add_argument(
        old,
        dest=dest,
        action=_DeprecatedAlias,
        instead=instead,
        metavar="URL",
        default=argparse.SUPPRESS,
        help=f"deprecated spelling of {instead}",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = _Parser(
        prog="firetitan-async",
        description="asyncio/trio-native client and local trainer for Tinker-protocol trainers.",
        epilog=(
            "examples:\n"
            "  firetitan-async demo                      # RL demo against an embedded trainer\n"
            "  firetitan-async serve --port 8080         # a local trainer for your own code\n"
            "  firetitan-async wait JOB_ID               # wait for a Fireworks trainer job\n"
            "  firetitan-async jobs list --orphans       # jobs/deployments nothing owns\n"
            "  firetitan-async checkpoints list --run MODEL_ID --trainer-url URL"
        ),
        formatter_class=_EpilogHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"firetitan_async.cli._cmd_{name}")
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
    """Register ``--account-id`` and ``--control-plane-url`` on ``parser`` (and ``--base-url``,
    its deprecated spelling)."""
    parser.add_argument(
        "--account-id",
        default=None,
        help=f"the Fireworks account (default: ${ACCOUNT_VAR}, else resolved from the key)",
    )
    parser.add_argument(
        "--control-plane-url",
        default=None,
        metavar="URL",
        help=f"the Fireworks control plane (default: ${CONTROL_PLANE_URL_VAR}, else "
        f"{DEFAULT_BASE_URL})",
    )
    add_deprecated_alias(
        parser, "--base-url", dest="control_plane_url", instead="--control-plane-url"
    )


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` under ``header`` in left-aligned columns (every listing has a header)."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def control_plane_url(explicit: str | None) -> str:
    """``explicit``, else ``$FIREWORKS_BASE_URL``, else the Fireworks API."""
    return resolve_setting(explicit, CONTROL_PLANE_URL_VAR, DEFAULT_BASE_URL)


def control_plane_account(explicit: str | None) -> str | None:
    """``explicit``, else ``$FIREWORKS_ACCOUNT_ID``, else None (resolved from the key)."""
    return resolve_setting(explicit, ACCOUNT_VAR)


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
