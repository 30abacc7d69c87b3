"""``ClientSession``: what the clients, loops and platform ask of a session, and nothing more.

:class:`~firetitan_async.ServiceSession` implements it. The clients (training, sampling), the
ordered operations and the loops are typed against this protocol, not against the session
class, so they never read a session's private member and never import the session module
(which imports them to build clients): the dependency runs one way.

Example::

    def run_on(session: ClientSession) -> None:
        session.check_open()
        transport = session.transport  # raises SessionClosed / not ready
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # types only: the protocol imports nothing at run time
    from .._http._transport import Transport
    from ..wire import Dialect
    from ._deadlines import Deadlines
    from ._pending import Pending

__all__ = ["ClientSession", "OperationRunner"]

T = TypeVar("T")


class OperationRunner(Protocol):
    """A place to run operation tasks, and the tracking (deadlines, events) of each operation.

    Example::

        runner.spawn_operation(carry)
        result = await runner.track_operation(pending, work, deadlines=deadlines)
    """

    def spawn_operation(
        self, fn: Callable[[], Awaitable[None]], pending: Pending[Any] | None = None
    ) -> None:
        """Run an operation's task in the session's task group (counted until it ends); if
        the session closes before the task runs, ``pending`` fails with ``SessionClosed``."""
        ...

    def track_operation(
        self,
        pending: Pending[Any],
        work: Callable[[], Awaitable[T]],
        *,
        deadlines: Deadlines | None = None,
        tokens: int | None = None,
    ) -> Awaitable[T]:
        """Run ``work()`` as ``pending``'s operation: deadlines, stall reports, events."""
        ...


class ClientSession(OperationRunner, Protocol):
    """The session as its clients see it: wire codec, transport, config, sequence ids.

    Example::

        body = session.codec.get_info_body(model_id)
        reply = await session.transport.call("POST", paths.GET_INFO, json_body=body)
    """

    @property
    def codec(self) -> Dialect:
        """The wire dialect object (every dialect difference is behind it)."""
        ...

    @property
    def transport(self) -> Transport:
        """The open transport (raises ``SessionClosed`` or "not ready")."""
        ...

    @property
    def client_config(self) -> Mapping[str, Any]:
        """The server's ``client/config`` reply (empty where the dialect has none)."""
        ...

    @property
    def session_id(self) -> str:
        """The server-side session id."""
        ...

    def check_open(self) -> None:
        """Raise ``SessionClosed`` (or ``TrainerJobFailed``) unless the session is usable."""
        ...

    def check_samples_snapshots(self) -> None:
        """Raise ``UsageError`` unless ``create_sampling_client(model_path=...)`` can sample a
        snapshot on this session (a tinker trainer, a serverless session, a managed setup with
        a deployment)."""
        ...

    def next_sampling_session_seq_id(self) -> int:
        """Reserve the next sampling-session sequence number."""
        ...
