"""The shim stream listener (DESIGN section 4, protocol v1; delivery rules of section 8).

One task per connection, each independent: a bad or slow client only ever ends its own
connection. The wire format is ``logplex.codecs.shimproto`` (sans-IO); this module owns the
connection state and the timers:

- HELLO must arrive within ``hello_timeout_s``; its token is checked with
  ``router.lookup_token`` (unknown -> ERROR ``unauthorized``; ``v`` other than 1 ->
  ``unsupported_version``). The answer is READY with ``acked``, the highest seq the router
  holds for this (token, stream) — kept in a bounded LRU (``StreamAcks``) so a shim that
  reconnects resends only what is missing — plus ``window`` and ``max_batch_bytes``.
- BATCH: a seq at or below ``acked`` is a resend of something held, dropped; anything but
  ``acked + 1`` is ERROR ``bad_frame``. The zstd/msgpack content is decoded with a bound
  on its decompressed size and record count, every batch of one read is published in one
  ``router.publish`` call, and then ONE cumulative ACK goes back: the records are in the
  router's memory before they are acknowledged (DESIGN 8).
- Idle: no frame for ``idle_ping_s`` -> PING; nothing within ``pong_timeout_s`` more -> close.
- Slow readers: every send has ``send_timeout_s``; a peer that does not read its ACKs is
  closed once the kernel buffers are full and the timeout runs out.
- Slow writers: a frame that has begun must be complete within ``frame_timeout_s``, so a
  peer trickling bytes cannot hold a frame buffer (up to ~1.1 MiB) open for ever.
- At most ``max_connections`` at once; past that a new connection gets ERROR ``overloaded``
  and is closed (memory stays bounded; the shim keeps its lines and retries).
- Any protocol error -> ERROR frame with its code (best effort, bounded) and close.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Final

import trio

from logplex import metrics
from logplex.codecs import shimproto
from logplex.codecs.errors import EncodeError, ProtocolError
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import PROCID_MAX, check_header_field
from logplex.fanout.router import Router
from logplex.ingest.accept import AcceptLoop, close_within

log = logging.getLogger(__name__)

PROTOCOL: Final = "shim"
RECEIVE_BYTES: Final = 256 * 1024
CLOSE_TIMEOUT_S: Final = 1.0  # a TLS close_notify to a peer that does not read
SEND_BUFFER_BYTES: Final = 16 * 1024  # the kernel doubles it
MAX_STREAM_ID_CHARS: Final = 64
MAX_TOKEN_CHARS: Final = 64

_MESSAGES = metrics.INGEST_MESSAGES.labels(protocol=PROTOCOL)
_BYTES = metrics.INGEST_BYTES.labels(protocol=PROTOCOL)
_CONNECTIONS = metrics.INGEST_CONNECTIONS.labels(protocol=PROTOCOL)


@dataclass(frozen=True, slots=True)
class ShimListenerSettings:
    """Limits and timers of the shim listener (defaults follow DESIGN section 4)."""

    window: int = 32
    max_batch_bytes: int = 1024 * 1024
    hello_timeout_s: float = 10.0
    idle_ping_s: float = 30.0
    pong_timeout_s: float = 10.0
    send_timeout_s: float = 10.0
    frame_timeout_s: float = 30.0
    max_connections: int = 10_000
    remembered_streams: int = 100_000

    def __post_init__(self) -> None:
        if self.max_batch_bytes < shimproto.MIN_MAX_BATCH_BYTES:
            raise ValueError(
                f"max_batch_bytes must be at least {shimproto.MIN_MAX_BATCH_BYTES} (DESIGN 4), "
                f"not {self.max_batch_bytes}"
            )
        if self.window < 1:
            raise ValueError(f"window must be at least 1 batch, not {self.window}")

    @property
    def max_frame_bytes(self) -> int:
        """Bound on one frame on the wire: a BATCH is seq + a zstd frame of the content,
        and zstd never grows incompressible input by more than a small margin."""
        return self.max_batch_bytes + self.max_batch_bytes // 8 + 1024

    @property
    def max_records(self) -> int:
        """Bound on records per batch: the smallest msgpack record takes 5 bytes."""
        return self.max_batch_bytes // 5


class StreamAcks:
    """Highest seq held per (token, stream), for the most recent ``capacity`` streams (LRU).

    The token is part of the key so that one client cannot move another's stream forward by
    guessing its id. A stream pushed out of the LRU starts again at 0 — a shim that comes back
    after that long resends everything it holds, so lines may repeat but are not lost.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"stream memory must hold at least 1 stream, not {capacity}")
        self.capacity = capacity
        self._acked: OrderedDict[tuple[str, str], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._acked)

    def acked(self, token: str, stream: str) -> int:
        key = (token, stream)
        seq = self._acked.get(key)
        if seq is None:
            return 0
        self._acked.move_to_end(key)
        return seq

    def record(self, token: str, stream: str, seq: int) -> None:
        key = (token, stream)
        self._acked[key] = seq
        self._acked.move_to_end(key)
        if len(self._acked) > self.capacity:
            self._acked.popitem(last=False)


