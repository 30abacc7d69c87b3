"""``ServerlessState``: what the local trainer keeps for the Fireworks serverless gateway.

Through ``/training/v1/serverless`` a session is a ``ts-<hex>`` training session and each of
its models a run, ``run-<hex>:train:<n>`` (``serverless_run_id``); a save (sampler or state)
returns the gateway's ``<account>/<run_id>/<name>`` instead of a ``tinker://`` path, and this
state maps one to the other. It also holds the sampler routes bound with
``create_sampling_route``, the deleted sessions, and the capacity-409 test knob
(``POST /_local/serverless`` ``{"capacity_409": n, "bare": false}``: the next ``n``
serverless ``retrieve_future`` polls answer 409, with a capacity message or, ``bare``, an
empty body).

Example::

    state = ServerlessState()
    state.configure({"capacity_409": 2})
    state.take_capacity_409()   # (409 body) twice, then None
"""

from __future__ import annotations

import hashlib
from typing import Any

from ._http_errors import ApiError
from ._sessions import TrainingModel

__all__ = ["CAPACITY_409_DETAIL", "ServerlessState", "serverless_run_id"]

CAPACITY_409_DETAIL = "training capacity is temporarily exhausted (capacity_exhausted)"
"""The detail of a forced capacity 409 (it carries the gateway's ``capacity_exhausted``)."""


def serverless_run_id(session_id: str, model_seq_id: int) -> str:
    """The run id of model ``model_seq_id`` of serverless session ``session_id``: ``run-`` and
    32 hex digits, the gateway's shape (the Fireworks SDK checks it in checkpoint paths);
    deterministic, so a resent ``create_model`` meets its first."""
    digest = hashlib.sha256(f"{session_id}:{model_seq_id}".encode()).hexdigest()
    return f"run-{digest[:32]}"


class ServerlessState:
    """See the module docstring. Touched only from the server's event loop, except
    ``gateway_path`` (an operation thread; a single dict store)."""

    def __init__(self) -> None:
        self._paths: dict[str, str] = {}  # "<account>/<run_id>/<name>" -> tinker path
        self.routes: set[str] = set()  # bound standalone routes: training runs, base models
        self.deleted: set[str] = set()  # deleted session ids
        self.capacity_409 = 0
        self.bare_409 = False

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply the knobs of ``POST /_local/serverless``; returns them all."""
        unknown = set(body) - {"capacity_409", "bare"}
        if unknown:
            raise ApiError(400, f"unknown knobs {sorted(unknown)}")
        count = body.get("capacity_409", self.capacity_409)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ApiError(400, f"capacity_409 must be an int >= 0, got {count!r}")
        bare = body.get("bare", self.bare_409)
        if not isinstance(bare, bool):
            raise ApiError(400, f"bare must be a bool, got {bare!r}")
        self.capacity_409, self.bare_409 = count, bare
        return {"capacity_409": count, "bare": bare}

    def take_capacity_409(self) -> dict[str, Any] | None:
        """The body of a forced 409 for this poll (``{}`` when bare), or ``None``."""
        if self.capacity_409 <= 0:
            return None
        self.capacity_409 -= 1
        return {} if self.bare_409 else {"detail": CAPACITY_409_DETAIL}

    def gateway_path(self, account: str, entry: TrainingModel, name: str, tinker: str) -> str:
        """Record a save (sampler or state) of ``entry``; returns its gateway path."""
        run_id = entry.model_id.partition(":train:")[0]
        path = f"{account}/{run_id}/{name}"
        self._paths[path] = tinker
        return path

    def tinker_path(self, path: str) -> str:
        """The ``tinker://`` path of a gateway path (any other path as it is)."""
        return self._paths.get(path.strip("/"), path)

    def find(self, checkpoint: str) -> str | None:
        """The tinker path of a session checkpoint named by its gateway path or its last
        segment (the listing's id), or ``None``."""
        if checkpoint in self._paths:
            return self._paths[checkpoint]
        for path, tinker in reversed(self._paths.items()):
            if path.rsplit("/", 1)[-1] == checkpoint:
                return tinker
        return None
