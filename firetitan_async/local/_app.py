"""``build_app``: the local trainer's ASGI application (routes behind the ``FrontDoor``).

Routes: the data plane (``_data_plane``), the control plane (``_control_plane``) and the test
hooks ``GET /_local/stats`` and ``POST /_local/jobs/{job_id}/fail`` (body ``{"message"}``).
Errors become JSON: ``ApiError`` → its status and ``{"detail"}``; an unknown route → 404 and a
wrong method → 405, each with a ``detail`` naming the method and path.

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

from ._control_plane import JobRegistry, control_plane_routes
from ._data_plane import data_plane_routes
from ._deployments import deployment_routes
from ._front import FrontDoor
from ._http_errors import ApiError
from ._json_body import read_json_object
from ._server_state import ServerState

__all__ = ["build_app"]

logger = logging.getLogger("firetitan_async.local")


def _state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


async def _stats(request: Request) -> Response:
    return JSONResponse(_state(request).stats.snapshot())


async def _fail_job(request: Request) -> Response:
    state = _state(request)
    body = await read_json_object(request)
    message = body.get("message", "failed by test hook")
    if not isinstance(message, str):
        raise ApiError(400, "message must be a string")
    job = state.jobs.fail(request.path_params["job_id"], message)
    return JSONResponse(state.jobs.record(job, state.root_url))


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        detail = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    else:
        detail = str(exc.detail)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500
    )


def build_app(state: ServerState) -> FrontDoor:
    """The ASGI app serving ``state``."""

    def jobs(request: Request) -> JobRegistry:
        return _state(request).jobs

    def root_url(request: Request) -> str:
        return _state(request).root_url

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
        Route("/_local/stats", _stats, methods=["GET"]),
        Route("/_local/jobs/{job_id}/fail", _fail_job, methods=["POST"]),
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
    return FrontDoor(app, state)
