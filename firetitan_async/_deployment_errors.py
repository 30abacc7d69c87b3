"""Errors of deployments, weight publication and rollout sampling (all ``FiretitanError``).

Example::

    try:
        completions = await sampler.sample(prompt, max_tokens=64)
    except SamplingError as exc:
        print(exc.status_code, exc.request_id, exc.attempts)
"""

from __future__ import annotations

from .errors import FiretitanError

__all__ = ["HotloadFailed", "SamplingError"]


class SamplingError(FiretitanError):
    """A completions request failed for good (a non-retryable status, retries or the hot-load
    wait exhausted, or a malformed reply).

    ``request_id`` is the id we sent as ``x-request-id`` (the same on every attempt, so it
    finds the request in server logs), ``server_request_id`` the one the server echoed,
    ``status_code`` the last HTTP status (None: no reply) and ``attempts`` how many were made.
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
        self.request_id = request_id
        self.server_request_id = server_request_id
        self.status_code = status_code
        self.attempts = attempts
        where = f"request_id={request_id}, status={status_code}, attempts={attempts}"
        super().__init__(f"{message} ({where})")


class HotloadFailed(FiretitanError):
    """A hot-load did not complete: the deployment reported an error for the snapshot, or it
    was not served before the timeout. ``snapshot`` is its identity; ``detail`` what the
    deployment last said."""

    def __init__(self, deployment_id: str, snapshot: str, detail: str) -> None:
        self.deployment_id = deployment_id
        self.snapshot = snapshot
        self.detail = detail
        super().__init__(f"hot-load of {snapshot!r} onto {deployment_id!r} failed: {detail}")
