"""``Pending[T]``: the future every operation returns."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Generic, TypeVar

import anyio
from anyio.lowlevel import checkpoint

from ..errors import NotAwaited, UsageError
from ._boundary import trim_internal_frames

__all__ = ["Pending", "fail_pending", "resolve_pending"]

# Covariant: a Pending[OptimStepResponse] is a Pending[object] (results are only read).
T = TypeVar("T", covariant=True)
V = TypeVar("V")

_UNSET: Any = object()


class Pending(Generic[T]):
    """The result of an operation that is running on the server.

    It is returned at once by a plain method call (``client.forward_backward(...)``); its
    sequence id was reserved at that moment, so the server runs operations in call order
    whichever task made the call. ``await pending`` gives the result or raises the
    operation's error (a ``FiretitanError`` without the library's internal frames in its
    traceback; its ``__cause__`` kept); awaiting again gives the same outcome.

    Cancelling the task that awaits stops only that wait: the operation keeps running, its
    result can still be awaited later, and later operations of the client are never blocked.

    Example::

        fb = client.forward_backward(batch, "cross_entropy")
        step = client.optim_step(tinker.types.AdamParams(learning_rate=1e-3))
        out = await fb           # both requests were already on their way
        await step
        print(out.metrics["loss:sum"], fb.done(), fb.seq_id, fb.request_id)
    """

    # ``_event`` exists only while someone waits for an outcome not yet known: a Pending
    # whose result lands before it is awaited (the common case for a pipelined operation)
    # never builds one, and a set event is dropped, so a finished operation keeps its name,
    # ids and outcome and nothing else (fewer long-lived objects for the collector to walk).
    __slots__ = ("_done", "_error", "_event", "_value", "name", "request_id", "seq_id")

    def __init__(self, name: str, *, seq_id: int | None = None) -> None:
        self.name = name
        #: The first wire sequence id reserved for this operation (None if it has none).
        self.seq_id: int | None = seq_id
        #: The server's request id, once the submission has been accepted.
        self.request_id: str | None = None
        self._done = False
        self._event: anyio.Event | None = None
        self._value: T = _UNSET
        self._error: BaseException | None = None

    def done(self) -> bool:
        """Whether the outcome (result or error) is known."""
        return self._done

    def result(self) -> T:
        """The result if done (raises the error if it failed); never blocks.

        Raises :class:`~firetitan_async.UsageError` (a ``RuntimeError``) if the operation is
        still running: use ``await`` to wait.
        """
        if not self._done:
            raise UsageError(f"{self.name} is still running; await it instead")
        if self._error is not None:
            raise trim_internal_frames(self._error)
        return self._value

    def exception(self) -> BaseException | None:
        """The error if the operation failed, None if it succeeded (raises if not done)."""
        if not self._done:
            raise UsageError(f"{self.name} is still running; await it instead")
        return self._error

    async def wait(self) -> T:
        """Wait for the outcome and return the result (same as ``await pending``)."""
        if not self._done:
            event = self._event
            if event is None:
                event = self._event = anyio.Event()
            await event.wait()
        else:
            await checkpoint()  # an await always yields, done or not
        if self._error is not None:  # raised here, not in result(): one library frame shown
            raise trim_internal_frames(self._error)
        return self._value

    def __getattr__(self, attribute: str) -> Any:
        # Only reached when normal lookup fails: an attribute of the *result* asked of the
        # Pending, the usual sign of a forgotten ``await``. Dunders stay plain misses (copy,
        # pickle and friends probe for them), and so do private names (an unset slot).
        if attribute.startswith("_"):
            raise AttributeError(attribute)
        raise NotAwaited(
            f"'Pending' object has no attribute {attribute!r}: it is the future of {self.name}; "
            f"did you forget `await`? (await pending).{attribute}"
        )

    def __await__(self) -> Generator[Any, None, T]:
        return self.wait().__await__()

    def _set_result(self, value: T) -> None:  # type: ignore[misc]  # set once, by the owner
        if not self._done:
            self._value = value
            self._finish()

    def _set_exception(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._finish()

    def _finish(self) -> None:
        self._done = True
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def __repr__(self) -> str:
        if not self._done:
            state = "running"
        elif self._error is not None:
            state = f"failed: {type(self._error).__name__}"
        else:
            state = "done"
        return f"<Pending {self.name} seq_id={self.seq_id} request_id={self.request_id} {state}>"


def resolve_pending(pending: Pending[V], value: V) -> None:
    """Complete ``pending`` with ``value`` (its owner's side; once: later calls are ignored).

    Example::

        resolve_pending(pending, result)
    """
    pending._set_result(value)


def fail_pending(pending: Pending[Any], error: BaseException) -> None:
    """Complete ``pending`` with ``error`` (its owner's side; once: later calls are ignored).

    Example::

        fail_pending(pending, SessionClosed("closed"))
    """
    pending._set_exception(error)
