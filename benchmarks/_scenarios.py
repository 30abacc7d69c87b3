"""One measured client run (the worker side of the benchmarks), in its own process.

Each run opens a client (``ours``: :class:`firetitan_async.ServiceSession` in the tinker
dialect; ``ours_fw``: the same in the fireworks dialect; ``tinker``: the tinker SDK's
``ServiceClient``; ``fireworks``: the Fireworks Training SDK's ``FiretitanServiceClient``;
``httpx``: one bare ``httpx.AsyncClient``), runs one scenario
against a local trainer that is already up, and returns its figures: wall seconds of the
measured section, client CPU seconds (user+sys of this whole process, SDK threads included),
peak RSS, and the scenario's own figures. Scenarios:

* ``pipelined`` — ``steps`` × (``forward_backward`` on a batch + ``optim_step``), all submitted
  first, then awaited in order (what the tinker docs recommend, carried over the whole loop);
  server compute comes from ``/_local/stats`` deltas around the loop.
* ``throughput`` — ``ops`` ``forward`` calls on one small datum with at most ``inflight`` in
  flight; ``httpx`` does the same two round trips per op (POST ``forward_backward``, POST
  ``retrieve_future``) with no library around it, using our wire codec for the bodies.
* ``stall`` — a 1 ms ticker in the caller's event loop during session start and ``steps``
  pipelined steps; the largest gap between ticks is the worst loop stall. The longest pause
  of the garbage collector in that window is reported beside it (``max_gc_pause_ms``): a
  full collection walks the whole heap (imports included) and can be most of a stall. The
  largest gap less the collector's pauses inside it is ``max_stall_beside_gc_ms``: the stall
  that the loop's own work causes.

Example::

    figures = run_worker(WorkerArgs(scenario="throughput", client="ours", url=url))
    figures["ops_per_s"]
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

import anyio
import attrs
import httpx
import numpy as np
from _server import fetch_stats
from _stall_ticker import GcPauses, Ticker
from tinker import types

__all__ = ["BACKENDS", "CLIENTS", "SCENARIOS", "WorkerArgs", "run_worker"]

Scenario = Literal["pipelined", "throughput", "stall"]
Client = Literal["ours", "ours_fw", "tinker", "fireworks", "httpx"]
Backend = Literal["asyncio", "trio"]
SCENARIOS: tuple[Scenario, ...] = ("pipelined", "throughput", "stall")
CLIENTS: tuple[Client, ...] = ("ours", "ours_fw", "tinker", "fireworks", "httpx")
BACKENDS: tuple[Backend, ...] = ("asyncio", "trio")

BASE_MODEL = "local/tiny-byte-lm"
LORA_RANK = 8
API_KEY = "tml-local"  # the SDK insists on a tml- prefix; the local trainer takes any key
ADAM = types.AdamParams(learning_rate=1e-3)
_PROTO = "application/x-protobuf"
_TEXTS = (
    "the quick brown fox jumps over the lazy dog",
    "pack my box with five dozen liquor jugs",
    "how vexingly quick daft zebras jump",
    "sphinx of black quartz, judge my vow",
)


@attrs.frozen
class WorkerArgs:
    """What one worker run measures.

    ``steps``: training steps (``pipelined``, ``stall``); ``ops`` and ``inflight``:
    ``throughput``; ``batch``: datums per ``forward_backward``; ``warmup``: ops awaited before
    the measured section (connections opened, lazy imports done).
    """

    scenario: Scenario
    client: Client
    url: str
    steps: int = 20
    ops: int = 2000
    inflight: int = 256
    batch: int = 8
    warmup: int = 16
    backend: Backend = "asyncio"


def run_worker(args: WorkerArgs) -> dict[str, Any]:
    """Run one scenario with one client in this process and return its figures.

    Example::

        run_worker(WorkerArgs(scenario="pipelined", client="tinker", url=url))["steps_per_s"]
    """
    if args.client in ("tinker", "fireworks") and args.backend != "asyncio":
        raise ValueError(f"the {args.client} SDK runs only under asyncio")
    if args.client == "httpx" and args.scenario != "throughput":
        raise ValueError("the bare httpx baseline exists for the throughput scenario only")
    os.environ["TINKER_TELEMETRY"] = "0"
    _import_client(args.client)  # import time is not part of any measured section
    figures: dict[str, Any] = anyio.run(_run, args, backend=args.backend)
    figures.update(
        scenario=args.scenario,
        client=args.client,
        backend=args.backend,
        peak_rss_mb=_peak_rss_mb(),
        process_cpu_s=_cpu_s(),
    )
    return figures


async def _run(args: WorkerArgs) -> dict[str, Any]:
    if args.scenario == "stall":
        return await _stall(args)
    if args.client == "httpx":
        return await _throughput_httpx(args)
    async with _open_trainer(args.client, args.url) as trainer:
        if args.scenario == "pipelined":
            return await _pipelined(trainer, args)
        return await _throughput(trainer, args)


# -- the clients under test, behind one small interface ---------------------------------------


def _import_client(client: Client) -> None:
    if client == "tinker":
        import tinker  # noqa: F401
    elif client == "fireworks":
        from fireworks.training import sdk  # noqa: F401
    else:
        import firetitan_async
        import firetitan_async.wire.fireworks
        import firetitan_async.wire.fwdbwd
        import firetitan_async.wire.tinker  # noqa: F401


class _Trainer(Protocol):
    def forward(self, data: list[types.Datum]) -> Awaitable[Any]: ...

    def forward_backward(self, data: list[types.Datum]) -> Awaitable[Any]: ...

    def optim_step(self) -> Awaitable[Any]: ...


@attrs.frozen
class _Ours:
    client: Any  # firetitan_async.TrainingClient

    def forward(self, data: list[types.Datum]) -> Awaitable[Any]:
        pending: Awaitable[Any] = self.client.forward(data, "cross_entropy")
        return pending

    def forward_backward(self, data: list[types.Datum]) -> Awaitable[Any]:
        pending: Awaitable[Any] = self.client.forward_backward(data, "cross_entropy")
        return pending

    def optim_step(self) -> Awaitable[Any]:
        pending: Awaitable[Any] = self.client.optim_step(ADAM)
        return pending


@attrs.frozen
class _Tinker:
    client: Any  # tinker.TrainingClient; its APIFutures are awaited as its docs recommend

    def forward(self, data: list[types.Datum]) -> Awaitable[Any]:
        future: Awaitable[Any] = self.client.forward(data, "cross_entropy")
        return future

    def forward_backward(self, data: list[types.Datum]) -> Awaitable[Any]:
        future: Awaitable[Any] = self.client.forward_backward(data, "cross_entropy")
        return future

    def optim_step(self) -> Awaitable[Any]:
        future: Awaitable[Any] = self.client.optim_step(ADAM)
        return future


class _Fireworks:
    """The Fireworks SDK's training client; its APIFutures are awaited like tinker's.

    The SDK takes its own ``Datum`` type: each batch is converted once, on its first use.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._converted: dict[int, tuple[list[types.Datum], list[Any]]] = {}

    def _theirs(self, data: list[types.Datum]) -> list[Any]:
        from fireworks.training import sdk

        hit = self._converted.get(id(data))
        if hit is None or hit[0] is not data:
            theirs = [
                sdk.Datum(
                    model_input=sdk.ModelInput.from_ints(d.model_input.to_ints()),
                    loss_fn_inputs={
                        k: sdk.TensorData.from_numpy(v.to_numpy())
                        for k, v in d.loss_fn_inputs.items()
                    },
                )
                for d in data
            ]
            hit = (data, theirs)
            self._converted[id(data)] = hit
        return hit[1]

    def forward(self, data: list[types.Datum]) -> Awaitable[Any]:
        future: Awaitable[Any] = self.client.forward(self._theirs(data), "cross_entropy")
        return future

    def forward_backward(self, data: list[types.Datum]) -> Awaitable[Any]:
        future: Awaitable[Any] = self.client.forward_backward(self._theirs(data), "cross_entropy")
        return future

    def optim_step(self) -> Awaitable[Any]:
        from fireworks.training import sdk

        future: Awaitable[Any] = self.client.optim_step(sdk.AdamParams(learning_rate=1e-3))
        return future


