"""The managed setup: the async twin of the Fireworks SDK's
``FiretitanServiceClient.from_firetitan_config``.

One call provisions (or re-attaches by id) a policy trainer, an optional reference trainer and
an optional deployment from one :class:`ManagedConfig`, waits for them concurrently (one anyio
task group) and returns a :class:`ManagedSetup` that owns them. Leaving its ``async with``
block applies the :class:`Cleanup` policy to what the call CREATED (a re-attached resource is
never touched), and so does an error or a cancellation during provisioning; release is
shielded from cancellation for at most ``grace_s`` seconds (:class:`Provisioning`'s rules).

The requests are the SDK's, in the SDK's order per resource (``tests/conformance/
test_fidelity_fireworks_managed.py`` holds them to it); it is built on :class:`TrainerJobs`,
:class:`Deployments` and the session, with no REST or retry code of its own.

Example::

    config = ManagedConfig("accounts/fireworks/models/qwen3-8b", lora_rank=16,
                           training_shape="accounts/fireworks/trainingShapes/qwen3-8b-lora",
                           reference="same-trainer")
    async with ServiceSession.managed(config) as setup:
        policy = await setup.training_client()
        reference = await setup.reference_client()
        rollouts = await setup.sampler.sample(prompt, n=8, max_tokens=256)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, TypeVar

import anyio
import anyio.abc
import attrs

from .._clients._concurrency import ConcurrencyController
from .._clients._deployment_sampler import DeploymentSampler
from .._clients._snapshots import SamplerSnapshot
from .._session._ordered_ops import first_error
from ..errors import APIStatusError, InvalidInput, UsageError
from ._config import TrainerJobConfig
from ._deployments import DeploymentConfig, DeploymentInfo, Deployments, _serving_transition
from ._jobs import TrainerJobs, new_job_id
from ._lifecycle import DEFAULT_GRACE_S, Claim, Provisioning
from ._publisher import PublishedVersion, WeightPublisher
from ._records import CreatedTrainerJob, JobState, TrainerEndpoint
from ._shapes import TrainingShapeProfile

if TYPE_CHECKING:
    from .._clients._training import TrainingClient

__all__ = ["Cleanup", "ManagedConfig", "ManagedSetup"]

logger = logging.getLogger("firetitan_async.managed")

# The Fireworks SDK's defaults (fireworks.training.sdk._constants, 1.2.30).
TRAINER_TIMEOUT_S: Final = 3600.0
TRAINER_PENDING_TIMEOUT_S: Final = 172800.0
DEPLOYMENT_TIMEOUT_S: Final = 5400.0
HOTLOAD_TIMEOUT_S: Final = 600.0
REATTACH_SETTLE_TIMEOUT_S: Final = 600.0
POLL_INTERVAL_S: Final = 5.0

_LORA_TRAINER: Final = "LORA_TRAINER"
_FORWARD_ONLY: Final = "FORWARD_ONLY"
_DEPLOYMENT_GONE: Final = frozenset({"FAILED", "DELETED", "DELETING"})
_DEPLOYMENT_SERVING: Final = frozenset({"READY", "UPDATING"})

Reference = Literal[False, True, "same-trainer", "separate"]


def _choice(allowed: tuple[str, ...]) -> Callable[[object, attrs.Attribute[str], object], None]:
    def check(_inst: object, attr: attrs.Attribute[str], value: object) -> None:
        if value not in allowed:
            raise InvalidInput(f"cleanup.{attr.name}", f"must be one of {allowed}, got {value!r}")

    return check


@attrs.frozen
class Cleanup:
    """What leaving a :class:`ManagedSetup` does to each resource it CREATED: ``"delete"``,
    ``"keep"`` (re-attach to it later by id) or, for the deployment, ``"scale_to_zero"``.

    The default deletes everything it created, so nothing bills silently (the SDK keeps the
    policy trainer and the deployment unless told otherwise:
    ``Cleanup(trainer="keep", deployment="keep")`` is its behaviour).

    Example::

        Cleanup(trainer="keep", reference="delete", deployment="scale_to_zero")
    """

    trainer: Literal["delete", "keep"] = attrs.field(
        default="delete", validator=_choice(("delete", "keep"))
    )
    reference: Literal["delete", "keep"] = attrs.field(
        default="delete", validator=_choice(("delete", "keep"))
    )
    deployment: Literal["delete", "scale_to_zero", "keep"] = attrs.field(
        default="delete", validator=_choice(("delete", "scale_to_zero", "keep"))
    )


def _text(_inst: object, attr: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInput(attr.name, f"must be a non-empty string, got {value!r}")


def _opt_text(_inst: object, attr: attrs.Attribute[str | None], value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidInput(attr.name, f"must be a non-empty string or None, got {value!r}")


def _seconds(_inst: object, attr: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInput(attr.name, f"must be a number of seconds > 0, got {value!r}")


def _rank(_inst: object, attr: attrs.Attribute[int], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(attr.name, f"must be an int >= 0, got {value!r}")


def _keywords_after_the_first(
    _cls: type, fields: list[attrs.Attribute[Any]]
) -> list[attrs.Attribute[Any]]:
    """``ManagedConfig(base_model, *, ...)``: every field but the first is keyword-only."""
    return [fields[0], *(f.evolve(kw_only=True) for f in fields[1:])]


@attrs.frozen(field_transformer=_keywords_after_the_first)
class ManagedConfig:
    """Everything the managed setup provisions, from one place: the client-facing fields of
    the Fireworks SDK's ``FiretitanProvisioningConfig`` under this project's names.

    * ``base_model``, ``tokenizer_model``, ``lora_rank``, ``lora_alpha`` (``None``: 32 for a
      LoRA policy, as the SDK), ``learning_rate``, ``max_context_length`` (``None``: the
      training shape's). ``tokenizer_model`` (a Hugging Face name or a local directory) is
      also what the setup's samplers decode token-id stops with, loaded on their first need.
    * ``training_shape``: a training shape (``accounts/<a>/trainingShapes/<s>[/versions/<v>]``);
      ``None`` lets the control plane choose one. Its deployment shape serves the deployment
      unless ``deployment_shape`` is given.
    * ``reference``: ``False`` (none), ``"same-trainer"`` (a frozen ``base_only`` model on the
      policy trainer: LoRA policies only), ``"separate"`` (a forward-only trainer of its own,
      ``reference_training_shape`` or one the control plane picks; ``reference_trainer_job_id``
      re-attaches to one) or ``True``: the SDK's rule (same trainer for a LoRA policy without a
      reference shape or job id, else separate).
    * ``deployment`` (``True``): a hot-load deployment attached to the policy trainer;
      ``deployment_id`` re-attaches to an existing one (else a fresh ``<model>-<unix time>``);
      ``replica_count``, ``hot_load_transition_type``, ``disable_speculative_decoding``,
      ``wait_for_trainer_before_deployment``.
    * ``trainer_job_id`` re-attaches to a policy trainer (resuming it if it stopped), or
      creates one with that id.
    * timeouts: ``trainer_timeout_s``, ``trainer_pending_timeout_s``, ``deployment_timeout_s``,
      ``hotload_timeout_s``, ``reattach_settle_timeout_s``, ``poll_interval_s`` (the SDK's
      defaults); ``cleanup`` (:class:`Cleanup`) and ``grace_s`` for leaving the block.
    * passed through to the trainer jobs: ``region``, ``display_name``, ``purpose``,
      ``preemptible``, ``managed_by``, ``custom_image_tag``, ``extra_args``, ``extra_values``,
      ``trainer_replica_count``, ``inactivity_timeout``, ``disable_inactivity_cleanup``,
      ``use_reservation``, ``reservation_target``, ``skip_validations``; to the deployment:
      ``deployment_extra_args``, ``deployment_extra_values``.

    Example::

        ManagedConfig("accounts/fireworks/models/qwen3-8b", lora_rank=16, reference=True,
                      cleanup=Cleanup(trainer="keep"))
    """

    base_model: str = attrs.field(validator=_text)
    tokenizer_model: str | None = attrs.field(default=None, validator=_opt_text)
    lora_rank: int = attrs.field(default=0, validator=_rank)
    lora_alpha: int | None = None
    learning_rate: float = 1e-5
    training_shape: str | None = attrs.field(default=None, validator=_opt_text)
    reference: Reference = False
    reference_training_shape: str | None = attrs.field(default=None, validator=_opt_text)
    reference_trainer_job_id: str | None = attrs.field(default=None, validator=_opt_text)
    deployment: bool = True
    deployment_shape: str | None = attrs.field(default=None, validator=_opt_text)
    trainer_job_id: str | None = attrs.field(default=None, validator=_opt_text)
    deployment_id: str | None = attrs.field(default=None, validator=_opt_text)
    max_context_length: int | None = None
    replica_count: int = 1
    hot_load_transition_type: str | None = None
    disable_speculative_decoding: bool = False
    wait_for_trainer_before_deployment: bool = False
    region: str | None = None
    display_name: str | None = None
    purpose: str | None = None
    preemptible: bool = False
    managed_by: str | None = None
    custom_image_tag: str | None = None
    extra_args: Sequence[str] | None = None
    extra_values: Mapping[str, str] | None = None
    deployment_extra_args: Sequence[str] | None = None
    deployment_extra_values: Mapping[str, str] | None = None
    trainer_replica_count: int | None = None
    inactivity_timeout: timedelta | str | None = None
    disable_inactivity_cleanup: bool = False
    use_reservation: bool = True
    reservation_target: str | None = None
    skip_validations: bool = False
    trainer_timeout_s: float = attrs.field(default=TRAINER_TIMEOUT_S, validator=_seconds)
    trainer_pending_timeout_s: float = attrs.field(
        default=TRAINER_PENDING_TIMEOUT_S, validator=_seconds
    )
    deployment_timeout_s: float = attrs.field(default=DEPLOYMENT_TIMEOUT_S, validator=_seconds)
    hotload_timeout_s: float = attrs.field(default=HOTLOAD_TIMEOUT_S, validator=_seconds)
    reattach_settle_timeout_s: float = attrs.field(
        default=REATTACH_SETTLE_TIMEOUT_S, validator=_seconds
    )
    poll_interval_s: float = attrs.field(default=POLL_INTERVAL_S, validator=_seconds)
    cleanup: Cleanup = attrs.field(factory=Cleanup)
    grace_s: float = attrs.field(default=DEFAULT_GRACE_S, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        if self.reference not in (False, True, "same-trainer", "separate"):
            raise InvalidInput(
                "reference",
                f"must be False, True, 'same-trainer' or 'separate', got {self.reference!r}",
            )
        if self.reference == "same-trainer" and self.lora_rank == 0:
            raise InvalidInput(
                "reference",
                "'same-trainer' needs a LoRA policy (lora_rank > 0): a full-parameter policy "
                "changes the base weights, so its reference must be 'separate'",
            )
        if self.reference == "same-trainer" and (
            self.reference_training_shape or self.reference_trainer_job_id
        ):
            raise InvalidInput(
                "reference_training_shape",
                "and reference_trainer_job_id name a separate trainer: use reference='separate'",
            )
        if not isinstance(self.cleanup, Cleanup):
            raise InvalidInput("cleanup", f"must be a Cleanup, got {type(self.cleanup).__name__}")
        if isinstance(self.replica_count, bool) or not isinstance(self.replica_count, int) or (
            self.replica_count < 1
        ):
            raise InvalidInput("replica_count", f"must be an int >= 1, got {self.replica_count!r}")

    @property
    def reference_mode(self) -> Literal["none", "same-trainer", "separate"]:
        """Where the reference lives, after the SDK's rule for ``reference=True``: the policy
        trainer for a LoRA policy with no reference shape or job id, else a separate trainer.

        Example::

            ManagedConfig(base_model=m, lora_rank=8, reference=True).reference_mode
            # "same-trainer"
        """
        if self.reference is False:
            return "none"
        if self.reference is True:
            shared = (
                self.lora_rank > 0
                and self.reference_training_shape is None
                and self.reference_trainer_job_id is None
            )
            return "same-trainer" if shared else "separate"
        return self.reference


class _Session(Protocol):
    """What the setup needs of a session (``ServiceSession`` is one)."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...

    async def create_training_client(
        self, base_model: str, lora_rank: int = 0, *, lora_alpha: int = 32
    ) -> TrainingClient: ...

    async def create_base_training_client(self, base_model: str) -> TrainingClient: ...


