"""An async web backend (Starlette) that drives training through one ``ServiceSession``.

The app's lifespan owns one :class:`ServiceSession` (and, by default, a local trainer in a
child process with a trainer job on its control plane) plus a task group for background work.
Endpoints:

* ``GET /`` → a live dashboard (``examples/static/``): start and stop a run, loss, reward and
  steps/s charts, operations in flight by kind, the app's largest event-loop stall, the trainer
  job's state, published vs served policy version;
* ``GET /events`` → the dashboard's feed as server-sent events (one JSON object per event,
  with a ``kind``: ``run``, ``step``, ``reward``, ``gauges``, ``job``, ``policy``); a new
  subscriber first gets the latest gauges, job and policy and the current run's events;
* ``POST /runs`` ``{"steps": 50, "learning_rate": 0.01}`` → 202 ``{"run_id": ...}``: start a
  training run in the background (409 while another run is active: a session has one training
  client per model, and runs continue training the same weights);
* ``GET /runs/{run_id}`` → the run's status and last loss;
* ``GET /runs/{run_id}/events`` → progress as server-sent events (``progress`` per step,
  then ``done``, ``stopped`` or ``failed``); a late subscriber first gets the events so far;
* ``POST /runs/{run_id}/stop`` → stop the run: no further steps are sent (operations already
  sent still finish on the trainer, in order).

The same feed can go to a JSONL file (``--events-jsonl PATH``) and to Weights & Biases
(``--wandb-project NAME``, with the ``wandb`` extra), so a run's curves survive the process.

No thread is involved on the client side: the page's requests, the run and the session share
one loop, and the app measures that loop's stalls itself.

Access: every state-changing request (``POST``) needs the app's token as ``Authorization:
Bearer TOKEN`` (401 without it) and an ``application/json`` body (415 otherwise). The token is
read from ``$WEB_BACKEND_TOKEN``, else made at start and printed in the dashboard's address
(``http://127.0.0.1:8000/#token=...``: the page keeps it, the fragment never reaches a server).
Every request must name an allowed host in ``Host`` (loopback by default, more with
``--allow-host NAME``) and, when it has an ``Origin``, come from an allowed host: anything else
gets 403, so a page on another site cannot start a run from the user's browser (a cross-site
``text/plain`` POST) and a DNS-rebinding name is refused. ``--host 0.0.0.0`` makes the app
reachable from the network: whoever reaches the port can read the dashboard, its feeds and
the runs' status (reads need no token), and whoever also holds the token can start and stop
runs on the trainer's weights; add the names the browser will use with ``--allow-host``.

    python examples/web_backend.py --port 8000          # prints the dashboard's address
    curl -X POST localhost:8000/runs -H "Authorization: Bearer $WEB_BACKEND_TOKEN" \
        -H 'content-type: application/json' -d '{"steps": 100}'
    curl -N localhost:8000/runs/1/events
    python examples/web_backend.py --smoke              # start, stream, stop; then exit
"""

from __future__ import annotations

import argparse
import gc
import hmac
import importlib
import json
import math
import os
import secrets
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.abc
import attrs
import httpx
import numpy as np
import uvicorn
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from tinker import types

from firetitan_async import (
    FiretitanError,
    Pending,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
    TrainingClient,
)

MODEL = "local/tiny-byte-lm"
TEXT = "the web backend keeps one session open for its whole life."
PROMPT_BYTES = 12  # the reward scores the 16 bytes after TEXT's first 12
STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")


# -- the dashboard's event model ---------------------------------------------------------------
# Small typed events, one class per kind. Today they come from what the app observes itself (its
# own step loop, the Pendings it holds, a loop-stall monitor); session operation events can be
# mapped onto the same kinds later.


@attrs.frozen
class RunStatus:
    """A run started or ended (``running``, ``done``, ``stopped``, ``failed``)."""

    kind: ClassVar[str] = "run"
    run_id: int
    status: str
    steps: int
    error: str | None = None


