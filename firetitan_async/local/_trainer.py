"""``LocalTrainer``: the local trainer server's lifecycle (bind, serve on a thread, stop).

The server is uvicorn serving a Starlette app on its own thread with its own asyncio event
loop, so a client's event loop (asyncio or trio), even a blocked one, never stalls it. With the
``local`` extra's ``uvloop`` and ``httptools`` installed, that loop is uvloop's and uvicorn
parses HTTP in C (less CPU per request); without them, asyncio's loop and h11.

Example::

    async with LocalTrainer(seed=0) as lt:          # asyncio or trio
        async with ServiceSession(lt.base_url) as session:
            ...
        print(lt.stats()["optim_steps_applied"])

    lt = LocalTrainer(); lt.start(); ...; lt.stop()  # sync code (or ``with LocalTrainer()``)
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import uvicorn

from ._app import build_app
from ._catalog import ServedModel, served_models
from ._front import quiet_dropped_connections
from ._lifetime import PromptServer, ThreadedServerLifetime, bind_listener
from ._server_state import ServerConfig, ServerState
from ._stalls import StallInjector, StallPlan

__all__ = ["LocalTrainer"]


def _new_event_loop() -> asyncio.AbstractEventLoop:
    """The server thread's loop: uvloop's when installed (less CPU per request), else asyncio's."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class LocalTrainer(ThreadedServerLifetime):
    """A wire-compatible Tinker trainer (data plane) and Fireworks trainer-job control plane
    on loopback, backed by the numpy model ``local/tiny-byte-lm``.

    Knobs: ``latency_s`` delays every reply; ``warmup_s`` is how long a created job warms up
    (the data plane answers 503 meanwhile); ``fault_rate`` injects transient faults;
    ``seed`` seeds every model (same seed and same operations → bit-identical weights);
    ``checkpoint_dir`` holds checkpoint files (default: a temp dir removed on ``stop``);
    ``api_key`` makes every request need that key; ``long_poll_s`` is the longest
    ``retrieve_future`` hold. Stalls (see ``StallPlan``): the first ``stall_count`` operations
    submitted to ``stall_endpoint`` (``None``: any; ``stall_count=0``: all) are accepted but
    not finished for ``stall_s`` seconds, and their result body stops half-way for
    ``body_stall_s`` seconds (``math.inf``: forever).

    Knobs that make it behave like a dedicated Fireworks trainer (the SDK's
    ``TINKER_COMPATIBILITY.md``): ``forward_backward_logprobs=False`` answers
    ``forward_backward`` with the aggregate loss and metrics but no per-token logprobs (one
    empty output per datum; ``forward`` still returns them); ``checkpoint_step_names=True``
    stores every ``save_state`` as ``step-N`` (N = optimizer steps so far) whatever name was
    asked for (the returned path is what counts); ``checkpoint_list_details=False`` leaves
    ``time``, ``tinker_path`` and ``expires_at`` out of the tinker-form checkpoint listings
    (``GET /api/v1/list_checkpoints`` is names only anyway).

    ``models`` are the base-model names served (strings as ``ServedModel.parse`` reads them,
    e.g. ``"accounts/acme/models/m,tokenizer_id=Qwen/Qwen3-8B"``, or ``ServedModel``), each
    backed by the tiny model; ``local/tiny-byte-lm`` is always among them. Default: the byte
    model, ``accounts/fireworks/models/qwen3-8b`` and ``Qwen/Qwen3-8B``.

    Example::

        with LocalTrainer(port=8080, latency_s=0.01, models=["Qwen/Qwen3-8B"]) as lt:
            print(lt.base_url, lt.control_plane_url, lt.account_id)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        warmup_s: float = 0.0,
        fault_rate: float = 0.0,
        seed: int = 0,
        checkpoint_dir: str | None = None,
        api_key: str | None = None,
        long_poll_s: float = 30.0,
        stall_s: float = 0.0,
        body_stall_s: float = 0.0,
        stall_endpoint: str | None = None,
        stall_count: int = 1,
        forward_backward_logprobs: bool = True,
        checkpoint_step_names: bool = False,
        checkpoint_list_details: bool = True,
        models: Iterable[str | ServedModel] | None = None,
    ) -> None:
        if latency_s < 0 or warmup_s < 0 or long_poll_s <= 0:
            raise ValueError("latency_s and warmup_s must be >= 0 and long_poll_s > 0")
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        self._host = host
        self._port = port
        self._config = ServerConfig(
            latency_s=latency_s,
            warmup_s=warmup_s,
            fault_rate=fault_rate,
            seed=seed,
            api_key=api_key,
            long_poll_s=long_poll_s,
            forward_backward_logprobs=forward_backward_logprobs,
            checkpoint_step_names=checkpoint_step_names,
            checkpoint_list_details=checkpoint_list_details,
            models=served_models(models),
        )
        self._stalls = StallPlan(
            stall_s=stall_s, body_stall_s=body_stall_s, endpoint=stall_endpoint, count=stall_count
        )
        self._checkpoint_dir = checkpoint_dir
        self._temp_dir: str | None = None
        self._state: ServerState | None = None
        self._server: PromptServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._root_url: str | None = None

    def __repr__(self) -> str:
        where = self._root_url or "not started"
        return f"LocalTrainer({where}, seed={self._config.seed})"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind, serve on a background thread, and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("this LocalTrainer is already running")
        quiet_dropped_connections()
        sock = bind_listener(self._host, self._port)
        port = sock.getsockname()[1]
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host
        if ":" in host:
            host = f"[{host}]"
        self._root_url = f"http://{host}:{port}"
        if self._checkpoint_dir is not None:
            root = Path(self._checkpoint_dir)
        else:
            self._temp_dir = tempfile.mkdtemp(prefix="firetitan-local-")
            root = Path(self._temp_dir)
        state = ServerState(self._config, checkpoint_root=root)
        state.root_url = self._root_url
        app = build_app(state)
        config = uvicorn.Config(
            StallInjector(app, state, self._stalls) if self._stalls.active else app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=30,
            proxy_headers=False,  # nothing here reads the client address or scheme
        )
        server = PromptServer(config)
        self._state, self._server = state, server
        thread = threading.Thread(
            target=self._serve, args=(server, sock), name=f"firetitan-local-{port}", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + 30.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local trainer failed to start")
            time.sleep(0.002)

    def _serve(self, server: PromptServer, sock: socket.socket) -> None:
        loop = _new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        finally:
            sock.close()
            loop.close()

    def stop(self) -> None:
        """Stop serving (held long-polls answer ``try_again``) and wait for the thread."""
        server, thread, loop, state = self._server, self._thread, self._loop, self._state
        self._server = self._thread = self._loop = None
        if loop is not None and state is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop just closed
                loop.call_soon_threadsafe(state.futures.wake_all)
        if server is not None:
            server.stop_soon()
        if thread is not None:
            thread.join(timeout=15.0)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    # -- addresses and hooks ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The data plane root (clients append ``/api/v1/...``), e.g. ``http://127.0.0.1:PORT``."""
        if self._root_url is None:
            raise RuntimeError("the LocalTrainer has not been started")
        return self._root_url

    @property
    def control_plane_url(self) -> str:
        """The control plane root (clients append ``/v1/accounts/{account_id}/rlorTrainerJobs``)."""
        return self.base_url

    @property
    def account_id(self) -> str:
        """The Fireworks account id the control plane serves (``"local"``)."""
        return self._config.account_id

    @property
    def model_names(self) -> list[str]:
        """The base-model names this trainer serves (``local/tiny-byte-lm`` first)."""
        return [m.name for m in self._config.models]

    def stats(self) -> dict[str, Any]:
        """``{"requests": {endpoint: n}, "faults_injected": n, "optim_steps_applied":
        {model_id: n}, "compute_seconds": s, "live": {"jobs": n, "sessions": n,
        "deployments": n}}`` (``live``: what still runs, see ``ServerState.live``).

        ``endpoint`` is the path after ``/api/v1/`` with ids folded (``forward_backward``,
        ``training_run_checkpoints``, ...) or ``jobs.create``/``jobs.get``/... for the control
        plane; ``/_local/*`` is not counted. ``compute_seconds`` is the wall time of model
        operations (math, and checkpoint file I/O of save/load operations).

        Example::

            lt.stats()["optim_steps_applied"]   # {"local-...:train:0": 10}
        """
        if self._state is None:
            return {
                "requests": {},
                "faults_injected": 0,
                "optim_steps_applied": {},
                "compute_seconds": 0.0,
                "live": {"jobs": 0, "sessions": 0, "deployments": 0},
            }
        return {**self._state.stats.snapshot(), "live": self._state.live()}

    def fail_job(self, job_id: str, message: str = "failed by LocalTrainer.fail_job") -> None:
        """Drive trainer job ``job_id`` to ``JOB_STATE_FAILED`` with ``message`` (test hook)."""
        if self._state is None:
            raise RuntimeError("the LocalTrainer has not been started")
        self._state.jobs.fail(job_id, message)
