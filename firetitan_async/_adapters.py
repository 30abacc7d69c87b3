"""Adapters: await any future from the tinker SDK (or the stdlib) under asyncio and trio.

A ``concurrent.futures.Future`` completes on some other thread (for tinker, the SDK's hidden
event-loop thread). We wait for it without a thread of our own: a done callback, which runs
on the completing thread, schedules a wake-up on the waiting event loop through that loop's
thread-safe entry point (``loop.call_soon_threadsafe`` on asyncio, the trio token's
``run_sync_soon`` on trio). The waiting task sleeps on an ``anyio.Event`` meanwhile, so any
number of waits cost no threads and never block the loop.

A timeout or a cancellation ends the *wait* only: the source future is never cancelled (unlike
the SDK's own ``result_async``, which cancels the operation when its wait is abandoned).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Generic, TypeAlias, TypeVar, cast

import anyio
import anyio.lowlevel
import sniffio

from ._sdk_private import APIFuture, fireworks_immediate_value, fireworks_mapped_future
from .errors import InvalidInput, UnsupportedAwaitable, UsageError

__all__ = ["AwaitableSource", "aresult", "as_awaitable"]

T = TypeVar("T")

#: What ``aresult`` and ``as_awaitable`` accept: a tinker ``APIFuture``, a
#: ``concurrent.futures.Future``, an ``asyncio.Future`` (on asyncio) or any native awaitable
#: such as our ``Pending``.
AwaitableSource: TypeAlias = (
    "APIFuture[T] | concurrent.futures.Future[T] | asyncio.Future[T] | Awaitable[T]"
)


async def aresult(obj: AwaitableSource[T], timeout: float | None = None) -> T:
    """Wait for ``obj`` and return its result (or raise its exception), on asyncio or trio.

    ``obj`` may be a tinker ``APIFuture`` (anything the tinker SDK returns, including the
    futures of ``SamplingClient.sample``), a Fireworks Training SDK future (what
    ``FiretitanTrainingClient`` returns), a ``concurrent.futures.Future``, an
    ``asyncio.Future`` of the running asyncio loop, or a native awaitable such as a
    ``Pending``. No thread is used per wait and the event loop is never blocked.

    ``timeout`` is in seconds; when it passes, ``TimeoutError`` is raised. A timeout, like a
    cancellation of the waiting task, stops only the wait: the source future is never
    cancelled, so the operation completes and its result can be read later. A source that
    was itself cancelled raises ``concurrent.futures.CancelledError``.

    Raises :class:`~firetitan_async.UnsupportedAwaitable` (a ``TypeError``) for an unsupported
    object, or for an ``asyncio.Future`` under trio, and
    :class:`~firetitan_async.InvalidInput` (a ``ValueError``) for an ``asyncio.Future`` of
    another event loop.

    Example (trio, with the tinker SDK)::

        import trio
        from firetitan_async import aresult

        async def step(training):          # a tinker.TrainingClient
            fb = training.forward_backward(batch, "cross_entropy")   # an APIFuture
            out = await aresult(fb, timeout=60)
            print(out.metrics["loss:sum"])

    Example (asyncio, with a plain ``concurrent.futures`` pool)::

        import asyncio, concurrent.futures
        from firetitan_async import aresult

        async def main() -> None:
            with concurrent.futures.ThreadPoolExecutor() as pool:
                print(await aresult(pool.submit(sum, [1, 2, 3]), timeout=5))   # 6

        asyncio.run(main())
    """
    if isinstance(obj, APIFuture):
        # Every APIFuture of the SDK exposes its concurrent Future without blocking. This
        # also covers the back-compat wrapper that *is* a concurrent Future: its own Future
        # methods warn, `.future()` does not.
        return await _wait_concurrent(cast("APIFuture[T]", obj).future(), timeout)
    if _is_fireworks_future(obj):
        return cast(T, await _wait_fireworks(obj, timeout))
    if isinstance(obj, concurrent.futures.Future):
        return await _wait_concurrent(obj, timeout)
    if asyncio.isfuture(obj):
        return await _wait_asyncio(cast("asyncio.Future[T]", obj), timeout)
    if hasattr(obj, "__await__"):
        return await _wait_native(cast("Awaitable[T]", obj), timeout)
    raise UnsupportedAwaitable(_unsupported(obj))


def as_awaitable(obj: AwaitableSource[T]) -> Awaitable[T]:
    """``obj`` as an awaitable that works under asyncio and trio (see ``aresult``).

    The returned object may be awaited any number of times when its source can (futures and
    ``Pending`` can, a bare coroutine only once): each await waits again and gives the same
    outcome. Hand it to ``asyncio.gather`` or await it in a trio nursery task.
    Unsupported objects raise :class:`~firetitan_async.UnsupportedAwaitable` here, at once.

    Example (trio)::

        async def main(sdk_future) -> None:
            result = await as_awaitable(sdk_future)

    Example (asyncio)::

        results = await asyncio.gather(*(as_awaitable(f) for f in sdk_futures))
    """
    if not (
        isinstance(obj, APIFuture | concurrent.futures.Future)
        or _is_fireworks_future(obj)
        or asyncio.isfuture(obj)
        or hasattr(obj, "__await__")
    ):
        raise UnsupportedAwaitable(_unsupported(obj))
    return _Adapted(obj)


class _Adapted(Generic[T]):
    """A reusable awaitable around one source; each await is one ``aresult`` wait."""

    __slots__ = ("_source",)

    def __init__(self, source: AwaitableSource[T]) -> None:
        self._source = source

    def __await__(self) -> Generator[Any, None, T]:
        return aresult(self._source).__await__()

    def __repr__(self) -> str:
        return f"<as_awaitable of {self._source!r}>"


def _is_fireworks_future(obj: object) -> bool:
    """A future of the Fireworks Training SDK (recognised by module: it is not imported)."""
    return type(obj).__module__.startswith("fireworks.training.sdk") and hasattr(
        obj, "result_async"
    )


async def _wait_fireworks(obj: Any, timeout: float | None) -> Any:
    """Wait for a Fireworks SDK future on its concurrent Future, without its asyncio-only
    ``__await__`` (so trio works and an abandoned wait never cancels the operation).

    Its futures are an ``AwaitableConcurrentFuture`` (``.future()``), a ``_MappedAPIFuture``
    (an inner future and a transform, e.g. the ``response_tokens`` backfill) or an
    ``_ImmediateAPIFuture`` (a known value).
    """
    transforms: list[Callable[[Any], Any]] = []
    while True:
        if callable(getattr(obj, "future", None)):
            value = await _wait_concurrent(obj.future(), timeout)
            break
        mapped = fireworks_mapped_future(obj)
        if mapped is not None:
            obj, transform = mapped
            transforms.append(transform)
            continue
        known, value = fireworks_immediate_value(obj)
        if known:
            break
        raise UnsupportedAwaitable(
            f"cannot await a Fireworks SDK {type(obj).__qualname__} without its own event "
            "loop thread: await it from asyncio with `await future`, or call .result()"
        )
    for transform in reversed(transforms):
        value = transform(value)
    return value


def _unsupported(obj: object) -> str:
    return (
        f"cannot await a {type(obj).__qualname__}: expected a tinker APIFuture, a "
        "concurrent.futures.Future, an asyncio.Future or an awaitable"
    )


class _Wakeup:
    """The done callback's link to one waiter; ``detach`` cuts it when the wait ends.

    A ``concurrent.futures.Future`` cannot drop a done callback, so the callback stays on the
    source after an abandoned wait; detaching makes it a no-op holding no loop, token or event.
    """

    __slots__ = ("_fire",)

    def __init__(self, fire: Callable[[], None]) -> None:
        self._fire: Callable[[], None] | None = fire

    def __call__(self, _future: object) -> None:
        fire = self._fire
        if fire is None:
            return
        # If the waiting loop has closed (asyncio) or finished (trio.RunFinishedError is a
        # RuntimeError), nobody is left to wake.
        with contextlib.suppress(RuntimeError):
            fire()

    def detach(self) -> None:
        self._fire = None


def _thread_safe_setter(event: anyio.Event) -> Callable[[], None]:
    """A function that any thread may call to set ``event`` on the current event loop."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        loop = asyncio.get_running_loop()

        def set_on_asyncio() -> None:
            loop.call_soon_threadsafe(event.set)

        return set_on_asyncio
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()

        def set_on_trio() -> None:
            token.run_sync_soon(event.set)

        return set_on_trio
    raise UsageError(f"aresult supports asyncio and trio, not {library}")


