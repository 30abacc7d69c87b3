"""``build_app``: the local trainer's ASGI application (routes behind the ``FrontDoor``).

Routes: the data plane (``_data_plane``), the control plane (``_control_plane``: accounts and
jobs; ``_promotion``: job checkpoints, promotion, operations, models; ``_shapes``: training
shapes; ``_serverless``: the serverless gateway) and the test hooks ``GET /_local/stats``,
``POST /_local/jobs/{job_id}/fail`` (body ``{"message"}``) and ``POST /_local/control_plane``
(the promotion knobs of ``_promotion``).
Errors become JSON: ``ApiError`` → its status and ``{"detail"}``, or on the control plane
(``/v1/…``) a ``google.rpc.Status`` body ``{"code", "message", "details"}`` as the Fireworks
SDK parses it; an unknown route → 404 and a wrong method → 405, each naming the method and
path.

Example::

    app = build_app(state)    # serve with uvicorn
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._checkpoint_store import CheckpointStore
from ._control_plane import JobRegistry, control_plane_routes
from ._data_plane import data_plane_routes
from ._deployments import deployment_routes
from ._front import FrontDoor, rpc_status
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._promotion import ModelRegistry, promotion_routes
from ._server_state import ServerState
from ._serverless import serverless_routes
from ._shapes import shape_routes

__all__ = ["build_app"]

logger = logging.getLogger("firetitan_async.local")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def _stats(request: Request) -> Response:
    state = _state(request)
    return JSONResponse({**state.stats.snapshot(), "live": state.live()})


async def _fail_job(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    message = body.get("message", "failed by test hook")
    if not isinstance(message, str):
        raise ApiError(400, "message must be a string")
    job = state.jobs.fail(request.path_params["job_id"], message)
    return JSONResponse(state.jobs.record(job, state.root_url))


async def _control_plane_knobs(request: Request) -> Response:
    models: ModelRegistry = request.app.state.models
    return JSONResponse(models.configure(await read_json_object(request)))


def _error_reply(
    request: Request,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    code: int | None = None,
) -> Response:
    control_plane = request.url.path.startswith("/v1/")
    body = rpc_status(status, detail, code) if control_plane else {"detail": detail}
    return JSONResponse(body, status_code=status, headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    code = getattr(exc, "grpc_code", None)  # e.g. FailedPrecondition's 9
    return _error_reply(request, exc.status, exc.detail, exc.headers, code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    else:
        detail = str(exc.detail)
    return _error_reply(request, exc.status_code, detail, dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)


def build_app(state: ServerState) -> FrontDoor:
    """The ASGI app serving ``state``."""

    def jobs(request: Request) -> JobRegistry:
        return _state(request).jobs

    def root_url(request: Request) -> str:
        return _state(request).root_url

    def checkpoints(request: Request) -> CheckpointStore:
        return _state(request).checkpoints

    def models(request: Request) -> ModelRegistry:
        registry: ModelRegistry = request.app.state.models
        return registry

    def account_id(request: Request) -> str:
        return _state(request).jobs.account_id

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.tasks.aclose()

    routes = [
        *data_plane_routes(),
        *control_plane_routes(jobs, root_url),
        *deployment_routes(),
        *promotion_routes(jobs, checkpoints, models),
        *shape_routes(account_id),
        *serverless_routes(models),
        Route("/_local/stats", _stats, methods=["GET"]),
        Route("/_local/jobs/{job_id}/fail", _fail_job, methods=["POST"]),
        Route("/_local/control_plane", _control_plane_knobs, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.models = ModelRegistry()
    return FrontDoor(app, state)
