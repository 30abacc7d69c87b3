"""The local trainer in its own process, on a free loopback port, for the benchmarks.

The server runs as ``python -m firetitan_async serve`` so the client processes measured
against it share nothing with it but the loopback socket, and its compute time comes from its
own ``GET /_local/stats``.

Example::

    with TrainerProcess(latency_ms=50) as server:
        print(server.url, server.stats()["compute_seconds"])
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["TrainerProcess", "fetch_stats", "free_port"]

_HOST = "127.0.0.1"
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:  # loopback only
        return json.loads(reply.read())


def fetch_stats(url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The server's ``GET /_local/stats`` counters (``compute_seconds`` among them).

    Example::

        fetch_stats("http://127.0.0.1:8080")["compute_seconds"]
    """
    stats = _get_json(f"{url}/_local/stats", timeout)
    if not isinstance(stats, dict):
        raise RuntimeError(f"/_local/stats returned {type(stats).__name__}, not an object")
    return stats


class TrainerProcess:
    """``python -m firetitan_async serve`` on 127.0.0.1, started on enter, stopped on exit.

    ``latency_ms`` delays every reply of the server. Entering waits (up to 30 s) until
    ``GET /api/v1/healthz`` answers; the server's output goes to a temporary file whose tail
    is shown if it fails to start.

    Example::

        with TrainerProcess(latency_ms=0, seed=1) as server:
            run_client_against(server.url)
    """

    def __init__(self, *, latency_ms: float, seed: int = 0, cwd: Path | None = None) -> None:
        self.latency_ms = latency_ms
        self.seed = seed
        self._cwd = cwd
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The data-plane base URL, e.g. ``http://127.0.0.1:41234``."""
        if not self._port:
            raise RuntimeError("the server is not running")
        return f"http://{_HOST}:{self._port}"

    def stats(self) -> dict[str, Any]:
        """The server's ``/_local/stats`` counters."""
        return fetch_stats(self.url)

    def __enter__(self) -> TrainerProcess:
        self._log = tempfile.TemporaryFile()
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self._port = free_port()
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "firetitan_async",
                    "serve",
                    "--host",
                    _HOST,
                    "--port",
                    str(self._port),
                    "--latency-ms",
                    f"{self.latency_ms:g}",
                    "--seed",
                    str(self.seed),
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd,
            )
            if self._wait_healthy():
                return self
            self._stop()
        tail = self._log_tail()
        self._log.close()
        raise RuntimeError(f"the local trainer did not start; its output ends with:\n{tail}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._port = 0

    def _wait_healthy(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/healthz", timeout=2.0) as reply:
                    if reply.status == 200:
                        return True
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.05)
        return False

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _log_tail(self, limit: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:]
