"""Sans-IO wire of Fireworks serverless training (the Fireworks SDK 1.2.30's default endpoint).

A serverless base URL ends with ``/training/v1/serverless`` (:data:`paths.SERVERLESS_PREFIX`);
its data plane is the fireworks dialect's, under that URL. What differs, all spelled here:

* the gateway mints ``ts-<hex>`` training sessions; each model is a run
  (``run-<32 hex>:train:<n>``) and a save answers ``<account>/<run_id>/<name>``;
* sampling goes to ``{base}/inference/v1/completions`` (the deployments' codec,
  ``wire/completions.py``) with ``model`` :func:`session_model` (a checkpoint of the session,
  or its base weights), or a standalone route bound first with ``create_sampling_route``
  (:func:`sampling_route_body`, :func:`standalone_checkpoint_model`);
* ``weights_info`` ``{"tinker_path"}`` describes a checkpoint before a model loads it;
* the control plane (the URL without the suffix) lists a session's checkpoints, promotes one
  and deletes the session (``paths.training_session*``);
* a ``retrieve_future`` 409 is fatal unless the caller opted in to the capacity retry; then a
  409 whose text names a capacity shortage (or that has no body) is retried
  (:func:`is_capacity_conflict`, the SDK's ``capacity_retry.py``).

Example::

    is_serverless_url("https://api.fireworks.ai/training/v1/serverless")   # True
    session_model("acme", "ts-1a2b", "acme/run-0123/step-1")
    # "accounts/acme/trainingSessions/ts-1a2b/checkpoints/acme/run-0123/step-1"
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from ..errors import InvalidInput
from . import paths

__all__ = [
    "control_plane_url",
    "is_capacity_conflict",
    "is_serverless_url",
    "is_training_session_id",
    "parse_session_checkpoint",
    "sampling_route_body",
    "serverless_choice",
    "serverless_url",
    "session_model",
    "standalone_checkpoint_model",
    "weights_info_body",
]

# The SDK's capacity_retry.py markers: a 409 naming one of these is a pool out of capacity
# (retried when opted in); one naming a terminal marker is a real conflict (never retried).
_RETRYABLE_MARKERS: Final = (
    "capacity_exhausted",
    "recovery_required",
    "out of capacity",
    "at capacity",
    "capacity is temporarily",
    "training capacity",
    "paused_capacity",
    "recovery is required",
    "fenced recovery",
    "lifecycle is closing",
    "lifecycle is releasing",
    "resource_exhausted",
)
_TERMINAL_MARKERS: Final = (
    "already exists",
    "idempotency",
    "different request payload",
    "conflicts with durable model state",
    "model lifecycle conflicts with durable state",
)
_SESSION_CHECKPOINT_RE: Final = re.compile(
    r"^(?:accounts/(?P<account>[^/]+)/)?(?:trainingSessions/)?(?P<session>ts-[A-Za-z0-9-]+)"
    r"(?:/checkpoints/(?P<checkpoint>.+))?$"
)
_RUN_ID_RE: Final = re.compile(r"^run-[0-9a-f]{32}$")
_LABEL_RE: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def is_serverless_url(url: str) -> bool:
    """Whether ``url`` is a serverless gateway (its path ends with ``/training/v1/serverless``)."""
    return url.rstrip("/").endswith(paths.SERVERLESS_PREFIX)


def serverless_url(url: str) -> str:
    """``url`` with the serverless suffix (added if it is not there already).

    Example::

        serverless_url("https://api.fireworks.ai")   # ".../training/v1/serverless"
    """
    root = url.rstrip("/")
    return root if root.endswith(paths.SERVERLESS_PREFIX) else root + paths.SERVERLESS_PREFIX


def control_plane_url(url: str) -> str:
    """The control-plane root of a serverless URL (the URL without the suffix)."""
    root = url.rstrip("/")
    return root[: -len(paths.SERVERLESS_PREFIX)] if is_serverless_url(root) else root


def is_training_session_id(value: object) -> bool:
    """Whether ``value`` is a serverless training session id (``ts-…``)."""
    return isinstance(value, str) and value.startswith("ts-")


def parse_session_checkpoint(value: str) -> tuple[str | None, str, str | None] | None:
    """``(account, session_id, checkpoint)`` of a path that names a training session
    (``accounts/<a>/trainingSessions/<ts>/checkpoints/<c>``, ``trainingSessions/<ts>/...``,
    ``<ts>/checkpoints/<c>``; the account and checkpoint may be absent), else ``None``."""
    match = _SESSION_CHECKPOINT_RE.match(value.strip().strip("/"))
    if match is None:
        return None
    return match.group("account"), match.group("session"), match.group("checkpoint")


def session_model(account: str, session_id: str, checkpoint: str | None) -> str:
    """The sampling ``model`` of a session checkpoint (``None``: the session's base weights)."""
    name = f"accounts/{account}/trainingSessions/{session_id}"
    return f"{name}/checkpoints/{checkpoint}" if checkpoint else name


def standalone_checkpoint_model(account: str, checkpoint: str) -> tuple[str, str]:
    """``(model, training_run)`` for sampling a saved checkpoint (``<account>/<run>/<name>``)
    of a run this session did not create, through a standalone route; :class:`InvalidInput`
    (``model_path``) if it is not such a path or belongs to another account."""
    parts = checkpoint.split("/")
    if (
        len(parts) < 3
        or not _RUN_ID_RE.fullmatch(parts[1])
        or not all(_LABEL_RE.fullmatch(part) for part in parts)
    ):
        raise InvalidInput(
            "model_path",
            f"{checkpoint!r} must be a sampler checkpoint path <account>/<run_id>/<name> as "
            "save_weights_for_sampler returns it",
        )
    if parts[0] != account:
        raise InvalidInput(
            "model_path", f"{checkpoint!r} belongs to account {parts[0]!r}, not {account!r}"
        )
    return (
        f"accounts/{account}/trainingSamplers/checkpoints/{checkpoint}",
        f"accounts/{account}/trainingRuns/{parts[1]}",
    )


def sampling_route_body(
    *, base_model: str | None = None, training_run: str | None = None
) -> dict[str, Any]:
    """The ``create_sampling_route`` body: ``{"base_model"}`` or ``{"training_run"}``."""
    if base_model is not None:
        return {"base_model": base_model}
    return {"training_run": training_run}


def weights_info_body(path: str) -> dict[str, Any]:
    """The ``weights_info`` body."""
    return {"tinker_path": path}


def is_capacity_conflict(body: str) -> bool:
    """Whether a 409 reply's text says the serverless pool is out of capacity (retried when
    opted in): a capacity marker and no terminal one, or no body at all."""
    text = body.strip()
    lowered = text.lower()
    if any(marker in lowered for marker in _TERMINAL_MARKERS):
        return False
    if any(marker in lowered for marker in _RETRYABLE_MARKERS):
        return True
    return text in ("", "{}", "null", '""')


def serverless_choice(
    base_url: str, dialect: Literal["auto", "fireworks", "tinker"], serverless: bool | None
) -> tuple[str, Literal["auto", "fireworks", "tinker"]]:
    """``(base_url, dialect)`` after ``ServiceSession``'s ``serverless`` choice: ``None``
    follows the URL; ``True`` adds the suffix; either way the dialect is fireworks.
    :class:`InvalidInput` names a contradiction (``serverless=False`` on a serverless URL,
    the tinker dialect).

    Example::

        serverless_choice("https://api.fireworks.ai", "auto", True)
        # ("https://api.fireworks.ai/training/v1/serverless", "fireworks")
    """
    if serverless is not None and not isinstance(serverless, bool):
        raise InvalidInput("serverless", f"must be True, False or None, got {serverless!r}")
    on_gateway = bool(base_url) and is_serverless_url(base_url)
    if serverless is False and on_gateway:
        raise InvalidInput(
            "serverless", f"is False, but base_url {base_url!r} is a serverless gateway"
        )
    if not (serverless or on_gateway):
        return base_url, dialect
    if dialect == "tinker":
        raise InvalidInput(
            "serverless", "serverless training is Fireworks': use dialect='fireworks' or 'auto'"
        )
    if not base_url:
        raise InvalidInput("base_url", "serverless=True needs the Fireworks API URL")
    return serverless_url(base_url), "fireworks"
