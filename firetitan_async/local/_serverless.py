"""The Fireworks serverless gateway of the local trainer (``/training/v1/serverless``).

The ``FrontDoor`` rewrites ``/training/v1/serverless/api/v1/...`` to the data plane with
``SERVERLESS_SCOPE_KEY`` set: sessions are then ``ts-`` training sessions, models are runs and
sampler saves return gateway paths (``_serverless_state``). Served here:

* ``POST /api/v1/create_sampling_route`` (serverless only) ``{"base_model"} | {"training_run"}``:
  binds a standalone sampler route (``accounts/<a>/trainingSamplers/...`` models);
* ``POST /training/v1/serverless/inference/v1/completions``: sampling, with ``model``
  ``accounts/<a>/trainingSessions/<ts>/checkpoints/<checkpoint>`` (a session checkpoint: its
  gateway path or its listed id), ``accounts/<a>/trainingSessions/<ts>`` (the session's base
  weights) or a bound ``accounts/<a>/trainingSamplers/...`` route; the deployments' codec;
* ``GET /v1/accounts/<a>/trainingSessions/<ts>/checkpoints`` (``trainingSessionCheckpoints``,
  oldest first, paged), ``POST .../checkpoints/<c>:promote`` ``{"output_model",
  "base_model"}`` (→ ``{"model"}``), ``GET`` and ``DELETE /v1/accounts/<a>/trainingSessions/<ts>``;
* ``POST /_local/serverless``: the capacity-409 knob (authed like every ``/_local/`` route).

Example::

    routes = serverless_routes()   # added to the app by build_app
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..wire import paths
from ._checkpoint_store import parse_tinker_path, rfc3339
from ._control_plane import check_account
from ._data_plane import SERVERLESS_SCOPE_KEY, _vocab, _weights_for_path
from ._deployments import deployment_registry
from ._http_errors import ApiError
from ._inference import Served, inference_routes
from ._json_body import read_json_object
from ._promotion import ModelRegistry, checkpoint_kind, promoted_model
from ._server_state import ServerState
from ._sessions import Session, TrainingModel

__all__ = ["serverless_routes"]

_MAX_PAGE = 1000


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


def _session(state: ServerState, account: str, session_id: str) -> Session:
    check_account(state.jobs, account)
    session = state.registry.sessions.get(session_id)
    if session is None or not session.serverless or session_id in state.serverless.deleted:
        raise ApiError(404, f"training session accounts/{account}/trainingSessions/"
                       f"{session_id} not found")
    return session


def _models(state: ServerState, session_id: str) -> list[TrainingModel]:
    return [m for m in state.registry.models.values() if m.session_id == session_id]


def _rows(state: ServerState, account: str, session_id: str) -> list[dict[str, Any]]:
    """The session's checkpoints, oldest first: ``name`` ends with the checkpoint's name."""
    prefix = f"accounts/{account}/trainingSessions/{session_id}/checkpoints"
    rows = []
    for entry in _models(state, session_id):
        for meta in state.checkpoints.list_run(entry.model_id):
            kind, promotable = checkpoint_kind(meta, entry.run.lora_rank)
            rows.append({
                "name": f"{prefix}/{str(meta['checkpoint_id']).split('/', 1)[1]}",
                "createTime": meta["time"],
                "checkpointType": kind,
                "promotable": promotable,
                "_meta": meta,
                "_entry": entry,
            })
    rows.sort(key=lambda row: str(row["createTime"]))
    return rows


def _session_checkpoint(state: ServerState, session_id: str, checkpoint: str) -> str:
    """The tinker path of ``checkpoint`` (a gateway path or a listed id) of the session."""
    tinker = state.serverless.find(checkpoint)
    if tinker is not None:
        run_id = parse_tinker_path(tinker).training_run_id
        if any(m.model_id == run_id for m in _models(state, session_id)):
            return tinker
    raise ApiError(404, f"checkpoint {checkpoint!r} of training session {session_id} not found")


def _resolve(request: Request, model: str) -> Served:
    """The weights a serverless completions ``model`` names (see the module docstring)."""
    state = _state(request)
    weights, identity, version = _served(state, model)
    return lambda: (weights, identity, version)


def _served(state: ServerState, model: str) -> tuple[Mapping[str, np.ndarray], str | None, int]:
    """The weights of a serverless ``model`` (see the module docstring), their identity and
    version; 404 if it names nothing this gateway serves."""
    parts = model.split("/")
    if len(parts) < 4 or parts[0] != "accounts" or parts[1] != state.jobs.account_id:
        raise ApiError(404, f"model {model!r} not found on this serverless gateway")
    if parts[2] == "trainingSessions":
        session = _session(state, parts[1], parts[3])
        if len(parts) == 4:
            entries = _models(state, session.session_id)
            if not entries:
                raise ApiError(404, f"training session {session.session_id} has no model")
            return state.base_weights(_vocab(state, entries[0].run.base_model)), None, 0
        if len(parts) < 6 or parts[4] != "checkpoints":
            raise ApiError(404, f"model {model!r} not found on this serverless gateway")
        tinker = _session_checkpoint(state, session.session_id, "/".join(parts[5:]))
        return _weights_for_path(state, tinker), tinker, 1
    if parts[2] == "trainingSamplers":
        rest = "/".join(parts[3:])
        if rest.startswith("checkpoints/"):
            path = rest[len("checkpoints/"):]
            owner, run = [*path.split("/"), "", ""][:2]
            if f"accounts/{owner}/trainingRuns/{run}" not in state.serverless.routes:
                raise ApiError(404, f"no sampler route for {model!r} (create_sampling_route)")
            tinker = state.serverless.tinker_path(path)
            return _weights_for_path(state, tinker), tinker, 1
        if rest not in state.serverless.routes:
            raise ApiError(404, f"no sampler route for {model!r} (create_sampling_route)")
        return state.base_weights(_vocab(state, rest)), None, 0
    raise ApiError(404, f"model {model!r} not found on this serverless gateway")


async def create_sampling_route(request: Request) -> Response:
    if not request.scope.get(SERVERLESS_SCOPE_KEY):
        raise ApiError(404, f"no such endpoint: POST {request.url.path}")
    state = _state(request)
    body = await read_json_object(request)
    if set(body) not in ({"base_model"}, {"training_run"}):
        raise ApiError(400, "exactly one of base_model or training_run is required")
    value = body.get("base_model", body.get("training_run"))
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{next(iter(body))} must be a non-empty string")
    if "base_model" in body:
        state.models.get(value, "base_model")
    elif not value.startswith(f"accounts/{state.jobs.account_id}/trainingRuns/"):
        raise ApiError(404, f"training run {value!r} not found")
    state.serverless.routes.add(value)
    return JSONResponse({})


def serverless_routes(models: Callable[[Request], ModelRegistry]) -> list[Route]:
    """The routes of the module docstring."""

    async def list_checkpoints(request: Request) -> Response:
        state = _state(request)
        account, session_id = request.path_params["account_id"], request.path_params["session"]
        _session(state, account, session_id)
        size_text = request.query_params.get("pageSize", "200")
        token = request.query_params.get("pageToken") or "0"
        if not size_text.isdigit() or not token.isdigit():
            raise ApiError(400, "pageSize and pageToken must be integers")
        offset, size = int(token), min(int(size_text) or 200, _MAX_PAGE)
        rows = _rows(state, account, session_id)
        page = [{k: v for k, v in r.items() if not k.startswith("_")}
                for r in rows[offset : offset + size]]
        after = offset + size
        return JSONResponse({
            "trainingSessionCheckpoints": page,
            "nextPageToken": str(after) if after < len(rows) else "",
            "totalSize": len(rows),
        })

    async def promote(request: Request) -> Response:
        state = _state(request)
        account, session_id = request.path_params["account_id"], request.path_params["session"]
        checkpoint, sep, action = request.path_params["checkpoint"].partition(":")
        if not sep or action != "promote":
            raise ApiError(404, f"unknown action {request.path_params['checkpoint']!r}")
        _session(state, account, session_id)
        body = await read_json_object(request)
        unknown = set(body) - {"output_model", "base_model"}
        if unknown:
            raise ApiError(400, f"unknown fields {sorted(unknown)}")
        output = body.get("output_model")
        prefix = f"accounts/{account}/models/"
        if not isinstance(output, str) or not output.startswith(prefix):
            raise ApiError(400, f"output_model must look like {prefix}<id>, got {output!r}")
        base_model = body.get("base_model")
        if not isinstance(base_model, str) or not base_model:
            raise ApiError(400, "base_model is required")
        reg = models(request)
        if output in reg.models:
            raise ApiError(409, f"model {output} already exists")
        row = next((r for r in _rows(state, account, session_id)
                    if r["name"].endswith(f"/checkpoints/{checkpoint}")), None)
        if row is None:
            raise ApiError(404, f"checkpoint {checkpoint!r} of training session {session_id} "
                           "not found")
        if not row["promotable"]:
            raise ApiError(400, f"checkpoint {checkpoint!r} is not promotable: "
                           f"{row['checkpointType']}")
        entry: TrainingModel = row["_entry"]
        model = promoted_model(output, output[len(prefix):], base_model, entry.run.lora_rank,
                               row["name"], row["_meta"].get("tinker_path"))
        reg.models[output] = model
        return JSONResponse({"model": model})

    async def get_session(request: Request) -> Response:
        state = _state(request)
        account, session_id = request.path_params["account_id"], request.path_params["session"]
        session = _session(state, account, session_id)
        return JSONResponse({
            "name": f"accounts/{account}/trainingSessions/{session_id}",
            "state": "ACTIVE",
            "createTime": rfc3339(session.created_s),
        })

    async def delete_session(request: Request) -> Response:
        state = _state(request)
        account, session_id = request.path_params["account_id"], request.path_params["session"]
        session = _session(state, account, session_id)
        session.finished = True
        state.serverless.deleted.add(session_id)
        return JSONResponse({})

    async def knobs(request: Request) -> Response:
        return JSONResponse(_state(request).serverless.configure(await read_json_object(request)))

    session = paths.training_session("{account_id}", "{session}")
    return [
        Route(paths.CREATE_SAMPLING_ROUTE, create_sampling_route, methods=["POST"]),
        *inference_routes(
            deployment_registry,
            path=paths.SERVERLESS_PREFIX + paths.SERVERLESS_COMPLETIONS,
            resolve=_resolve,
        ),
        Route(paths.training_session_checkpoints("{account_id}", "{session}"),
              list_checkpoints, methods=["GET"]),
        Route(paths.training_session_checkpoint("{account_id}", "{session}", "{checkpoint}"),
              promote, methods=["POST"]),
        Route(session, get_session, methods=["GET"]),
        Route(session, delete_session, methods=["DELETE"]),
        Route("/_local/serverless", knobs, methods=["POST"]),
    ]