class ShimConnectionClosed(Exception):
    """Ends one connection; ``reason`` is a bounded metrics label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ShimListener:
    """Serves shim stream connections into a ``Router``."""

    def __init__(self, router: Router, settings: ShimListenerSettings | None = None) -> None:
        self.router = router
        self.settings = settings or ShimListenerSettings()
        self.streams = StreamAcks(self.settings.remembered_streams)
        self._accept_loop = AcceptLoop(PROTOCOL, self.settings.max_connections)

    @property
    def open_connections(self) -> int:
        return self._accept_loop.open_connections

    async def serve(
        self,
        listeners: list[trio.SocketListener] | list[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` until cancelled."""
        await self._accept_loop.serve(
            listeners,
            self.handle_connection,
            refuse=self.refuse_overloaded,
            prepare=_limit_send_buffer,
            task_status=task_status,
        )

    async def refuse_overloaded(self, stream: trio.abc.Stream) -> None:
        """Past ``max_connections`` a new connection gets ERROR ``overloaded`` and is closed:
        the shim backs off and retries, its lines wait in its own buffer."""
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="overloaded").inc()
        frame = shimproto.encode_error(
            "overloaded",
            f"this router serves at most {self.settings.max_connections} shim connections; "
            "retry later",
        )
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await stream.send_all(frame)
        await close_within(stream, CLOSE_TIMEOUT_S)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Run one connection to its end; never raises (one client never affects another)."""
        _CONNECTIONS.inc()
        reason = "eof"
        try:
            connection = _ShimConnection(self, stream)
            try:
                await connection.run()
            except ProtocolError as exc:
                reason = "error"
                label = "unknown_token" if isinstance(exc, Unauthorized) else exc.code
                metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason=label).inc()
                log.info("shim connection refused: %s (%s)", exc.message, exc.code)
                await connection.send_error(exc.code, exc.message)
            except ShimConnectionClosed as exc:
                reason = exc.reason
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            reason = "error"
        except Exception:
            reason = "error"
            log.exception("shim connection failed unexpectedly; closing it")
        finally:
            await close_within(stream, CLOSE_TIMEOUT_S)
            _CONNECTIONS.dec()
            metrics.INGEST_CONNECTIONS_CLOSED.labels(protocol=PROTOCOL, reason=reason).inc()


def _limit_send_buffer(stream: trio.abc.Stream) -> None:
    """Keep the kernel send buffer small: the router sends only small control frames, and a
    peer that stops reading its ACKs then fills it soon and meets ``send_timeout_s``."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        with contextlib.suppress(OSError):
            transport.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def check_hello_fields(hello: shimproto.Hello) -> None:
    """Refuse HELLO fields the router cannot carry or must not remember at any size.

    ``ps`` becomes the syslog PROCID of every line (RFC 5424: 1..128 printable US-ASCII, no
    spaces), so a bad one would break every drain frame; ``stream`` is kept in the bounded
    stream memory, so it is bounded too (a uuid4 is 36 characters).
    """
    try:
        check_header_field("PROCID", hello.ps.encode("utf-8", "surrogateescape"), PROCID_MAX)
    except EncodeError as exc:
        raise ProtocolError(f"HELLO ps {hello.ps[:40]!r} is not usable as a ps: {exc}") from None
    if not 1 <= len(hello.stream) <= MAX_STREAM_ID_CHARS:
        raise ProtocolError(
            f"HELLO stream id must be 1..{MAX_STREAM_ID_CHARS} characters (a uuid4), "
            f"got {len(hello.stream)}"
        )
    if len(hello.token) > MAX_TOKEN_CHARS:
        raise Unauthorized("unknown token: check the token given to the shim (--token)")


