"""A hostile trainer: every string it returns carries the caller's API key.

A reverse proxy on loopback (a small Starlette app) stands in front of the real local
trainer and rewrites every reply: ids (request, model, session) get the key appended, every
free text (error bodies, failure messages, queue reasons, checkpoint names and times, job and
deployment records, SSE events, ``x-request-id``) quotes it, padded so that a text cut at 200
or 500 characters cuts through it. Ids that come back to it lose the key again (whole or
redacted), so the trainer behind still works.

Every public path is driven through it (both dialects' sessions, training and sampling
clients, failed operations, a lost submission, checkpoint listings, the control plane, the
deployment sampler's replies and streams, the CLI, the event stream, OTel spans and the
dashboard feeds of ``examples/web_backend.py``) and everything a user or an operator could
see (exception text, repr, traceback and cause chain, log records, events, span attributes,
stdout/stderr, the dashboard's feed and JSONL file) is searched for the key, whole and as any
12-character piece of it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _loopback_app import serve_on_loopback
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tinker import types
from tinker.proto import tinker_public_pb2 as pb

from firetitan_async import (
    Deployments,
    DeploymentSampler,
    FiretitanError,
    OperationEvent,
    OtelExporter,
    RetryPolicy,
    ServiceSession,
    TrainerJobConfig,
    TrainerJobs,
)
from firetitan_async._http._redact import Redactor
from firetitan_async.cli._cli import main as cli_main
from firetitan_async.local import LocalTrainer
from firetitan_async.local._datums import sft_datum

pytestmark = pytest.mark.anyio

KEY = "fw-hostile-9f3c2a7e51b84d06a1c5e8f2b7d94e3c"
PIECES = [KEY[i : i + 12] for i in range(len(KEY) - 11)]
MODEL = "local/tiny-byte-lm"
FAST = RetryPolicy(max_attempts=4, backoff_base_s=0.001, backoff_cap_s=0.01, jitter=0)
ADAM = types.AdamParams(learning_rate=1e-3)
PAD = "." * 190  # a text cut at 200 characters cuts through the key that follows
# Ids the client sends back (in JSON): the key is appended after a "~".
_ID_FIELDS = frozenset({"request_id", "path"})
# Free text: the key is quoted in it.
_TEXT_FIELDS = frozenset({
    "error", "message", "detail", "reason", "queue_state_reason", "displayName", "display_name",
    "checkpoint_id", "state_message", "status_message", "annotations", "text",
})
_RETURNED = [f"~{KEY}".encode(), b"~<redacted>", b"~%3Credacted%3E"]
_SERVER_LOGGER = "firetitan_async.local"
_ESCAPED_KEY = "".join(f"\\u{ord(c):04x}" if c.isalpha() else c for c in KEY).encode()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _hostile(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _hostile(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_hostile(v, key) for v in value]
    if isinstance(value, str):
        if key in _ID_FIELDS:
            return f"{value}~{KEY}"
        if key in _TEXT_FIELDS:
            return f"{value} {PAD}{KEY} (you sent {KEY})"
    return value


def _proxy(upstream: str) -> Starlette:
    """The hostile proxy; ``app.state`` holds the one-shot faults a test asks for."""

    async def forward(request: Request) -> Response:
        state = request.app.state
        path = request.url.path
        raw = await request.body()
        for returned in _RETURNED:
            raw = raw.replace(returned, b"")
            path = path.replace(returned.decode(), "")
        state.seen.append(path)
        if state.errors_503 > 0 and path.startswith("/api/v1/"):
            state.errors_503 -= 1
            return Response(f"overloaded {PAD}{KEY}, try again", 503, media_type="text/plain")
        if state.garble_submit and path.endswith("/optim_step"):
            state.garble_submit = False  # not a request id: the wire quotes what it got
            return _json({"request_id": {"owner": KEY}})
        if path.endswith("/retrieve_future"):
            request_id = json.loads(raw).get("request_id")
            if state.fail_future:
                state.fail_future = False
                return _json({"error": f"denied: {PAD}{KEY}", "category": "user"})
            if request_id not in state.queued:  # each operation waits in a queue once
                state.queued.add(request_id)
                return _json({
                    "type": "try_again", "request_id": f"{request_id}~{KEY}",
                    "queue_state": "paused_capacity",
                    "queue_state_reason": f"behind the jobs of {KEY}",
                })
        headers = {
            k: v for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length")
        }
        async with httpx.AsyncClient(base_url=upstream, timeout=60) as http:
            reply = await http.request(
                request.method, path, params=request.query_params, content=raw, headers=headers
            )
        content_type = reply.headers.get("content-type", "")
        body = reply.content
        if "json" in content_type:
            data = _hostile(json.loads(body)) if body else {}
            if state.bad_time and "checkpoints" in data:
                for record in data["checkpoints"]:
                    if isinstance(record, dict):
                        record["time"] = f"{PAD}{KEY}"
            body = json.dumps(data).encode()
            if path.endswith("/retrieve_future"):  # spelled with escapes: no byte scan sees it
                body = body.replace(KEY.encode(), _ESCAPED_KEY)
        elif "protobuf" in content_type and request.headers.get("x-tinker-request-type") in (
            "Forward", "ForwardBackward"
        ):  # a binary reply: the key in its output type and in a metric's name
            out = pb.ForwardBackwardOutput()
            out.ParseFromString(body)
            out.loss_fn_output_type = f"{out.loss_fn_output_type} {KEY}"
            out.metrics[f"echo_{KEY}:sum"] = 1.0
            body = out.SerializeToString()
        elif "event-stream" in content_type:
            if state.sse_error:
                body = f'data: {{"error": "{PAD}{KEY}"}}\n\n'.encode()
            else:  # every event quotes the key, in its text and a field nobody reads
                body = body.replace(b'data: {"', f'data: {{"echo": "{KEY}", "'.encode())
                body = body.replace(b'"text": "', f'"text": "{KEY}'.encode())
        elif reply.status_code >= 400:
            body += f" {PAD}{KEY}".encode()
        if reply.status_code >= 400 and state.text_errors:
            body, content_type = f"refused {'.' * 480}{KEY}".encode(), "text/plain"
        return Response(
            body,
            reply.status_code,
            headers={"x-request-id": f"srv-{KEY}"},
            media_type=content_type or None,
        )

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE",
                                                                     "PATCH", "PUT"])])
    reset(app)
    return app


def reset(app: Starlette) -> None:
    state = app.state
    state.seen = []
    state.queued = set()
    state.errors_503 = 0
    state.garble_submit = False
    state.fail_future = False
    state.bad_time = False
    state.sse_error = False
    state.text_errors = False


@pytest.fixture(params=["entry", "behind"])
def lines(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``entry``: as shipped. ``behind``: with the redaction where replies enter switched off,
    what stands behind it (errors scrubbed where they leave an operation, events and spans
    redacted, errors built from redacted text, the CLI's redacted output) must hold alone."""
    if request.param == "behind":
        monkeypatch.setattr(Redactor, "json_bytes", lambda self, body: body)
    return str(request.param)


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status, media_type="application/json")


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[str, Starlette, LocalTrainer]]:
    with LocalTrainer(api_key=KEY, seed=0, long_poll_s=2.0) as lt:
        httpx.post(
            f"{lt.base_url}/v1/accounts/{lt.account_id}/deployments?deploymentId=rollouts",
            json={"baseModel": MODEL},
            headers={"X-Api-Key": KEY},
        ).raise_for_status()
        app = _proxy(lt.base_url)
        with serve_on_loopback(app) as url:
            yield url, app, lt


