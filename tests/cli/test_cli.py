"""The ``firetitan-async`` command line: help texts, ``checkpoints list``, helpful errors."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator

import anyio
import pytest
from conftest import free_port

import firetitan_async
from firetitan_async import ServiceSession, TrainerJobConfig, TrainerJobs
from firetitan_async.cli._cli import build_parser, main
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"


@pytest.fixture
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FIREWORKS_API_KEY", "TINKER_API_KEY", "TINKER_BASE_URL"):
        monkeypatch.delenv(var, raising=False)





def test_help_lists_every_command() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "firetitan_async", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("serve", "demo", "wait", "checkpoints"):
        assert command in proc.stdout, (command, proc.stdout)


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for argv in (["demo"], ["checkpoints"], ["checkpoints", "list"]):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*argv, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert "usage: firetitan-async" in text and len(text) > 200, text


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "checkpoints" in capsys.readouterr().out


async def _make_checkpoints(lt: LocalTrainer) -> tuple[str, str]:
    """A run with a state checkpoint and a snapshot, and a job with one checkpoint."""
    async with ServiceSession(lt.base_url, dialect="tinker") as session:
        client = await session.create_training_client(MODEL)
        await client.save_state("cli-state", ttl_seconds=3600)
        await client.save_weights_for_sampler_ext("cli-snap")
        model_id = client.model_id
    async with TrainerJobs(account_id=lt.account_id, base_url=lt.control_plane_url) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL))
        async with ServiceSession.from_job(jobs, created.job_id, poll_interval_s=0.05) as session:
            client = await session.create_training_client(MODEL)
            await client.save_state("job-state")
            await client.save_weights_for_sampler_ext("job-snap")
    return model_id, created.job_id


def test_checkpoints_list(
    local_trainer: LocalTrainer, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    model_id, job_id = anyio.run(_make_checkpoints, local_trainer)

    url = local_trainer.base_url
    assert main(["checkpoints", "list", "--trainer-url", url, "--run", model_id]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["CHECKPOINT", "TYPE", "CREATED"]
    assert "weights/cli-state" in out and "sampler_weights/cli-snap-" in out
    snap_row = next(line for line in out.splitlines() if "cli-snap-" in line)
    assert snap_row.split()[1] == "sampler/base", snap_row
    assert f"tinker://{model_id}/weights/cli-state" in out
    assert "job-state" not in out

    assert main(["checkpoints", "list", "--trainer-url", url, "--job", job_id]) == 0
    out = capsys.readouterr().out
    assert "weights/job-state" in out and "cli-state" not in out

    assert main(["checkpoints", "list", "--trainer-url", local_trainer.base_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    ids = {c["checkpoint_id"] for c in listed}
    assert {"weights/cli-state", "weights/job-state"} <= ids
    # The JSON keeps the server's extra fields (here: which job made it).
    assert {c.get("job_id") for c in listed if c["checkpoint_id"] == "weights/job-state"} == {
        job_id
    }


def test_checkpoints_list_url_from_env(
    local_trainer: LocalTrainer,
    no_keys: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TINKER_BASE_URL", local_trainer.base_url)
    assert main(["checkpoints", "list"]) == 0
    assert "no checkpoints" in capsys.readouterr().out


def test_checkpoints_errors_are_helpful(no_keys: None, capsys: pytest.CaptureFixture[str]) -> None:
    # No URL at all.
    assert main(["checkpoints", "list"]) == 2
    assert "--trainer-url" in capsys.readouterr().err
    # A remote trainer without a key.
    assert main(["checkpoints", "list", "--trainer-url", "https://trainer.example.com"]) == 2
    assert "FIREWORKS_API_KEY" in capsys.readouterr().err
    # Plain http to a remote host.
    assert main(["checkpoints", "list", "--trainer-url", "http://trainer.example.com"]) == 2
    assert "http://" in capsys.readouterr().err
    # Nothing listening.
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["checkpoints", "list", "--trainer-url", url]) == 1
    err = capsys.readouterr().err
    assert f"cannot reach the trainer at {url}" in err and "Traceback" not in err
    # No action.
    assert main(["checkpoints"]) == 2
    assert "list" in capsys.readouterr().err


def test_checkpoints_wrong_key_is_not_shown(
    make_trainer: Callable[..., LocalTrainer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lt = make_trainer(api_key="the-right-key")
    monkeypatch.setenv("FIREWORKS_API_KEY", "wrong-key-12345")
    assert main(["checkpoints", "list", "--trainer-url", lt.base_url, "--run", "nope"]) == 1
    captured = capsys.readouterr()
    assert "refused the API key" in captured.err
    assert "wrong-key-12345" not in captured.err + captured.out
    assert "the-right-key" not in captured.err + captured.out


def test_checkpoints_unknown_run(
    local_trainer: LocalTrainer, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    url = local_trainer.base_url
    code = main(["checkpoints", "list", "--trainer-url", url, "--run", "no-such-run"])
    err = capsys.readouterr().err
    # A trainer may answer an unknown run with 404 or with an empty list.
    assert code in (0, 1)
    if code == 1:
        assert "no-such-run" in err and "Traceback" not in err


def test_wait_does_not_import_the_local_server() -> None:
    """``firetitan-async wait`` is a client command: it must not pull in the server's stack."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from firetitan_async.cli._cli import main\n"
        "rc = main(['wait', 'j1', '--control-plane-url', 'http://127.0.0.1:9', '--timeout', '1'])\n"
        "server = [m for m in sys.modules if m.startswith(('firetitan_async.local', 'uvicorn',"
        " 'starlette'))]\n"
        "print(rc, sorted(server))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "1 []", out.stdout + out.stderr


