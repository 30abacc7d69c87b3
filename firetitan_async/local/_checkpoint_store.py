"""``CheckpointStore``: checkpoints as real files, listed with the tinker ``Checkpoint`` shape.

Layout under the root directory (survives a restart of a server pointed at the same root)::

    {root}/{training_run_id}/run.json                      the run (base model, LoRA rank, job)
    {root}/{training_run_id}/weights/{name}.npz|.json      training state (weights + Adam)
    {root}/{training_run_id}/sampler_weights/{name}.npz|.json   sampler weights

Each ``.json`` holds the listing entry (``checkpoint_id``, ``checkpoint_type``, ``time``,
``tinker_path``, ``size_bytes``, ``public``, ``user_metadata``, ``expires_at``) plus our extra
fields ``job_id`` (the trainer job that made it, or null) and, for sampler weights,
``snapshot_type`` (``"base"`` or ``"delta"``). A ``delta`` file holds the XOR of the float32
weights' uint32 bit patterns against the ``base_path`` save; loading rebuilds the weights
bit-exactly. Expired checkpoints (``expires_at`` past) are hidden and load as 404; their files
are deleted lazily.

Example::

    store = CheckpointStore(Path("/tmp/ckpt"))
    meta = store.save_sampler(run, "step-1", weights, snapshot_type="base")
    store.load_sampler_weights(meta["tinker_path"])   # -> dict of float32 arrays
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np

from ._http_errors import ApiError

__all__ = [
    "CheckpointStore",
    "ParsedPath",
    "RunInfo",
    "SnapshotType",
    "parse_tinker_path",
    "rfc3339",
]

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_RUN_RE = re.compile(r"[A-Za-z0-9:._-]{1,256}")
_KINDS: Mapping[str, Literal["training", "sampler", "external"]] = {
    "weights": "training",
    "sampler_weights": "sampler",
    "external_weights": "external",
}
SnapshotType = Literal["base", "delta", "merged_base"]


def rfc3339(epoch_s: float) -> str:
    """``epoch_s`` as an RFC 3339 UTC timestamp, e.g. ``2025-01-02T03:04:05.678Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@attrs.frozen
class RunInfo:
    """A training run (one model): what ``GET training_runs/{id}`` describes."""

    training_run_id: str
    base_model: str
    lora_rank: int
    job_id: str | None = None
    user_metadata: Mapping[str, str] | None = None
    created_s: float = attrs.field(factory=time.time)


@attrs.frozen
class ParsedPath:
    """``tinker://{training_run_id}/{segment}/{name}``."""

    training_run_id: str
    segment: str  # "weights" | "sampler_weights"
    name: str

    @property
    def checkpoint_id(self) -> str:
        """``{segment}/{name}``."""
        return f"{self.segment}/{self.name}"


def check_name(name: object, field: str = "path") -> str:
    """A checkpoint name: 1-128 characters of ``[A-Za-z0-9._-]``; ``ApiError(400)`` otherwise."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ApiError(
            400,
            f"{field}: invalid checkpoint name {name!r} (1-128 characters of letters, digits, "
            "'.', '_' and '-')",
        )
    return name


def parse_tinker_path(path: object, field: str = "path") -> ParsedPath:
    """Parse a ``tinker://`` checkpoint path; ``ApiError(400)`` if it is malformed."""
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ApiError(400, f"{field}: expected a tinker://RUN_ID/KIND/NAME path, got {path!r}")
    parts = path[len("tinker://") :].split("/")
    if len(parts) != 3 or parts[1] not in _KINDS or not _RUN_RE.fullmatch(parts[0]):
        raise ApiError(
            400,
            f"{field}: malformed tinker path {path!r} (expected tinker://RUN_ID/weights/NAME "
            "or tinker://RUN_ID/sampler_weights/NAME)",
        )
    check_name(parts[2], field)
    return ParsedPath(parts[0], parts[1], parts[2])