@asynccontextmanager
async def _open_trainer(client: Client, url: str) -> AsyncIterator[_Trainer]:
    """Session start and training-client creation, as a user of each library writes them."""
    if client in ("ours", "ours_fw"):
        from firetitan_async import ServiceSession

        dialect: Literal["fireworks", "tinker"] = "fireworks" if client == "ours_fw" else "tinker"
        async with ServiceSession(url, api_key=API_KEY, dialect=dialect) as session:
            training = await session.create_training_client(BASE_MODEL, lora_rank=LORA_RANK)
            yield _Ours(training)
    elif client == "tinker":
        import tinker

        service = tinker.ServiceClient(base_url=url, api_key=API_KEY)
        try:
            training = await service.create_lora_training_client(
                base_model=BASE_MODEL, rank=LORA_RANK
            )
            yield _Tinker(training)
        finally:
            await service.close("success")
    elif client == "fireworks":
        from fireworks.training import sdk

        # As a user writes it: the SDK's constructor and client creation are synchronous.
        fw_service = sdk.FiretitanServiceClient(base_url=url, api_key=API_KEY)
        try:
            fw_training = fw_service.create_training_client(
                base_model=BASE_MODEL, lora_rank=LORA_RANK
            )
            yield _Fireworks(fw_training)
        finally:
            fw_service.close()
    else:
        raise ValueError(f"no trainer wrapper for client {client!r}")