S = TypeVar("S", bound=_Session)


def _shape_to_create(requested: str | None, profile: TrainingShapeProfile | None) -> str | None:
    """The shape selector the SDK posts: an exact ``/versions/<v>`` pin stays, anything else
    becomes the parent shape (the control plane resolves its latest validated version)."""
    if requested and "/versions/" in requested:
        version = requested.rsplit("/versions/", 1)[1].strip()
        if version and version != "latest":
            return requested
    if profile is None:
        return None
    shape = profile.training_shape or profile.training_shape_version
    return shape.split("/versions/", 1)[0] if shape else None


def default_deployment_id(base_model: str, now: float | None = None) -> str:
    """The SDK's deployment id for a fresh managed deployment: ``<model>-<unix seconds>``.

    Example::

        default_deployment_id("accounts/fireworks/models/qwen3-8b", 1700000000)
        # "qwen3-8b-1700000000"
    """
    short = base_model.rstrip("/").rsplit("/", 1)[-1].lower()
    safe = "".join(ch if ch.isalnum() else "-" for ch in short).strip("-")
    return f"{safe or 'model'}-{int(time.time() if now is None else now)}"


@attrs.define
class _Trainer:
    """One trainer the setup provisions: what to create, and what came of it."""

    role: Literal["trainer", "reference"]
    job_id: str
    explicit: bool
    config: TrainerJobConfig | None = None
    created: CreatedTrainerJob | None = None
    endpoint: TrainerEndpoint | None = None


