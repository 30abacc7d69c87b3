"""The control plane's checkpoint promotion (``…/checkpoints/{id}:promote``) body, for a
trainer job's checkpoint and a serverless training session's alike: the output model id rule
(1-63 of ``a-z``, ``0-9``, ``-``) and the body, in the Fireworks SDK's key order. Sans-IO.

Example::

    promote_body("acme", "my-model", "accounts/fireworks/models/qwen3-8b")
    # {"output_model": "accounts/acme/models/my-model",
    #  "base_model": "accounts/fireworks/models/qwen3-8b"}
"""

from __future__ import annotations

import re
from typing import Any, Final

from ..errors import InvalidInput

__all__ = ["promote_body"]

_MODEL_ID_RE: Final = re.compile(r"^[a-z0-9-]{1,63}$")


def promote_body(
    account: str,
    output_model_id: str,
    base_model: str,
    *,
    trainer_job: str | None = None,
    hot_load_deployment: str | None = None,
) -> dict[str, Any]:
    """The ``:promote`` body; :class:`InvalidInput` names a bad ``output_model_id`` or
    ``base_model`` (before anything is sent). A trainer job's checkpoint also names its job
    (``trainer_job``, the full resource name) and, optionally, the deployment to hot-load
    (``hot_load_deployment``, likewise).

    Example::

        promote_body("acme", "my-model", base, trainer_job="accounts/acme/rlorTrainerJobs/j1")
        # {"output_model": ..., "trainer_job_id": "accounts/acme/rlorTrainerJobs/j1",
        #  "base_model": base}
    """
    if not isinstance(output_model_id, str) or not _MODEL_ID_RE.match(output_model_id):
        raise InvalidInput(
            "output_model_id",
            f"must be 1-63 characters of lowercase a-z, 0-9 or '-', got {output_model_id!r}",
        )
    if not isinstance(base_model, str) or not base_model:
        raise InvalidInput("base_model", f"is required, got {base_model!r}")
    body: dict[str, Any] = {"output_model": f"accounts/{account}/models/{output_model_id}"}
    if trainer_job is not None:
        body["trainer_job_id"] = trainer_job
    body["base_model"] = base_model
    if hot_load_deployment is not None:
        body["hot_load_deployment_id"] = hot_load_deployment
    return body
