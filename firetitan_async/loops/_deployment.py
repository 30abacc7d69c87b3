"""Publishing policy versions to an inference deployment, and sampling rollouts from it.

The Fireworks shape of :func:`~firetitan_async.loops.run_rl`: version ``n`` is saved as
``{prefix}-{n:06d}`` and hot-loaded with a :class:`~firetitan_async.WeightPublisher` (a base,
then deltas), and rollouts call the deployment's completions API through a
:class:`~firetitan_async.DeploymentSampler`. A deployment serves one snapshot at a time, the
latest hot-loaded: a rollout started under version ``v`` may be served by a newer one, never an
older one. Each completion says which snapshot served it (``policy_version``, the identity);
:meth:`DeploymentPolicySampler.version_of` turns that into the loop's version number, so
staleness is measured by what actually served the tokens.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from typing import Unpack

from .._clients._deployment_sampler import DeploymentSampler, SampledCompletion
from ..errors import InvalidInput
from ..platform._publisher import PublishedVersion, WeightPublisher
from ..wire.completions import CompletionOptions

__all__ = ["DeploymentPolicy", "DeploymentPolicySampler"]


class DeploymentPolicy:
    """A :class:`~firetitan_async.loops.Publisher` that hot-loads each version into a deployment.

    ``publish(n)`` submits the save of version ``n`` at once (so it holds the weights after
    every operation called before it) and returns an awaitable that resolves, once the
    deployment serves that snapshot, to a :class:`DeploymentPolicySampler`. ``publish`` is a
    plain method, so :func:`run_rl` trains on while the hot-load completes. A publication that
    fails (``HotloadFailed``, the save's error) fails the run with that error.

    Example::

        async with (
            WeightPublisher(client, deployments, "rollouts", base_model=MODEL) as weights,
            DeploymentSampler(deployments.inference_url,
                              await deployments.model("rollouts")) as completions,
        ):
            policy = DeploymentPolicy(weights, completions)
            result = await run_rl(client, policy, prompts, rollout, to_datums, ...)
            policy.published[1].checkpoint_type          # "delta"
    """

    def __init__(
        self, publisher: WeightPublisher, sampler: DeploymentSampler, *, prefix: str = "policy"
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix):
            raise InvalidInput("prefix", f"must be letters, digits, _ . or -, got {prefix!r}")
        self.publisher = publisher
        self.sampler = sampler
        self.prefix = prefix
        self._name = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})(?:-|$)")
        #: Every publication served so far, by version.
        self.published: dict[int, PublishedVersion] = {}

    def publish(self, version: int) -> Awaitable[DeploymentPolicySampler]:
        """Submit the save of ``version`` now; the awaitable resolves once it is served."""
        pending = self.publisher.publish(f"{self.prefix}-{version:06d}")

        async def served() -> DeploymentPolicySampler:
            self.published[version] = await pending
            return DeploymentPolicySampler(self, version)

        return served()

    def version_of(self, completion: SampledCompletion) -> int | None:
        """The policy version whose snapshot served ``completion``, read from its
        ``policy_version`` (the ``fireworks-snapshot-identity`` reply header). None: not one of
        this policy's snapshots (e.g. the base weights before the first publication), or a
        deployment that does not name the snapshot; then the version the rollout started
        under (``sampler.version``) is the bound you have."""
        match = self._name.match(completion.policy_version or "")
        return int(match.group(1)) if match else None


class DeploymentPolicySampler:
    """The sampler :class:`DeploymentPolicy` publishes: the deployment's completions, tagged.

    ``version`` is the version published when this sampler was handed out; the deployment may
    already serve a newer one, which ``version_of`` reports per completion.

    Example::

        async def rollout(sampler: DeploymentPolicySampler, prompt: list[int]) -> list[...]:
            completions = await sampler.sample(prompt, n=8, max_tokens=16, logprobs=True)
            served = [sampler.version_of(c) for c in completions]   # >= sampler.version
    """

    def __init__(self, policy: DeploymentPolicy, version: int) -> None:
        self.policy = policy
        self.version = version

    def __repr__(self) -> str:
        return f"DeploymentPolicySampler({self.policy.sampler.model!r}, version={self.version})"

    async def sample(
        self,
        prompt_tokens: Sequence[int],
        *,
        n: int = 1,
        **options: Unpack[CompletionOptions],
    ) -> list[SampledCompletion]:
        """:meth:`DeploymentSampler.sample <firetitan_async.DeploymentSampler.sample>` on the
        policy's deployment."""
        return await self.policy.sampler.sample(prompt_tokens, n=n, **options)

    def version_of(self, completion: SampledCompletion) -> int | None:
        """The policy version that served ``completion`` (None: not one of this policy's)."""
        return self.policy.version_of(completion)
