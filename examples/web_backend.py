"""An async web backend (Starlette) that drives training through one ``ServiceSession``.

The app's lifespan owns one :class:`ServiceSession` (and, by default, an embedded local
trainer) plus a task group for background runs. Endpoints:

* ``POST /runs`` ``{"steps": 50, "learning_rate": 0.01}`` → 202 ``{"run_id": ...}``: start a
  training run in the background (409 while another run is active: a session has one training
  client per model, and runs continue training the same weights);
* ``GET /runs/{run_id}`` → the run's status and last loss;
* ``GET /runs/{run_id}/events`` → progress as server-sent events (``progress`` per step,
  then ``done``, ``stopped`` or ``failed``); a late subscriber first gets the events so far;
* ``POST /runs/{run_id}/stop`` → stop the run: no further steps are sent (operations already
  sent still finish on the trainer, in order).

No thread is involved on the client side: requests, the run and the session share one loop.

    python examples/web_backend.py --port 8000          # then:
    curl -X POST localhost:8000/runs -d '{"steps": 100}'
    curl -N localhost:8000/runs/1/events
    python examples/web_backend.py --smoke              # start, stream, stop; then exit
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import attrs
import httpx
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from tinker import types

from firetitan_async import ServiceSession, TrainingClient
from firetitan_async.local import LocalTrainer

MODEL = "local/tiny-byte-lm"
TEXT = "the web backend keeps one session open for its whole life."


@attrs.define(eq=False)
class Run:
    """One background training run and its event log (a simple broadcast)."""

    run_id: int
    steps: int
    learning_rate: float
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
    """What the lifespan owns: the session, the (lazily created) training client, the runs."""

    session: ServiceSession
    task_group: anyio.abc.TaskGroup
    client: TrainingClient | None = None
    runs: dict[int, Run] = attrs.field(factory=dict)

    def active(self) -> Run | None:
        return next((r for r in self.runs.values() if r.status == "running"), None)

    async def training_client(self) -> TrainingClient:
        if self.client is None:
            self.client = await self.session.create_training_client(MODEL)
        return self.client


def _datum(text: str) -> types.Datum:
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


async def _train(backend: Backend, run: Run) -> None:
    batch = [_datum(TEXT)]
    n_tokens = len(TEXT) - 1
    try:
        with run.scope:
            client = await backend.training_client()
            adam = types.AdamParams(learning_rate=run.learning_rate)
            pending = client.forward_backward(batch, "cross_entropy")
            client.optim_step(adam)
            for step in range(1, run.steps + 1):
                # Pipelined: submit the next step before waiting for this one's loss.
                following = None
                if step < run.steps:
                    following = client.forward_backward(batch, "cross_entropy")
                    client.optim_step(adam)
                out = await pending
                run.last_loss = out.metrics["loss:sum"] / n_tokens
                run.emit("progress", step=step, loss=round(run.last_loss, 5))
                if following is not None:
                    pending = following
    except Exception as exc:  # report it on the stream, keep the server up
        run.status = "failed"
        run.emit("failed", error=str(exc))
        return
    if run.scope.cancelled_caught:
        run.status = "stopped"
        run.emit("stopped", last_loss=run.last_loss)
    else:
        run.status = "done"
        run.emit("done", last_loss=run.last_loss)


async def start_run(request: Request) -> Response:
    backend: Backend = request.state.backend
    try:
        body = await request.json() if await request.body() else {}
        steps = int(body.get("steps", 50))
        learning_rate = float(body.get("learning_rate", 1e-2))
    except (ValueError, TypeError, AttributeError):
        return JSONResponse({"detail": 'body must be JSON like {"steps": 50}'}, 400)
    if not 1 <= steps <= 100_000 or not (math.isfinite(learning_rate) and learning_rate > 0):
        return JSONResponse({"detail": "need 1 <= steps <= 100000 and learning_rate > 0"}, 400)
    if (active := backend.active()) is not None:
        return JSONResponse({"detail": f"run {active.run_id} is still running"}, 409)
    run = Run(run_id=len(backend.runs) + 1, steps=steps, learning_rate=learning_rate)
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


def create_app(base_url: str | None = None) -> Starlette:
    """The app; with ``base_url=None`` its lifespan also runs an embedded local trainer."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            url = base_url
            if url is None:
                url = (await stack.enter_async_context(LocalTrainer())).base_url
            session = await stack.enter_async_context(ServiceSession(url))
            task_group = await stack.enter_async_context(anyio.create_task_group())
            backend = Backend(session=session, task_group=task_group)
            yield {"backend": backend}
            for run in backend.runs.values():  # shutting down: stop what still runs
                run.scope.cancel()

    routes = [
        Route("/runs", start_run, methods=["POST"]),
        Route("/runs/{run_id}", get_run, methods=["GET"]),
        Route("/runs/{run_id}/events", run_events, methods=["GET"]),
        Route("/runs/{run_id}/stop", stop_run, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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


async def smoke(base_url: str | None, steps: int) -> None:
    """Serve on a free loopback port; start a run, stream it, start another and stop it."""
    config = uvicorn.Config(create_app(base_url), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        while not server.started:  # noqa: ASYNC110 (uvicorn has no "started" event)
            await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            run_id = (await http.post("/runs", json={"steps": steps})).json()["run_id"]
            events = await _sse(http, f"/runs/{run_id}/events")
            for event in events:
                print(f"run {run_id}: {event}")
            assert events[-1]["event"] == "done", events[-1]
            assert sum(e["event"] == "progress" for e in events) == steps

            run_id = (await http.post("/runs", json={"steps": 100_000})).json()["run_id"]
            busy = await http.post("/runs", json={"steps": 1})
            print(f"second start while running: HTTP {busy.status_code} {busy.json()}")
            first = await _sse(http, f"/runs/{run_id}/events", limit=2)
            print(f"run {run_id}: {first}")
            print(f"stop: {(await http.post(f'/runs/{run_id}/stop')).json()}")
            rest = await _sse(http, f"/runs/{run_id}/events")
            print(f"run {run_id}: {rest[-1]} after {len(rest) - 1} steps")
            assert rest[-1]["event"] == "stopped", rest[-1]
            print(f"status: {(await http.get(f'/runs/{run_id}')).json()}")
        server.should_exit = True
    print("smoke test passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="trainer URL (default: an embedded local trainer)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--smoke", action="store_true", help="self-test on a free port, then exit")
    parser.add_argument("--steps", type=int, default=5, help="steps of the smoke test's run")
    args = parser.parse_args()
    if args.smoke:
        anyio.run(smoke, args.base_url, args.steps)  # uvicorn runs on asyncio
    else:
        uvicorn.run(create_app(args.base_url), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
