"""``Deployments``: the async twin of the Fireworks SDK's ``DeploymentManager``.

Inference deployments on the control plane (create or get, wait until ready, update, scale to
zero, delete) and weight hot-loading on the gateway, on the shared ``RestCore`` (same headers,
account resolution, timeouts and retries as ``TrainerJobs``). The wire is the SDK 1.2.30's
(``deployment.py``):

* ``POST /v1/accounts/{a}/deployments?deploymentId=ID[&skipShapeValidation=true]
  [&acceptShapelessRisk=true][&disableSpeculativeDecoding=true]`` with a camelCase body
  (409: the existing deployment is fetched); ``GET``, ``PATCH ?updateMask=…`` and
  ``DELETE ?ignoreChecks=true&hard=true`` on ``…/deployments/{id}``;
* ``POST {hotload_url}/hot_load/v1/models/hot_load`` ``{"identity", "reset_prompt_cache",
  ["incremental_snapshot_metadata"]}`` and ``GET`` on the same URL for the status, with
  ``Authorization: Bearer``, ``fireworks-model`` and ``fireworks-deployment`` headers (a
  hot-load may add ``x-fireworks-hot-load-source-url`` and
  ``x-fireworks-hot-load-cmek-resource``, headers rather than body fields, as the SDK sends
  them: the body schema refuses unknown fields);
* ``reattach_trainer``: ``GET`` until ``READY``, one ``PATCH ?updateMask=`` of what differs
  (``hotLoadTrainerJob``, ``hotLoadTransitionType``), ``GET`` until it has settled;
* warm-up: ``POST {inference_url}/inference/v1/completions`` ``{"model", "prompt": [1, 2],
  "max_tokens": 4, "temperature": 0.0}`` until it answers 200.

Example::

    async with Deployments(base_url=lt.control_plane_url) as deployments:
        info = await deployments.create_or_get(DeploymentConfig("rollouts", MODEL))
        await deployments.wait_for_ready(info.deployment_id)
        await deployments.hotload("rollouts", base_model=MODEL, snapshot=snap.snapshot_name)
        await deployments.wait_for_hotload("rollouts", base_model=MODEL,
                                           snapshot=snap.snapshot_name)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Unpack

import anyio
import attrs
import httpx

from ..errors import DeploymentFailed, FiretitanError, HotloadFailed, InvalidInput
from ..wire.validation import validate_api_key
from ._lifecycle import DEFAULT_GRACE_S, OWNER_ANNOTATION, Claim, Provisioning, owner_tag
from ._rest import RestClient, RestCore, RestOptions

__all__ = [
    "DeploymentConfig",
    "DeploymentFailed",
    "DeploymentInfo",
    "Deployments",
    "HotloadStatus",
]

logger = logging.getLogger("firetitan_async.platform.deployments")

_BAD_STATES: Final = frozenset({"FAILED", "DELETED", "DELETING"})
_TRANSITIONS: Final = ("ASYNC", "SYNC")
COMPRESSION_FORMAT: Final = "arc_v2"
CHECKSUM_FORMAT: Final = "alder32"
#: The hot-load headers the SDK's ``DeploymentManager`` sends (``deployment.py``, 1.2.30).
SOURCE_URL_HEADER: Final = "x-fireworks-hot-load-source-url"
CMEK_RESOURCE_HEADER: Final = "x-fireworks-hot-load-cmek-resource"
_UNSPECIFIED: Final = frozenset({"HOT_LOAD_TRANSITION_TYPE_UNSPECIFIED", "UNSPECIFIED"})



def _record(deployment_id: str, value: object) -> dict[str, Any]:
    """A deployment record from the control plane (a JSON object), else ``FiretitanError``."""
    if not isinstance(value, dict):
        raise FiretitanError(
            f"malformed deployment record of {deployment_id!r}: expected an object, "
            f"got {value!r:.200}"
        )
    return value


def _transition(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    normalized = value.strip().upper()
    if normalized not in _TRANSITIONS:
        raise InvalidInput("hot_load_transition_type", f"must be ASYNC or SYNC, got {value!r}")
    return normalized


def _serving_transition(value: str | None) -> str:
    """The transition a deployment record means: unset or UNSPECIFIED is the control
    plane's default, ``ASYNC`` (the SDK's ``_effective_hot_load_transition_type``)."""
    normalized = (value or "").strip().upper()
    return "ASYNC" if not normalized or normalized in _UNSPECIFIED else normalized


@attrs.frozen
class DeploymentConfig:
    """A deployment to create, with the SDK's ``DeploymentConfig`` fields and defaults.

    Example::

        DeploymentConfig("rollouts", "accounts/fireworks/models/qwen3-8b",
                         deployment_shape="accounts/fireworks/deploymentShapes/rft-qwen3-8b")
    """

    deployment_id: str
    base_model: str
    description: str | None = None
    deployment_shape: str | None = None
    expected_deployment_shape: str | None = None
    region: str | None = None
    min_replica_count: int = 0
    max_replica_count: int = 1
    accelerator_type: str = "NVIDIA_H200_141GB"
    hot_load_bucket_type: str | None = "FW_HOSTED"
    hot_load_trainer_job: str | None = None
    enable_hot_load: bool = True
    hot_load_transition_type: str | None = attrs.field(default=None, converter=_transition)
    skip_shape_validation: bool = False
    accept_shapeless_risk: bool = False
    disable_speculative_decoding: bool = False
    extra_args: Sequence[str] | None = None
    extra_values: Mapping[str, str] | None = None
    annotations: Mapping[str, str] | None = None
    for_training: bool = False
    preemptible: bool = False

    def validate(self) -> None:
        """``InvalidInput`` for a config the SDK would refuse before sending."""
        if not self.deployment_id or not isinstance(self.deployment_id, str):
            raise InvalidInput("deployment_id", "is required")
        if not self.base_model:
            raise InvalidInput("base_model", "is required")
        if self.accept_shapeless_risk and (self.deployment_shape or "").strip():
            raise InvalidInput(
                "accept_shapeless_risk", "cannot be combined with deployment_shape"
            )
        expected = (self.expected_deployment_shape or "").strip()
        if expected and (self.deployment_shape or "").strip() != expected:
            raise InvalidInput(
                "deployment_shape",
                f"must equal expected_deployment_shape {expected!r}, got {self.deployment_shape!r}",
            )

    def query(self) -> dict[str, str]:
        """The create call's query parameters."""
        query = {"deploymentId": self.deployment_id}
        for flag, name in (
            (self.skip_shape_validation, "skipShapeValidation"),
            (self.accept_shapeless_risk, "acceptShapelessRisk"),
            (self.disable_speculative_decoding, "disableSpeculativeDecoding"),
        ):
            if flag:
                query[name] = "true"
        return query

    def body(self) -> dict[str, Any]:
        """The create call's camelCase body, as the SDK builds it."""
        self.validate()
        body: dict[str, Any] = {
            "baseModel": self.base_model,
            "description": self.description or "Fireworks training deployment",
            "minReplicaCount": self.min_replica_count,
            "maxReplicaCount": self.max_replica_count,
            "enableHotLoad": self.enable_hot_load,
            "forTraining": self.for_training,
        }
        if self.region:
            body["placement"] = {"region": self.region}
        if self.hot_load_bucket_type:
            body["hotLoadBucketType"] = self.hot_load_bucket_type
        if self.hot_load_trainer_job:
            body["hotLoadTrainerJob"] = self.hot_load_trainer_job
        if self.hot_load_transition_type:
            body["hotLoadTransitionType"] = self.hot_load_transition_type
        if self.deployment_shape:
            body["deploymentShape"] = self.deployment_shape
        else:
            body["acceleratorType"] = self.accelerator_type
        if self.extra_args:
            body["extraArgs"] = [part for arg in self.extra_args for part in arg.split()]
        if self.extra_values:
            body["extraValues"] = dict(self.extra_values)
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        if self.preemptible:
            body["preemptible"] = True
        return body