# -- scenarios ------------------------------------------------------------------------------


def _sft_datum(text: str) -> types.Datum:
    """What ``firetitan_async.local._datums.sft_datum`` builds (inputs ``t[:-1]``, targets
    ``t[1:]``, weight 1), made here so a client process never imports the local trainer."""
    tokens = list(text.encode())
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": types.TensorData.from_numpy(np.asarray(tokens[1:], dtype=np.int64)),
            "weights": types.TensorData.from_numpy(np.ones(len(tokens) - 1, dtype=np.float32)),
        },
    )


def _batch(n: int) -> list[types.Datum]:
    return [_sft_datum(_TEXTS[i % len(_TEXTS)]) for i in range(n)]


def _small_datum() -> list[types.Datum]:
    return [_sft_datum("hello world")]


async def _submit_steps(
    trainer: _Trainer,
    steps: int,
    batch: list[types.Datum],
    phase: Callable[[str], None] = lambda _name: None,
) -> int:
    """Submit every step first, then await the results in order; returns the op count."""
    phase("submit")
    futures: list[Awaitable[Any]] = []
    for _ in range(steps):
        futures.append(trainer.forward_backward(batch))
        futures.append(trainer.optim_step())
    phase("await")
    for future in futures:
        await future
    return len(futures)


async def _pipelined(trainer: _Trainer, args: WorkerArgs) -> dict[str, Any]:
    batch = _batch(args.batch)
    await trainer.forward(batch[:1])  # warm-up: connection open, lazy imports done
    before = await anyio.to_thread.run_sync(fetch_stats, args.url)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    ops = await _submit_steps(trainer, args.steps, batch)
    wall = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    after = await anyio.to_thread.run_sync(fetch_stats, args.url)
    return {
        "wall_s": wall,
        "steps": args.steps,
        "ops": ops,
        "steps_per_s": args.steps / wall,
        "cpu_s": cpu,
        "server_compute_s": float(after["compute_seconds"]) - float(before["compute_seconds"]),
    }


async def _window(trainer: _Trainer, data: list[types.Datum], ops: int, inflight: int) -> None:
    """``ops`` forwards with at most ``inflight`` outstanding, awaited oldest first."""
    window: deque[Awaitable[Any]] = deque()
    for _ in range(ops):
        if len(window) >= inflight:
            await window.popleft()
        window.append(trainer.forward(data))
    while window:
        await window.popleft()


async def _throughput(trainer: _Trainer, args: WorkerArgs) -> dict[str, Any]:
    data = _small_datum()
    await _window(trainer, data, args.warmup, args.inflight)
    cpu0, t0 = _cpu_s(), time.perf_counter()
    await _window(trainer, data, args.ops, args.inflight)
    return _throughput_figures(args.ops, time.perf_counter() - t0, _cpu_s() - cpu0)


def _throughput_figures(ops: int, wall: float, cpu: float) -> dict[str, Any]:
    return {
        "wall_s": wall,
        "ops": ops,
        "ops_per_s": ops / wall,
        "cpu_s": cpu,
        "cpu_per_op_us": cpu / ops * 1e6,
    }


