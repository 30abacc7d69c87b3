"""Where an API key, an account and a service URL come from: the argument, else the environment.

One rule for every client (``ServiceSession``, ``TrainerJobs``/``Deployments``,
``DeploymentSampler``) and every command of the CLI:

* **API key**: the ``api_key`` argument when given (an empty string counts as none), else the
  first non-empty of ``FIREWORKS_API_KEY`` and ``TINKER_API_KEY``.
* **URLs and the account**: the argument, else the variable named below, else the default.

======================================  ===============================================
variable                                what it sets
======================================  ===============================================
``FIREWORKS_API_KEY``, ``TINKER_API_KEY``  the API key (in this order)
``FIREWORKS_BASE_URL``                  the control plane (``firetitan-async`` CLI)
``FIREWORKS_TRAINER_GATEWAY_URL``       the gateway of trainer jobs' data planes
``FIREWORKS_ACCOUNT_ID``                the account (CLI; else resolved from the key)
``TINKER_BASE_URL``                     a trainer's data plane (``checkpoints list``)
======================================  ===============================================

Example::

    api_key = resolve_api_key(None)   # $FIREWORKS_API_KEY, else $TINKER_API_KEY, else None
    url = resolve_setting(None, CONTROL_PLANE_URL_VAR, DEFAULT_BASE_URL)
"""

from __future__ import annotations

import os
from typing import Final, overload

from ..wire.validation import validate_api_key

__all__ = [
    "ACCOUNT_VAR",
    "API_KEY_VARS",
    "CONTROL_PLANE_URL_VAR",
    "DATA_PLANE_URL_VAR",
    "TRAINER_GATEWAY_URL_VAR",
    "resolve_api_key",
    "resolve_setting",
]

API_KEY_VARS: Final = ("FIREWORKS_API_KEY", "TINKER_API_KEY")
CONTROL_PLANE_URL_VAR: Final = "FIREWORKS_BASE_URL"
TRAINER_GATEWAY_URL_VAR: Final = "FIREWORKS_TRAINER_GATEWAY_URL"
ACCOUNT_VAR: Final = "FIREWORKS_ACCOUNT_ID"
DATA_PLANE_URL_VAR: Final = "TINKER_BASE_URL"


def resolve_api_key(explicit: str | None) -> str | None:
    """The API key to send: ``explicit`` when given, else the environment's (module rule).

    Example::

        resolve_api_key("fw-abc")  # "fw-abc"
        resolve_api_key("")        # None: an empty key is no key

    Either is checked (:func:`~firetitan_async.wire.validation.validate_api_key`): a key with
    a control character or whitespace raises ``InvalidInput`` naming where it came from.
    """
    if explicit is not None:
        validate_api_key(explicit)
        return explicit or None
    for var in API_KEY_VARS:
        if value := os.environ.get(var):
            validate_api_key(value, field=f"api_key (from ${var})")
            return value
    return None


@overload
def resolve_setting(explicit: str | None, var: str, default: str) -> str: ...
@overload
def resolve_setting(explicit: str | None, var: str, default: None = None) -> str | None: ...
def resolve_setting(explicit: str | None, var: str, default: str | None = None) -> str | None:
    """``explicit`` when non-empty, else ``$var`` when non-empty, else ``default``.

    Example::

        resolve_setting(None, "FIREWORKS_BASE_URL", "https://api.fireworks.ai")
    """
    return explicit or os.environ.get(var) or default
