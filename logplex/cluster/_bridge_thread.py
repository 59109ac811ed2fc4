"""The asyncio thread behind the NATS bridge and the two ways across it.

nats-py is asyncio-only and the router is trio (DESIGN 10), so each bridge owns one asyncio
event loop running in one daemon thread. ``AsyncioThread.call`` runs a coroutine there and
waits for it in trio without blocking: the loop's task wakes the waiting trio task through
``TrioToken.run_sync_soon`` when it is done, so a call costs two thread wake-ups and no
thread of its own. A trio cancel cancels the asyncio task and waits (shielded, briefly) until
it has really finished, so the asyncio side never outlives its caller.

``TrioFeed`` goes the other way, for core subscriptions: the asyncio side hands items over
without ever waiting for trio (the loop must not stall on a slow consumer); they are moved
into a bounded trio memory channel in batches, and whatever does not fit is dropped and
counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")

_CANCEL_WAIT_S = 5.0  # how long a cancelled call waits for its asyncio task to finish


class LoopStopped(Exception):
    """The asyncio thread is not running (not started yet, or stopped)."""


class _Call:
    __slots__ = ("cancelled_early", "done", "task")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.task: asyncio.Task[Any] | None = None
        self.cancelled_early = False


class AsyncioThread:
    """One asyncio event loop in one daemon thread, driven from one trio run."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # Whatever is still pending (a call racing the shutdown) is cancelled, so every
            # trio waiter is woken and nothing runs after the thread is gone.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def wake_trio(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` soon in the trio thread (from the asyncio thread); a no-op after trio
        has finished. ``fn`` must not raise."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    def soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` soon in the asyncio thread (from any thread)."""
        if self._stopping:
            raise LoopStopped("the NATS thread is stopped")
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError as error:  # the loop is closed
            raise LoopStopped("the NATS thread is stopped") from error

    async def call(self, fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``await fn()`` in the asyncio thread; the coroutine is created there, so nothing
        is left un-awaited when the loop is already gone (``LoopStopped``)."""
        state = _Call()
        loop = self.loop

        def on_done(_: asyncio.Task[T]) -> None:
            self.wake_trio(state.done.set)

        def start() -> None:
            if state.cancelled_early:
                self.wake_trio(state.done.set)
                return
            task = loop.create_task(fn())
            state.task = task
            task.add_done_callback(on_done)

        def cancel() -> None:
            if state.task is None:
                state.cancelled_early = True
            else:
                state.task.cancel()

        self.soon(start)
        try:
            await state.done.wait()
        except BaseException:
            # Cancelled (or KeyboardInterrupt) in trio: cancel the asyncio side and wait
            # until it is gone. ``start`` and ``cancel`` run in FIFO order in the loop.
            with contextlib.suppress(LoopStopped):
                self.soon(cancel)
                with trio.CancelScope(shield=True), trio.move_on_after(_CANCEL_WAIT_S):
                    await state.done.wait()
            raise
        task: asyncio.Task[T] | None = state.task
        if task is None or task.cancelled():
            raise LoopStopped("the NATS thread stopped while the call was running")
        return task.result()

    async def stop(self) -> None:
        """Stop the loop (pending tasks are cancelled) and join the thread."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread.is_alive():
            await trio.to_thread.run_sync(self._thread.join)


class DropCounter:
    """A thread-safe count of items dropped because a trio consumer lagged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, count: int) -> None:
        with self._lock:
            self._value += count

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


class TrioFeed(Generic[T]):
    """Asyncio-side ``put`` into a bounded trio memory channel, never waiting: items the
    channel has no room for are dropped and counted in ``dropped``."""

    def __init__(
        self,
        thread: AsyncioThread,
        send: trio.MemorySendChannel[T],
        capacity: int,
        dropped: DropCounter,
    ) -> None:
        self._thread = thread
        self._send = send
        self._capacity = capacity
        self._dropped = dropped
        self._lock = threading.Lock()
        self._pending: deque[T] = deque()
        self._scheduled = False
        self._closed = False

    def put(self, item: T) -> None:
        """Hand ``item`` to trio (called in the asyncio thread)."""
        with self._lock:
            if self._closed:
                return
            if len(self._pending) >= self._capacity:
                self._dropped.add(1)
                return
            self._pending.append(item)
            if self._scheduled:
                return
            self._scheduled = True
        self._thread.wake_trio(self._flush)

    def _flush(self) -> None:
        # Runs in the trio thread; must not raise.
        with self._lock:
            items = list(self._pending)
            self._pending.clear()
            self._scheduled = False
        lost = 0
        for index, item in enumerate(items):
            try:
                self._send.send_nowait(item)
            except trio.WouldBlock:
                lost += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close()
                lost += len(items) - index
                break
        if lost:
            self._dropped.add(lost)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._pending.clear()