@attrs.frozen
class DeploymentInfo:
    """A deployment record: ``state`` (``READY``, ``CREATING``, …), ``inference_model`` (the
    ``model`` for completions: ``accounts/{a}/deployments/{id}``) and the raw record."""

    deployment_id: str
    name: str
    state: str
    inference_model: str
    base_model: str | None
    hot_load_trainer_job: str | None
    hot_load_transition_type: str | None
    hot_load_bucket_url: str | None
    deployment_shape: str | None
    raw: Mapping[str, Any] = attrs.field(repr=False)


@attrs.frozen
class HotloadStatus:
    """The first replica's hot-load status: ``current_snapshot`` (identity served, or None),
    ``ready``, ``stage`` (e.g. ``loading``, ``done``, ``error``), ``target`` (the identity being
    loaded) and ``replicas`` (0: scaled to zero or starting)."""

    current_snapshot: str | None
    ready: bool
    stage: str
    target: str | None
    replicas: int
    raw: Mapping[str, Any] = attrs.field(repr=False)

    @classmethod
    def parse(cls, reply: Any) -> HotloadStatus:
        """From the status reply ``{"replicas": [...]}``."""
        replicas = reply.get("replicas") if isinstance(reply, Mapping) else None
        if not isinstance(replicas, list):
            raise FiretitanError(f"hot-load status: expected a replicas list, got {reply!r:.200}")
        if not replicas or not isinstance(replicas[0], Mapping):
            return cls(None, False, "pending", None, 0, reply)
        first = replicas[0]
        loading = first.get("loading_state") or {}
        if not isinstance(loading, Mapping):
            raise FiretitanError("hot-load status: 'loading_state' must be an object")
        return cls(
            first.get("current_snapshot_identity"),
            bool(first.get("readiness", False)),
            str(loading.get("stage", "unknown")),
            loading.get("target_snapshot_identity"),
            len(replicas),
            reply,
        )