class _BareHttpx:
    """The no-library baseline: one ``httpx.AsyncClient``, two round trips per op."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._model_id = ""
        self._next_seq = 1
        self._compress = False

    async def open(self) -> None:
        from firetitan_async.wire.tinker import (
            client_config_body,
            create_model_body,
            create_session_body,
        )

        config = await self._post_json("/api/v1/client/config", client_config_body())
        self._compress = bool(config.get("proto_compress_fwdbwd"))
        session = await self._post_json(
            "/api/v1/create_session", create_session_body(user_metadata=None)
        )
        body = create_model_body(
            session_id=session["session_id"],
            model_seq_id=0,
            base_model=BASE_MODEL,
            lora_rank=LORA_RANK,
            user_metadata=None,
        )
        accepted = await self._post_json("/api/v1/create_model", body)
        created = json.loads(await self._retrieve(accepted["request_id"], "CreateModel"))
        self._model_id = created["model_id"]

    async def _post_json(self, path: str, body: Any) -> Any:
        reply = await self._http.post(path, json=body)
        reply.raise_for_status()
        return reply.json()

    async def _retrieve(self, request_id: str, request_type: str) -> bytes:
        body = json.dumps({"request_id": request_id, "allow_metadata_only": False}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Tinker-Request-Type": request_type,
        }
        while True:
            reply = await self._http.post("/api/v1/retrieve_future", content=body, headers=headers)
            reply.raise_for_status()
            if _PROTO in reply.headers.get("content-type", ""):
                return reply.content
            result = reply.json()
            if isinstance(result, dict) and result.get("type") == "try_again":
                continue
            if isinstance(result, dict) and "error" in result:
                raise RuntimeError(f"operation failed: {result['error']}")
            return reply.content

    async def forward(self, data: Sequence[types.Datum]) -> types.ForwardBackwardOutput:
        from firetitan_async.wire.fwdbwd import (
            decode_forward_backward_output,
            encode_forward_backward_request,
        )

        seq_id, self._next_seq = self._next_seq, self._next_seq + 1
        body = encode_forward_backward_request(
            model_id=self._model_id,
            seq_id=seq_id,
            data=data,
            loss_fn="cross_entropy",
            loss_fn_config=None,
            forward_only=True,
        )
        headers = {"Content-Type": _PROTO}
        if self._compress:
            import zstandard

            body = zstandard.ZstdCompressor().compress(body)
            headers["Content-Encoding"] = "zstd"
        reply = await self._http.post("/api/v1/forward_backward", content=body, headers=headers)
        reply.raise_for_status()
        payload = await self._retrieve(reply.json()["request_id"], "Forward")
        return decode_forward_backward_output(payload)

    async def run(self, data: Sequence[types.Datum], ops: int, inflight: int) -> None:
        """``ops`` forwards by ``inflight`` worker tasks."""
        remaining = ops

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.forward(data)

        async with anyio.create_task_group() as tg:
            for _ in range(min(inflight, ops)):
                tg.start_soon(worker)


async def _throughput_httpx(args: WorkerArgs) -> dict[str, Any]:
    data = _small_datum()
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=512)
    async with httpx.AsyncClient(
        base_url=args.url,
        headers={"X-API-Key": API_KEY},
        limits=limits,
        timeout=httpx.Timeout(60.0, pool=None),
    ) as http:
        bare = _BareHttpx(http)
        await bare.open()
        await bare.run(data, args.warmup, args.inflight)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        await bare.run(data, args.ops, args.inflight)
        return _throughput_figures(args.ops, time.perf_counter() - t0, _cpu_s() - cpu0)


async def _stall(args: WorkerArgs) -> dict[str, Any]:
    batch = _batch(args.batch)
    with GcPauses.installed() as pauses:
        ticker = Ticker(pauses)
        figures = await _stall_measured(args, batch, ticker)
    figures["max_gc_pause_ms"] = pauses.max_s * 1e3
    return figures


async def _stall_measured(
    args: WorkerArgs, batch: list[types.Datum], ticker: Ticker
) -> dict[str, Any]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        await anyio.sleep(0.01)  # the ticker is running before the session starts
        t0 = time.perf_counter()
        ticker.phase("session_start")
        async with _open_trainer(args.client, args.url) as trainer:
            ops = await _submit_steps(trainer, args.steps, batch, ticker.phase)
            ticker.stop()
            wall = time.perf_counter() - t0
    figures: dict[str, Any] = {
        "wall_s": wall,
        "steps": args.steps,
        "ops": ops,
        "max_stall_ms": ticker.max_gap_s * 1e3,
        "max_stall_beside_gc_ms": ticker.max_gap_beside_gc_s * 1e3,
        "max_stall_cpu_beside_gc_ms": ticker.max_gap_cpu_beside_gc_s * 1e3,
        "ticks": ticker.ticks,
    }
    for phase, gap in ticker.by_phase.items():
        if phase != "idle":
            figures[f"max_stall_ms_{phase}"] = gap * 1e3
    return figures


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
