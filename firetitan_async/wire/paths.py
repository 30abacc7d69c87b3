"""Every data-plane API path, in one place: the ``/api/v1/...`` routes a trainer serves.

Both wires (tinker and Fireworks) share one route table under ``/api/v1``; where the two
differ in *which* route they use for a thing, the :class:`~firetitan_async.wire.Dialect`
decides (``checkpoint_rows_path``, ``checkpoint_delete_path``, the operation a body goes
to) and takes the path from here. The client (session, clients, transport, CLI) and the
local trainer's route table (``local/``) both spell paths through this module, so the two
sides cannot drift apart. Sans-IO: constants and string builders, no imports.

Path segments given to the builders are used as they are: a caller holding a user-typed
value quotes it first (the CLI does; ids the server issued need no quoting). The local
trainer passes Starlette templates (``"{run_id}"``) to the same builders.

Example::

    from firetitan_async.wire import paths
    paths.RETRIEVE_FUTURE                     # "/api/v1/retrieve_future"
    paths.operation("forward_backward")      # "/api/v1/forward_backward"
    paths.run_checkpoints("run-1")            # "/api/v1/training_runs/run-1/checkpoints"
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ASAMPLE",
    "CANCEL_FUTURE",
    "CHECKPOINTS",
    "CLIENT_CONFIG",
    "CLIENT_DYNAMIC_CONFIG",
    "CREATE_MODEL",
    "CREATE_SAMPLING_ROUTE",
    "CREATE_SAMPLING_SESSION",
    "CREATE_SESSION",
    "GET_INFO",
    "GET_SERVER_CAPABILITIES",
    "HEALTHZ",
    "LIST_CHECKPOINTS",
    "LOAD_ADAPTER",
    "PREFIX",
    "RETRIEVE_FUTURE",
    "SERVERLESS_COMPLETIONS",
    "SERVERLESS_PREFIX",
    "SESSION_HEARTBEAT",
    "TELEMETRY",
    "TRAINING_RUNS",
    "UNLOAD_MODEL",
    "WEIGHTS_INFO",
    "operation",
    "run_checkpoint",
    "run_checkpoints",
    "sampler",
    "session_finish",
    "training_run",
    "training_session",
    "training_session_checkpoint",
    "training_session_checkpoints",
]

#: The prefix of every data-plane route (a trainer gateway puts its job prefix before it).
PREFIX: Final = "/api/v1"


def operation(name: str) -> str:
    """The path of the operation ``name`` (``forward``, ``optim_step``, ``save_weights``...).

    Example::

        operation("optim_step")   # "/api/v1/optim_step"
    """
    return f"{PREFIX}/{name}"


# The session's own calls.
CLIENT_CONFIG: Final = operation("client/config")
CLIENT_DYNAMIC_CONFIG: Final = operation("client/dynamic_config")
CREATE_SESSION: Final = operation("create_session")
SESSION_HEARTBEAT: Final = operation("session_heartbeat")
TELEMETRY: Final = operation("telemetry")
HEALTHZ: Final = operation("healthz")
GET_SERVER_CAPABILITIES: Final = operation("get_server_capabilities")
CREATE_MODEL: Final = operation("create_model")
GET_INFO: Final = operation("get_info")
CREATE_SAMPLING_SESSION: Final = operation("create_sampling_session")
WEIGHTS_INFO: Final = operation("weights_info")
# Server-side futures.
RETRIEVE_FUTURE: Final = operation("retrieve_future")
CANCEL_FUTURE: Final = operation("cancel_future")
# Sampling.
ASAMPLE: Final = operation("asample")
# Models (Fireworks-only operations; the dialect says whether it has them).
LOAD_ADAPTER: Final = operation("load_adapter")
UNLOAD_MODEL: Final = operation("unload_model")
# Checkpoints and training runs.
TRAINING_RUNS: Final = operation("training_runs")
CHECKPOINTS: Final = operation("checkpoints")  # the user's checkpoints, all runs (tinker)
LIST_CHECKPOINTS: Final = operation("list_checkpoints")  # the trainer's rows (Fireworks)

# Fireworks serverless: a gateway in front of pooled trainers. Its base URL (the Fireworks
# SDK's default) ends with SERVERLESS_PREFIX; the data plane is under it as usual
# (``{base}/api/v1/...``), and so is the sampling endpoint.
SERVERLESS_PREFIX: Final = "/training/v1/serverless"
CREATE_SAMPLING_ROUTE: Final = operation("create_sampling_route")  # serverless only
SERVERLESS_COMPLETIONS: Final = "/inference/v1/completions"  # after the serverless base URL


def session_finish(session_id: str) -> str:
    """``/api/v1/sessions/{session_id}/finish``."""
    return f"{PREFIX}/sessions/{session_id}/finish"


# Serverless training sessions on the control plane (``/v1/...``; ``account`` and ids as given).


def training_session(account: str, session_id: str) -> str:
    """``/v1/accounts/{account}/trainingSessions/{session_id}`` (``DELETE`` closes it)."""
    return f"/v1/accounts/{account}/trainingSessions/{session_id}"


def training_session_checkpoints(account: str, session_id: str) -> str:
    """``/v1/accounts/{account}/trainingSessions/{session_id}/checkpoints``: its checkpoints."""
    return f"{training_session(account, session_id)}/checkpoints"


def training_session_checkpoint(account: str, session_id: str, checkpoint: str) -> str:
    """``.../trainingSessions/{session_id}/checkpoints/{checkpoint}`` (``:promote`` after it)."""
    return f"{training_session_checkpoints(account, session_id)}/{checkpoint}"


def sampler(sampler_id: str) -> str:
    """``/api/v1/samplers/{sampler_id}``."""
    return f"{PREFIX}/samplers/{sampler_id}"


def training_run(run_id: str) -> str:
    """``/api/v1/training_runs/{run_id}``."""
    return f"{TRAINING_RUNS}/{run_id}"


def run_checkpoints(run_id: str) -> str:
    """``/api/v1/training_runs/{run_id}/checkpoints``: one run's checkpoints."""
    return f"{TRAINING_RUNS}/{run_id}/checkpoints"


def run_checkpoint(run_id: str, checkpoint_id: str) -> str:
    """``/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}``: one checkpoint."""
    return f"{TRAINING_RUNS}/{run_id}/checkpoints/{checkpoint_id}"


def run_checkpoint_ttl(run_id: str, checkpoint_id: str) -> str:
    """``/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/ttl``: set or clear the
    checkpoint's expiry (``PUT``)."""
    return f"{run_checkpoint(run_id, checkpoint_id)}/ttl"


def run_checkpoint_external_urls(run_id: str, checkpoint_id: str) -> str:
    """``/api/v1/training_runs/{run_id}/checkpoints/{checkpoint_id}/external_weights_urls``:
    signed download URLs of an external-weights checkpoint (``GET``)."""
    return f"{run_checkpoint(run_id, checkpoint_id)}/external_weights_urls"


EXTERNAL_FILES: Final = "/_files/external_weights"
"""Where the local trainer serves external-weights files (behind signed URLs; not the API)."""
