"""``TrainerJobConfig``: what to create, with the Fireworks SDK's fields, rules and wire form.

The fields, their defaults and :meth:`TrainerJobConfig.validate`'s rules are those of
``fireworks.training.sdk.TrainerJobConfig`` 1.2.30 (study §1.5); the create request
(:meth:`~TrainerJobConfig.to_body`, :meth:`~TrainerJobConfig.query`) is the SDK's byte for
byte (study §2.3). Unlike the SDK's, the config is frozen and checked on construction: a bad
field raises :class:`~firetitan_async.InvalidInput` naming it, before anything is sent.

Three launch paths: the **shape path** (``training_shape_ref`` set; the shape owns the
accelerator and node fields), the **auto-shape path** (``auto_select_training_shape``; the
backend picks a validated shape) and the **manual path** (everything sent as is, with
``skipValidations=true``).

Example::

    TrainerJobConfig(
        base_model="accounts/fireworks/models/qwen3-8b",
        training_shape_ref="accounts/fireworks/trainingShapes/qwen3-8b-128k-h200",
        lora_rank=0,
        learning_rate=1e-5,
    )
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

import attrs

from ..errors import InvalidInput

__all__ = ["SHAPE_REF_RE", "TrainerJobConfig", "format_duration"]

logger = logging.getLogger("firetitan_async.platform")

#: ``accounts/<a>/trainingShapes/<s>[/versions/<v>]``
SHAPE_REF_RE: Final = re.compile(r"^accounts/[^/]+/trainingShapes/[^/]+(/versions/[^/]+)?$")
_DURATION_RE: Final = re.compile(r"^(?P<sign>-?)(?P<seconds>\d+)(\.\d{1,9})?s$")
_MAX_INACTIVITY_S: Final = 3 * 60 * 60
_DISPLAY_NAME_LIMIT: Final = 64
_SHAPE_OWNED: Final = ("accelerator_type", "accelerator_count", "node_count")


def format_duration(value: timedelta | str, *, field: str = "inactivity_timeout") -> str:
    """A non-negative duration as a protobuf JSON string (``timedelta(minutes=30)`` → ``"1800s"``).

    The SDK's ``_format_proto_duration`` rules; a value it refuses raises
    :class:`~firetitan_async.InvalidInput` naming ``field``.

    Example::

        format_duration(timedelta(seconds=1.5))   # "1.5s"
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        if seconds < 0:
            raise InvalidInput(field, "must be non-negative")
        if seconds.is_integer():
            return f"{int(seconds)}s"
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if isinstance(value, str):
        if not _DURATION_RE.match(value):
            raise InvalidInput(
                field,
                "must be a protobuf JSON duration string such as '1800s'; use "
                "datetime.timedelta for minute/hour values",
            )
        if value.startswith("-"):
            raise InvalidInput(field, "must be non-negative")
        return value
    raise InvalidInput(
        field, f"must be datetime.timedelta or protobuf JSON duration string, got {value!r}"
    )


