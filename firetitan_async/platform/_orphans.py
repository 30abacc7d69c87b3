"""Live billable resources and who owns them: what ``firetitan-async jobs list`` shows.

"Owned" means: the resource carries an owner tag (``firetitan-async:<host>:<pid>``, written by
``create_and_wait`` / ``create_or_get`` opened as ``async with``: a job's ``displayName``, a
deployment's ``displayName`` and ``firetitan-async/owner`` annotation) and that process still
runs. An **orphan** is a live resource (a job CREATING, PENDING or RUNNING; a deployment not
deleted and not scaled to zero) whose tag names a process on this host that is gone: it
crashed, was SIGKILLed, or kept the resource (``keep=True``) and ended. What the control plane
cannot tell, this does not guess: a tag from another host is reported as "unknown" (no API
says whether that process lives, and the data plane has no session listing), and an untagged
resource (the plain ``await`` form, other tools, your own ``display_name``) is "unmanaged". A
reused pid reads as alive: errs towards "owned".

Example::

    async with TrainerJobs() as jobs, Deployments() as deployments:
        for item in await live_resources(jobs, deployments):
            print(item.kind, item.resource_id, item.state, item.owner_status)
"""

from __future__ import annotations

from typing import Literal

import attrs

from ._deployments import Deployments
from ._jobs import TrainerJobs
from ._lifecycle import OWNER_ANNOTATION, parse_owner_tag

__all__ = ["LiveResource", "live_resources"]

_LIVE_JOB_STATES = frozenset({"CREATING", "PENDING", "RUNNING"})
_GONE_DEPLOYMENT_STATES = frozenset({"DELETED", "DELETING"})

OwnerStatus = Literal["owned", "orphan", "unknown", "unmanaged"]


@attrs.frozen
class LiveResource:
    """A live job or deployment: ``owner`` is its tag (or None), ``owner_status`` one of
    ``owned``, ``orphan``, ``unknown`` (owner on another host), ``unmanaged`` (no tag).

    Example::

        for item in await live_resources(jobs, deployments):
            if item.is_orphan:
                print(item.kind, item.resource_id, item.owner)
    """

    kind: Literal["job", "deployment"]
    resource_id: str
    state: str
    owner: str | None
    owner_status: OwnerStatus

    @property
    def is_orphan(self) -> bool:
        """Whether nothing owns it any more (see the module docstring)."""
        return self.owner_status == "orphan"


def _status(tag: object) -> OwnerStatus:
    owner = parse_owner_tag(tag)
    if owner is None:
        return "unmanaged"
    alive = owner.alive()
    return "unknown" if alive is None else ("owned" if alive else "orphan")


async def live_resources(
    jobs: TrainerJobs, deployments: Deployments | None = None
) -> list[LiveResource]:
    """Every live trainer job (and deployment, if ``deployments`` is given), with its owner.

    Example::

        orphans = [r for r in await live_resources(jobs, deployments) if r.is_orphan]
    """
    found: list[LiveResource] = []
    for job in await jobs.list_jobs():
        if job.state in _LIVE_JOB_STATES:
            tag = job.display_name if parse_owner_tag(job.display_name) else None
            found.append(LiveResource("job", job.job_id, job.state, tag, _status(tag)))
    if deployments is not None:
        for dep in await deployments.list_deployments():
            if dep.state in _GONE_DEPLOYMENT_STATES:
                continue
            if dep.raw.get("maxReplicaCount") == 0:  # scaled to zero: nothing runs
                continue
            # The annotation is the SDK's mechanism; the public Deployment resource documents
            # displayName but not annotations, so either one counts.
            annotations = dep.raw.get("annotations")
            tags = [annotations.get(OWNER_ANNOTATION) if isinstance(annotations, dict) else None,
                    dep.raw.get("displayName")]
            tag = next((t for t in tags if isinstance(t, str) and parse_owner_tag(t)), None)
            found.append(
                LiveResource("deployment", dep.deployment_id, dep.state, tag, _status(tag))
            )
    return found
