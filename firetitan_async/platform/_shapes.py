"""Training shapes: ``resolve_training_profile(shape)`` → a typed :class:`TrainingShapeProfile`.

The wire is the Fireworks SDK's (study §2.2): an unversioned shape
``accounts/<a>/trainingShapes/<s>`` reads its latest validated version with
``GET /v1/{shape}/versions?filter=latest_validated%3Dtrue&pageSize=1``; a versioned one
(``…/versions/<v>``) reads ``GET /v1/{shape}``. The profile comes from the version's
``snapshot``.

Example::

    profile = await jobs.resolve_training_profile("accounts/fireworks/trainingShapes/ts-qwen3-8b")
    config = TrainerJobConfig(base_model=model, training_shape_ref=profile.training_shape)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from ..errors import FiretitanError, InvalidInput
from ._config import SHAPE_REF_RE
from ._rest import RestCore

__all__ = ["TrainingShapeProfile", "resolve_training_profile"]


@attrs.frozen
class TrainingShapeProfile:
    """A training shape version's profile (the SDK's ``TrainingShapeProfile`` fields).

    Example::

        profile.training_shape      # "accounts/fireworks/trainingShapes/ts-qwen3-8b"
        profile.supports_lora       # trainer_mode == "LORA_TRAINER"
    """

    training_shape_version: str
    trainer_image_tag: str = ""
    max_supported_context_length: int = 0
    node_count: int = 1
    deployment_shape_version: str = ""
    deployment_image_tag: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    base_model_weight_precision: str = ""
    pipeline_parallelism: int = 1
    trainer_mode: str = ""
    raw: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @property
    def training_shape(self) -> str | None:
        """The parent shape (the version without ``/versions/…``): a ``training_shape_ref``."""
        version = self.training_shape_version
        return version.split("/versions/", 1)[0] if version else None

    @property
    def deployment_shape(self) -> str | None:
        """The pinned deployment shape version, if the shape names one."""
        return self.deployment_shape_version or None

    @property
    def supports_lora(self) -> bool:
        """Whether the shape trains LoRA adapters (``trainer_mode == "LORA_TRAINER"``)."""
        return self.trainer_mode == "LORA_TRAINER"

    @classmethod
    def from_version(cls, version: Any) -> TrainingShapeProfile:
        """Parse a training-shape version record."""
        if not isinstance(version, dict):
            raise FiretitanError(f"malformed training shape version: {version!r:.200}")
        snapshot = version.get("snapshot") or {}
        sharding = snapshot.get("trainerShardingScheme") if isinstance(snapshot, dict) else None
        if not isinstance(snapshot, dict) or not isinstance(sharding or {}, dict):
            raise FiretitanError(
                "malformed training shape version: 'snapshot' and its 'trainerShardingScheme' "
                "must be objects"
            )
        sharding = sharding or {}

        def text(key: str) -> str:
            value = snapshot.get(key)
            return value if isinstance(value, str) else ""

        def number(value: object, default: int) -> int:
            try:
                return int(value) if value is not None else default  # type: ignore[call-overload]
            except (TypeError, ValueError):
                raise FiretitanError(f"malformed training shape number: {value!r}") from None

        name = version.get("name")
        return cls(
            training_shape_version=name if isinstance(name, str) else "",
            trainer_image_tag=text("trainerImageTag"),
            max_supported_context_length=number(snapshot.get("maxSupportedContextLength"), 0),
            node_count=number(snapshot.get("nodeCount"), 1),
            deployment_shape_version=text("deploymentShapeVersion"),
            deployment_image_tag=text("deploymentImageTag"),
            accelerator_type=text("acceleratorType"),
            accelerator_count=number(snapshot.get("acceleratorCount"), 0),
            base_model_weight_precision=text("baseModelWeightPrecision"),
            pipeline_parallelism=number(sharding.get("pipelineParallelism") or 1, 1),
            trainer_mode=text("trainerMode"),
            raw=MappingProxyType(version),
        )


async def resolve_training_profile(rest: RestCore, shape: str) -> TrainingShapeProfile:
    """Read a shape's latest validated version (or the pinned one) as a profile."""
    if not isinstance(shape, str) or not SHAPE_REF_RE.match(shape):
        raise InvalidInput(
            "shape",
            f"{shape!r} is not accounts/<account>/trainingShapes/<shape>[/versions/<version>]",
        )
    if "/versions/" in shape:
        return TrainingShapeProfile.from_version(await rest.call("GET", f"/v1/{shape}"))
    reply = await rest.call(
        "GET", f"/v1/{shape}/versions", params={"filter": "latest_validated=true", "pageSize": 1}
    )
    versions = reply.get("trainingShapeVersions") if isinstance(reply, dict) else None
    if not isinstance(versions, list | None):
        raise FiretitanError(f"malformed training shape versions: {versions!r:.200}")
    if not versions:
        raise FiretitanError(
            f"training shape {shape!r} has no validated version: pin one "
            "(…/versions/<version>) or validate one"
        )
    return TrainingShapeProfile.from_version(versions[0])
