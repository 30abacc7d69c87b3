"""The local trainer's training shapes: ``GET /v1/accounts/{a}/trainingShapes/{s}/versions…``.

Three shapes of the one local model, each with one validated version (``v1``):
``tiny-byte-lm-full`` (``FULL_PARAMETER_TRAINER``), ``tiny-byte-lm-lora`` (``LORA_TRAINER``)
and ``tiny-byte-lm-forward`` (``FORWARD_ONLY``, for frozen reference trainers). Each names the
deployment shape its sampling deployment uses (``DEPLOYMENT_SHAPE``), as the SDKs need to
create a managed deployment. The listing honours ``filter=latest_validated=true`` (the only
filter the Fireworks SDK sends) and ``pageSize``.

Example::

    version = find_shape("local", "accounts/local/trainingShapes/tiny-byte-lm-lora")
    version["snapshot"]["trainerMode"]      # "LORA_TRAINER"
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._catalog import BYTE_MODEL, MAX_CONTEXT_LENGTH
from ._http_errors import ApiError

__all__ = ["DEPLOYMENT_SHAPE", "MAX_CONTEXT_LENGTH", "find_shape", "shape_routes"]

_MODES = {
    "tiny-byte-lm-full": "FULL_PARAMETER_TRAINER",
    "tiny-byte-lm-lora": "LORA_TRAINER",
    "tiny-byte-lm-forward": "FORWARD_ONLY",
}
DEPLOYMENT_SHAPE = "accounts/fireworks/deploymentShapes/tiny-byte-lm/versions/v1"
"""The deployment shape version every training shape names (the local deployments accept it)."""
_VERSION = "v1"


def _version(account: str, shape: str) -> dict[str, Any]:
    return {
        "name": f"accounts/{account}/trainingShapes/{shape}/versions/{_VERSION}",
        "validated": True,
        "latestValidated": True,
        "snapshot": {
            "baseModel": BYTE_MODEL,
            "trainerImageTag": "local",
            "maxSupportedContextLength": MAX_CONTEXT_LENGTH,
            "nodeCount": 1,
            "deploymentShapeVersion": DEPLOYMENT_SHAPE,
            "deploymentImageTag": "",
            "acceleratorType": "CPU",
            "acceleratorCount": 1,
            "baseModelWeightPrecision": "float32",
            "trainerShardingScheme": {"pipelineParallelism": 1},
            "trainerMode": _MODES[shape],
        },
    }


def find_shape(account: str, ref: str) -> dict[str, Any]:
    """The version a shape reference names (a bare shape means its latest validated version);
    ``ApiError(400)`` for a malformed or unknown reference."""
    parts = ref.split("/")
    if len(parts) not in (4, 6) or parts[0] != "accounts" or parts[2] != "trainingShapes":
        raise ApiError(
            400, f"trainingShape {ref!r} is not accounts/<a>/trainingShapes/<s>[/versions/<v>]"
        )
    if parts[1] != account or parts[3] not in _MODES:
        raise ApiError(400, f"unknown training shape {ref!r} (local shapes: {sorted(_MODES)})")
    if len(parts) == 6 and (parts[4] != "versions" or parts[5] != _VERSION):
        raise ApiError(400, f"unknown training shape version {ref!r}")
    return _version(account, parts[3])


def shape_routes(account_id: Any) -> list[Route]:
    """The shape routes; ``account_id(request)`` is this trainer's account."""

    def _shape(request: Request) -> tuple[str, str]:
        account, shape = request.path_params["account_id"], request.path_params["shape"]
        if account != account_id(request) or shape not in _MODES:
            raise ApiError(
                404, f"training shape accounts/{account}/trainingShapes/{shape} not found"
            )
        return account, shape

    async def list_versions(request: Request) -> Response:
        account, shape = _shape(request)
        filt = request.query_params.get("filter")
        if filt not in (None, "", "latest_validated=true"):
            raise ApiError(400, f"unsupported filter {filt!r} (supported: latest_validated=true)")
        size = request.query_params.get("pageSize", "50")
        if not size.isdigit():
            raise ApiError(400, f"pageSize must be an integer >= 0, got {size!r}")
        versions = [_version(account, shape)][: int(size) or None]
        return JSONResponse(
            {"trainingShapeVersions": versions, "nextPageToken": "", "totalSize": len(versions)}
        )

    async def get_version(request: Request) -> Response:
        account, shape = _shape(request)
        if request.path_params["version"] != _VERSION:
            raise ApiError(404, f"version {request.path_params['version']!r} not found")
        return JSONResponse(_version(account, shape))

    base = "/v1/accounts/{account_id}/trainingShapes/{shape}/versions"
    return [
        Route(base, list_versions, methods=["GET"]),
        Route(base + "/{version}", get_version, methods=["GET"]),
    ]
