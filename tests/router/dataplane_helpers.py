"""Test helpers for the router's data plane: an in-memory recording drain and small builders.

``RecordingDrain`` implements the Drain protocol of docs/architecture.md without any network:
it records every batch it is handed (in order), can be told to hold delivery (to test the
shutdown flush), and reports a status like a real drain.
"""

from __future__ import annotations

import trio
import zstandard

from drains import DrainContext, DrainStatus
from logplex.codecs import shimproto
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

    def abandon(self) -> int:
        held = sum(len(b) for b in self._queue)
        self.abandoned = held
        return held

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


class ShimTestClient:
    """A shim-protocol client over any trio stream, for driving the listener in tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = shimproto.ShimFrameDecoder(max_frame_bytes=1 << 20)
        self.compressor = zstandard.ZstdCompressor(level=1)

    @classmethod
    async def connect(cls, port: int) -> ShimTestClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def hello(
        self,
        token: str,
        *,
        stream_id: str = "5b0c1c32-9b1c-4d3e-8f4a-1d2e3f405162",
        ps: str = "web.1",
        platform_token: str | None = None,
    ) -> shimproto.Event:
        await self.stream.send_all(
            shimproto.encode_hello(token, ps, stream_id, "logshim/test", platform_token)
        )
        return await self.next_event()

    def batch(self, seq: int, lines: list[bytes], *, kind: int = 1, ts_us: int = 0) -> bytes:
        records = [[ts_us or 1_795_000_000_000_000 + n, kind, line] for n, line in enumerate(lines)]
        return shimproto.encode_batch(seq, records, compressor=self.compressor)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_event(self) -> shimproto.Event:
        """The next frame from the router; raises EOFError when it closed the connection."""
        while True:
            event = self.decoder.next_event()
            if event is not None:
                return event
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("the router closed the connection")
            self.decoder.feed(bytes(data))

    async def wait_acked(self, seq: int) -> None:
        while True:
            event = await self.next_event()
            if isinstance(event, shimproto.Ack) and event.seq >= seq:
                return
            if isinstance(event, shimproto.Ping):
                await self.send(shimproto.encode_pong())
            elif not isinstance(event, shimproto.Ack):
                raise AssertionError(f"expected ACK {seq}, got {event!r}")

    async def expect_error_then_close(self) -> shimproto.ErrorFrame:
        event = await self.next_event()
        assert isinstance(event, shimproto.ErrorFrame), event
        with trio.fail_after(5):
            try:
                while await self.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass  # a reset instead of a FIN is a close too
        await self.stream.aclose()
        return event

    async def aclose(self) -> None:
        await self.stream.aclose()
