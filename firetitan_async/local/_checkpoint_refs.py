"""Checkpoint references as the Fireworks SDK sends them, resolved to ``tinker://`` paths.

``load_weights`` (``load_state*``) and ``load_adapter`` accept, besides a ``tinker://`` path:

* a bare name (``step-4``): that model's own ``weights/step-4``, else the newest
  ``weights/step-4`` saved by any run of the same trainer scope (the same job, or for a model
  not created through a job, any run not created through a job): one trainer, one checkpoint
  dir;
* ``<account>/run-<32 hex>/<name>``: the run whose :func:`run_name` that is, in this account;
* ``cross_job://<job>/<name>``: the newest ``weights/<name>`` saved by a run of job ``<job>``
  (read from the same checkpoint dir, also after that job is gone).

Example::

    path = resolve_checkpoint_ref(store, "cross_job://old-job/step-4", own_run=None,
                                  job_id="new-job", account_id="local")
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ._checkpoint_store import CheckpointStore, check_name
from ._http_errors import ApiError

__all__ = ["resolve_checkpoint_ref", "run_name"]

_RUN_NAME_RE = re.compile(r"run-[0-9a-f]{32}")


def run_name(training_run_id: str) -> str:
    """The ``run-<32 hex>`` name of a training run (a stable digest of its id)."""
    return "run-" + hashlib.md5(training_run_id.encode(), usedforsecurity=False).hexdigest()


def resolve_checkpoint_ref(
    store: CheckpointStore,
    ref: object,
    *,
    own_run: str | None,
    job_id: str | None,
    account_id: str,
    field: str = "path",
) -> str:
    """The ``tinker://`` path ``ref`` names; ``ApiError`` 400 (malformed) or 404 (not found)."""
    if not isinstance(ref, str) or not ref:
        raise ApiError(400, f"{field} is required (a checkpoint name or path)")
    if ref.startswith("tinker://"):
        return ref
    if ref.startswith("cross_job://"):
        parts = ref[len("cross_job://") :].split("/")
        if len(parts) != 2 or not all(parts):
            raise ApiError(400, f"{field}: expected cross_job://<job>/<name>, got {ref!r}")
        job, name = parts
        check_name(name, field)
        found = _newest(store, name, lambda run: run.get("job_id") == job)
        if found is None:
            raise ApiError(
                404, f"{field}: job {job!r} saved no checkpoint {name!r} in this trainer's "
                "checkpoint dir"
            )
        return found
    parts = ref.split("/")
    if "://" in ref or len(parts) not in (1, 3):
        raise ApiError(
            400, f"{field}: {ref!r} is not a checkpoint name, <account>/run-<32 hex>/<name>, "
            "cross_job://<job>/<name> or tinker://RUN_ID/weights/NAME path"
        )
    if len(parts) == 3:
        account, run, name = parts
        if not _RUN_NAME_RE.fullmatch(run):
            raise ApiError(400, f"{field}: expected <account>/run-<32 hex>/<name>, got {ref!r}")
        check_name(name, field)
        if account != account_id:
            raise ApiError(404, f"{field}: account {account!r} is not this trainer's account")
        found = _newest(store, name, lambda r: run_name(str(r.get("training_run_id"))) == run)
        if found is None:
            raise ApiError(404, f"{field}: run {run} has no checkpoint {name!r}")
        return found
    name = check_name(ref, field)
    if own_run is not None and store.live_meta(own_run, "weights", name) is not None:
        return f"tinker://{own_run}/weights/{name}"
    found = _newest(store, name, lambda run: run.get("job_id") == job_id)
    if found is None:
        raise ApiError(404, f"{field}: no checkpoint named {name!r} (save_state saves one)")
    return found


def _newest(store: CheckpointStore, name: str, keep: Any) -> str | None:
    best: tuple[str, str] | None = None
    for run in store.runs():
        if not keep(run):
            continue
        meta = store.live_meta(str(run["training_run_id"]), "weights", name)
        if meta is not None and (best is None or meta["time"] > best[0]):
            best = (str(meta["time"]), str(meta["tinker_path"]))
    return None if best is None else best[1]