class CheckpointStore:
    """Checkpoint files under ``root`` (see the module docstring). Thread-safe."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # -- runs --------------------------------------------------------------------------------

    def record_run(self, run: RunInfo) -> None:
        """Write ``run.json`` for a new training run."""
        record = {
            "training_run_id": run.training_run_id,
            "base_model": run.base_model,
            "lora_rank": run.lora_rank,
            "job_id": run.job_id,
            "user_metadata": dict(run.user_metadata) if run.user_metadata else None,
            "created": rfc3339(run.created_s),
        }
        with self._lock:
            run_dir = self._run_dir(run.training_run_id)
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run_dir / "run.json", record)

    def get_run(self, training_run_id: str) -> dict[str, Any] | None:
        """The stored ``run.json`` of a run, or ``None``."""
        if not _RUN_RE.fullmatch(training_run_id):
            return None
        path = self._run_dir(training_run_id) / "run.json"
        with self._lock:
            if not path.is_file():
                return None
            record: dict[str, Any] = json.loads(path.read_text())
            return record

    def runs(self) -> list[dict[str, Any]]:
        """Every stored ``run.json`` record."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for path in sorted(self.root.glob("*/run.json")):
                out.append(json.loads(path.read_text()))
        return out

    def live_meta(self, training_run_id: str, segment: str, name: str) -> dict[str, Any] | None:
        """The listing entry of ``{segment}/{name}`` of a run, or ``None`` (absent/expired)."""
        with self._lock:
            return self._live_meta(training_run_id, segment, name)

    def training_names(self, *, job_id: str | None) -> list[str]:
        """Sorted names of the live ``weights/`` checkpoints of runs of ``job_id`` (``None``:
        runs not made through a job)."""
        names: set[str] = set()
        for run in self.runs():
            if run.get("job_id") == job_id:
                folder = self._run_dir(str(run["training_run_id"])) / "weights"
                with self._lock:
                    names.update(m["checkpoint_id"].partition("/")[2] for m in self._metas(folder))
        return sorted(names)

    # -- save ---------------------------------------------------------------------------------

    def save_state(
        self,
        run: RunInfo,
        name: str,
        state: Mapping[str, np.ndarray],
        *,
        ttl_seconds: int | None = None,
        user_metadata: Mapping[str, str] | None = None,
        overwrite: bool = False,
    ) -> dict[str, Any]:
        """Save a training state as ``weights/{name}``; returns its listing entry."""
        with self._lock:
            if not overwrite and self._live_meta(run.training_run_id, "weights", name):
                raise ApiError(
                    409,
                    f"checkpoint weights/{name} of run {run.training_run_id} already exists "
                    "(save with overwrite=true to replace it)",
                )
            return self._save(run, "weights", name, dict(state), ttl_seconds, user_metadata, {})

    def save_sampler(
        self,
        run: RunInfo,
        name: str,
        weights: Mapping[str, np.ndarray],
        *,
        snapshot_type: SnapshotType = "base",
        base_path: str | None = None,
        base_weights: Mapping[str, np.ndarray] | None = None,
        ttl_seconds: int | None = None,
        user_metadata: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Save sampler weights as ``sampler_weights/{name}``: full (``base``, ``merged_base``)
        or, for ``delta``, the XOR of their bits against ``base_weights`` (saved at
        ``base_path``). ``extra`` fields go into the listing entry."""
        arrays: dict[str, np.ndarray] = {}
        extra = {**(extra or {}), "snapshot_type": snapshot_type}
        if snapshot_type == "delta":
            if base_path is None or base_weights is None:
                raise ApiError(400, "a delta snapshot needs a previous base snapshot")
            for key, value in weights.items():
                cur = np.ascontiguousarray(value, dtype=np.float32)
                base = np.ascontiguousarray(base_weights[key], dtype=np.float32)
                arrays[key] = np.bitwise_xor(cur.view(np.uint32), base.view(np.uint32))
            extra["base_path"] = base_path
        else:
            arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        with self._lock:
            return self._save(
                run, "sampler_weights", name, arrays, ttl_seconds, user_metadata, extra
            )

    def _save(
        self,
        run: RunInfo,
        segment: str,
        name: str,
        arrays: dict[str, np.ndarray],
        ttl_seconds: int | None,
        user_metadata: Mapping[str, str] | None,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        check_name(name)
        folder = self._run_dir(run.training_run_id) / segment
        folder.mkdir(parents=True, exist_ok=True)
        if not (self._run_dir(run.training_run_id) / "run.json").is_file():
            self.record_run(run)
        npz = folder / f"{name}.npz"
        tmp = folder / f".{name}.npz.tmp"
        # A delta's XOR bits are mostly zero where the weights barely moved: compress them.
        save = np.savez_compressed if extra.get("snapshot_type") == "delta" else np.savez
        with open(tmp, "wb") as fh:
            save(fh, allow_pickle=False, **arrays)
        os.replace(tmp, npz)
        now = time.time()
        meta: dict[str, Any] = {
            "checkpoint_id": f"{segment}/{name}",
            "checkpoint_type": _KINDS[segment],
            "time": rfc3339(now),
            "tinker_path": f"tinker://{run.training_run_id}/{segment}/{name}",
            "size_bytes": npz.stat().st_size,
            "public": False,
            "user_metadata": dict(user_metadata) if user_metadata else None,
            "expires_at": rfc3339(now + ttl_seconds) if ttl_seconds is not None else None,
            "job_id": run.job_id,
            **extra,
        }
        _write_json(folder / f"{name}.json", meta)
        return meta

    def save_external(
        self,
        run: RunInfo,
        name: str,
        weights: Mapping[str, np.ndarray],
        *,
        ttl_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Save float32 weights as ``external_weights/{name}``: one ``weights.npz`` file (the
        local model's export format), listed and deleted like any checkpoint."""
        arrays = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        with self._lock:
            return self._save(run, "external_weights", name, arrays, ttl_seconds, None, {})

    def external_file(self, path: str) -> Path:
        """The file of a live ``external_weights`` checkpoint; ``ApiError(404)`` otherwise."""
        meta = self.meta(path)
        if meta["checkpoint_type"] != "external":
            raise ApiError(400, f"{path} is not an external_weights checkpoint")
        parsed = parse_tinker_path(path)
        return self._run_dir(parsed.training_run_id) / parsed.segment / f"{parsed.name}.npz"

    # -- load ---------------------------------------------------------------------------------

    def meta(self, path: str) -> dict[str, Any]:
        """The listing entry of a live checkpoint; ``ApiError(404)`` if absent or expired."""
        parsed = parse_tinker_path(path)
        with self._lock:
            found = self._live_meta(parsed.training_run_id, parsed.segment, parsed.name)
        if found is None:
            raise ApiError(404, f"checkpoint {path} not found (never saved, deleted or expired)")
        return found

    def load_arrays(self, path: str) -> dict[str, np.ndarray]:
        """The raw arrays of a live checkpoint; ``ApiError(404)`` if absent or expired."""
        self.meta(path)
        parsed = parse_tinker_path(path)
        npz = self._run_dir(parsed.training_run_id) / parsed.segment / f"{parsed.name}.npz"
        with self._lock, np.load(npz, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}

    def load_sampler_weights(self, path: str) -> dict[str, np.ndarray]:
        """Float32 sampler weights of a ``sampler_weights`` path (a delta is rebuilt as
        base XOR delta, bit-exactly)."""
        meta = self.meta(path)
        if meta["checkpoint_type"] != "sampler":
            raise ApiError(400, f"{path} is not a sampler_weights checkpoint")
        arrays = self.load_arrays(path)
        if meta.get("snapshot_type") != "delta":
            return {k: v.astype(np.float32, copy=False) for k, v in arrays.items()}
        base_path = meta.get("base_path")
        try:
            base = self.load_arrays(str(base_path))
        except ApiError:
            raise ApiError(
                404, f"delta checkpoint {path} needs its base {base_path}, which is gone"
            ) from None
        return {
            k: np.bitwise_xor(
                np.ascontiguousarray(base[k], dtype=np.float32).view(np.uint32), v
            ).view(np.float32)
            for k, v in arrays.items()
        }

    # -- list / delete ------------------------------------------------------------------------

    def list_run(self, training_run_id: str) -> list[dict[str, Any]]:
        """The live checkpoints of one run, oldest first."""
        if not _RUN_RE.fullmatch(training_run_id):
            return []
        with self._lock:
            out = [
                m
                for segment in _KINDS
                for m in self._metas(self._run_dir(training_run_id) / segment)
            ]
        return sorted(out, key=lambda m: (m["time"], m["checkpoint_id"]))

    def list_all(self, *, job_id: str | None = None) -> list[dict[str, Any]]:
        """Every live checkpoint (of ``job_id`` only, if given), newest first."""
        out: list[dict[str, Any]] = []
        with self._lock:
            for run_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                for segment in _KINDS:
                    out.extend(self._metas(run_dir / segment))
        if job_id is not None:
            out = [m for m in out if m.get("job_id") == job_id]
        return sorted(out, key=lambda m: (m["time"], m["checkpoint_id"]), reverse=True)

    def delete(self, training_run_id: str, checkpoint_id: str) -> None:
        """Delete a checkpoint; ``ApiError(404)`` if there is none."""
        segment, _, name = checkpoint_id.partition("/")
        path = f"tinker://{training_run_id}/{segment}/{name}"
        self.meta(path)
        with self._lock:
            self._remove(self._run_dir(training_run_id) / segment, name)

    def set_ttl(self, training_run_id: str, checkpoint_id: str, ttl_seconds: int | None) -> None:
        """Make a live checkpoint expire ``ttl_seconds`` from now (``None``: never);
        ``ApiError(404)`` if there is none."""
        segment, _, name = checkpoint_id.partition("/")
        path = f"tinker://{training_run_id}/{segment}/{name}"
        with self._lock:
            meta = self.meta(path)
            meta["expires_at"] = (
                rfc3339(time.time() + ttl_seconds) if ttl_seconds is not None else None
            )
            _write_json(self._run_dir(training_run_id) / segment / f"{name}.json", meta)

    def remove_all(self) -> None:
        """Delete the whole root (used for a temporary checkpoint dir)."""
        shutil.rmtree(self.root, ignore_errors=True)

    # -- internals ----------------------------------------------------------------------------

    def _run_dir(self, training_run_id: str) -> Path:
        if not _RUN_RE.fullmatch(training_run_id) or training_run_id in (".", ".."):
            raise ApiError(400, f"invalid training run id {training_run_id!r}")
        return self.root / training_run_id

    def _live_meta(self, run_id: str, segment: str, name: str) -> dict[str, Any] | None:
        meta_path = self._run_dir(run_id) / segment / f"{name}.json"
        if not meta_path.is_file():
            return None
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        if _expired(meta):
            self._remove(meta_path.parent, name)
            return None
        return meta

    def _metas(self, folder: Path) -> list[dict[str, Any]]:
        if not folder.is_dir():
            return []
        out = []
        for meta_path in sorted(folder.glob("*.json")):
            meta = json.loads(meta_path.read_text())
            if _expired(meta):
                self._remove(folder, meta_path.stem)
                continue
            out.append(meta)
        return out

    @staticmethod
    def _remove(folder: Path, name: str) -> None:
        for suffix in (".json", ".npz"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)


def _expired(meta: Mapping[str, Any]) -> bool:
    expires = meta.get("expires_at")
    return bool(expires) and _parse_time(str(expires)) <= time.time()


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