async def _wait_concurrent(future: concurrent.futures.Future[T], timeout: float | None) -> T:
    if not future.done():
        event = anyio.Event()
        wakeup = _Wakeup(_thread_safe_setter(event))
        # Runs at once if the future finished meanwhile; call_soon_threadsafe and
        # run_sync_soon only enqueue, so a callback on the loop's own thread cannot deadlock.
        future.add_done_callback(wakeup)
        try:
            with anyio.fail_after(timeout):
                await event.wait()
        finally:
            wakeup.detach()
    else:
        await anyio.lowlevel.checkpoint()
    return future.result(timeout=0)


async def _wait_asyncio(future: asyncio.Future[T], timeout: float | None) -> T:
    library = sniffio.current_async_library()
    if library != "asyncio":
        raise UnsupportedAwaitable(
            f"an asyncio.Future can only be awaited on asyncio, not under {library}"
        )
    if future.get_loop() is not asyncio.get_running_loop():
        raise InvalidInput("future", "this asyncio.Future belongs to a different event loop")
    if not future.done():
        # Not `await future`: cancelling a task that awaits a future cancels that future.
        event = anyio.Event()

        def on_done(_future: asyncio.Future[T]) -> None:
            event.set()

        future.add_done_callback(on_done)
        try:
            with anyio.fail_after(timeout):
                await event.wait()
        finally:
            future.remove_done_callback(on_done)
    else:
        await anyio.lowlevel.checkpoint()
    return future.result()


async def _wait_native(awaitable: Awaitable[T], timeout: float | None) -> T:
    if timeout is None:
        return await awaitable
    with anyio.fail_after(timeout):
        return await awaitable
