"""The exceptions firetitan_async raises.

Every exception derives from :class:`FiretitanError`. None of them ever carries an API key:
messages are built from status codes, request ids and server-provided bodies only, and the
transport redacts credentials before a body is attached.

Example::

    try:
        await client.optim_step(params)
    except firetitan_async.RequestFailedError as exc:
        print(exc.category, exc.request_id)
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIStatusError",
    "CleanupFailed",
    "DeploymentFailed",
    "FiretitanError",
    "HotloadFailed",
    "Interrupted",
    "InvalidInput",
    "NotAwaited",
    "OperationTimeout",
    "PlatformAPIError",
    "ProtocolError",
    "ReadinessTimeout",
    "ReplyTooLarge",
    "RequestFailedError",
    "RolloutsFailing",
    "SamplingError",
    "SessionClosed",
    "SubmissionLost",
    "TrainerJobFailed",
    "UnsupportedAwaitable",
    "UsageError",
]


class FiretitanError(Exception):
    """Base class of every error raised by firetitan_async."""


class APIStatusError(FiretitanError):
    """The server answered with a non-2xx status that is not retried (or retries ran out).

    ``status_code`` is the HTTP status, ``body`` the parsed JSON body (or text), and
    ``request_id`` the operation's server-side id when one was known.

    Example::

        except APIStatusError as exc:
            if exc.status_code == 404: ...
    """

    def __init__(
        self,
        status_code: int,
        body: Any = None,
        *,
        method: str | None = None,
        path: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.method = method
        self.path = path
        self.request_id = request_id
        where = f" on {method} {path}" if method and path else ""
        super().__init__(f"HTTP {status_code}{where}: {_describe_body(body)}")


class RequestFailedError(FiretitanError):
    """An operation was accepted but failed on the server (reported by ``retrieve_future``).

    ``category`` is the server's category (``"user"``, ``"server"`` or ``"unknown"``);
    ``request_id`` names the failed operation.
    """

    def __init__(self, message: str, *, category: str = "unknown", request_id: str | None = None):
        self.category = category
        self.request_id = request_id
        super().__init__(f"{message} (category={category}, request_id={request_id})")


class TrainerJobFailed(FiretitanError):
    """The trainer job reached a terminal state (e.g. ``FAILED``) while we waited for it.

    ``state`` is the job's state, or ``"NOT_FOUND"`` for a job id the control plane never
    knew (a mistyped id, another account): "no such job", not a deleted one.
    """

    def __init__(self, job_id: str, state: str, message: str | None = None) -> None:
        self.job_id = job_id
        self.state = state
        detail = f": {message}" if message else ""
        if state == "NOT_FOUND":
            super().__init__(f"no such job: trainer job {job_id!r} does not exist{detail}")
        else:
            super().__init__(f"trainer job {job_id!r} is {state}{detail}")


class ReadinessTimeout(FiretitanError, TimeoutError):
    """The trainer job did not become RUNNING within the allowed time."""

    def __init__(self, job_id: str, timeout_s: float, last_state: str | None = None) -> None:
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.last_state = last_state
        super().__init__(
            f"trainer job {job_id!r} was not ready after {timeout_s:g}s (last state: {last_state})"
        )


class SessionClosed(FiretitanError):
    """The session (or client) was used after its ``async with`` block ended."""


class SubmissionLost(FiretitanError):
    """A submission could not be delivered (retries ran out), so its operation failed.

    The server runs a client's operations in sequence-id order and cannot skip the missing
    one, so every later operation of the same training client fails with this error too,
    at once, instead of waiting forever.
    """


class ProtocolError(FiretitanError):
    """The server's reply does not follow the wire protocol (malformed JSON or protobuf,
    missing or ill-typed fields, inconsistent sizes).

    ``what`` names the reply (e.g. ``"retrieve_future reply"``), ``problem`` what is wrong.

    Example::

        try:
            await client.optim_step(params)
        except ProtocolError as exc:
            print(exc.what, exc.problem)
    """

    def __init__(self, what: str, problem: str) -> None:
        self.what = what
        self.problem = problem
        super().__init__(f"malformed {what}: {problem}")


class OperationTimeout(FiretitanError, TimeoutError):
    """An operation blew one of its :class:`~firetitan_async.Deadlines`.

    ``operation`` names it (e.g. ``"forward_backward"``), ``seq_id`` and ``request_id`` identify
    it on the server (``request_id`` is ``None`` if it was never accepted), ``phase`` is the
    phase whose budget ran out (``"submit"``, ``"queue"``, ``"compute"`` or ``"transfer"``),
    ``budget_s`` that budget, and ``phase_s`` the seconds spent in each phase. The server-side
    operation is not cancelled: only the wait ends.

    Example::

        try:
            await client.forward_backward(batch, "cross_entropy")
        except OperationTimeout as exc:
            print(exc.phase, exc.phase_s["compute"], exc.request_id)
    """

    def __init__(
        self,
        operation: str,
        *,
        seq_id: int | None,
        request_id: str | None,
        phase: str,
        budget_s: float,
        phase_s: Mapping[str, float],
    ) -> None:
        self.operation = operation
        self.seq_id = seq_id
        self.request_id = request_id
        self.phase = phase
        self.budget_s = budget_s
        self.phase_s = dict(phase_s)
        spent = ", ".join(f"{k} {v:.2f}s" for k, v in self.phase_s.items())
        super().__init__(
            f"{operation} (seq_id {seq_id}, request_id {request_id}) exceeded its {phase} "
            f"deadline of {budget_s:g}s ({spent}); the server-side operation was not cancelled"
        )


class InvalidInput(FiretitanError, ValueError):
    """An argument was rejected before anything was sent.

    ``field`` names the offending field (e.g. ``"loss_fn_inputs.weights"``) and ``index`` the
    datum index within the batch, when the problem is in one datum.

    Example::

        InvalidInput("weights", "has 3 elements, model_input has 4 tokens", index=2)
    """

    def __init__(self, field: str, problem: str, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        self.problem = problem
        where = f"data[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {problem}")


def _describe_body(body: Any) -> str:
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if key in body:
                return str(body[key])
    text = str(body)
    if isinstance(body, str) and _HTML.match(body):
        # A web page (a proxy's or a web server's, not the API's): its title, not its markup.
        title = _TITLE.search(body)
        words = " ".join(_TAG.sub(" ", title.group(1) if title else body).split())
        return f"an HTML page, not an API reply ({len(body)} characters): {words[:200]!r}"
    return text if len(text) <= 500 else text[:500] + "…"


_HTML = re.compile(r"\s*<(!doctype|html|head|body|title|h1|p)\b", re.IGNORECASE)
_TITLE = re.compile(r"<(?:title|h1)[^>]*>(.*?)</(?:title|h1)>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


class UsageError(FiretitanError, RuntimeError):
    """An object was used in a way it does not support (a ``RuntimeError`` too).

    E.g. reading ``Pending.result()`` before the operation finished, or entering a
    ``ServiceSession`` twice.

    Example::

        try:
            value = pending.result()
        except UsageError:
            value = await pending
    """


class NotAwaited(FiretitanError, AttributeError):
    """An attribute of an operation's result was read on its ``Pending`` (an
    ``AttributeError`` too, so ``hasattr`` and ``getattr(x, name, default)`` still work).

    Example::

        fb = client.forward_backward(batch, "cross_entropy")
        fb.metrics          # NotAwaited: ... did you forget `await`? (await fb).metrics
    """


class RolloutsFailing(FiretitanError):
    """``run_rl``'s circuit breaker opened: ``count`` rollout attempts failed in a row (no
    rollout succeeded in between), reaching the policy's ``max_consecutive_failures``.

    ``last_cause`` is the latest failure (also the ``__cause__``).

    Example::

        try:
            await run_rl(..., on_rollout_error=RetryGroup(times=2, max_consecutive_failures=8))
        except RolloutsFailing as exc:
            print(exc.count, repr(exc.last_cause))
    """

    def __init__(self, count: int, last_cause: BaseException) -> None:
        self.count = count
        self.last_cause = last_cause
        super().__init__(
            f"{count} rollout attempts failed in a row; the last: "
            f"{type(last_cause).__name__}: {last_cause}"
        )


class UnsupportedAwaitable(FiretitanError, TypeError):
    """``aresult`` / ``as_awaitable`` got an object they cannot wait for (a ``TypeError`` too)."""


class SamplingError(FiretitanError):
    """A completions request failed for good (a non-retryable status, retries or the hot-load
    wait exhausted, or a malformed reply).

    ``message`` says what went wrong; ``request_id`` is the id we sent as ``x-request-id``
    (the same on every attempt, so it finds the request in server logs), ``server_request_id``
    the one the server echoed, ``status_code`` the last HTTP status (None: no reply) and
    ``attempts`` how many were made.

    Example::

        try:
            completions = await sampler.sample(prompt, max_tokens=64)
        except SamplingError as exc:
            print(exc.status_code, exc.request_id, exc.attempts)
    """

    def __init__(
        self,
        message: str,
        *,
        request_id: str | None = None,
        server_request_id: str | None = None,
        status_code: int | None = None,
        attempts: int = 0,
    ) -> None:
        self.message = message
        self.request_id = request_id
        self.server_request_id = server_request_id
        self.status_code = status_code
        self.attempts = attempts
        where = f"request_id={request_id}, status={status_code}, attempts={attempts}"
        super().__init__(f"{message} ({where})")


class HotloadFailed(FiretitanError):
    """A hot-load did not complete: the deployment reported an error for the snapshot, or it
    was not served before the timeout. ``snapshot`` is its identity; ``detail`` what the
    deployment last said.

    Example::

        try:
            await deployments.wait_for_hotload(deployment_id, base_model=model, snapshot=snapshot)
        except HotloadFailed as exc:
            print(exc.snapshot, exc.detail)
    """

    def __init__(self, deployment_id: str, snapshot: str, detail: str) -> None:
        self.deployment_id = deployment_id
        self.snapshot = snapshot
        self.detail = detail
        super().__init__(f"hot-load of {snapshot!r} onto {deployment_id!r} failed: {detail}")


class ReplyTooLarge(FiretitanError):
    """The reply was larger than the transport's ``max_reply_bytes``.

    Not an ``httpx.TransportError``: the same request would get the same reply, so no retry
    loop retries it.
    """


class Interrupted(FiretitanError, SystemExit):
    """A signal cancelled a :func:`cleanup_on_signals` block, which then cleaned up.

    ``signal`` is the signal number, ``exit_code`` (also ``code``) the conventional exit
    status, 128 + it. It is a ``SystemExit`` too: left uncaught, it ends the program with that
    status and no traceback, like ``sys.exit`` (what a scheduler that sent SIGTERM expects).

    Example::

        try:
            anyio.run(main)
        except Interrupted as exc:
            print(exc, file=sys.stderr)
            sys.exit(exc.exit_code)      # 130 for SIGINT, 143 for SIGTERM
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; cleaned up")
        self.signal = signum
        self.exit_code = 128 + signum
        self.code = self.exit_code