@attrs.frozen
class Step:
    """A training step finished: its loss per token and the recent steps per second."""

    kind: ClassVar[str] = "step"
    run_id: int
    step: int
    loss: float
    steps_per_s: float | None


@attrs.frozen
class Reward:
    """The mean reward of samples drawn from the weights after ``step``."""

    kind: ClassVar[str] = "reward"
    run_id: int
    step: int
    reward: float


@attrs.frozen
class Gauges:
    """Operations in flight by kind, and the app's own event-loop stalls (milliseconds).

    A stall is how late the loop woke from a short sleep, less the time its thread was ready
    to run but waiting for a CPU (an overloaded machine, not the app): what is left is code
    blocking the loop, a synchronous call or the GIL. ``max_wall_stall_ms`` keeps the plain
    lateness. The CPU wait is known on Linux; elsewhere both figures are the plain lateness.
    """

    kind: ClassVar[str] = "gauges"
    in_flight: dict[str, int]
    max_in_flight: int
    loop_stall_ms: float
    max_loop_stall_ms: float
    max_wall_stall_ms: float


def _cpu_wait_s() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux; else 0)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@attrs.frozen
class JobState:
    """The trainer job's state (``job_id`` is None for a trainer given by URL)."""

    kind: ClassVar[str] = "job"
    job_id: str | None
    state: str


@attrs.frozen
class PolicyVersion:
    """Policy versions published to and served by a deployment (None: no deployment used)."""

    kind: ClassVar[str] = "policy"
    published: int | None = None
    served: int | None = None


Event = RunStatus | Step | Reward | Gauges | JobState | PolicyVersion
Sink = Callable[[dict[str, Any]], None]


def to_json(event: Event) -> dict[str, Any]:
    """The event as one JSON object: its kind, a wall-clock time, then its fields."""
    return {"kind": event.kind, "time": round(time.time(), 3), **attrs.asdict(event)}


class Feed:
    """Broadcasts events to live subscribers (the SSE streams) and to sinks (JSONL, W&B).

    A new subscriber first gets the latest gauges, job and policy events and the current run's
    events (its start and the last ``RUN_LOG`` others). A subscriber that falls more than 1000
    live events behind is dropped (its page reconnects).
    """

    RUN_LOG = 5000

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, Any]] = {}
        self._run_log: list[dict[str, Any]] = []
        self._subscribers: set[MemoryObjectSendStream[dict[str, Any]]] = set()
        self._sinks: list[Sink] = []

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def publish(self, event: Event) -> None:
        data = to_json(event)
        if isinstance(event, RunStatus) and event.status == "running":
            self._run_log = []
        if isinstance(event, RunStatus | Step | Reward):
            self._run_log.append(data)
            if len(self._run_log) > self.RUN_LOG + 1000:
                del self._run_log[1:1001]  # keep the run's start
        else:
            self._latest[event.kind] = data
        for sink in self._sinks:
            sink(data)
        for send in list(self._subscribers):
            try:
                send.send_nowait(data)
            except (anyio.WouldBlock, anyio.BrokenResourceError):
                self._subscribers.discard(send)
                send.close()

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[dict[str, Any]]]:
        replay = [*self._latest.values(), *self._run_log]
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](len(replay) + 1000)
        for data in replay:
            send.send_nowait(data)
        self._subscribers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def close(self) -> None:
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()


def jsonl_sink(path: str) -> tuple[Sink, Callable[[], None]]:
    """A sink appending one JSON line per event to ``path`` (flushed at once), and its closer."""
    file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by the lifespan)

    def write(data: dict[str, Any]) -> None:
        file.write(json.dumps(data) + "\n")
        file.flush()

    return write, file.close