class _ShimConnection:
    """The state of one shim connection between HELLO and close."""

    def __init__(self, listener: ShimListener, stream: trio.abc.Stream) -> None:
        self.router = listener.router
        self.settings = listener.settings
        self.streams = listener.streams
        self.stream = stream
        self.decoder = shimproto.ShimFrameDecoder(max_frame_bytes=self.settings.max_frame_bytes)
        self.token = ""
        self.stream_id = ""
        self.channel = ""
        self.acked = 0
        self.ps = b""
        self.sources: tuple[bytes, bytes, bytes] = (b"", b"", b"")

    async def run(self) -> None:
        hello = await self._receive_hello()
        self._accept_hello(hello)
        await self._send(
            shimproto.encode_ready(
                acked=self.acked,
                window=self.settings.window,
                max_batch_bytes=self.settings.max_batch_bytes,
            )
        )
        await self._serve_batches()

    async def _receive_hello(self) -> shimproto.Hello:
        with trio.move_on_after(self.settings.hello_timeout_s):
            while True:
                event = self.decoder.next_event()
                if event is None:
                    data = await self.stream.receive_some(RECEIVE_BYTES)
                    if not data:
                        raise ShimConnectionClosed("eof")
                    self.decoder.feed(bytes(data))
                    continue
                if isinstance(event, shimproto.Hello):
                    return event
                raise ProtocolError(
                    f"expected HELLO as the first frame, got {type(event).__name__}; "
                    "send HELLO first (DESIGN 4)"
                )
        log.info("shim connection closed: no HELLO within %.0f s", self.settings.hello_timeout_s)
        raise ShimConnectionClosed("hello_timeout")

    def _accept_hello(self, hello: shimproto.Hello) -> None:
        check_hello_fields(hello)
        info = self.router.lookup_token(hello.token)
        if info is None:
            raise Unauthorized("unknown token: check the token given to the shim (--token)")
        notice_source = info.source
        if hello.platform_token is not None:
            platform = self.router.lookup_token(hello.platform_token)
            if platform is not None and platform.channel == info.channel:
                notice_source = platform.source
        self.token = hello.token
        self.stream_id = hello.stream
        self.channel = info.channel
        self.ps = hello.ps.encode()
        # Sources of record kinds 1 (stdout), 2 (stderr) and 3 (shim notice).
        self.sources = (info.source, info.source, notice_source)
        self.acked = self.streams.acked(self.token, self.stream_id)

    async def _serve_batches(self) -> None:
        settings = self.settings
        pinged = False
        # Once a frame has begun it must be complete within frame_timeout_s: a peer trickling
        # one byte at a time cannot hold a frame buffer open for ever.
        frame_deadline = math.inf
        while True:
            timeout_s = settings.pong_timeout_s if pinged else settings.idle_ping_s
            data: bytes | bytearray = b""
            with trio.move_on_at(min(trio.current_time() + timeout_s, frame_deadline)):
                data = await self.stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise ShimConnectionClosed("eof")
            if not data:
                if trio.current_time() >= frame_deadline:
                    log.info(
                        "shim connection closed: a frame took longer than %.0f s to arrive",
                        settings.frame_timeout_s,
                    )
                    raise ShimConnectionClosed("frame_timeout")
                if pinged:
                    log.info("shim connection closed: no PONG within %.0f s", timeout_s)
                    raise ShimConnectionClosed("ping_timeout")
                pinged = True
                await self._send(shimproto.encode_ping())
                continue
            pinged = False
            self.decoder.feed(data if isinstance(data, bytes) else bytes(data))
            await self._process_frames()
            if not self.decoder.buffered:
                frame_deadline = math.inf
            elif frame_deadline == math.inf:
                frame_deadline = trio.current_time() + settings.frame_timeout_s

    async def _process_frames(self) -> None:
        """Decode every complete frame of the buffer, publish once, ACK once."""
        published: list[Message] = []
        message_bytes = 0
        acked_before = self.acked
        try:
            while (event := self.decoder.next_event()) is not None:
                if isinstance(event, shimproto.BatchFrame):
                    message_bytes += self._accept_batch(event, published)
                elif isinstance(event, shimproto.Pong):
                    pass
                elif isinstance(event, shimproto.Ping):
                    await self._send(shimproto.encode_pong())
                else:
                    raise ProtocolError(
                        f"unexpected {type(event).__name__} frame after HELLO; a shim sends "
                        "only BATCH, PING and PONG once connected"
                    )
        finally:
            # What was decoded before an error is still published; it is recorded as held,
            # so READY on the shim's next connection acknowledges it.
            if published:
                self.router.publish(self.channel, published)
                _MESSAGES.inc(len(published))
                _BYTES.inc(message_bytes)
        if self.acked != acked_before:
            await self._send(shimproto.encode_ack(self.acked))

    def _accept_batch(self, frame: shimproto.BatchFrame, published: list[Message]) -> int:
        """Decode a new batch into ``published``; return its message bytes (0: a resend)."""
        seq = frame.seq
        # Another connection of the same stream (a reconnect racing the old socket) may have
        # moved it on meanwhile: the shared record is the truth.
        self.acked = max(self.acked, self.streams.acked(self.token, self.stream_id))
        if seq <= self.acked:
            metrics.SHIM_DUPLICATE_BATCHES.inc()
            return 0
        if seq != self.acked + 1:
            raise ProtocolError(
                f"batch seq {seq} does not follow {self.acked}: seqs increase by one per batch "
                "and a reconnecting shim resends from READY's acked + 1"
            )
        if self.router.lookup_token(self.token) is None:
            raise Unauthorized("the token was revoked or its channel deleted")
        messages, message_bytes = shimproto.decode_batch_messages_and_bytes(
            frame.payload,
            max_bytes=self.settings.max_batch_bytes,
            max_records=self.settings.max_records,
            ps=self.ps,
            sources=self.sources,
        )
        published.extend(messages)
        self.acked = seq
        self.streams.record(self.token, self.stream_id, seq)
        return message_bytes

    async def _send(self, data: bytes) -> None:
        with trio.move_on_after(self.settings.send_timeout_s):
            await self.stream.send_all(data)
            return
        log.info(
            "shim connection closed: peer did not read for %.0f s", self.settings.send_timeout_s
        )
        raise ShimConnectionClosed("send_timeout")

    async def send_error(self, code: str, message: str) -> None:
        """Best effort: the peer may be gone or not reading; never wait long for it."""
        with trio.move_on_after(min(1.0, self.settings.send_timeout_s)):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.send_all(shimproto.encode_error(code, message))


class Unauthorized(ProtocolError):
    """HELLO's token is unknown (or was revoked while connected): ERROR ``unauthorized``."""

    code: ClassVar[str] = "unauthorized"
