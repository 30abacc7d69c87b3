"""Publishing weights as a policy version, and the sampler each version is read through.

The RL pipeline knows two small protocols and nothing else about where rollouts are sampled:

* :class:`Publisher` turns the trainer's current weights into policy version ``n`` and hands
  back the sampler that serves them (``await publisher.publish(n) -> sampler``);
* the sampler itself is whatever the user's rollout function expects (a
  :class:`~firetitan_async.SamplingClient`, or a deployment's sampler).

:class:`TrainerPolicy` is the implementation that samples from the trainer itself: a sampler
snapshot (``base`` first and every ``base_every`` versions, ``delta`` in between) and a
sampling client on it. ``TrainerPolicy.handles()`` publishes :class:`TrainerSamplerHandle`
values instead: picklable, carrying no API key, from which another process (a Ray worker)
rebuilds its own sampling client. :class:`~firetitan_async.loops.DeploymentPolicy` publishes
to an inference deployment instead (hot-load, then sample from its completions API).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeVar

import attrs

from .._clients._sampling import SamplingClient
from .._clients._snapshots import SamplerSnapshot
from .._clients._training import TrainingClient
from .._session._pending import Pending
from .._session._session import ServiceSession, client_side
from ..errors import InvalidInput

__all__ = ["Publisher", "SamplerHandle", "TrainerPolicy", "TrainerSamplerHandle"]

S_co = TypeVar("S_co", covariant=True)


class Publisher(Protocol[S_co]):
    """Publishes the trainer's current weights as policy ``version``; returns its sampler.

    ``publish`` is called by the pipeline right after a step's ``optim_step``; since
    operations run in call order, whatever it saves holds that step's weights. What it
    returns resolves once the new version can be sampled.

    Two shapes are accepted. A plain method that submits its save *before returning* (like
    every operation of this library, which returns a ``Pending`` at once) and returns an
    awaitable of the sampler: the pipeline keeps training while the publication completes.
    Or an ``async def publish``: it only runs when awaited, so the pipeline awaits it before
    the next step's update.

    Example (a deployment, with ``WeightPublisher``/``DeploymentSampler``)::

        class DeploymentPolicy:
            def publish(self, version: int) -> Awaitable[DeploymentSampler]:
                published = weight_publisher.publish(f"v{version:05d}")  # save submitted
                async def served() -> DeploymentSampler:
                    await published                                    # hot-loaded, served
                    return deployment_sampler
                return served()
    """

    def publish(self, version: int) -> Awaitable[S_co]: ...


class SamplerHandle(Protocol[S_co]):
    """A picklable pointer to one policy version's sampler, for another process.

    It carries no credentials. The other process opens ``session()`` once (an async context
    manager that finds its API key in the environment) and rebuilds the sampler of each
    new version with ``await handle.sampler(session)``. :class:`TrainerSamplerHandle`
    points at a trainer's sampler snapshot; a deployment's handle would open the
    deployment's sampler instead.
    """

    @property
    def version(self) -> int: ...

    def session(self) -> AbstractAsyncContextManager[Any]: ...

    async def sampler(self, session: Any) -> S_co: ...


@attrs.frozen
class TrainerSamplerHandle:
    """A picklable pointer to one policy version's sampler snapshot on a trainer.

    It holds the trainer URL and the snapshot path, never an API key: a worker rebuilds its
    sampling client with its own :class:`~firetitan_async.ServiceSession`, which reads the
    key from its environment (``FIREWORKS_API_KEY`` or ``TINKER_API_KEY``).

    Example (in a worker process)::

        async with handle.session() as session:
            sampler = await handle.sampler(session)
    """

    base_url: str
    model_path: str
    version: int
    #: The base model, for clients that need it to parse replies.
    base_model: str | None = None
    allow_insecure_http: bool = False
    #: The publishing session's dialect (how the worker's session samples the snapshot).
    dialect: Literal["auto", "fireworks", "tinker"] = "auto"

    def encode(self) -> str:
        """A pickle-free text form (URL-safe base64 of JSON), like the Fireworks SDK's
        ``get_sampler_handle()``; :meth:`decode` reads it back.

        Example::

            text = handle.encode()
            assert TrainerSamplerHandle.decode(text) == handle
        """
        payload = json.dumps(attrs.asdict(self), separators=(",", ":"))
        return base64.urlsafe_b64encode(payload.encode()).decode()

    @classmethod
    def decode(cls, text: str) -> TrainerSamplerHandle:
        """The handle :meth:`encode` wrote; ``InvalidInput`` if ``text`` is not one."""
        try:
            return cls(**json.loads(base64.urlsafe_b64decode(text.encode())))
        except (ValueError, TypeError, AttributeError) as exc:  # AttributeError: not a str
            raise InvalidInput("handle", f"is not an encoded TrainerSamplerHandle: {exc}") from None

    def session(self) -> ServiceSession:
        """A new (not yet entered) session to this trainer; the key comes from the env."""
        return ServiceSession(
            self.base_url, allow_insecure_http=self.allow_insecure_http, dialect=self.dialect
        )

    async def sampler(self, session: ServiceSession) -> SamplingClient:
        """A sampling client on this version's snapshot, through ``session``."""
        return await session.create_sampling_client(model_path=self.model_path)