def wandb_sink(project: str) -> tuple[Sink, Callable[[], None]]:
    """A sink logging steps and rewards to Weights & Biases (``pip install '.[wandb]'``)."""
    wandb = importlib.import_module("wandb")  # lazily: an optional extra
    wandb_run = wandb.init(project=project, config={"base_model": MODEL})

    def log(data: dict[str, Any]) -> None:
        if data["kind"] == "step":
            row = {"run_id": data["run_id"], "step": data["step"], "loss": data["loss"]}
            if data["steps_per_s"] is not None:
                row["steps_per_s"] = data["steps_per_s"]
            wandb_run.log(row)
        elif data["kind"] == "reward":
            row = {"run_id": data["run_id"], "step": data["step"], "reward": data["reward"]}
            wandb_run.log(row)

    return log, wandb_run.finish


# -- runs ----------------------------------------------------------------------------------------


@attrs.define(eq=False)
class Run:
    """One background training run and its event log (a simple broadcast)."""

    run_id: int
    steps: int
    learning_rate: float
    reward_every: int = 5
    status: str = "running"  # running | done | stopped | failed
    last_loss: float | None = None
    events: list[dict[str, Any]] = attrs.field(factory=list)
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    _changed: anyio.Event = attrs.field(factory=anyio.Event)

    def emit(self, event: str, **data: Any) -> None:
        self.events.append({"event": event, **data})
        self._changed.set()
        self._changed = anyio.Event()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then new ones as they happen, until the run ends."""
        index = 0
        while True:
            changed = self._changed
            while index < len(self.events):
                yield self.events[index]
                index += 1
            if self.status != "running":
                return
            await changed.wait()

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "steps": self.steps,
            "steps_done": sum(1 for e in self.events if e["event"] == "progress"),
            "last_loss": self.last_loss,
        }


@attrs.define(eq=False)
class Backend:
    """What the lifespan owns: the session, its training client, the runs and the feed."""

    session: ServiceSession
    client: TrainingClient
    task_group: anyio.abc.TaskGroup
    feed: Feed
    stopping: Callable[[], bool] = lambda: False  # whether the server is shutting down
    runs: dict[int, Run] = attrs.field(factory=dict)
    held: list[Pending[Any]] = attrs.field(factory=list)  # operations the app sent and holds
    max_in_flight: int = 0
    max_stall_s: float = 0.0
    max_wall_stall_s: float = 0.0

    def active(self) -> Run | None:
        return next((r for r in self.runs.values() if r.status == "running"), None)

    def hold(self, pending: Pending[T]) -> Pending[T]:
        """Count ``pending`` as in flight (by its operation name) until it is done."""
        self.held = [p for p in self.held if not p.done()]
        self.held.append(pending)
        self.max_in_flight = max(self.max_in_flight, len(self.held))
        return pending

    def in_flight(self) -> dict[str, int]:
        self.held = [p for p in self.held if not p.done()]
        return dict(sorted(Counter(p.name for p in self.held).items()))

    async def watch_loop(self, interval_s: float = 0.02, report_s: float = 0.1) -> None:
        """Measure this loop's stalls (how late a short sleep wakes up) and publish gauges."""
        last_report = anyio.current_time()
        worst_since_report = 0.0
        previous: Gauges | None = None
        while True:
            before, waited_before = anyio.current_time(), _cpu_wait_s()
            await anyio.sleep(interval_s)
            now = anyio.current_time()
            wall = max(0.0, now - before - interval_s)
            stall = max(0.0, wall - (_cpu_wait_s() - waited_before))
            worst_since_report = max(worst_since_report, stall)
            self.max_stall_s = max(self.max_stall_s, stall)
            self.max_wall_stall_s = max(self.max_wall_stall_s, wall)
            if now - last_report >= report_s:
                gauges = Gauges(
                    in_flight=self.in_flight(),
                    max_in_flight=self.max_in_flight,
                    loop_stall_ms=round(worst_since_report * 1000, 1),
                    max_loop_stall_ms=round(self.max_stall_s * 1000, 1),
                    max_wall_stall_ms=round(self.max_wall_stall_s * 1000, 1),
                )
                if gauges != previous:
                    self.feed.publish(gauges)
                    previous = gauges
                last_report, worst_since_report = now, 0.0

    async def watch_job(self, jobs: TrainerJobs, job_id: str, interval_s: float = 2.0) -> None:
        """Publish the trainer job's state whenever it changes."""
        state = None
        while True:
            try:
                seen = (await jobs.get(job_id)).state
            except FiretitanError as exc:  # shown on the page; the app stays up
                seen = f"unknown ({type(exc).__name__})"
            if seen != state:
                state = seen
                self.feed.publish(JobState(job_id=job_id, state=state))
            await anyio.sleep(interval_s)