@pytest.fixture
def proxy(hostile: tuple[str, Starlette, LocalTrainer]) -> Iterator[tuple[str, Starlette]]:
    url, app, _ = hostile
    reset(app)
    yield url, app
    reset(app)


class Seen:
    """Everything a user or an operator could see, searched for the key."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        self.errors: list[BaseException] = []
        self.texts: list[str] = []

    def error(self, exc: BaseException) -> BaseException:
        self.errors.append(exc)
        return exc

    def assert_clean(self, *, min_errors: int) -> None:
        assert len(self.errors) >= min_errors, self.errors
        # The client's log records (the local trainer behind the proxy is not the client).
        records = [r for r in self.caplog.records if not r.name.startswith(_SERVER_LOGGER)]
        texts = [*self.texts, *(self._log_record(r) for r in records)]
        for exc in self.errors:
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
            texts += [repr(v) for v in vars(exc).values()]
        for text in texts:
            _assert_no_key(text)

    @staticmethod
    def _log_record(record: logging.LogRecord) -> str:
        exc = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        return f"{record.getMessage()} {record.args!r} {exc}"


def _assert_no_key(text: str) -> None:
    assert KEY not in text, text
    for piece in PIECES:
        assert piece not in text, f"{piece!r} of the key in: {text}"


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture) -> Seen:
    caplog.set_level(logging.DEBUG, logger="firetitan_async")
    return Seen(caplog)


def _spans(memory: InMemorySpanExporter) -> list[str]:
    texts = []
    for span in memory.get_finished_spans():
        texts.append(repr(dict(span.attributes or {})))
        texts.append(repr(span.status.description))
        texts += [f"{e.name} {dict(e.attributes or {})!r}" for e in span.events]
    return texts


async def test_the_tinker_data_plane_keeps_the_key_out(
    proxy: tuple[str, Starlette], seen: Seen, lines: str
) -> None:
    url, app = proxy
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    events: list[OperationEvent] = []
    app.state.errors_503 = 1  # retried: the retry log lines quote the body
    async with ServiceSession(
        url, api_key=KEY, retry=FAST, dialect="tinker", on_event=OtelExporter(provider)
    ) as session:
        session.add_event_hook(events.append)
        stream = session.events()
        client = await session.create_training_client(MODEL, lora_rank=4)
        app.state.errors_503 = 2  # and inside an operation: "retried" events
        await client.forward_backward([_datum()], "cross_entropy")
        await client.optim_step(ADAM)
        fb = client.forward_backward([_datum()], "cross_entropy")
        output = await fb  # a protobuf reply: its output type and a metric quote the key
        saved = await client.save_state("step-1")
        entries = await client.list_checkpoints()
        assert "step-1" in entries[0].checkpoint_id
        if lines == "entry":  # what the replies carried, redacted where it entered
            seen.texts += [repr(saved), repr(entries), repr(fb.request_id), repr(output)]
            assert "*" * len(KEY) in output.loss_fn_output_type
            assert "<redacted>" in repr(saved) + repr(entries)
        await client.forward([_datum()], "cross_entropy")
        for_sampler = await client.save_weights_for_sampler("s-1")
        sampler = await session.create_sampling_client(base_model=MODEL)
        prompt = types.ModelInput.from_ints([1, 2, 3])
        sampled = await sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2))
        logprobs = await sampler.compute_logprobs(prompt)
        if lines == "entry":
            seen.texts += [repr(for_sampler), repr(sampled), repr(logprobs)]
        app.state.fail_future = True  # request_failed, its message quoting the key
        with pytest.raises(FiretitanError) as failed:
            await client.optim_step(ADAM)
        seen.error(failed.value)
        with pytest.raises(FiretitanError) as missing:  # a 404 whose body quotes the key
            await client.load_state(f"tinker://{client.model_id}/weights/missing")
        seen.error(missing.value)
        app.state.bad_time = True  # a checkpoint time that is the key
        with pytest.raises(FiretitanError) as listing:
            await client.list_checkpoints()
        seen.error(listing.value)
        app.state.bad_time = False
        app.state.garble_submit = True  # a submission reply the wire cannot read: lost
        lost = client.optim_step(ADAM)
        later = client.forward_backward([_datum()], "cross_entropy")
        for pending in (lost, later):
            with pytest.raises(FiretitanError) as info:
                await pending
            seen.error(info.value)
    streamed = [event async for event in stream]  # (it ended with the session)
    assert [e.kind for e in streamed] == [e.kind for e in events]
    kinds = {e.kind for e in events}
    assert {"queued", "retried", "failed"} <= kinds, kinds
    assert any(e.detail and "<redacted>" in e.detail for e in events)
    seen.texts += [repr(e) for e in [*events, *streamed]] + _spans(memory)
    assert "submission" in str(seen.errors[-1]) or "lost" in str(seen.errors[-1])
    seen.assert_clean(min_errors=5)


async def test_the_fireworks_planes_keep_the_key_out(
    hostile: tuple[str, Starlette, LocalTrainer], proxy: tuple[str, Starlette], seen: Seen
) -> None:
    url, app = proxy
    lt = hostile[2]
    async with TrainerJobs(api_key=KEY, account_id=lt.account_id, base_url=url) as jobs:
        created = await jobs.create(TrainerJobConfig(base_model=MODEL, display_name="hostile"))
        job = await jobs.get(created.job_id)
        seen.texts += [repr(job), repr(created), repr(await jobs.list_jobs())]
        with pytest.raises(FiretitanError) as no_job:
            await jobs.get("no-such-job")
        seen.error(no_job.value)
        app.state.text_errors = True  # a text error body, cut at 500 characters
        with pytest.raises(FiretitanError) as no_job_text:
            await jobs.get("no-such-job")
        seen.error(no_job_text.value)
        app.state.text_errors = False
        async with ServiceSession.from_job(jobs, created.job_id, retry=FAST) as session:
            client = await session.create_training_client(MODEL)
            await client.forward_backward([_datum()], "cross_entropy")
            app.state.fail_future = True
            with pytest.raises(FiretitanError) as failed:
                await client.optim_step(ADAM)
            seen.error(failed.value)
        seen.texts.append(repr(await jobs.list_checkpoints(created.job_id)))
        await jobs.delete(created.job_id)
    async with Deployments(api_key=KEY, base_url=url, account_id=lt.account_id) as deployments:
        seen.texts.append(repr(await deployments.get("rollouts")))
        seen.texts.append(repr(await deployments.list_deployments()))
        with pytest.raises(FiretitanError) as no_deployment:
            await deployments.update("no-such-deployment", {"maxReplicaCount": 2},
                                     ["max_replica_count"])
        seen.error(no_deployment.value)
    seen.assert_clean(min_errors=4)


async def test_the_deployment_sampler_keeps_the_key_out(
    hostile: tuple[str, Starlette, LocalTrainer],
    proxy: tuple[str, Starlette],
    seen: Seen,
    lines: str,
) -> None:
    url, app = proxy
    model = f"accounts/{hostile[2].account_id}/deployments/rollouts"
    async with DeploymentSampler(
        url, model, KEY, retry=FAST, allow_insecure_http=True,
        hotload_retry_interval_s=0.01, hotload_max_retries=1,
    ) as sampler:
        done = await sampler.sample([1, 2, 3], max_tokens=3)
        deltas = [d async for d in sampler.stream([1, 2, 3], max_tokens=3)]
        if lines == "entry":  # what the replies carried, redacted where it entered
            assert any("<redacted>" in d.text for d in deltas)
            seen.texts += [repr(done), repr(deltas)]
        app.state.sse_error = True
        with pytest.raises(FiretitanError) as streamed:
            async for _ in sampler.stream([1, 2, 3], max_tokens=3):
                pass
        seen.error(streamed.value)
        app.state.sse_error = False
        app.state.text_errors = True  # a 4xx text body, cut at 500 characters
        with pytest.raises(FiretitanError) as refused:
            await sampler.sample([1, 2, 3], max_tokens=10**6)
        seen.error(refused.value)
    seen.assert_clean(min_errors=2)


def test_the_cli_keeps_the_key_out(
    hostile: tuple[str, Starlette, LocalTrainer],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    lines: str,
) -> None:
    url, app, _ = hostile
    reset(app)
    monkeypatch.setenv("FIREWORKS_API_KEY", KEY)

    async def a_checkpoint() -> str:
        async with ServiceSession(url, api_key=KEY, retry=FAST, dialect="tinker") as session:
            client = await session.create_training_client(MODEL, lora_rank=4)
            await client.save_state("cli")
            return client.model_id

    model_id = anyio.run(a_checkpoint).split("~")[0]
    listing = ["checkpoints", "list", "--base-url", url, "--run", model_id]
    outputs = []
    for bad_time, as_json in ((False, True), (False, False), (True, False)):
        app.state.bad_time = bad_time
        code = cli_main([*listing, *(["--json"] if as_json else [])])
        out, err = capsys.readouterr()
        outputs.append((code, out, err))
        _assert_no_key(out + err)
    assert outputs[0][0] == 0 and "<redacted>" in outputs[0][1]
    assert outputs[2][0] != 0 and "unexpected listing" in outputs[2][2]
    reset(app)


async def test_the_dashboard_feeds_keep_the_key_out(
    proxy: tuple[str, Starlette], seen: Seen, tmp_path: Path
) -> None:
    url, app = proxy
    wb = _web_backend()
    feed = wb.Feed()
    sunk: list[dict[str, Any]] = []
    feed.add_sink(sunk.append)
    sink, close = wb.jsonl_sink(str(tmp_path / "feed.jsonl"))
    feed.add_sink(sink)
    async with ServiceSession(url, api_key=KEY, retry=FAST, dialect="tinker") as session:
        client = await session.create_training_client(MODEL, lora_rank=4)
        async with anyio.create_task_group() as tg:
            backend = wb.Backend(session, client, tg, feed)
            app.state.garble_submit = True  # the run's optim_step is lost: the run fails
            run = wb.Run(1, 3, 1e-3, reward_every=0)
            backend.runs[1] = run
            await wb._train(backend, run)
    close()
    assert run.status == "failed", run.events
    seen.texts += [json.dumps(sunk), (tmp_path / "feed.jsonl").read_text(), repr(run.events)]
    assert "<redacted>" in json.dumps(run.events)
    seen.assert_clean(min_errors=0)


async def test_the_local_trainer_hooks_need_the_key(
    hostile: tuple[str, Starlette, LocalTrainer],
) -> None:
    lt = hostile[2]
    async with httpx.AsyncClient(base_url=lt.base_url) as http:
        assert (await http.get("/_local/stats")).status_code == 401
        assert (await http.get("/_local/stats", headers={"X-Api-Key": "wrong"})).status_code == 401
        assert (await http.get("/_local/stats", headers={"X-Api-Key": KEY})).status_code == 200


def _datum() -> types.Datum:
    return sft_datum("the hostile trainer")


def _web_backend() -> Any:
    name = "web_backend_hostile"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / "web_backend.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