class Deployments(RestClient):
    """Inference deployments and hot-loading (see the module docstring).

    ``api_key`` defaults to ``$FIREWORKS_API_KEY``; ``inference_url`` and ``hotload_url``
    default to ``base_url``; ``account_id=None`` resolves it from the key. ``transport`` is the
    httpx seam (tests).
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        inference_url: str | None = None,
        hotload_url: str | None = None,
        **options: Unpack[RestOptions],
    ) -> None:
        super().__init__(RestCore(api_key, **options))
        self.inference_url = (inference_url or self.base_url).rstrip("/")
        self.hotload_url = (hotload_url or self.base_url).rstrip("/")
        self._reset_prompt_cache_supported = True

    def __repr__(self) -> str:
        return f"Deployments(base_url={self.base_url!r})"

    @property
    def api_key(self) -> str | None:
        """The key in use (for a ``DeploymentSampler`` on the same account)."""
        return self._rest.api_key

    # -- records -------------------------------------------------------------------------

    async def _path(self, deployment_id: str | None = None) -> str:
        account = await self._rest.account_id()
        base = f"/v1/accounts/{account}/deployments"
        if deployment_id is None:
            return base
        if not isinstance(deployment_id, str) or not deployment_id or "/" in deployment_id:
            raise InvalidInput("deployment_id", f"must be a bare id, got {deployment_id!r}")
        return f"{base}/{deployment_id}"

    async def model(self, deployment_id: str) -> str:
        """The completions ``model`` of a deployment: ``accounts/{a}/deployments/{id}``.

        Example::

            sampler = DeploymentSampler(deployments.inference_url, await deployments.model("d"))
        """
        account = await self._rest.account_id()
        return f"accounts/{account}/deployments/{deployment_id}"

    async def _info(self, deployment_id: str, record: Mapping[str, Any]) -> DeploymentInfo:
        return DeploymentInfo(
            deployment_id=deployment_id,
            name=str(record.get("name", "")),
            state=str(record.get("state", "UNKNOWN")),
            inference_model=await self.model(deployment_id),
            base_model=record.get("baseModel"),
            hot_load_trainer_job=record.get("hotLoadTrainerJob"),
            hot_load_transition_type=record.get("hotLoadTransitionType"),
            hot_load_bucket_url=record.get("hotLoadBucketUrl"),
            deployment_shape=record.get("deploymentShape"),
            raw=dict(record),
        )

    async def _get_record(self, deployment_id: str) -> dict[str, Any] | None:
        response = await self._rest.request(
            "GET", await self._path(deployment_id), accept=lambda r, _n: r.status_code == 404
        )
        if response.status_code == 404:
            return None
        return _record(deployment_id, self._rest.json_of(response))

    async def get(self, deployment_id: str) -> DeploymentInfo | None:
        """The deployment, or None if there is none.

        Example::

            info = await deployments.get("rollouts")
        """
        record = await self._get_record(deployment_id)
        return None if record is None else await self._info(deployment_id, record)

    def create_or_get(
        self,
        config: DeploymentConfig,
        *,
        force_recreate: bool = False,
        keep: bool = False,
        cleanup: Literal["delete", "scale_to_zero"] = "delete",
        grace_s: float = DEFAULT_GRACE_S,
    ) -> Provisioning[DeploymentInfo]:
        """The deployment ``config`` names, created if missing (or if ``FAILED``, ``DELETED``,
        ``DELETING``, or ``force_recreate``: deleted first). Idempotent: a 409 fetches it.

        ``await`` it for the :class:`DeploymentInfo`, or use it as ``async with`` to release a
        deployment this call created when the block exits, however it exits: ``cleanup``
        ``"delete"`` or ``"scale_to_zero"`` (it stays, for a later scale-up); ``keep=True``
        opts out, ``grace_s`` bounds the release (see :class:`~firetitan_async.Provisioning`).
        A healthy deployment that already existed is adopted and never released. In the
        ``async with`` form the created deployment carries the owner tag (``displayName`` and
        the annotation ``firetitan-async/owner``) that ``jobs list --orphans`` reads.

        Example::

            info = await deployments.create_or_get(DeploymentConfig("rollouts", MODEL))
            async with deployments.create_or_get(config, cleanup="scale_to_zero") as info:
                ...
        """
        if cleanup not in ("delete", "scale_to_zero"):
            raise InvalidInput("cleanup", f"must be 'delete' or 'scale_to_zero', got {cleanup!r}")
        config.validate()

        async def provision(claim: Claim) -> DeploymentInfo:
            return await self._create_or_get(config, force_recreate, claim)

        async def release(deployment_id: str) -> None:
            if cleanup == "delete":
                await self.delete(deployment_id)
            elif await self._get_record(deployment_id) is not None:
                await self.scale_to_zero(deployment_id)

        return Provisioning("deployment", provision, release, keep=keep, grace_s=grace_s)

    async def _create_or_get(
        self, config: DeploymentConfig, force_recreate: bool, claim: Claim
    ) -> DeploymentInfo:
        body = config.body()
        if claim.block:  # owned by an `async with` block: say by whom (jobs list --orphans)
            tag = owner_tag()
            body["annotations"] = {**body.get("annotations", {}), OWNER_ANNOTATION: tag}
            body.setdefault("displayName", tag)
        existing = await self._get_record(config.deployment_id)
        if existing is not None:
            if str(existing.get("state")) not in _BAD_STATES and not force_recreate:
                return await self._info(config.deployment_id, existing)
            await self.delete(config.deployment_id)
            await self._wait_gone(config.deployment_id)
        claim.own(config.deployment_id)  # before sending: a lost reply may still have created it
        response = await self._rest.request(
            "POST",
            await self._path(),
            params=config.query(),
            json_body=body,
            replay_safe=True,  # the client-chosen deploymentId makes a re-send a 409
            accept=lambda r, _n: r.status_code == 409,
        )
        if response.status_code == 409:
            record = await self._get_record(config.deployment_id)
            if record is None:
                raise DeploymentFailed(config.deployment_id, "CONFLICT", "409 but not found")
        else:
            record = _record(config.deployment_id, self._rest.json_of(response))
        return await self._info(config.deployment_id, record)

    async def list_deployments(self) -> list[DeploymentInfo]:
        """Every deployment of the account (all pages).

        Example::

            live = [d for d in await deployments.list_deployments() if d.state != "DELETED"]
        """
        records = await self._rest.list_all(
            await self._path(), ("deployments",), page_size="200", what="deployment listing"
        )
        found: list[DeploymentInfo] = []
        for record in records:
            name = str(_record("(listed)", record).get("name", ""))
            found.append(await self._info(name.rsplit("/", 1)[-1], record))
        return found

    async def _wait_gone(self, deployment_id: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            record = await self._get_record(deployment_id)
            if record is None or record.get("state") == "DELETED":
                return
            await anyio.sleep(2.0)

    async def wait_for_ready(
        self, deployment_id: str, *, timeout_s: float = 600.0, poll_interval_s: float = 15.0
    ) -> DeploymentInfo:
        """Poll until the deployment is ``READY`` (or ``CREATING`` but already serving a
        warm-up completion, as the SDK accepts). ``DeploymentFailed`` if it is missing, in a
        bad state, or not ready after ``timeout_s``.

        Example::

            info = await deployments.wait_for_ready("rollouts", timeout_s=1800)
        """
        deadline = time.monotonic() + timeout_s
        while True:
            record = await self._get_record(deployment_id)
            if record is None:
                raise DeploymentFailed(deployment_id, "NOT_FOUND")
            state = str(record.get("state", "UNKNOWN"))
            if state == "READY":
                return await self._info(deployment_id, record)
            if state in _BAD_STATES:
                raise DeploymentFailed(deployment_id, state)
            if state == "CREATING" and await self._probe(await self.model(deployment_id)) == 200:
                return attrs.evolve(await self._info(deployment_id, record), state="READY")
            if time.monotonic() + poll_interval_s > deadline:
                raise DeploymentFailed(deployment_id, state, f"not READY after {timeout_s:g}s")
            await anyio.sleep(poll_interval_s)

    async def update(
        self, deployment_id: str, body: Mapping[str, Any], update_mask: str | Sequence[str]
    ) -> DeploymentInfo:
        """PATCH the fields ``update_mask`` names (snake_case) from ``body`` (camelCase).

        Example::

            await deployments.update("rollouts", {"maxReplicaCount": 2}, ["max_replica_count"])
        """
        mask = update_mask if isinstance(update_mask, str) else ",".join(update_mask)
        if not mask:
            raise InvalidInput("update_mask", "is required (an empty mask would replace all)")
        record = await self._rest.call(
            "PATCH", await self._path(deployment_id), json_body=dict(body),
            params={"updateMask": mask},
        )
        return await self._info(deployment_id, _record(deployment_id, record))

    async def reattach_trainer(
        self,
        deployment: DeploymentInfo | str,
        *,
        base_model: str,
        trainer_job_name: str,
        timeout_s: float,
        poll_interval_s: float = 5.0,
        hot_load_transition_type: str | None = None,
    ) -> DeploymentInfo:
        """Point an existing deployment at a trainer (its hot-load bucket) and wait until the
        change has settled: the SDK's ``DeploymentManager.reattach_trainer``, request for
        request. Waits for ``READY`` first (``DeploymentFailed`` on a bad state or after
        ``timeout_s``), then PATCHes only what differs: ``hotLoadTrainerJob`` and, when
        given, ``hotLoadTransitionType`` (one PATCH, so one pod roll), then polls until the
        deployment is ``READY`` and serves from ``trainer_job_name``. An already attached
        deployment is returned as it is, with no PATCH. ``base_model`` is the SDK's argument
        (it routes nothing here; a later hot-load needs it). After a re-attach the deployment
        serves none of the new trainer's snapshots: hot-load a base before sampling (a
        ``WeightPublisher`` on it starts with one).

        Example::

            info = await deployments.reattach_trainer(
                "rollouts", base_model=MODEL, trainer_job_name=endpoint.job_name, timeout_s=600)
        """
        deployment_id = deployment if isinstance(deployment, str) else deployment.deployment_id
        if not isinstance(trainer_job_name, str) or not trainer_job_name:
            raise InvalidInput("trainer_job_name", "must be the trainer job's resource name")
        if not isinstance(base_model, str) or not base_model:
            raise InvalidInput("base_model", "is required")
        transition = _transition(hot_load_transition_type)
        info = await self.get(deployment_id)
        if info is None:
            raise DeploymentFailed(deployment_id, "NOT_FOUND", "before trainer re-attach")
        deadline = time.monotonic() + max(timeout_s, 1.0)
        while info.state != "READY":
            if info.state in _BAD_STATES:
                raise DeploymentFailed(deployment_id, info.state, "before trainer re-attach")
            if time.monotonic() >= deadline:
                raise DeploymentFailed(deployment_id, info.state,
                                       f"not READY for the re-attach after {timeout_s:g}s")
            await anyio.sleep(poll_interval_s)
            info = await self.get(deployment_id)
            if info is None:
                raise DeploymentFailed(deployment_id, "NOT_FOUND", "during trainer re-attach")
        body: dict[str, Any] = {}
        mask: list[str] = []
        if info.hot_load_trainer_job != trainer_job_name:
            body["hotLoadTrainerJob"] = trainer_job_name
            mask.append("hot_load_trainer_job")
        if transition and _serving_transition(info.hot_load_transition_type) != transition:
            body["hotLoadTransitionType"] = transition
            mask.append("hot_load_transition_type")
        if not mask:
            return info
        logger.info("re-attaching deployment %s to %s: %s", deployment_id, trainer_job_name,
                    ", ".join(mask))
        await self.update(deployment_id, body, mask)
        deadline = time.monotonic() + max(timeout_s, 1.0)
        while time.monotonic() < deadline:
            current = await self.get(deployment_id)
            if current is None:
                raise DeploymentFailed(deployment_id, "NOT_FOUND", "during trainer re-attach")
            if (
                current.state == "READY"
                and current.hot_load_trainer_job == trainer_job_name
                and (transition is None
                     or _serving_transition(current.hot_load_transition_type) == transition)
            ):
                return current
            if current.state in _BAD_STATES:
                raise DeploymentFailed(deployment_id, current.state, "during trainer re-attach")
            await anyio.sleep(poll_interval_s)
        raise DeploymentFailed(deployment_id, "UPDATING",
                               f"the re-attach did not settle in READY within {timeout_s:g}s")

    async def scale_to_zero(self, deployment_id: str) -> None:
        """Release every replica (the deployment stays, for a later scale-up).

        Example::

            await deployments.scale_to_zero("rollouts")
        """
        await self._rest.call(
            "PATCH", await self._path(deployment_id),
            json_body={"maxReplicaCount": 0, "minReplicaCount": 0},
        )

    async def delete(self, deployment_id: str) -> None:
        """Delete the deployment (``ignoreChecks``, ``hard``); a missing one is not an error.

        Example::

            await deployments.delete("rollouts")
        """
        await self._rest.request(
            "DELETE", await self._path(deployment_id),
            params={"ignoreChecks": "true", "hard": "true"},
            accept=lambda r, _n: r.status_code == 404,
        )

    # -- hot-load ------------------------------------------------------------------------

    async def _hotload_headers(
        self,
        deployment_id: str,
        base_model: str,
        source_url: str | None = None,
        cmek_resource: str | None = None,
    ) -> dict[str, str]:
        if not base_model:
            raise InvalidInput("base_model", "is required (it routes the hot-load)")
        account = await self._rest.account_id()
        headers = {
            "fireworks-model": base_model,
            "fireworks-deployment": f"accounts/{account}/deployments/{deployment_id}",
        }
        if source_url:
            headers[SOURCE_URL_HEADER] = source_url
        if cmek_resource:
            headers[CMEK_RESOURCE_HEADER] = cmek_resource
        return headers

    async def hotload(
        self,
        deployment_id: str,
        *,
        base_model: str,
        snapshot: str,
        previous: str | None = None,
        reset_prompt_cache: bool = True,
        source_url: str | None = None,
        cmek_resource: str | None = None,
    ) -> None:
        """Ask the deployment to load ``snapshot`` (a snapshot identity). With ``previous``
        (the identity it serves now) the snapshot is a delta chained on it; without, a base.

        ``source_url`` (an object-storage prefix such as ``gs://bucket/run/step-2/``) tells
        the serving side where to fetch the snapshot's bytes instead of the deployment's
        configured storage; ``cmek_resource`` names the key that decrypts them. Both travel
        as headers (``x-fireworks-hot-load-source-url``, ``x-fireworks-hot-load-cmek-resource``),
        as the SDK's ``DeploymentManager.hotload(path=..., cmek_resource=...)`` sends them; a
        server that does not use them ignores them.

        Example::

            await deployments.hotload("d", base_model=MODEL, snapshot="step-2-ab12cd34",
                                      previous="step-1-ab12cd34")
        """
        if not isinstance(snapshot, str) or not snapshot:
            raise InvalidInput("snapshot", "must be a snapshot identity")
        # header values: printable ASCII, no whitespace (the key's check), before sending
        validate_api_key(source_url, field="source_url")
        validate_api_key(cmek_resource, field="cmek_resource")
        headers = await self._hotload_headers(deployment_id, base_model, source_url,
                                              cmek_resource)
        body: dict[str, Any] = {"identity": snapshot}
        if self._reset_prompt_cache_supported:
            body["reset_prompt_cache"] = reset_prompt_cache
        if previous is not None:
            body["incremental_snapshot_metadata"] = {
                "previous_snapshot_identity": previous,
                "compression_format": COMPRESSION_FORMAT,
                "checksum_format": CHECKSUM_FORMAT,
            }
        url = f"{self.hotload_url}/hot_load/v1/models/hot_load"

        def rejects_reset(response: httpx.Response, _attempt: int) -> bool:
            text = response.text.lower()
            return (
                response.status_code == 400
                and "reset_prompt_cache" in text
                and "extra inputs are not permitted" in text
            )

        response = await self._rest.request(
            "POST", url, json_body=body, bearer=True, headers=headers,
            accept=rejects_reset if "reset_prompt_cache" in body else None,
        )
        if response.status_code == 400:  # the gateway refused the deprecated field: resend
            self._reset_prompt_cache_supported = False
            body.pop("reset_prompt_cache")
            await self._rest.request("POST", url, json_body=body, bearer=True, headers=headers)

    async def hotload_status(self, deployment_id: str, *, base_model: str) -> HotloadStatus:
        """The deployment's hot-load status.

        Example::

            status = await deployments.hotload_status("d", base_model=MODEL)
            status.current_snapshot, status.ready
        """
        headers = await self._hotload_headers(deployment_id, base_model)
        reply = await self._rest.call(
            "GET", f"{self.hotload_url}/hot_load/v1/models/hot_load", bearer=True,
            headers=headers,
        )
        return HotloadStatus.parse(reply)

    async def wait_for_hotload(
        self,
        deployment_id: str,
        *,
        base_model: str,
        snapshot: str,
        timeout_s: float = 400.0,
        poll_interval_s: float = 5.0,
    ) -> HotloadStatus:
        """Poll (every 50 ms at first, doubling up to ``poll_interval_s``) until the deployment
        serves ``snapshot`` and is ready. ``HotloadFailed`` if it
        reports an error for that snapshot (a stale error for another one is ignored, as the
        SDK does) or after ``timeout_s``.

        Example::

            await deployments.wait_for_hotload("d", base_model=MODEL, snapshot=identity)
        """
        deadline = time.monotonic() + timeout_s
        last: HotloadStatus | None = None
        delay = min(0.05, poll_interval_s)  # quick loads are seen quickly; then back off
        while True:
            try:
                last = await self.hotload_status(deployment_id, base_model=base_model)
            except FiretitanError as exc:  # transient while the deployment restarts
                logger.warning("hot-load status of %s: %s (will retry)", deployment_id, exc)
            else:
                if last.ready and last.current_snapshot == snapshot:
                    return last
                if last.stage == "error" and last.target == snapshot:
                    detail = last.raw.get("replicas", [{}])[0].get("error") or "stage=error"
                    raise HotloadFailed(deployment_id, snapshot, str(detail))
            if time.monotonic() + delay > deadline:
                state = f"stage={last.stage}, serving={last.current_snapshot}" if last else "-"
                raise HotloadFailed(deployment_id, snapshot, f"not served after "
                                    f"{timeout_s:g}s ({state})")
            await anyio.sleep(delay)
            delay = min(poll_interval_s, delay * 2)

    async def _probe(self, model: str) -> int | None:
        body = {"model": model, "prompt": [1, 2], "max_tokens": 4, "temperature": 0.0}
        try:
            response = await self._rest.request(
                "POST", f"{self.inference_url}/inference/v1/completions", json_body=body,
                bearer=True, max_attempts=1, accept=lambda _r, _n: True,
            )
        except FiretitanError:
            return None
        return response.status_code

    async def warmup(
        self, deployment_id: str, *, max_retries: int = 30, retry_interval_s: float = 10.0
    ) -> bool:
        """Send a token-in completion until the deployment answers 200 (True), or give up
        after ``max_retries`` (False).

        Example::

            assert await deployments.warmup("rollouts", max_retries=5, retry_interval_s=1)
        """
        model = await self.model(deployment_id)
        for attempt in range(max_retries):
            if await self._probe(model) == 200:
                return True
            if attempt + 1 < max_retries:
                await anyio.sleep(retry_interval_s)
        return False