def _datum(text: str) -> types.Datum:
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


async def _reward(backend: Backend, run: Run, step: int) -> None:
    """Score the 16 bytes that follow TEXT's start under the current weights: reward = the
    mean probability the model gives each right byte. A forward pass, so it works on every
    trainer (a Fireworks trainer has no sampler of its own; it samples through a deployment)."""
    tokens = list(TEXT.encode()[: PROMPT_BYTES + 16])
    weights = [0.0] * (PROMPT_BYTES - 1) + [1.0] * (len(tokens) - PROMPT_BYTES)
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.asarray(weights, dtype=np.float32)),
        },
    )
    out = await backend.hold(backend.client.forward([datum], "cross_entropy"))
    logprobs = out.loss_fn_outputs[0]["logprobs"].to_numpy()[PROMPT_BYTES - 1 :]
    backend.feed.publish(Reward(run.run_id, step, round(float(np.exp(logprobs).mean()), 4)))


async def _train(backend: Backend, run: Run, depth: int = 2) -> None:
    """Train ``run.steps`` steps with ``depth`` steps in flight; a reward every few steps."""
    batch = [_datum(TEXT)]
    n_tokens = len(TEXT) - 1
    backend.feed.publish(RunStatus(run.run_id, "running", run.steps))
    try:
        with run.scope:
            async with anyio.create_task_group() as rewards:
                client = backend.client
                adam = types.AdamParams(learning_rate=run.learning_rate)
                window: deque[Pending[types.ForwardBackwardOutput]] = deque()
                finished_at: deque[float] = deque(maxlen=10)
                submitted = 0
                for step in range(1, run.steps + 1):
                    # Pipelined: keep `depth` steps on their way before waiting for a loss.
                    while submitted < run.steps and len(window) < depth:
                        window.append(backend.hold(client.forward_backward(batch, "cross_entropy")))
                        backend.hold(client.optim_step(adam))
                        submitted += 1
                    out = await window.popleft()
                    run.last_loss = out.metrics["loss:sum"] / n_tokens
                    finished_at.append(anyio.current_time())
                    span = finished_at[-1] - finished_at[0]
                    rate = (len(finished_at) - 1) / span if span > 0 else None
                    run.emit("progress", step=step, loss=round(run.last_loss, 5))
                    backend.feed.publish(
                        Step(run.run_id, step, round(run.last_loss, 5), rate and round(rate, 2))
                    )
                    if run.reward_every and step % run.reward_every == 0:
                        rewards.start_soon(_reward, backend, run, step)
    except Exception as exc:  # report it on the stream, keep the server up
        while isinstance(exc, ExceptionGroup):  # a failed reward task: its own error
            exc = exc.exceptions[0]
        run.status = "failed"
        run.emit("failed", error=str(exc))
        backend.feed.publish(RunStatus(run.run_id, "failed", run.steps, error=str(exc)))
        return
    run.status = "stopped" if run.scope.cancelled_caught else "done"
    run.emit(run.status, last_loss=run.last_loss)
    backend.feed.publish(RunStatus(run.run_id, run.status, run.steps))


# -- access: token, content type, Host and Origin ------------------------------------------------

TOKEN_VAR = "WEB_BACKEND_TOKEN"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _host_of(value: str) -> str:
    """The host name of a ``Host`` header or an origin's authority (no port, no brackets)."""
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")].lower() if "]" in value else ""
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