def _opt_int(minimum: int) -> Any:
    def check(_inst: object, attr: attrs.Attribute[int | None], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidInput(attr.name, f"must be None or an int >= {minimum}, got {value!r}")

    return check


def _opt_str(_inst: object, attr: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise InvalidInput(attr.name, f"must be None or a string, got {value!r}")


def _flag(_inst: object, attr: attrs.Attribute[bool], value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidInput(attr.name, f"must be a bool, got {value!r}")


def _check_base_model(_inst: object, _attr: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("base_model", f"is required (a model name), got {value!r}")


def _check_lora_rank(_inst: object, _attr: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("lora_rank", f"must be an int >= 0 (0 = full-parameter), got {value!r}")


def _check_learning_rate(_inst: object, _attr: attrs.Attribute[float], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InvalidInput("learning_rate", f"must be a finite number > 0, got {value!r}")


def _to_args(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("extra_args", f"must be a list of strings, got {value!r}")
    return tuple(value)


def _to_values(value: Mapping[str, str] | None) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidInput("extra_values", f"must be a mapping of strings, got {value!r}")
    return dict(value)


@attrs.frozen
class TrainerJobConfig:
    """A service-mode trainer job's configuration: the Fireworks SDK's fields (study §1.5).

    ``lora_rank=0`` is full-parameter training. ``requested_job_id`` fixes the job id (else
    :meth:`TrainerJobs.create` generates ``training-api-service-<8 hex>`` before sending, so a
    retried create is idempotent). ``inactivity_timeout`` is a ``timedelta`` or a protobuf
    duration string (at most 3 h). ``gradient_accumulation_steps`` is deprecated (1 is ignored
    with a warning, more is refused). See the module docstring for the three launch paths.

    Example::

        TrainerJobConfig(base_model="local/tiny-byte-lm", lora_rank=8, display_name="probe")
    """

    base_model: str = attrs.field(validator=_check_base_model)
    lora_rank: int = attrs.field(default=0, validator=_check_lora_rank)
    projection_head_dim: int | None = attrs.field(default=None, validator=_opt_int(0))
    max_context_length: int | None = attrs.field(default=None, validator=_opt_int(1))
    learning_rate: float = attrs.field(default=1e-5, validator=_check_learning_rate)
    gradient_accumulation_steps: int | None = attrs.field(default=None, validator=_opt_int(1))
    node_count: int | None = attrs.field(default=None, validator=_opt_int(0))
    trainer_replica_count: int | None = attrs.field(default=None, validator=_opt_int(1))
    display_name: str | None = attrs.field(default=None, validator=_opt_str)
    hot_load_deployment_id: str | None = attrs.field(default=None, validator=_opt_str)
    region: str | None = attrs.field(default=None, validator=_opt_str)
    custom_image_tag: str | None = attrs.field(default=None, validator=_opt_str)
    extra_args: tuple[str, ...] | None = attrs.field(default=None, converter=_to_args)
    extra_values: Mapping[str, str] | None = attrs.field(
        default=None, converter=_to_values, eq=False, hash=False
    )
    accelerator_type: str | None = attrs.field(default=None, validator=_opt_str)
    accelerator_count: int | None = attrs.field(default=None, validator=_opt_int(0))
    training_shape_ref: str | None = attrs.field(default=None, validator=_opt_str)
    forward_only: bool = attrs.field(default=False, validator=_flag)
    auto_select_training_shape: bool = attrs.field(default=False, validator=_flag)
    inactivity_timeout: timedelta | str | None = None
    disable_inactivity_cleanup: bool = attrs.field(default=False, validator=_flag)
    skip_validations: bool = attrs.field(default=False, validator=_flag)
    purpose: str | None = attrs.field(default=None, validator=_opt_str)
    preemptible: bool = attrs.field(default=False, validator=_flag)
    managed_by: str | None = attrs.field(default=None, validator=_opt_str)
    requested_job_id: str | None = attrs.field(default=None, validator=_opt_str)
    use_reservation: bool = attrs.field(default=True, validator=_flag)
    reservation_target: str | None = attrs.field(default=None, validator=_opt_str)

    def __attrs_post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The SDK's pre-flight rules (run on construction; raises :class:`InvalidInput`).

        Example::

            TrainerJobConfig(base_model="m", training_shape_ref=ref, node_count=2)  # raises
        """
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != 1:
            raise InvalidInput(
                "gradient_accumulation_steps",
                "must be 1: server-side gradient accumulation is deprecated; call "
                "forward_backward several times per optim_step instead",
            )
        if self.gradient_accumulation_steps == 1:
            logger.warning(
                "TrainerJobConfig.gradient_accumulation_steps=1 is deprecated and ignored: call "
                "forward_backward several times per optim_step, and pass "
                "grad_accumulation_normalization to optim_step"
            )
        if self.display_name is not None and len(self.display_name) >= _DISPLAY_NAME_LIMIT:
            raise InvalidInput("display_name", "must be fewer than 64 characters")
        if self.inactivity_timeout is not None:
            duration = format_duration(self.inactivity_timeout)
            if float(duration[:-1]) > _MAX_INACTIVITY_S:
                raise InvalidInput("inactivity_timeout", "must be at most 3 hours")
        if self.training_shape_ref is not None and not SHAPE_REF_RE.match(self.training_shape_ref):
            raise InvalidInput(
                "training_shape_ref",
                f"{self.training_shape_ref!r} is not accounts/<account>/trainingShapes/<shape>"
                "[/versions/<version>] (resolve a short id with resolve_training_profile)",
            )
        if self.training_shape_ref and self.auto_select_training_shape:
            raise InvalidInput(
                "training_shape_ref", "and auto_select_training_shape cannot both be set"
            )
        if self.training_shape_ref or self.auto_select_training_shape:
            for field in _SHAPE_OWNED:
                if getattr(self, field) not in (None, "", 0):
                    raise InvalidInput(
                        field,
                        "cannot be set when training shape selection is enabled (the shape "
                        "owns it); remove it, or launch on the manual path",
                    )

    @property
    def path(self) -> str:
        """``"shape"``, ``"auto_shape"`` or ``"manual"``: the launch path this config takes."""
        if self.training_shape_ref:
            return "shape"
        return "auto_shape" if self.auto_select_training_shape else "manual"

    def query(self, job_id: str) -> list[tuple[str, str | int]]:
        """The create request's query parameters, in the SDK's order.

        Example::

            TrainerJobConfig(base_model="m").query("j1")
            # [("skipValidations", "true"), ("rlorTrainerJobId", "j1")]
        """
        params: list[tuple[str, str | int]] = []
        if self.hot_load_deployment_id:
            params.append(("deploymentId", self.hot_load_deployment_id))
        if self.training_shape_ref:
            params.append(("trainingShape", self.training_shape_ref))
            if self.skip_validations:
                params.append(("skipValidations", "true"))
        elif not self.auto_select_training_shape:
            params.append(("skipValidations", "true"))
        params.append(("rlorTrainerJobId", job_id))
        return params

    def to_body(self) -> dict[str, Any]:
        """The create request's JSON body (camelCase), as the SDK builds it.

        Example::

            TrainerJobConfig(base_model="m").to_body()["trainingConfig"]["loraRank"]   # 0
        """
        manual = self.path == "manual"
        training: dict[str, Any] = {
            "baseModel": self.base_model,
            "loraRank": self.lora_rank,
            "learningRate": self.learning_rate,
        }
        if self.projection_head_dim:
            training["projectionHeadDim"] = self.projection_head_dim
        body: dict[str, Any] = {
            "serviceMode": True,
            "keepAlive": False,
            "dataset": "",
            "trainingConfig": training,
        }
        if self.trainer_replica_count is not None:
            body["trainerReplicaCount"] = self.trainer_replica_count
        body["useReservation"] = self.use_reservation and not self.reservation_target
        if self.reservation_target:
            body["reservationTarget"] = self.reservation_target
        if self.max_context_length is not None and self.path != "shape":
            training["maxContextLength"] = self.max_context_length
        if self.custom_image_tag:
            training["customImageTag"] = self.custom_image_tag
        if manual:
            body["nodeCount"] = self.node_count if self.node_count is not None else 1
            if self.accelerator_type:
                training["acceleratorType"] = self.accelerator_type
            if self.accelerator_count:
                training["acceleratorCount"] = self.accelerator_count
        if self.display_name:
            body["displayName"] = self.display_name
        if self.hot_load_deployment_id:
            body["hotLoadDeploymentId"] = self.hot_load_deployment_id
        if self.region:
            training["region"] = self.region
        if self.extra_args:
            training["extraArgs"] = [
                part for arg in self.extra_args for part in (arg.split() if " " in arg else [arg])
            ]
        if self.extra_values:
            body["extraValues"] = dict(self.extra_values)
        if self.forward_only:
            body["forwardOnly"] = True
        if self.purpose:
            body["purpose"] = self.purpose
        if self.preemptible:
            body["preemptible"] = True
        if self.managed_by:
            body["managedBy"] = self.managed_by
        if self.inactivity_timeout is not None:
            body["inactivityTimeout"] = format_duration(self.inactivity_timeout)
        if self.disable_inactivity_cleanup:
            body["disableInactivityCleanup"] = True
        return body