class ManagedSetup(Generic[S]):
    """A policy trainer, an optional reference and an optional deployment, owned as one.
    Made by ``ServiceSession.managed(config)``; use it as ``async with`` (once).

    After entering: ``session`` (the policy trainer's session), ``trainer_job_id``,
    ``reference_job_id`` (the separate reference trainer, or None), ``deployment_id``,
    ``deployment`` (:class:`DeploymentInfo` or None), ``sampler`` (a
    :class:`DeploymentSampler` on the deployment, or None), ``profile`` (the training shape's
    :class:`TrainingShapeProfile` or None), ``max_context_length``, ``deployment_shape``,
    ``jobs`` and ``deployments`` (the control-plane clients, for anything else).

    Example::

        async with ServiceSession.managed(ManagedConfig(base_model=m, lora_rank=8)) as setup:
            client = await setup.training_client()
            await setup.publish("step-1")
    """

    def __init__(
        self,
        config: ManagedConfig,
        open_session: Callable[[str], S],
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        inference_url: str | None = None,
        **control_plane: Any,
    ) -> None:
        if not isinstance(config, ManagedConfig):
            raise InvalidInput("config", f"must be a ManagedConfig, got {type(config).__name__}")
        self.config = config
        self._open_session = open_session
        options = dict(control_plane)
        if base_url is not None:
            options["base_url"] = base_url
        self.jobs = TrainerJobs(api_key, **options)
        self.deployments = Deployments(api_key, **options)
        self._inference_url = inference_url
        self._stack = contextlib.AsyncExitStack()
        # the reference trainer's session lives in a task of its own (in ``_holder``), so
        # release_references can close it while later-entered scopes are still open
        self._holder: anyio.abc.TaskGroup | None = None
        self._release_reference = anyio.Event()
        self._reference_closed = anyio.Event()
        self._provisioning = Provisioning(
            "managed", self._provision, self._release, grace_s=config.grace_s
        )
        self._entered = False
        self._policy = _Trainer("trainer", config.trainer_job_id or new_job_id(),
                                config.trainer_job_id is not None)
        self._reference: _Trainer | None = None
        self.profile: TrainingShapeProfile | None = None
        self.max_context_length: int | None = config.max_context_length
        self.deployment_shape: str | None = config.deployment_shape
        self.deployment_id: str | None = None
        self.deployment: DeploymentInfo | None = None
        self.reattached_deployment = False
        self._initial_sync_needed = False
        self.sampler: DeploymentSampler | None = None
        self._session: S | None = None
        self._reference_session: S | None = None
        self._client: TrainingClient | None = None
        self._reference_client: TrainingClient | None = None
        self._publisher: WeightPublisher | None = None

    def __repr__(self) -> str:
        return (
            f"ManagedSetup(trainer={self._policy.job_id!r}, reference={self.reference_job_id!r}, "
            f"deployment={self.deployment_id!r}, created={self._provisioning.created!r})"
        )

    # -- what was provisioned ------------------------------------------------------------

    @property
    def trainer_job_id(self) -> str:
        """The policy trainer's job id (chosen before anything is sent)."""
        return self._policy.job_id

    @property
    def reference_job_id(self) -> str | None:
        """The separate reference trainer's job id; None for none or a same-trainer one."""
        return None if self._reference is None else self._reference.job_id

    @property
    def tokenizer_model(self) -> str:
        """The tokenizer's model name (Hugging Face form): ``config.tokenizer_model``, else
        ``base_model`` (the SDK loads a recipe's tokenizer from it without asking the
        trainer)."""
        return self.config.tokenizer_model or self.config.base_model

    @property
    def created(self) -> list[str]:
        """What this setup created and will release on exit (per the cleanup policy)."""
        return self._provisioning.created

    @property
    def session(self) -> S:
        """The session on the policy trainer."""
        if self._session is None:
            raise UsageError("enter the managed setup (`async with`) first")
        return self._session

    async def training_client(self) -> TrainingClient:
        """The policy's training client (created during setup, as the SDK does).

        Example::

            client = await setup.training_client()
        """
        if self._client is None:
            raise UsageError("enter the managed setup (`async with`) first")
        return self._client

    async def reference_client(self) -> TrainingClient | None:
        """The frozen reference (forward only), or None if the config asks for none: a
        ``base_only`` model on the policy trainer (created on the first call) or the model on
        the separate forward-only trainer (created during setup).

        Example::

            reference = await setup.reference_client()
            ref_out = await reference.forward(batch, "cross_entropy")
        """
        mode = self.config.reference_mode
        if mode == "none":
            return None
        if self._reference_client is None:
            if mode == "separate":
                raise UsageError("the reference trainer was released (release_references)")
            self._reference_client = await self.session.create_base_training_client(
                self.config.base_model
            )
        return self._reference_client

    async def release_references(self) -> None:
        """Free the reference early: close its session and apply ``cleanup.reference`` to a
        separate reference trainer this setup created (a re-attached one is left running).
        A same-trainer reference costs nothing; the call just forgets it.

        Example::

            ref_logprobs = await precompute(await setup.reference_client())
            await setup.release_references()       # the policy trains on
        """
        self._reference_client = None
        self._release_reference.set()
        if self._reference_session is not None:
            await self._reference_closed.wait()
        self._reference_session = None
        ref = self._reference
        if ref is None:
            return
        tag = f"reference job {ref.job_id}"
        claimed = self._provisioning._claim.created
        if tag in claimed:
            with anyio.CancelScope(shield=True):
                await self._release(tag)
            claimed.remove(tag)

    async def publish(self, name: str, *, base: bool = False) -> PublishedVersion:
        """Save the policy's weights as ``name`` and hot-load them onto the deployment
        (:class:`WeightPublisher`: a base first, deltas after).

        Example::

            version = await setup.publish("step-10")
        """
        version = await (await self._weight_publisher("publish")).publish(name, base=base)
        self._initial_sync_needed = False
        return version

    async def hotload_sampler_snapshot(self, model_path: SamplerSnapshot | str) -> PublishedVersion:
        """Hot-load a sampler snapshot the policy saved onto the deployment and wait until it
        serves it: the SDK's ``hotload_sampler_snapshot(model_path)``. ``model_path`` is what
        ``save_weights_for_sampler`` returned (``saved.path``) or the ``SamplerSnapshot`` of
        ``save_weights_for_sampler_ext`` (its ``path`` is sent). The hot-load names it as
        given; a delta is chained on the snapshot the deployment serves (the policy client
        remembers each snapshot's type; a path it did not save loads as a base, as the SDK
        does). One mechanism with :meth:`publish` (the setup's :class:`WeightPublisher`, in
        call order); ``HotloadFailed`` where the SDK raises ``RuntimeError``.

        Example::

            saved = await client.save_weights_for_sampler("step-5")
            await setup.hotload_sampler_snapshot(saved.path)
        """
        publisher = await self._weight_publisher("hotload_sampler_snapshot")
        assert self._client is not None
        if isinstance(model_path, SamplerSnapshot):
            snapshot, identity = model_path, model_path.path
        elif isinstance(model_path, str) and model_path:
            kind = self._client.saved_snapshot_type(model_path) or "base"
            snapshot, identity = SamplerSnapshot(model_path, model_path, kind), model_path
        else:
            raise InvalidInput("model_path", f"must be a saved snapshot's path, got {model_path!r}")
        version = await publisher.hotload(snapshot, identity=identity)
        self._initial_sync_needed = False
        return version

    async def create_deployment_sampler(
        self,
        model_path: SamplerSnapshot | str | None = None,
        *,
        concurrency: ConcurrencyController | int | None = None,
        tokenizer: Any = None,
    ) -> DeploymentSampler:
        """A :class:`DeploymentSampler` on the setup's deployment, after hot-loading
        ``model_path`` when given (:meth:`hotload_sampler_snapshot`): the SDK's
        ``create_deployment_sampler``. Each call makes a new sampler (its own connections and
        ``concurrency`` controller); the setup closes it on exit, or close it sooner with
        ``async with``/``aclose()``. ``setup.sampler`` is the one the setup made already.
        ``tokenizer`` decodes token-id stops; without one, a config with ``tokenizer_model``
        gives every sampler of the setup the policy client's ``get_tokenizer(tokenizer_model)``
        (loaded once, in a worker thread, the first time a sampler needs it).

        Example::

            saved = await client.save_weights_for_sampler("step-5")
            sampler = await setup.create_deployment_sampler(saved.path, concurrency=32)
            rollouts = await sampler.sample(prompt_tokens, n=8, max_tokens=64)
        """
        if self.deployment is None or self._client is None:
            raise UsageError("create_deployment_sampler needs an entered managed setup with "
                             "a deployment")
        if model_path is not None:
            await self.hotload_sampler_snapshot(model_path)
        sampler = DeploymentSampler(
            self._inference_url or self.deployments.base_url,
            self.deployment.inference_model,
            self.jobs.api_key or "",
            concurrency=concurrency,
            allow_insecure_http=self.jobs._rest.allow_insecure_http,
            tokenizer=tokenizer,
            load_tokenizer=self._tokenizer_loader(),
        )
        self._stack.push_async_callback(sampler.aclose)
        return sampler

    def _tokenizer_loader(self) -> Callable[[], Awaitable[Any]] | None:
        """What the setup's samplers load their tokenizer with: the policy client's
        ``get_tokenizer(config.tokenizer_model)`` (cached by the client, so a recipe's own call
        and every sampler share one load); None without a ``tokenizer_model``."""
        name = self.config.tokenizer_model
        if name is None:
            return None

        async def load() -> Any:
            return await (await self.training_client()).get_tokenizer(name)

        return load

    def requires_initial_sampler_sync(self) -> bool:
        """Whether the deployment was re-attached to this setup's trainer and serves none of
        its snapshots yet: hot-load (or publish) a base before the first rollout, as the SDK's
        ``requires_initial_sampler_sync()`` tells recipes.

        Example::

            if setup.requires_initial_sampler_sync():
                await setup.publish("initial", base=True)
        """
        return self._initial_sync_needed

    async def _weight_publisher(self, what: str) -> WeightPublisher:
        if self.deployment_id is None or self._client is None:
            raise UsageError(f"{what} needs an entered managed setup with a deployment")
        if self._publisher is None:
            base_model = (self.deployment.base_model if self.deployment else None) or (
                self.config.base_model
            )
            publisher = WeightPublisher(
                self._client, self.deployments, self.deployment_id, base_model=base_model,
                hotload_timeout_s=self.config.hotload_timeout_s,
            )
            self._publisher = await publisher.__aenter__()  # closed first by __aexit__
        return self._publisher

    # -- lifetime ------------------------------------------------------------------------

    async def __aenter__(self) -> ManagedSetup[S]:
        if self._entered:
            raise UsageError("a ManagedSetup can be entered only once")
        self._entered = True
        try:
            await self._stack.enter_async_context(self.jobs)
            await self._stack.enter_async_context(self.deployments)
            # registered before provisioning: the REST clients are closed after the release
            await self._stack.enter_async_context(self._provisioning)
            await self._open_clients()
        except BaseException as exc:
            await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:  # an error abandons hot-loads in flight; else they finish
            if exc is not None and publisher._tg is not None:
                publisher._tg.cancel_scope.cancel()
            await publisher.__aexit__(None, None, None)
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _open_clients(self) -> None:
        """Sessions on the trainers, and their models (concurrently, as the SDK makes them)."""
        config = self.config
        assert self._policy.endpoint is not None
        self._session = await self._stack.enter_async_context(
            _entered(self._open_session(self._policy.endpoint.base_url))
        )
        if self.deployment is not None:
            self.sampler = await self._stack.enter_async_context(
                DeploymentSampler(
                    self._inference_url or self.deployments.base_url,
                    self.deployment.inference_model,
                    self.jobs.api_key or "",  # the control plane's key ("" : none)
                    allow_insecure_http=self.jobs._rest.allow_insecure_http,
                    load_tokenizer=self._tokenizer_loader(),
                )
            )
        if self._reference is not None:
            assert self._reference.endpoint is not None
            holder = anyio.create_task_group()
            await holder.__aenter__()
            self._holder = holder
            self._stack.push_async_exit(self._close_holder)
            self._reference_session = await holder.start(
                self._hold_reference, self._reference.endpoint.base_url
            )

        async def policy() -> None:
            alpha = (config.lora_alpha or 32) if config.lora_rank > 0 else 32
            self._client = await self.session.create_training_client(
                config.base_model, config.lora_rank, lora_alpha=alpha
            )

        async def reference() -> None:
            assert self._reference_session is not None
            self._reference_client = await self._reference_session.create_training_client(
                config.base_model, self._reference_lora_rank()
            )

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy)
                if self._reference_session is not None:
                    tg.start_soon(reference)
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _hold_reference(
        self, url: str, *, task_status: anyio.abc.TaskStatus[S] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            async with self._open_session(url) as session:
                task_status.started(session)
                await self._release_reference.wait()
        finally:
            self._reference_closed.set()

    async def _close_holder(self, *_exc: object) -> None:
        holder, self._holder = self._holder, None
        self._release_reference.set()
        if holder is not None:
            await holder.__aexit__(None, None, None)

    def _reference_lora_rank(self) -> int:
        # the SDK's legacy path: an explicit reference shape for a LoRA policy loads an adapter
        if self.config.reference_training_shape and self.config.lora_rank > 0:
            return self.config.lora_rank
        return 0

    # -- provisioning (Provisioning runs it; what it claims is released on exit/error) -----

    async def _provision(self, claim: Claim) -> None:
        config = self.config
        if config.training_shape:
            self.profile = await self.jobs.resolve_training_profile(config.training_shape)
            if self.max_context_length is None:
                self.max_context_length = self.profile.max_supported_context_length or None
        reference_profile = None
        if config.reference_mode == "separate":
            self._reference = _Trainer(
                "reference", config.reference_trainer_job_id or new_job_id(),
                config.reference_trainer_job_id is not None,
            )
            if config.reference_training_shape:
                reference_profile = await self._check_reference_shape()
        if self.deployment_shape is None and self.profile is not None:
            self.deployment_shape = self.profile.deployment_shape
        if config.deployment and config.deployment_id is None and not self.deployment_shape:
            raise InvalidInput(  # checked before anything is created (the SDK: after)
                "deployment_shape",
                "is required to create a deployment (give it, or a training_shape whose shape "
                "names one)",
            )
        await self._start(self._policy, self._job_config(self.profile), claim)
        policy_ready = anyio.Event()

        async def policy() -> None:
            await self._wait(self._policy)
            policy_ready.set()

        async def reference() -> None:
            assert self._reference is not None
            await self._start(self._reference, self._job_config(reference_profile, True), claim)
            await self._wait(self._reference)

        async def deployment() -> None:
            if config.wait_for_trainer_before_deployment:
                await policy_ready.wait()
            await self._attach_deployment(claim)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(policy)
                if self._reference is not None:
                    tg.start_soon(reference)
                if config.deployment:
                    tg.start_soon(deployment)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        assert self._policy.endpoint is not None
        if self.max_context_length is None:
            self.max_context_length = self._policy.endpoint.max_context_length

    async def _check_reference_shape(self) -> TrainingShapeProfile:
        """The SDK's rule: a rank-0 reference runs on a LORA_TRAINER or FORWARD_ONLY shape, a
        LoRA one on a LORA_TRAINER shape; anything else is refused before the policy exists."""
        shape = self.config.reference_training_shape
        assert shape is not None
        profile = await self.jobs.resolve_training_profile(shape)
        allowed = {_LORA_TRAINER} if self._reference_lora_rank() else {_LORA_TRAINER, _FORWARD_ONLY}
        mode = profile.trainer_mode or "POLICY_TRAINER"
        if mode not in allowed:
            raise InvalidInput(
                "reference_training_shape",
                f"{shape!r} is a {mode} shape; a reference needs one of {sorted(allowed)}",
            )
        return profile

    def _job_config(
        self, profile: TrainingShapeProfile | None, reference: bool = False
    ) -> TrainerJobConfig:
        config = self.config
        trainer = self._reference if reference else self._policy
        assert trainer is not None
        requested = config.reference_training_shape if reference else config.training_shape
        shape = _shape_to_create(requested, profile)
        context = config.max_context_length
        if context is None and profile is not None:
            context = profile.max_supported_context_length or None
        return TrainerJobConfig(
            base_model=config.base_model,
            lora_rank=self._reference_lora_rank() if reference else config.lora_rank,
            max_context_length=context,
            learning_rate=config.learning_rate,
            trainer_replica_count=None if reference else config.trainer_replica_count,
            display_name=config.display_name,
            region=config.region,
            custom_image_tag=config.custom_image_tag,
            extra_args=config.extra_args,
            extra_values=config.extra_values,
            training_shape_ref=shape,
            auto_select_training_shape=shape is None,
            skip_validations=config.skip_validations,
            purpose=config.purpose,
            preemptible=config.preemptible,
            use_reservation=config.use_reservation,
            reservation_target=config.reservation_target,
            managed_by=config.managed_by,
            forward_only=reference,
            inactivity_timeout=config.inactivity_timeout,
            disable_inactivity_cleanup=config.disable_inactivity_cleanup,
            requested_job_id=trainer.job_id,
        )

    async def _start(self, trainer: _Trainer, job: TrainerJobConfig, claim: Claim) -> None:
        """Re-attach to an existing job given by id, or create it (claimed for release)."""
        if trainer.explicit and await self.jobs.try_get(trainer.job_id) is not None:
            logger.info("re-attaching to %s job %s", trainer.role, trainer.job_id)
            trainer.created = CreatedTrainerJob(trainer.job_id, await self.jobs.job_name(
                trainer.job_id))
            return
        keep = (self.config.cleanup.reference if trainer.role == "reference"
                else self.config.cleanup.trainer) == "keep"
        if not keep:  # before sending: a lost reply may still have created it
            claim.own(f"{trainer.role} job {trainer.job_id}")
        trainer.created = await self.jobs.create(job)

    async def _wait(self, trainer: _Trainer) -> None:
        """The SDK's wait: resume a job that stopped, else poll until it is ready."""
        config = self.config
        job_id = trainer.job_id
        existing = await self.jobs.try_get(job_id)
        if existing is not None and existing.state in JobState.RESUMABLE:
            logger.info("resuming %s job %s from %s", trainer.role, job_id, existing.state)
            trainer.endpoint = await self.jobs.resume_and_wait(
                job_id, poll_interval_s=config.poll_interval_s, timeout_s=config.trainer_timeout_s,
                pending_timeout_s=config.trainer_pending_timeout_s,
            )
            return
        trainer.endpoint = await self.jobs.wait_for_ready(
            job_id, poll_interval_s=config.poll_interval_s, timeout_s=config.trainer_timeout_s,
            pending_timeout_s=config.trainer_pending_timeout_s,
        )

    async def _attach_deployment(self, claim: Claim) -> None:
        config = self.config
        assert self._policy.created is not None
        job_name = self._policy.created.job_name
        deployment_id = config.deployment_id or default_deployment_id(config.base_model)
        self.deployment_id = deployment_id
        deployments = self.deployments
        existing = await deployments.get(deployment_id) if config.deployment_id else None
        if existing is not None and existing.state not in _DEPLOYMENT_GONE:
            self.deployment = await self._reattach(existing, job_name)
            return
        if not self.deployment_shape:
            raise InvalidInput(
                "deployment_shape",
                "is required to create a deployment (give it, or a training_shape whose shape "
                "names one)",
            )
        deployment_config = DeploymentConfig(
            deployment_id, config.base_model, region=config.region,
            deployment_shape=self.deployment_shape, min_replica_count=config.replica_count,
            max_replica_count=config.replica_count, hot_load_trainer_job=job_name,
            hot_load_transition_type=config.hot_load_transition_type, for_training=True,
            disable_speculative_decoding=config.disable_speculative_decoding,
            extra_args=config.deployment_extra_args, extra_values=config.deployment_extra_values,
            preemptible=config.preemptible,
        )
        if config.cleanup.deployment != "keep":
            claim.own(f"deployment {deployment_id}")
        info = await deployments.create_or_get(deployment_config, keep=True)
        if info.state not in _DEPLOYMENT_SERVING:
            info = await deployments.wait_for_ready(
                deployment_id, timeout_s=config.deployment_timeout_s,
                poll_interval_s=config.poll_interval_s,
            )
        self.deployment = info

    async def _reattach(self, existing: DeploymentInfo, job_name: str) -> DeploymentInfo:
        """Point an existing deployment at the policy trainer (the SDK's managed re-attach:
        refuse another shape, then ``Deployments.reattach_trainer``)."""
        config = self.config
        wanted, serving = self.deployment_shape, existing.deployment_shape
        if wanted and serving and wanted.split("/versions/")[0] != serving.split("/versions/")[0]:
            raise InvalidInput(
                "deployment_shape",
                f"deployment {existing.deployment_id!r} serves {serving!r}, not {wanted!r}: "
                "delete it or ask for its shape",
            )
        transition = config.hot_load_transition_type
        self.reattached_deployment = self._initial_sync_needed = (
            existing.hot_load_trainer_job != job_name
            or bool(transition and _serving_transition(existing.hot_load_transition_type)
                    != transition.upper())
        )
        timeout = (config.reattach_settle_timeout_s if existing.state in _DEPLOYMENT_SERVING
                   else config.deployment_timeout_s)
        return await self.deployments.reattach_trainer(
            existing, base_model=config.base_model, trainer_job_name=job_name,
            timeout_s=timeout, poll_interval_s=config.poll_interval_s,
            hot_load_transition_type=transition,
        )

    async def _release(self, tag: str) -> None:
        kind, _, resource_id = tag.rpartition(" ")
        if kind.endswith("job"):
            try:
                await self.jobs.delete(resource_id)
            except APIStatusError as exc:
                if exc.status_code != 404:
                    raise
        elif self.config.cleanup.deployment == "scale_to_zero":
            if await self.deployments.get(resource_id) is not None:
                await self.deployments.scale_to_zero(resource_id)
        else:
            await self.deployments.delete(resource_id)


@contextlib.asynccontextmanager
async def _entered(session: S) -> AsyncIterator[S]:
    async with session:
        yield session