class Guard:
    """The app's front door (pure ASGI): Host and Origin allowlists (403), then, for every
    state-changing request, the token (401) and a JSON body (415).

    ``Host`` must name an allowed host (DNS rebinding: a foreign name resolving to us is
    refused); an ``Origin``, when sent (browsers send it with every cross-origin request and
    every POST), must be ``http(s)://`` an allowed host. Reads need no token: a page's
    ``EventSource`` cannot send one.
    """

    def __init__(self, app: ASGIApp, token: str, allowed_hosts: frozenset[str]) -> None:
        self.app = app
        self._token = token.encode()
        self._hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = self._problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, detail = problem
        await JSONResponse({"detail": detail}, status)(scope, receive, send)

    def _problem(self, scope: Scope) -> tuple[int, str] | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if _host_of(headers.get("host", "")) not in self._hosts:
            return 403, "this host name is not served here (see --allow-host)"
        origin = headers.get("origin")
        if origin is not None:
            scheme, _, authority = origin.partition("://")
            if scheme not in ("http", "https") or _host_of(authority) not in self._hosts:
                return 403, "cross-origin requests are refused"
        if scope["method"] in _READS:
            return None
        auth = headers.get("authorization", "")
        offered = auth[len("bearer ") :].encode() if auth.lower().startswith("bearer ") else b""
        if not hmac.compare_digest(offered, self._token):
            return 401, "missing or wrong token (Authorization: Bearer TOKEN)"
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return 415, "the body must be application/json"
        return None


# -- endpoints -----------------------------------------------------------------------------------


async def start_run(request: Request) -> Response:
    backend: Backend = request.state.backend
    try:
        body = await request.json() if await request.body() else {}
        steps = int(body.get("steps", 50))
        learning_rate = float(body.get("learning_rate", 1e-2))
        reward_every = int(body.get("reward_every", 5))
    except (ValueError, TypeError, AttributeError):
        return JSONResponse({"detail": 'body must be JSON like {"steps": 50}'}, 400)
    if (
        not 1 <= steps <= 100_000
        or not (math.isfinite(learning_rate) and learning_rate > 0)
        or reward_every < 0
    ):
        detail = "need 1 <= steps <= 100000, learning_rate > 0 and reward_every >= 0"
        return JSONResponse({"detail": detail}, 400)
    if (active := backend.active()) is not None:
        return JSONResponse({"detail": f"run {active.run_id} is still running"}, 409)
    run = Run(len(backend.runs) + 1, steps, learning_rate, reward_every=reward_every)
    backend.runs[run.run_id] = run
    backend.task_group.start_soon(_train, backend, run)
    return JSONResponse({"run_id": run.run_id}, 202)


def _run_of(request: Request) -> Run | None:
    backend: Backend = request.state.backend
    try:
        return backend.runs.get(int(request.path_params["run_id"]))
    except ValueError:
        return None


async def get_run(request: Request) -> Response:
    run = _run_of(request)
    if run is None:
        return JSONResponse({"detail": "no such run"}, 404)
    return JSONResponse(run.summary())


async def run_events(request: Request) -> Response:
    run = _run_of(request)
    if run is None:
        return JSONResponse({"detail": "no such run"}, 404)

    async def stream() -> AsyncIterator[str]:
        async for event in run.follow():
            data = {k: v for k, v in event.items() if k != "event"}
            yield f"event: {event['event']}\ndata: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def stop_run(request: Request) -> Response:
    run = _run_of(request)
    if run is None:
        return JSONResponse({"detail": "no such run"}, 404)
    if run.status == "running":
        run.scope.cancel()
        return JSONResponse({"run_id": run.run_id, "status": "stopping"}, 202)
    return JSONResponse(run.summary())


async def feed_events(request: Request) -> Response:
    backend: Backend = request.state.backend

    async def stream() -> AsyncIterator[str]:
        async with backend.feed.subscribe() as events:
            while not backend.stopping():  # the server is going down: end the stream
                data = None
                with anyio.move_on_after(1.0):
                    try:
                        data = await events.receive()
                    except anyio.EndOfStream:
                        return
                # A comment line now and then: a closed page is noticed even when idle.
                yield ": idle\n\n" if data is None else f"data: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


