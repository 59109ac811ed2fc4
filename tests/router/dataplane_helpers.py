"""Test helpers for the router's data plane: an in-memory recording drain and small builders.

``RecordingDrain`` implements the Drain protocol of docs/architecture.md without any network:
it records every batch it is handed (in order), can be told to hold delivery (to test the
shutdown flush), and reports a status like a real drain.
"""

from __future__ import annotations

import trio

from drains import DrainContext, DrainStatus
from logplex.codecs.records import Batch, Message


class RecordingDrain:
    """A drain that "delivers" batches into a list, in the order it was handed them."""

    def __init__(self, context: DrainContext, *, delivery_delay_s: float = 0.0) -> None:
        self.context = context
        self.delivery_delay_s = delivery_delay_s
        self.pushed: list[Batch] = []
        self.delivered: list[Message] = []
        self.running = False
        self.cancelled = False
        self._queue: list[Batch] = []
        self._wakeup = trio.Event()
        self._flushed = trio.Event()
        self._flushed.set()

    def push_batch(self, batch: Batch) -> None:
        self.pushed.append(batch)
        self._queue.append(batch)
        self._flushed = trio.Event() if self._flushed.is_set() else self._flushed
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        task_status.started()
        try:
            while True:
                while not self._queue:
                    self._flushed.set()
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                batch = self._queue.pop(0)
                if self.delivery_delay_s:
                    await trio.sleep(self.delivery_delay_s)
                self.delivered.extend(batch.messages)
        except trio.Cancelled:
            self.cancelled = True
            raise
        finally:
            self.running = False

    async def wait_flushed(self) -> None:
        while self._queue or not self._flushed.is_set():
            await self._flushed.wait()

    def status(self) -> DrainStatus:
        return DrainStatus(
            state="up" if self.delivered else "pending",
            delivered=len(self.delivered),
            dropped=0,
            buffered=sum(len(b) for b in self._queue),
            last_error=None,
            last_success_at=None,
        )

    @property
    def pushed_messages(self) -> list[Message]:
        return [m for b in self.pushed for m in b.messages]


class RecordingDrainFactory:
    """A ``drain_factory`` that keeps every drain it made, by (channel, drain id)."""

    def __init__(self, *, delivery_delay_s: float = 0.0) -> None:
        self.delivery_delay_s = delivery_delay_s
        self.made: list[RecordingDrain] = []

    def __call__(self, context: DrainContext) -> RecordingDrain:
        drain = RecordingDrain(context, delivery_delay_s=self.delivery_delay_s)
        self.made.append(drain)
        return drain

    def latest(self, channel: str, drain_id: int) -> RecordingDrain:
        for drain in reversed(self.made):
            if drain.context.channel == channel and drain.context.drain_id == drain_id:
                return drain
        raise LookupError(f"no drain {drain_id} made for channel {channel!r}")


def make_messages(
    count: int, *, start: int = 0, source: bytes = b"app", ps: bytes = b"web.1", pri: int = 190
) -> list[Message]:
    """``count`` distinct messages ``line <n>`` with increasing timestamps."""
    base_us = 1_795_000_000_000_000
    return [(base_us + n, pri, source, ps, b"line %d" % n) for n in range(start, start + count)]
