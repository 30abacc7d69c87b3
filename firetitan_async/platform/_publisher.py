"""``WeightPublisher``: save sampler snapshots and hot-load them onto a deployment, in order.

The async twin of the Fireworks SDK's ``WeightSyncer.save_and_hotload``. ``publish(name)``

1. submits ``save_weights_for_sampler_ext(name, checkpoint_type=...)`` at once, so the
   snapshot takes its place among the client's operations like any other (the weights are
   those after every operation called before it);
2. in the publisher's own task group: waits for the save, hot-loads the snapshot (a base
   without metadata, a delta chained on the identity the deployment serves), waits until the
   deployment serves it, and completes the returned ``Pending`` with a ``PublishedVersion``.

So ``await publisher.publish(name)`` publishes and waits, while ``publisher.publish(name)``
alone lets training go on during the hot-load. Hot-loads run one at a time in call order.
The chain: the first snapshot is a base, then deltas; a new base every ``base_every`` deltas
or when asked (``publish(name, base=True)``). A failed hot-load (or save) resets the chain,
so the next publication saves a base.

Example::

    async with WeightPublisher(client, deployments, "rollouts", base_model=MODEL) as pub:
        for step in range(10):
            await client.forward_backward(batch, "cross_entropy")
            await client.optim_step(adam)
            version = await pub.publish(f"step-{step}")
            print(version.number, version.snapshot, version.checkpoint_type, version.hotload_s)
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import TracebackType
from typing import Literal, Protocol

import anyio
import anyio.abc
import attrs

from .._clients._snapshots import SamplerSnapshot
from .._session._pending import Pending, fail_pending, resolve_pending
from ..errors import FiretitanError, InvalidInput, SessionClosed
from ._deployments import Deployments

__all__ = ["PublishedVersion", "SnapshotSaver", "WeightPublisher"]

logger = logging.getLogger("firetitan_async.platform.publisher")


class SnapshotSaver(Protocol):
    """What the publisher needs from a training client."""

    def save_weights_for_sampler_ext(
        self,
        name: str,
        *,
        checkpoint_type: Literal["base", "delta"] = "base",
        ttl_seconds: int | None = None,
    ) -> Pending[SamplerSnapshot]: ...


@attrs.frozen
class PublishedVersion:
    """One publication served by the deployment.

    ``number`` counts publications from 1 (in call order); ``snapshot`` is the identity the
    deployment serves (completions report it as their ``policy_version``); ``path`` the
    ``tinker://`` path; ``previous`` the identity a delta was chained on. Timings in seconds:
    ``save_s`` (the save, from submission), ``hotload_s`` (request and wait), ``total_s``.
    """

    number: int
    name: str
    snapshot: str
    path: str
    checkpoint_type: Literal["base", "delta"]
    previous: str | None
    save_s: float
    hotload_s: float
    total_s: float


class WeightPublisher:
    """Publishes a training client's weights to a deployment (see the module docstring).

    Use it as ``async with``: its task group carries the hot-loads.
    """

    def __init__(
        self,
        training_client: SnapshotSaver,
        deployments: Deployments,
        deployment_id: str,
        *,
        base_model: str,
        base_every: int | None = None,
        hotload_timeout_s: float = 600.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        if base_every is not None and (
            isinstance(base_every, bool) or not isinstance(base_every, int) or base_every < 1
        ):
            raise InvalidInput("base_every", f"must be None or an integer >= 1, got {base_every!r}")
        if not base_model:
            raise InvalidInput("base_model", "is required")
        self._client = training_client
        self._deployments = deployments
        self.deployment_id = deployment_id
        self.base_model = base_model
        self.base_every = base_every
        self._timeout_s = hotload_timeout_s
        self._poll_s = poll_interval_s
        self._need_base = True
        self._deltas_since_base = 0
        self._count = 0
        self._serving: str | None = None
        self._chain_broken = False
        self._previous: Pending[PublishedVersion] | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return (
            f"WeightPublisher({self.deployment_id!r}, published={self._count}, "
            f"serving={self._serving!r})"
        )

    @property
    def serving(self) -> str | None:
        """The identity the deployment serves after the last successful publication."""
        return self._serving

    async def __aenter__(self) -> WeightPublisher:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        return await tg.__aexit__(exc_type, exc, tb)

    def reset_chain(self) -> None:
        """Make the next publication a base (e.g. after re-attaching the deployment)."""
        self._need_base = True

    def publish(self, name: str, *, base: bool = False) -> Pending[PublishedVersion]:
        """Submit the save of ``name`` now; hot-load it in the background. Await the result
        for the ``PublishedVersion`` (or the error: ``HotloadFailed``, the save's error).

        Example::

            version = await publisher.publish("step-7")
        """
        if self._tg is None:
            raise SessionClosed("use the WeightPublisher in `async with` before publishing")
        as_base = base or self._need_base or (
            self.base_every is not None and self._deltas_since_base >= self.base_every
        )
        kind: Literal["base", "delta"] = "base" if as_base else "delta"
        submitted = time.monotonic()
        saving = self._client.save_weights_for_sampler_ext(name, checkpoint_type=kind)
        return self._start(name, kind, saving, None, submitted)

    def hotload(
        self, snapshot: SamplerSnapshot, *, identity: str | None = None
    ) -> Pending[PublishedVersion]:
        """Hot-load a snapshot saved already (``save_weights_for_sampler_ext``), in call order
        with the publications: a ``delta`` is chained on what the deployment serves, a base
        (or ``merged_base``) is loaded as it is. ``identity`` is what the hot-load names
        (default: ``snapshot.snapshot_name``; the Fireworks SDK's
        ``hotload_sampler_snapshot`` sends the saved ``path``). The version's ``save_s`` is 0.

        Example::

            snap = await client.save_weights_for_sampler_ext("step-3")
            version = await publisher.hotload(snap)
        """
        if self._tg is None:
            raise SessionClosed("use the WeightPublisher in `async with` before hot-loading")
        if not isinstance(snapshot, SamplerSnapshot):
            raise InvalidInput("snapshot", f"must be a SamplerSnapshot, got {snapshot!r:.80}")
        kind: Literal["base", "delta"] = (
            "delta" if snapshot.checkpoint_type == "delta" else "base"
        )
        return self._start(snapshot.snapshot_name, kind, snapshot, identity, time.monotonic())

    def _start(
        self,
        name: str,
        kind: Literal["base", "delta"],
        saving: Pending[SamplerSnapshot] | SamplerSnapshot,
        identity: str | None,
        submitted: float,
    ) -> Pending[PublishedVersion]:
        assert self._tg is not None
        if kind == "base":
            self._need_base, self._deltas_since_base = False, 0
        else:
            self._deltas_since_base += 1
        self._count += 1
        result: Pending[PublishedVersion] = Pending(f"publish {name}")
        previous, self._previous = self._previous, result
        self._tg.start_soon(
            self._run, self._count, name, kind, saving, identity, previous, result, submitted
        )
        return result

    async def _run(
        self,
        number: int,
        name: str,
        kind: Literal["base", "delta"],
        saving: Pending[SamplerSnapshot] | SamplerSnapshot,
        identity: str | None,
        previous: Pending[PublishedVersion] | None,
        result: Pending[PublishedVersion],
        submitted: float,
    ) -> None:
        try:
            snap = saving if isinstance(saving, SamplerSnapshot) else await saving
            saved = time.monotonic()
            identity = identity or snap.snapshot_name
            if previous is not None:  # hot-loads go one at a time, in call order
                with contextlib.suppress(Exception):
                    await previous
            chained_on = self._serving if kind == "delta" else None
            if kind == "delta" and (chained_on is None or self._chain_broken):
                raise FiretitanError(
                    f"cannot hot-load delta {identity!r}: the deployment serves no "
                    "snapshot of this chain (an earlier publication failed); the next "
                    "publication will be a base"
                )
            await self._deployments.hotload(
                self.deployment_id, base_model=self.base_model, snapshot=identity,
                previous=chained_on,
            )
            await self._deployments.wait_for_hotload(
                self.deployment_id, base_model=self.base_model, snapshot=identity,
                timeout_s=self._timeout_s, poll_interval_s=self._poll_s,
            )
        except Exception as exc:
            self._need_base = self._chain_broken = True
            logger.warning("publication %d (%s) failed: %s", number, name, exc)
            fail_pending(result, exc)
            return
        done = time.monotonic()
        self._serving = identity
        if kind == "base":
            self._chain_broken = False
        resolve_pending(result,
            PublishedVersion(
                number=number, name=name, snapshot=identity, path=snap.path,
                checkpoint_type=kind, previous=chained_on, save_s=saved - submitted,
                hotload_s=done - saved, total_s=done - submitted,
            )
        )