async def dashboard(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html")


async def _local_trainer(stack: AsyncExitStack, latency_s: float) -> tuple[str, str]:
    """Start ``firetitan-async serve`` on a free port; return its URL and account id.

    It runs in its own process, as a real trainer would: in this one its numpy work would hold
    the GIL and stall the app's loop. It stops when ``stack`` closes.
    """
    command = [sys.executable, "-m", "firetitan_async", "serve", "--port", "0"]
    command += ["--latency-ms", str(latency_s * 1000), "--log-level", "warning"]
    trainer = await stack.enter_async_context(await anyio.open_process(command, stderr=None))
    stack.callback(trainer.terminate)  # runs before the process is awaited
    assert trainer.stdout is not None
    banner = BufferedByteReceiveStream(trainer.stdout)
    url = account = None
    with anyio.fail_after(60):
        while url is None or account is None:  # "local trainer serving URL", "control plane: …"
            words = (await banner.receive_until(b"\n", 4096)).decode().split()
            if words[:3] == ["local", "trainer", "serving"]:
                url = words[3]
            elif words[:2] == ["control", "plane:"]:
                account = words[2].split("/accounts/")[1].split("/")[0]
    return url, account


def create_app(
    base_url: str | None = None,
    *,
    events_jsonl: str | None = None,
    wandb_project: str | None = None,
    latency_s: float = 0.0,
    stopping: Callable[[], bool] = lambda: False,
    token: str,
    allowed_hosts: frozenset[str] = LOOPBACK_HOSTS,
) -> Guard:
    """The app; with ``base_url=None`` its lifespan also runs a local trainer (its replies
    delayed by ``latency_s``: a remote trainer is never instant) and creates a trainer job on
    its control plane (deleted again on the way out). ``stopping()`` tells whether the server
    is shutting down (the dashboard's event streams then end). ``token`` is required on every
    state-changing request, and requests must name one of ``allowed_hosts`` (see
    :class:`Guard`)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            feed = Feed()
            stack.callback(feed.close)
            for path, make in ((events_jsonl, jsonl_sink), (wandb_project, wandb_sink)):
                if path:
                    sink, close = make(path)
                    feed.add_sink(sink)
                    stack.callback(close)
            jobs, job_id = None, None
            if base_url is None:
                url, account = await _local_trainer(stack, latency_s)
                jobs = TrainerJobs(account_id=account, base_url=url)
                jobs = await stack.enter_async_context(jobs)
                config = TrainerJobConfig(base_model=MODEL, display_name="dashboard")
                job_id = (await jobs.create(config)).job_id
                stack.push_async_callback(jobs.delete, job_id)
                session = ServiceSession.from_job(jobs, job_id, poll_interval_s=0.05)
            else:
                session = ServiceSession(base_url)
            session = await stack.enter_async_context(session)
            client = await session.create_training_client(MODEL)  # waits for the job
            task_group = await stack.enter_async_context(anyio.create_task_group())
            backend = Backend(session, client, task_group, feed, stopping)
            feed.publish(PolicyVersion())  # this app uses no deployment: "n/a" on the page
            if jobs is not None and job_id is not None:
                task_group.start_soon(backend.watch_job, jobs, job_id)
            else:
                feed.publish(JobState(job_id=None, state="external trainer"))
            task_group.start_soon(backend.watch_loop)
            # Start-up is over: move the ~80k objects that importing tinker, pydantic and httpx
            # left on the heap out of the collector's reach. Otherwise every full collection
            # walks them all again (50–60 ms on this kind of machine: the largest stall a
            # training run shows). An app's choice, not a library's: see docs/troubleshooting.md.
            gc.freeze()
            yield {"backend": backend}
            for run in backend.runs.values():  # shutting down: stop what still runs
                run.scope.cancel()
            task_group.cancel_scope.cancel()

    routes = [
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/events", feed_events, methods=["GET"]),
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/runs/{run_id}/stop", stop_run, methods=["POST"]),
    ]
    return Guard(Starlette(routes=routes, lifespan=lifespan), token, allowed_hosts)


async def _sse(
    client: httpx.AsyncClient, url: str, *, limit: int | None = None
) -> list[dict[str, Any]]:
    """Read server-sent events from ``url`` (at most ``limit``)."""
    events: list[dict[str, Any]] = []
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        name = None
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append({"event": name, **json.loads(line[len("data: ") :])})
                if limit is not None and len(events) >= limit:
                    break
    return events


async def smoke(base_url: str | None, steps: int, **options: Any) -> None:
    """Serve on a free loopback port; start a run, stream it, start another and stop it."""
    token = secrets.token_urlsafe(24)
    app = create_app(base_url, stopping=lambda: server.should_exit, token=token, **options)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 (uvicorn has no "started" event)
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ) as http:
            page = await http.get("/")
            assert page.status_code == 200 and "dashboard.js" in page.text, page.status_code
            run_id = (await http.post("/runs", json={"steps": steps})).json()["run_id"]
            events = await _sse(http, f"/runs/{run_id}/events")
            for event in events:
                print(f"run {run_id}: {event}")
            assert events[-1]["event"] == "done", events[-1]
            assert sum(e["event"] == "progress" for e in events) == steps

            run_id = (await http.post("/runs", json={"steps": 100_000})).json()["run_id"]
            busy = await http.post("/runs", json={"steps": 1})
            print(f"second start while running: HTTP {busy.status_code} {busy.json()}")
            anonymous = await http.post("/runs", json={"steps": 1}, headers={"Authorization": ""})
            assert anonymous.status_code == 401, anonymous.status_code
            first = await _sse(http, f"/runs/{run_id}/events", limit=2)
            print(f"run {run_id}: {first}")
            print(f"stop: {(await http.post(f'/runs/{run_id}/stop', json={})).json()}")
            rest = await _sse(http, f"/runs/{run_id}/events")
            print(f"run {run_id}: {rest[-1]} after {len(rest) - 1} steps")
            assert rest[-1]["event"] == "stopped", rest[-1]
            print(f"status: {(await http.get(f'/runs/{run_id}')).json()}")
        server.should_exit = True
    print("smoke test passed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--base-url", help="trainer URL (None: a local trainer, started here)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: the network; see above)"
    )
    parser.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="a host name the browser may use besides loopback (repeatable)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="local trainer: delay of every reply"
    )
    parser.add_argument("--events-jsonl", metavar="PATH", help="append the feed to a JSONL file")
    parser.add_argument("--wandb-project", metavar="NAME", help="log steps to Weights & Biases")
    parser.add_argument("--smoke", action="store_true", help="self-test on a free port, then exit")
    parser.add_argument("--steps", type=int, default=5, help="steps of the smoke test's run")
    args = parser.parse_args()
    options = {
        "events_jsonl": args.events_jsonl,
        "wandb_project": args.wandb_project,
        "latency_s": args.latency_ms / 1000,
    }
    if args.smoke:
        anyio.run(lambda: smoke(args.base_url, args.steps, **options))  # uvicorn runs on asyncio
    else:
        token = os.environ.get(TOKEN_VAR) or secrets.token_urlsafe(24)
        hosts = LOOPBACK_HOSTS | {name.lower() for name in args.allow_host}
        app = create_app(
            args.base_url,
            stopping=lambda: server.should_exit,
            token=token,
            allowed_hosts=hosts,
            **options,
        )
        shown = f"#token={token}" if not os.environ.get(TOKEN_VAR) else f" (token: ${TOKEN_VAR})"
        print(f"dashboard: http://127.0.0.1:{args.port}/{shown}", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port))
        server.run()


if __name__ == "__main__":
    main()
