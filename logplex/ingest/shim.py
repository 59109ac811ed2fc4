"""The shim stream listener (DESIGN section 4, protocol v1; delivery rules of section 8).

One task per connection, each independent: a bad or slow client only ever ends its own
connection. The protocol's rules (which frame when, the seq rule, the HELLO-sized frame bound
before authentication, the PING/PONG and frame timers) are ``logplex.codecs.shimsession``'s
``RouterSession``; this module moves bytes and owns what needs the router:

- HELLO: its fields are checked and its token with ``router.lookup_token`` (unknown -> ERROR
  ``unauthorized``). READY carries ``acked``, the highest seq the router holds for this
  (token, stream), kept in a bounded LRU (``StreamAcks``); 0 for a stream it does not know,
  whose first batch then starts it (a restarted router never cuts a shim off).
- BATCH: a new one is decoded (``logplex.codecs.shimbatch``) with a bound on its decompressed
  size and record count; every batch of one read is published in one ``router.publish``
  call, and then ONE cumulative ACK goes back: the records are in the router's memory before
  they are acknowledged (DESIGN 8). Every complete frame of a read is processed at once,
  HELLO and the batches sent with it included.
- Deadlines: HELLO within ``hello_timeout_s``; PING after ``idle_ping_s`` without a frame and
  close ``pong_timeout_s`` later; a begun frame complete within ``frame_timeout_s``; every
  send within ``send_timeout_s`` (a peer that does not read its ACKs is closed). Each such
  close is counted in ``logplex_deadline_closes_total{listener="shim",deadline=...}``
  (``hello``, ``idle`` for a missing PONG, ``frame``, ``send``).
- At most ``max_connections`` at once and ``max_connections_per_ip`` from one source
  address (``AcceptLoop``); past either a new connection gets ERROR ``overloaded`` naming
  the limit and is closed (memory stays bounded; the shim keeps its lines and retries).
- Any protocol error -> ERROR frame with its code (best effort, bounded) and close.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Final

import trio

from logplex import metrics
from logplex.codecs import shimproto
from logplex.codecs.errors import EncodeError, ProtocolError
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import PROCID_MAX, check_header_field
from logplex.codecs.shimbatch import decode_batch_messages_and_bytes
from logplex.codecs.shimsession import (
    MAX_HELLO_BYTES,
    BatchVerdict,
    RouterSession,
    RouterSessionLimits,
    SessionTimeout,
)
from logplex.codecs.spoolformat import StreamMark
from logplex.fanout.router import Router
from logplex.ingest.accept import AcceptLoop, Refusal, close_within

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
    max_connections_per_ip: int = 1000
    remembered_streams: int = 100_000
    max_hello_bytes: int = MAX_HELLO_BYTES

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
        if router.spool is not None:
            # After a restart the spool knows every stream's last durable batch.
            for (token, stream), seq in router.spool.streams.items():
                self.streams.record(token, stream, seq)
        settings = self.settings
        self.session_limits = RouterSessionLimits(
            window=settings.window,
            max_batch_bytes=settings.max_batch_bytes,
            max_frame_bytes=settings.max_frame_bytes,
            max_hello_bytes=settings.max_hello_bytes,
            hello_timeout_s=settings.hello_timeout_s,
            idle_ping_s=settings.idle_ping_s,
            pong_timeout_s=settings.pong_timeout_s,
            frame_timeout_s=settings.frame_timeout_s,
        )
        self._accept_loop = AcceptLoop(
            PROTOCOL, self.settings.max_connections, self.settings.max_connections_per_ip
        )

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

    async def refuse_overloaded(self, stream: trio.abc.Stream, refusal: Refusal) -> None:
        """Past a connection cap a new connection gets ERROR ``overloaded`` naming the limit
        and is closed: the shim backs off and retries, its lines wait in its own buffer."""
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="overloaded").inc()
        frame = shimproto.encode_error("overloaded", refusal.describe(PROTOCOL))
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


# SessionTimeout reasons (and the send deadline) -> the ``deadline`` label.
DEADLINE_LABELS: Final = {
    "hello_timeout": "hello",
    "ping_timeout": "idle",
    "frame_timeout": "frame",
    "send_timeout": "send",
}


def _count_deadline_close(reason: str) -> None:
    metrics.DEADLINE_CLOSES.labels(
        listener=PROTOCOL, deadline=DEADLINE_LABELS.get(reason, "idle")
    ).inc()


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
    """One shim connection: moves bytes between the socket and its ``RouterSession``."""

    def __init__(self, listener: ShimListener, stream: trio.abc.Stream) -> None:
        self.router = listener.router
        self.settings = listener.settings
        self.streams = listener.streams
        self.stream = stream
        self.session = RouterSession(listener.session_limits, trio.current_time())
        self.token = ""
        self.stream_id = ""
        self.channel = ""
        self.ps = b""
        self.sources: tuple[bytes, bytes, bytes] = (b"", b"", b"")

    async def run(self) -> None:
        session = self.session
        while True:
            data: bytes | bytearray = b""
            # Before HELLO is accepted, read no more than a HELLO may hold.
            receive_bytes = min(RECEIVE_BYTES, session.max_frame_bytes + 5)
            with trio.move_on_at(session.deadline_s()):
                data = await self.stream.receive_some(receive_bytes)
                if not data:
                    raise ShimConnectionClosed("eof")
            if not data:
                try:
                    ping = session.on_deadline(trio.current_time())
                except SessionTimeout as exc:
                    log.info("shim connection closed: %s", exc.message)
                    _count_deadline_close(exc.reason)
                    raise ShimConnectionClosed(exc.reason) from None
                await self._send(ping)
                continue
            session.receive_data(
                data if isinstance(data, bytes) else bytes(data), trio.current_time()
            )
            await self._process_frames()

    async def _process_frames(self) -> None:
        """Every complete frame of what was read: publish once, then PONGs and one ACK."""
        session = self.session
        published: list[Message] = []
        message_bytes = 0
        try:
            while (event := session.next_event()) is not None:
                if isinstance(event, shimproto.BatchFrame):
                    message_bytes += self._accept_batch(event, published)
                else:
                    await self._send(session.accept_hello(self._accept_hello(event)))
        finally:
            # What was decoded before an error is still published; it is recorded as held,
            # so READY on the shim's next connection acknowledges it.
            if published:
                mark = StreamMark(self.token, self.stream_id, session.acked)
                self.router.publish(self.channel, published, mark)
                _MESSAGES.inc(len(published))
                _BYTES.inc(message_bytes)
        if (self.router.spool is not None or self.router.cluster is not None) and session.acked:
            # An ACK means durable (DESIGN 8): written and fsynced, with the batches of
            # every other connection that went into the same group commit.
            await self.router.wait_durable()
        replies = session.data_to_send()
        if replies:
            await self._send(replies)

    def _accept_hello(self, hello: shimproto.Hello) -> int:
        """Check HELLO and its token; return the seq held for its stream (0: not known)."""
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
        held = self.streams.acked(self.token, self.stream_id)
        spool = self.router.spool
        if spool is not None:
            # READY promises durability: what this process holds but has not fsynced yet is
            # resent by the shim and dropped here as a duplicate, then ACKed once durable.
            return spool.acked_seq(self.token, self.stream_id)
        return held

    def _accept_batch(self, frame: shimproto.BatchFrame, published: list[Message]) -> int:
        """Decode a new batch into ``published``; return its message bytes (0: a resend)."""
        # Another connection of the same stream (a reconnect racing the old socket) may have
        # moved it on meanwhile: the shared record is the truth.
        verdict = self.session.admit_batch(frame, self.streams.acked(self.token, self.stream_id))
        if verdict is BatchVerdict.DUPLICATE:
            metrics.SHIM_DUPLICATE_BATCHES.inc()
            return 0
        if self.router.lookup_token(self.token) is None:
            raise Unauthorized("the token was revoked or its channel deleted")
        messages, message_bytes = decode_batch_messages_and_bytes(
            frame.payload,
            max_bytes=self.settings.max_batch_bytes,
            max_records=self.settings.max_records,
            ps=self.ps,
            sources=self.sources,
        )
        if self.router.cluster is not None:
            # One JetStream message per shim batch, its Nats-Msg-Id from (stream, seq): a
            # resend of this batch through any router is dropped by JetStream as a duplicate.
            self.router.publish(
                self.channel, messages, StreamMark(self.token, self.stream_id, frame.seq)
            )
            _MESSAGES.inc(len(messages))
            _BYTES.inc(message_bytes)
        else:
            published.extend(messages)
        self.session.batch_held(frame.seq)
        self.streams.record(self.token, self.stream_id, frame.seq)
        return message_bytes

    async def _send(self, data: bytes) -> None:
        with trio.move_on_after(self.settings.send_timeout_s):
            await self.stream.send_all(data)
            return
        log.info(
            "shim connection closed: peer did not read for %.0f s", self.settings.send_timeout_s
        )
        _count_deadline_close("send_timeout")
        raise ShimConnectionClosed("send_timeout")

    async def send_error(self, code: str, message: str) -> None:
        """Best effort: the peer may be gone or not reading; never wait long for it."""
        try:
            frame = self.session.refuse(code, message)
        except RuntimeError:  # already closed
            return
        with trio.move_on_after(min(1.0, self.settings.send_timeout_s)):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self.stream.send_all(frame)


class Unauthorized(ProtocolError):
    """HELLO's token is unknown (or was revoked while connected): ERROR ``unauthorized``."""

    code: ClassVar[str] = "unauthorized"