class CleanupFailed(FiretitanError):
    """Releasing a created resource failed or outlived its grace period: it may still bill.

    ``resources`` names each one left behind (``"trainer job <id>"``).

    Example::

        try:
            async with jobs.create_and_wait(config, grace_s=10) as endpoint:
                ...
        except CleanupFailed as exc:
            print("still running, delete by hand:", exc.resources)
    """

    def __init__(self, resources: list[str], detail: str) -> None:
        self.resources = list(resources)
        super().__init__(f"could not release {', '.join(resources)}: {detail}")


class DeploymentFailed(FiretitanError):
    """A deployment is in a bad state (``FAILED``, ``DELETED``, ``DELETING``), is missing, or
    did not become ready in time (``state`` says which)."""

    def __init__(self, deployment_id: str, state: str, detail: str = "") -> None:
        self.deployment_id = deployment_id
        self.state = state
        suffix = f": {detail}" if detail else ""
        super().__init__(f"deployment {deployment_id!r} is {state}{suffix}")


class PlatformAPIError(APIStatusError):
    """A non-2xx control-plane reply (a subclass of :class:`~firetitan_async.APIStatusError`).

    ``message`` is the server's message; ``grpc_code`` the ``google.rpc`` code (0–16) when the
    body carried one; ``reason`` and ``metadata`` come from a ``google.rpc.ErrorInfo`` detail
    only (never guessed from the text); ``details`` is the raw ``details`` list.

    Example::

        except PlatformAPIError as exc:
            if exc.reason == "QUOTA_EXCEEDED": ...
    """

    def __init__(
        self,
        status_code: int,
        body: Any = None,
        *,
        method: str | None = None,
        path: str | None = None,
        message: str = "",
        grpc_code: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(status_code, body, method=method, path=path)
        self.message = message
        self.grpc_code = grpc_code
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.details = list(details or [])