def test_checkpoints_list_from_the_control_plane(
    local_trainer: LocalTrainer, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _, job_id = anyio.run(_make_checkpoints, local_trainer)
    url = local_trainer.control_plane_url
    argv = ["checkpoints", "list", "--control-plane", "--control-plane-url", url]
    assert main([*argv, "--job", job_id]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CHECKPOINT", "TYPE", "PROMOTABLE", "CREATED"]
    rows = {line.split()[0]: line.split()[1:3] for line in lines[1:]}
    assert rows["job-state"] == ["CHECKPOINT_TYPE_TRAINING", "no"]
    snap = next(name for name in rows if name.startswith("job-snap-"))
    assert rows[snap] == ["CHECKPOINT_TYPE_INFERENCE_BASE", "yes"]
    assert main([*argv, "--job", job_id, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["promotable"] for row in listed] == [False, True]
    assert main(argv) == 2
    assert "--job" in capsys.readouterr().err
    assert main([*argv, "--job", "nope"]) == 1
    assert "knows no job 'nope'" in capsys.readouterr().err


def test_serve_stops_its_trainer_when_configuring_the_deployment_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer is up when the inference knobs are posted: a failure there must not leave
    it serving (a refused POST is a fault a healthy local server cannot produce: mocked)."""

    import httpx

    from firetitan_async.cli import _cmd_serve
    from firetitan_async.cli._cli import build_parser
    from firetitan_async.local import LocalTrainer

    started: list[LocalTrainer] = []
    real_start = LocalTrainer.start

    def start(self: LocalTrainer) -> None:
        real_start(self)
        started.append(self)

    def refuse(url: str, **_: object) -> httpx.Response:
        raise httpx.ConnectError(f"refused: {url}")

    monkeypatch.setattr(LocalTrainer, "start", start)
    monkeypatch.setattr(httpx, "post", refuse)
    args = build_parser().parse_args(["serve", "--port", "0", "--inference-latency-ms", "5"])
    assert _cmd_serve.serve(args) == 2
    assert "configuring the local deployment failed" in capsys.readouterr().err
    [trainer] = started
    port = int(trainer.base_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# -- one meaning per flag, --version, defaults in every --help (issue 27) ---------------------


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_help_shows_every_default() -> None:
    parsers = list(_parsers(build_parser()))
    assert {p.prog for p in parsers} >= {
        "firetitan-async serve",
        "firetitan-async demo",
        "firetitan-async wait",
        "firetitan-async jobs list",
        "firetitan-async checkpoints list",
    }
    missing = []
    for parser in parsers:
        formatter = parser._get_formatter()
        for action in parser._actions:
            shown = action.default not in (None, argparse.SUPPRESS) and action.default is not False
            text = formatter._get_help_string(action) or ""
            if action.option_strings and shown and "default" not in text:
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert not missing, missing
    demo_help = next(p for p in parsers if p.prog.endswith("demo")).format_help()
    assert "(default: 0.0)" in demo_help  # --latency-ms: a falsy default is still shown


@pytest.mark.parametrize("command", ["wait", "jobs list", "checkpoints list"])
def test_one_meaning_per_url_flag(command: str) -> None:
    parser = next(p for p in _parsers(build_parser()) if p.prog == f"firetitan-async {command}")
    flags = {s for a in parser._actions for s in a.option_strings}
    # --control-plane-url is the Fireworks control plane wherever it appears; --trainer-url a
    # trainer's data plane; --base-url only as a deprecated spelling.
    assert "--control-plane-url" in flags
    assert ("--trainer-url" in flags) == (command == "checkpoints list")
    alias = next(a for a in parser._actions if "--base-url" in a.option_strings)
    assert "deprecated" in (alias.help or "")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"firetitan-async {firetitan_async.__version__}"


def test_deprecated_base_url_still_works_and_warns(
    local_trainer: LocalTrainer, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["checkpoints", "list", "--base-url", local_trainer.base_url]) == 0
    out, err = capsys.readouterr()
    assert "no checkpoints" in out
    assert "--base-url is deprecated" in err and "use --trainer-url" in err, err
    assert main(["jobs", "list", "--base-url", local_trainer.control_plane_url]) == 0
    out, err = capsys.readouterr()
    assert "--base-url is deprecated" in err and "use --control-plane-url" in err, err
    assert "nothing live" in err
    # The new spellings do not warn.
    assert main(["jobs", "list", "--control-plane-url", local_trainer.control_plane_url]) == 0
    assert "deprecated" not in capsys.readouterr().err


def test_jobs_list_prints_a_header(
    local_trainer: LocalTrainer, no_keys: None, capsys: pytest.CaptureFixture[str]
) -> None:
    async def create() -> str:
        async with TrainerJobs(base_url=local_trainer.control_plane_url) as jobs:
            return (await jobs.create(TrainerJobConfig(base_model=MODEL))).job_id

    job_id = anyio.run(create)
    assert main(["jobs", "list", "--control-plane-url", local_trainer.control_plane_url]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["KIND", "ID", "STATE"], header
    assert [row.split()[:2] for row in rows] == [["job", job_id]]
