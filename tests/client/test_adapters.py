"""``aresult`` and ``as_awaitable``: any future, under asyncio and trio, no thread per wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from tinker.lib.backcompat_concurrent_future import _AwaitableFutureCompatWrapper
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

from firetitan_async import Pending, aresult, as_awaitable

pytestmark = pytest.mark.anyio

CF = concurrent.futures.Future


def os_thread_count() -> int:
    """Threads of this process as the OS sees them (trio's worker threads are invisible to
    ``threading.active_count()``); falls back to ``threading`` off Linux."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def later(delay: float, fn: Callable[[], object]) -> threading.Timer:
    """Run ``fn`` on a fresh thread after ``delay`` seconds (the "SDK thread" completing)."""
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


class Ticker:
    """A task ticking every 10 ms; ``max_gap`` is the longest stall of the event loop seen."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now


async def test_thread_completed_future_keeps_the_loop_ticking(anyio_backend: str) -> None:
    ticker = Ticker()
    cf: CF[str] = CF()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        timer = later(0.3, lambda: cf.set_result("done"))
        started = time.monotonic()
        assert await aresult(cf) == "done"
        waited = time.monotonic() - started
        tg.cancel_scope.cancel()
    timer.join()
    print(
        f"[{anyio_backend}] waited {waited * 1000:.0f} ms, ticker max gap "
        f"{ticker.max_gap * 1000:.1f} ms over {ticker.ticks} ticks"
    )
    assert 0.25 < waited < 2.0
    assert ticker.ticks >= 10
    assert ticker.max_gap < 0.2


async def test_sdk_api_future_from_another_thread(anyio_backend: str) -> None:
    ticker = Ticker()
    cf: CF[dict[str, float]] = CF()
    api_future = AwaitableConcurrentFuture(cf)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        timer = later(0.2, lambda: cf.set_result({"loss:sum": 1.5}))
        assert await aresult(api_future, timeout=5) == {"loss:sum": 1.5}
        tg.cancel_scope.cancel()
    timer.join()
    print(f"[{anyio_backend}] APIFuture ticker max gap {ticker.max_gap * 1000:.1f} ms")
    assert ticker.max_gap < 0.2


async def test_backcompat_wrapper_is_awaited_without_warnings(anyio_backend: str) -> None:
    inner: CF[int] = CF()
    wrapper = _AwaitableFutureCompatWrapper(inner)
    timer = later(0.05, lambda: inner.set_result(7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its concurrent.futures methods warn; we must not use them
        assert await aresult(wrapper, timeout=5) == 7
        assert await as_awaitable(wrapper) == 7
    timer.join()


async def test_already_done_futures(anyio_backend: str) -> None:
    cf: CF[int] = CF()
    cf.set_result(3)
    assert await aresult(cf) == 3
    assert await aresult(cf, timeout=0) == 3  # done: no wait, so no timeout either
    assert await aresult(AwaitableConcurrentFuture(cf), timeout=0) == 3
    failed: CF[int] = CF()
    error = KeyError("boom")
    failed.set_exception(error)
    with pytest.raises(KeyError) as caught:
        await aresult(failed, timeout=0)
    assert caught.value is error


async def test_exception_is_reraised_as_is(anyio_backend: str) -> None:
    cf: CF[int] = CF()
    error = ValueError("bad batch")
    timer = later(0.05, lambda: cf.set_exception(error))
    with pytest.raises(ValueError) as caught:
        await aresult(AwaitableConcurrentFuture(cf), timeout=5)
    assert caught.value is error
    timer.join()


async def test_cancelled_source_raises_cancelled_error(anyio_backend: str) -> None:
    cf: CF[int] = CF()
    timer = later(0.05, cf.cancel)
    with pytest.raises(concurrent.futures.CancelledError):
        await aresult(cf, timeout=5)
    timer.join()


async def test_completion_on_the_loop_thread_does_not_deadlock(anyio_backend: str) -> None:
    cf: CF[str] = CF()

    async def complete() -> None:
        await anyio.sleep(0.02)
        cf.set_result("same thread")  # the done callback runs right here, on the loop thread

    async with anyio.create_task_group() as tg:
        tg.start_soon(complete)
        with anyio.fail_after(5):
            assert await aresult(cf) == "same thread"


async def test_timeout_stops_the_wait_not_the_operation(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    cf: CF[str] = CF()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await aresult(AwaitableConcurrentFuture(cf), timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1.0
    assert not cf.cancelled() and not cf.done()
    # The abandoned wait's done callback stays on the source (concurrent futures cannot drop
    # one) but is detached: it holds no loop and does nothing.
    callbacks: list[Any] = cf._done_callbacks  # type: ignore[attr-defined]
    assert [getattr(cb, "_fire", "?") for cb in callbacks] == [None]
    with caplog.at_level(logging.ERROR):
        later(0.02, lambda: cf.set_result("finished anyway")).join()
    assert "exception calling callback" not in caplog.text
    assert await aresult(cf, timeout=1) == "finished anyway"


async def test_cancelling_the_waiting_task_leaves_the_source_alone(anyio_backend: str) -> None:
    cf: CF[int] = CF()
    reached = anyio.Event()

    async def waiter() -> None:
        reached.set()
        await aresult(cf)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await reached.wait()
        await anyio.sleep(0.02)
        tg.cancel_scope.cancel()
    assert not cf.cancelled()
    timer = later(0.02, lambda: cf.set_result(42))
    assert await aresult(cf, timeout=5) == 42
    timer.join()


async def test_thousand_concurrent_waits_use_no_threads(anyio_backend: str) -> None:
    futures: list[CF[int]] = [CF() for _ in range(1000)]
    results: dict[int, int] = {}

    entered = 0
    all_entered = anyio.Event()

    async def wait(i: int) -> None:
        nonlocal entered
        entered += 1
        if entered == 1000:
            all_entered.set()
        results[i] = await aresult(futures[i], timeout=30)

    # Measured as below, just after a sleep: trio's guest mode (the anyio test runner) does its
    # I/O waits on a helper thread of its own.
    await anyio.sleep(0.2)
    threads_before = (threading.active_count(), os_thread_count())
    async with anyio.create_task_group() as tg:
        for i in range(1000):
            tg.start_soon(wait, i)
        await all_entered.wait()
        await anyio.sleep(0.2)  # all 1000 are parked on their futures (a thread would show)
        threads_during = (threading.active_count(), os_thread_count())
        started = time.monotonic()

        def complete_all() -> None:
            for i, cf in enumerate(futures):
                cf.set_result(i * i)

        completer = threading.Thread(target=complete_all)
        completer.start()
    completer.join()
    elapsed = time.monotonic() - started
    print(
        f"[{anyio_backend}] 1000 waits: threads {threads_before} -> {threads_during}, "
        f"all woken in {elapsed * 1000:.0f} ms"
    )
    assert threads_during[0] <= threads_before[0]
    assert threads_during[1] <= threads_before[1]
    assert results == {i: i * i for i in range(1000)}


async def test_asyncio_future(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        # An asyncio.Future-alike (asyncio.isfuture is duck-typed): no asyncio loop exists here.
        fake = _FakeAsyncioFuture()
        with pytest.raises(TypeError, match="only be awaited on asyncio"):
            await aresult(fake)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="only be awaited on asyncio"):
            await as_awaitable(fake)  # type: ignore[arg-type]
        return
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    loop.call_later(0.03, fut.set_result, "asyncio")
    assert await aresult(fut, timeout=5) == "asyncio"
    # A timed-out (or cancelled) wait does not cancel the asyncio future either.
    pending: asyncio.Future[str] = loop.create_future()
    with pytest.raises(TimeoutError):
        await aresult(pending, timeout=0.02)
    assert not pending.cancelled()
    pending.set_result("later")
    assert await as_awaitable(pending) == "later"
    # ...and a task (an asyncio.Future too) is not cancelled by an abandoned wait.
    task = asyncio.ensure_future(asyncio.sleep(0.05, result="task"))
    with pytest.raises(TimeoutError):
        await aresult(task, timeout=0.01)
    assert await aresult(task, timeout=5) == "task"


async def test_asyncio_future_of_another_loop_is_refused(anyio_backend: str) -> None:
    if anyio_backend == "trio":
        pytest.skip("asyncio-only check")
    other = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="different event loop"):
            await aresult(other.create_future())
    finally:
        other.close()


class _FakeAsyncioFuture:
    _asyncio_future_blocking = False

    def __await__(self) -> Iterator[None]:
        raise AssertionError("must not be awaited")
        yield


async def test_native_awaitables_and_pending(anyio_backend: str) -> None:
    pending: Pending[str] = Pending("forward_backward")

    async def settle() -> None:
        await anyio.sleep(0.03)
        pending._set_result("fb")

    with pytest.raises(TimeoutError):
        await aresult(pending, timeout=0.01)
    async with anyio.create_task_group() as tg:
        tg.start_soon(settle)
        assert await aresult(pending, timeout=5) == "fb"
    assert await as_awaitable(pending) == "fb"

    async def coro() -> int:
        await anyio.lowlevel.checkpoint()
        return 5

    assert await aresult(coro()) == 5


async def test_as_awaitable_is_reusable_and_checks_types(anyio_backend: str) -> None:
    cf: CF[int] = CF()
    awaitable = as_awaitable(cf)
    assert "as_awaitable" in repr(awaitable)
    timer = later(0.02, lambda: cf.set_result(9))
    assert await awaitable == 9
    assert await awaitable == 9  # awaiting again gives the same outcome
    timer.join()
    with pytest.raises(TypeError, match="cannot await a int"):
        as_awaitable(12)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot await a str"):
        await aresult("nope")  # type: ignore[arg-type]


async def test_real_sdk_futures_against_the_local_trainer(anyio_backend: str) -> None:
    try:
        from firetitan_async.local import LocalTrainer  # type: ignore[attr-defined, unused-ignore]
    except ImportError as exc:
        pytest.skip(f"firetitan_async.local.LocalTrainer is not importable yet ({exc})")
    import tinker
    from tinker import types

    from firetitan_async.local._datums import sft_datum

    datum = sft_datum("adapters await the tinker sdk")

    def sdk(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # anyio.run and anyio's pytest runner set sniffio's context variable to "trio", and
        # the SDK copies its caller's context into its own asyncio thread
        # (run_coroutine_threadsafe), where httpx/anyio then take asyncio for trio. A call
        # from a fresh context avoids that (plain trio.run sets no context variable).
        return contextvars.Context().run(fn, *args, **kwargs)

    trainer = LocalTrainer(seed=0)
    trainer.start()
    try:
        service = tinker.ServiceClient(base_url=trainer.base_url, api_key="tml-local")
        try:
            # The SDK's client creation blocks while it bootstraps: keep it off the loop.
            creating = await anyio.to_thread.run_sync(
                partial(
                    sdk,
                    service.create_lora_training_client,
                    base_model="local/tiny-byte-lm",
                    rank=4,
                )
            )
            training = await aresult(creating, timeout=60)
            ticker = Ticker()
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker.run)
                fb = sdk(training.forward_backward, [datum], "cross_entropy")
                opt = sdk(training.optim_step, types.AdamParams(learning_rate=1e-2))
                ticks_before = ticker.ticks
                out = await aresult(fb, timeout=60)
                await as_awaitable(opt)
                # A timed-out wait leaves the SDK operation alone: it completes regardless.
                fb2 = sdk(training.forward_backward, [datum], "cross_entropy")
                with pytest.raises(TimeoutError):
                    await aresult(fb2, timeout=0)
                assert not fb2.future().cancelled()
                out2 = await aresult(fb2, timeout=60)
                ticks_while_waiting = ticker.ticks - ticks_before
                tg.cancel_scope.cancel()
            assert out.metrics["loss:sum"] > out2.metrics["loss:sum"] > 0  # one Adam step
            print(
                f"[{anyio_backend}] real SDK: {ticks_while_waiting} ticks while waiting, "
                f"ticker max gap {ticker.max_gap * 1000:.1f} ms"
            )
            # The loop ran while the SDK worked (a blocking wait would allow no tick). The gap
            # bound is loose: the in-process trainer's threads share the GIL with the loop.
            assert ticks_while_waiting >= 1
            assert ticker.max_gap < 0.5
        finally:
            closing = await anyio.to_thread.run_sync(partial(sdk, service.close, "success"))
            await aresult(closing, timeout=30)
    finally:
        trainer.stop()


async def test_real_fireworks_sdk_futures_against_the_local_trainer(anyio_backend: str) -> None:
    """A loop moving over from the Fireworks SDK awaits its futures under asyncio and trio."""
    from fireworks.training.sdk import FiretitanServiceClient
    from fireworks.training.sdk import types as ft

    from firetitan_async.local import LocalTrainer

    tokens = list(b"adapters await fireworks")
    datum = ft.Datum(
        model_input=ft.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * (len(tokens) - 1)},
    )

    def sdk(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return contextvars.Context().run(fn, *args, **kwargs)  # see the tinker test above

    with LocalTrainer(seed=0) as trainer:
        service = await anyio.to_thread.run_sync(
            partial(sdk, FiretitanServiceClient, base_url=trainer.base_url, api_key="fw-local")
        )
        try:
            training = await anyio.to_thread.run_sync(
                partial(sdk, service.create_training_client, "local/tiny-byte-lm", lora_rank=4)
            )
            fb = sdk(training.forward_backward, [datum], "cross_entropy")  # a mapped future
            out = await aresult(fb, timeout=60)
            assert out.metrics["response_tokens"] == len(tokens) - 1  # its transform ran
            opt = sdk(training.optim_step, ft.AdamParams(learning_rate=1e-2))
            await as_awaitable(opt)
            fb2 = sdk(training.forward_backward, [datum], "cross_entropy")
            with pytest.raises(TimeoutError):
                await aresult(fb2, timeout=0)
            out2 = await aresult(fb2, timeout=60)  # the timed-out wait cancelled nothing
            assert out.metrics["loss:sum"] > out2.metrics["loss:sum"] > 0
        finally:
            await anyio.to_thread.run_sync(partial(sdk, service.close))