class TrainerPolicy:
    """Publishes policy versions as sampler snapshots of the trainer, sampled by the trainer.

    The session must be able to sample a snapshot (``create_sampling_client``): a tinker
    dialect session, a Fireworks serverless session (its completions endpoint), or the session
    of a ``ServiceSession.managed`` setup with a deployment. A dedicated Fireworks trainer has
    no sampler of its own: publish to a deployment with ``DeploymentPolicy`` there (on such
    a session the constructor raises ``UsageError``, before anything is saved).

    Version ``n`` is saved as ``{prefix}-{n:06d}``: a ``base`` snapshot for version 0 and
    every ``base_every`` versions, a ``delta`` otherwise (``base_every=1``: always ``base``).

    Example::

        publisher = TrainerPolicy(session, client)
        sampler = await publisher.publish(0)           # a SamplingClient on the weights now
        handles = publisher.handles()                  # the same, as picklable handles
    """

    def __init__(
        self,
        session: ServiceSession,
        client: TrainingClient,
        *,
        prefix: str = "policy",
        base_every: int = 10,
    ) -> None:
        if base_every < 1:
            raise InvalidInput("base_every", f"must be >= 1, got {base_every!r}")
        client_side(session).check_samples_snapshots()  # not at the first publish, once saved
        self._session = session
        self._client = client
        self._prefix = prefix
        self._base_every = base_every
        self._published = 0
        #: The snapshot of the latest version published.
        self.last_snapshot: SamplerSnapshot | None = None

    def _save(self, version: int) -> Pending[SamplerSnapshot]:
        kind: Literal["base", "delta"] = (
            "base" if self._published == 0 or version % self._base_every == 0 else "delta"
        )
        self._published += 1
        return self._client.save_weights_for_sampler_ext(
            f"{self._prefix}-{version:06d}", checkpoint_type=kind
        )

    async def _saved(self, saving: Pending[SamplerSnapshot]) -> str:
        snapshot = await saving
        self.last_snapshot = snapshot
        return snapshot.path

    def publish(self, version: int) -> Awaitable[SamplingClient]:
        """Submit a snapshot of the weights as ``version`` now; the awaitable gives a
        sampling client on it."""
        saving = self._save(version)

        async def sampler() -> SamplingClient:
            path = await self._saved(saving)
            return await self._session.create_sampling_client(model_path=path)

        return sampler()

    def publish_handle(self, version: int) -> Awaitable[TrainerSamplerHandle]:
        """Submit a snapshot of the weights as ``version`` now; the awaitable gives a
        picklable handle to it."""
        saving = self._save(version)
        return self._handle(version, saving)

    async def _handle(self, version: int, saving: Pending[SamplerSnapshot]) -> TrainerSamplerHandle:
        path = await self._saved(saving)
        base_url = self._session.base_url
        if base_url is None:
            raise InvalidInput("session", "the session has no trainer URL yet (not ready)")
        return TrainerSamplerHandle(
            base_url=base_url,
            model_path=path,
            version=version,
            base_model=self._client.base_model,
            allow_insecure_http=base_url.startswith("http://"),
            dialect=self._session.dialect,
        )

    def handles(self) -> _HandlePublisher:
        """This publisher, publishing :class:`TrainerSamplerHandle` values (for Ray workers)."""
        return _HandlePublisher(self)


class _HandlePublisher:
    def __init__(self, inner: TrainerPolicy) -> None:
        self._inner = inner

    def publish(self, version: int) -> Awaitable[TrainerSamplerHandle]:
        return self._inner.publish_handle(version)
