"""A test double of the router side of the shim stream protocol v1 (DESIGN section 4).

Written only from the protocol text and ``logplex.codecs.shimproto``: HELLO → READY with
``acked`` = the highest contiguous seq held for that stream; each BATCH in order is decoded,
held and acknowledged; a seq at or below ``acked`` is a resend and is acknowledged without
being held twice; a gap is a protocol violation (recorded, answered with ERROR bad_frame).

Knobs for the failure cases the shim must survive:
- ``stall_after_ready``: after READY, never read again (the socket buffers fill up);
- ``refuse_hello``: answer every HELLO with ERROR of this code (``unauthorized``...);
- ``hold_acks``: acknowledge nothing until ``release_acks()`` (to watch the window);
- ``refuse_seqs``: answer the first arrival of these seqs with ERROR bad_frame and close;
- ``kill()``: stop listening and drop every connection at once (held batches survive, like a
  router whose acknowledged records were already passed on); ``serve`` again on the same port
  to restart it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

import trio

from logplex.codecs.errors import ProtocolError
from logplex.codecs.shimbatch import decode_batch_records
from logplex.codecs.shimproto import (
    BatchFrame,
    Hello,
    Pong,
    ShimFrameDecoder,
    encode_ack,
    encode_error,
    encode_ping,
    encode_ready,
)

MAX_FRAME_BYTES = 1024 * 1024


@dataclass
class StreamLog:
    """Everything one shim stream (one uuid) delivered."""

    hello: Hello
    acked: int = 0
    batches: dict[int, list[list[Any]]] = field(default_factory=dict)
    resends_seen: int = 0
    ack_sent: int = 0  # the highest ACK actually sent
    violations: list[str] = field(default_factory=list)

    def records(self) -> list[list[Any]]:
        return [record for seq in sorted(self.batches) for record in self.batches[seq]]

    def lines(self, kind: int) -> list[bytes]:
        return [data for _ts, k, data in self.records() if k == kind]


class RouterDouble:
    def __init__(
        self,
        *,
        window: int = 8,
        max_batch_bytes: int = 65536,
        stall_after_ready: bool = False,
        refuse_seqs: frozenset[int] = frozenset(),
        send_ping: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        hold_acks: bool = False,
        refuse_hello: str | None = None,
    ) -> None:
        self.refuse_hello = refuse_hello
        self.hold_acks = hold_acks
        self._live: list[tuple[trio.abc.Stream, StreamLog]] = []
        self._send_locks: dict[int, trio.Lock] = {}
        self.ssl_context = ssl_context
        self.window = window
        self.max_batch_bytes = max_batch_bytes
        self.stall_after_ready = stall_after_ready
        self.refuse_seqs = set(refuse_seqs)
        self.send_ping = send_ping
        self.streams: dict[str, StreamLog] = {}
        self.connections = 0
        self.pongs = 0
        self.refusals = 0
        self.port = 0
        self._scope: trio.CancelScope | None = None
        self.changed = trio.Event()

    @property
    def url(self) -> str:
        if self.ssl_context is not None:
            return f"tls://localhost:{self.port}"
        return f"tcp://127.0.0.1:{self.port}"

    def only_stream(self) -> StreamLog:
        assert len(self.streams) == 1, f"expected one shim stream, got {list(self.streams)}"
        return next(iter(self.streams.values()))

    async def serve(self, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope() as scope:
            self._scope = scope
            tcp_listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            self.port = tcp_listeners[0].socket.getsockname()[1]
            listeners: list[Any] = list(tcp_listeners)
            if self.ssl_context is not None:
                listeners = [trio.SSLListener(tcp, self.ssl_context) for tcp in tcp_listeners]
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners)

    def kill(self, *, forget_unacked: bool = False) -> None:
        """Drop every connection; ``forget_unacked``: also lose batches not yet ACKed, like
        a router that died before it could hold them."""
        assert self._scope is not None
        self._scope.cancel()
        self._live.clear()
        if forget_unacked:
            for log in self.streams.values():
                for seq in [seq for seq in log.batches if seq > log.ack_sent]:
                    del log.batches[seq]
                log.acked = log.ack_sent

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate: Any, timeout_s: float = 20.0) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self.changed.wait()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        decoder = ShimFrameDecoder(MAX_FRAME_BYTES)
        log: StreamLog | None = None
        async with stream:
            try:
                while True:
                    event = decoder.next_event()
                    if event is None:
                        data = await stream.receive_some(65536)
                        if not data:
                            return
                        decoder.feed(bytes(data))
                        continue
                    if isinstance(event, Hello) and self.refuse_hello:
                        await self._send(stream, encode_error(self.refuse_hello, "test double"))
                        self.refusals += 1
                        self._changed()
                        return
                    if isinstance(event, Hello):
                        log = self.streams.setdefault(event.stream, StreamLog(event))
                        self._live.append((stream, log))
                        await self._send(
                            stream, encode_ready(log.acked, self.window, self.max_batch_bytes)
                        )
                        if self.send_ping:
                            await self._send(stream, encode_ping())
                        self._changed()
                        if self.stall_after_ready:
                            await trio.sleep_forever()
                    elif isinstance(event, BatchFrame):
                        assert log is not None, "BATCH before HELLO"
                        if not await self._batch(stream, log, event):
                            return
                    elif isinstance(event, Pong):
                        self.pongs += 1
                        self._changed()
            except (ProtocolError, trio.BrokenResourceError, ssl.SSLError) as exc:
                if log is not None:
                    log.violations.append(repr(exc))
                self._changed()

    async def _batch(self, stream: trio.abc.Stream, log: StreamLog, event: BatchFrame) -> bool:
        if event.seq in self.refuse_seqs:
            self.refuse_seqs.discard(event.seq)
            await self._send(stream, encode_error("bad_frame", "refused by the test double"))
            self._changed()
            return False
        if event.seq <= log.acked:
            log.resends_seen += 1
        elif event.seq == log.acked + 1:
            log.batches[event.seq] = decode_batch_records(
                event.payload, max_bytes=self.max_batch_bytes, max_records=100000
            )
            log.acked = event.seq
        else:
            log.violations.append(f"gap: got seq {event.seq} after {log.acked}")
            await self._send(stream, encode_error("bad_frame", "seq gap"))
            self._changed()
            return False
        if not self.hold_acks:
            await self._send(stream, encode_ack(log.acked))
            log.ack_sent = log.acked
        self._changed()
        return True

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        lock = self._send_locks.setdefault(id(stream), trio.Lock())
        async with lock:
            await stream.send_all(data)

    async def release_acks(self) -> None:
        """Stop holding ACKs back: acknowledge what each live connection delivered so far."""
        self.hold_acks = False
        for stream, log in self._live:
            await self._send(stream, encode_ack(log.acked))
            log.ack_sent = log.acked
