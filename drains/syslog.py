"""Syslog drains over TCP and TLS: RFC 6587 octet counting (DESIGN sections 5.1 and 8).

Frames are ``LEN SP <PRI>1 SP TS SP d.TOKEN SP SOURCE SP PS SP - SP - SP MSG LF``
(``logplex.codecs.drain_frames.syslog_frames``, once per published batch), coalesced into
writes of up to 256 KiB.

Delivery without silent loss across reconnects: every write is remembered with its position
in the connection's byte stream until the peer's TCP has acknowledged it. The socket's
unacknowledged-bytes count (``SIOCOUTQ``, the same ioctl number as ``TIOCOUTQ`` on Linux) is
read after each write and while idle: ``acknowledged = bytes written - outq``. When the
connection fails, what was not acknowledged is sent again first on the next connection, so
duplicates are possible and loss is not (DESIGN 8). Over plain TCP the mapping is exact to
the frame; over TLS positions are ciphertext bytes, so a write counts as acknowledged only
when all of its ciphertext is, and a partly acknowledged write is sent again whole.

Reconnects use capped exponential backoff (1 s doubling to 60 s, with jitter). TLS verifies
the certificate and host name against the system CAs plus ``DrainSettings.ca_file`` unless
the URL ends in ``#insecure``; a certificate failure posts one L14 notice into the channel
(``DrainContext.post_notice``) per failure streak. Each connect goes only where
``DrainSettings.destination_policy`` allows (``drains._connect``: resolved, checked, pinned);
a refusal is a failed connect (backoff and retry; frames stay queued), and under
``--deny-private-drains`` every other connect failure but a certificate one reads
``network error: could not connect``.
"""

from __future__ import annotations

import collections
import fcntl
import random
import ssl
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Final

import trio

from drains._base import DrainCore
from drains._buffer import Taken
from drains._connect import open_tcp_stream
from drains._errors import (
    certificate_error,
    certificate_reason,
    describe_exception,
    destination_refusal,
)
from drains._interface import DrainContext
from drains._notices import l14_message
from drains._policy import NETWORK_ERROR
from drains._retry import reconnect_delay_s
from drains._tls import client_tls_context
from drains._url import DrainURL
from logplex.codecs.drain_frames import syslog_frames
from logplex.codecs.records import Message

COALESCE_BYTES: Final = 256 * 1024
COALESCE_MESSAGES: Final = 8192
CONNECT_TIMEOUT_S: Final = 3.0
ACK_POLL_INTERVAL_S: Final = 0.05
RECONNECT_BASE_S: Final = 1.0
RECONNECT_CAP_S: Final = 60.0
_OUTQ_REQUEST: Final = termios.TIOCOUTQ  # == SIOCOUTQ on Linux


def unacknowledged_bytes(fd: int) -> int:
    """Bytes written to a TCP socket that its peer has not acknowledged yet (SIOCOUTQ)."""
    raw = fcntl.ioctl(fd, _OUTQ_REQUEST, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


def acknowledged_frames(frames: list[bytes], start_pos: int, acked_pos: int) -> int:
    """How many leading frames, laid out from ``start_pos``, end at or before ``acked_pos``."""
    position = start_pos
    count = 0
    for frame in frames:
        position += len(frame)
        if position > acked_pos:
            break
        count += 1
    return count


def split_taken(taken: Taken, frame_count: int) -> tuple[int, int, Taken | None]:
    """Split off the first ``frame_count`` frames of ``taken`` as delivered.

    Returns (delivered messages, delivered bytes, the rest or None). The L10 frame, when
    present, is the first frame and is not a message.
    """
    if frame_count <= 0:
        return 0, 0, taken
    delivered_bytes = sum(map(len, taken.frames[:frame_count]))
    delivered_messages = frame_count - (1 if taken.notice_count else 0)
    if frame_count >= len(taken.frames):
        return delivered_messages, delivered_bytes, None
    extent = taken.extent
    rest = Taken(
        frames=taken.frames[frame_count:],
        message_count=taken.message_count - delivered_messages,
        byte_count=taken.byte_count - delivered_bytes,
        extent=None if extent is None else (extent[0] + delivered_messages, extent[1]),
    )
    return delivered_messages, delivered_bytes, rest


class CountingSocketStream(trio.abc.HalfCloseableStream):
    """A ``trio.SocketStream`` whose ``send_all`` counts exactly the bytes the kernel took."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.bytes_sent = 0

    def fileno(self) -> int:
        return self.inner.socket.fileno()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.inner.socket
        view = memoryview(data)
        total = len(view)
        offset = 0
        with view:
            while offset < total:
                try:
                    sent = await sock.send(view[offset:])
                except OSError as exc:
                    raise trio.BrokenResourceError(f"send failed: {exc}") from exc
                offset += sent
                self.bytes_sent += sent

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass(slots=True)
class _Write:
    """One write on a connection: the taken frames and where they sit in the byte stream."""

    taken: Taken
    start_pos: int
    end_pos: int | None = None  # set once send_all returned


@dataclass(slots=True)
class _Connection:
    transport: CountingSocketStream
    stream: trio.abc.Stream
    exact: bool  # True for plain TCP: stream positions are frame bytes
    acked_pos: int = 0
    writes: collections.deque[_Write] = field(default_factory=collections.deque)
    failure: str | None = None
    peer_closed: bool = False  # an orderly EOF from the receiver


class SyslogDrain(DrainCore):
    """A ``syslog://`` (TCP) or ``syslog+tls://`` drain."""

    def __init__(self, ctx: DrainContext, url: DrainURL | None = None) -> None:
        token = ctx.token.encode()

        def encode(messages: list[Message]) -> list[bytes]:
            return syslog_frames(messages, token)

        super().__init__(ctx, url, encode=encode, memo_key=f"drains.syslog:{ctx.token}")
        self._resend: collections.deque[Taken] = collections.deque()
        self._random = random.Random()
        self._certificate_failure_reported = False
        self._tls: ssl.SSLContext | None = None
        if self.url.scheme == "syslog+tls":
            self._tls = client_tls_context(self.url, ctx.settings.ca_file)

    def held_for_resend(self) -> int:
        return sum(taken.message_count for taken in self._resend)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            if not self._resend:
                await self.queue.wait_takeable()
            try:
                conn = await self._connect()
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self._connect_failed(exc)
                await trio.sleep(reconnect_delay_s(failures, self._random.random()))
                failures += 1
                continue
            failures = 0
            await self._serve_connection(conn)
            if self._resend:  # it broke while sending: do not hammer the peer
                await trio.sleep(reconnect_delay_s(failures, self._random.random()))
                failures += 1

    # -- connecting -------------------------------------------------------------------

    async def _connect(self) -> _Connection:
        started = trio.current_time()
        with trio.fail_after(CONNECT_TIMEOUT_S):
            socket_stream = await open_tcp_stream(
                self.url.host, self.url.port, self.ctx.settings.destination_policy
            )
            transport = CountingSocketStream(socket_stream)
            stream: trio.abc.Stream = transport
            if self._tls is not None:
                tls_stream = trio.SSLStream(transport, self._tls, server_hostname=self.url.host)
                try:
                    await tls_stream.do_handshake()
                except BaseException:
                    await trio.aclose_forcefully(transport)
                    raise
                stream = tls_stream
        self.metrics.connect_seconds.observe(trio.current_time() - started)
        self._certificate_failure_reported = False
        self.record_connected()
        return _Connection(transport, stream, exact=self._tls is None)

    def _connect_failed(self, exc: BaseException) -> None:
        where = self.url.redacted()
        refusal = destination_refusal(exc)
        if refusal is not None:
            self.record_failure(f"{refusal} ({where})")
            return
        if self.ctx.settings.destination_policy.deny_private and certificate_error(exc) is None:
            self.record_failure(f"{NETWORK_ERROR} ({where})")  # no port-scan oracle
            return
        if isinstance(exc, trio.TooSlowError):
            self.record_failure(f"connect to {where} timed out after {CONNECT_TIMEOUT_S:g} s")
            return
        certificate = certificate_error(exc)
        if certificate is not None:
            reason = certificate_reason(certificate)
            self.record_failure(f"certificate validation failed for {where}: {reason}")
            if not self._certificate_failure_reported:
                self._certificate_failure_reported = True
                now_us = int(time.time() * 1_000_000)
                self.ctx.post_notice([l14_message(str(reason), self.url.target, now_us)])
            return
        self.record_failure(f"connect to {where} failed: {describe_exception(exc)}")

    # -- one connection ---------------------------------------------------------------

    async def _serve_connection(self, conn: _Connection) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_peer, conn, nursery.cancel_scope)
                try:
                    await self._pump(conn)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    conn.failure = describe_exception(exc)
                nursery.cancel_scope.cancel()
            self._release_acknowledged(conn)
            if conn.failure is not None and not (conn.peer_closed and not conn.writes):
                where = self.url.redacted()
                self.record_failure(f"connection to {where} failed: {conn.failure}")
            # A receiver closing an idle connection (everything acknowledged) is no failure:
            # the next batch simply opens a new one.
        finally:
            # Also on cancellation: count what was acknowledged, keep the rest for later.
            self._requeue_unacknowledged(conn)
            await trio.aclose_forcefully(conn.stream)

    async def _watch_peer(self, conn: _Connection, scope: trio.CancelScope) -> None:
        """Syslog receivers send nothing: EOF or an error here means the connection is gone."""
        try:
            while await conn.stream.receive_some(4096):
                pass
            conn.peer_closed = True
            conn.failure = conn.failure or "peer closed the connection"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            conn.failure = conn.failure or describe_exception(exc)
        scope.cancel()

    async def _pump(self, conn: _Connection) -> None:
        while True:
            if self._resend:
                taken = self._resend.popleft()
            else:
                if not self.queue.queued_messages and not self.queue.notice_due:
                    if conn.writes:
                        with trio.move_on_after(ACK_POLL_INTERVAL_S):
                            await self.queue.wait_takeable()
                        self._release_acknowledged(conn)
                        continue
                    await self.queue.wait_takeable()
                taken_or_none = self.queue.take(COALESCE_MESSAGES, COALESCE_BYTES)
                if taken_or_none is None:
                    # A pending L10 not due yet: poll acknowledgements meanwhile.
                    with trio.move_on_after(ACK_POLL_INTERVAL_S):
                        await self.queue.wait_takeable()
                    self._release_acknowledged(conn)
                    continue
                taken = taken_or_none
                self.in_flight_messages += taken.message_count
            write = _Write(taken, start_pos=conn.transport.bytes_sent)
            conn.writes.append(write)
            started = trio.current_time()
            await self.queue.wait_may_send()
            await conn.stream.send_all(b"".join(taken.frames))
            write.end_pos = conn.transport.bytes_sent
            self.metrics.request_seconds.observe(trio.current_time() - started)
            self._release_acknowledged(conn)

    def _update_acked_position(self, conn: _Connection) -> None:
        try:
            outq = unacknowledged_bytes(conn.transport.fileno())
        except OSError:
            return
        conn.acked_pos = max(conn.acked_pos, conn.transport.bytes_sent - outq)

    def _release_acknowledged(self, conn: _Connection) -> None:
        """Count every write the peer's TCP fully acknowledged as delivered."""
        self._update_acked_position(conn)
        released = False
        while conn.writes:
            write = conn.writes[0]
            if write.end_pos is None or write.end_pos > conn.acked_pos:
                break
            conn.writes.popleft()
            self.in_flight_messages -= write.taken.message_count
            self.record_delivered(write.taken.message_count, write.taken.byte_count)
            self.queue.settle(write.taken, delivered=True)
            released = True
        if released:
            self.signal_progress()

    def _requeue_unacknowledged(self, conn: _Connection) -> None:
        """After a failure: count what was acknowledged, queue the rest to be sent again."""
        self._release_acknowledged(conn)
        if not conn.writes:
            return
        pending: list[Taken] = []
        for write in conn.writes:
            taken = write.taken
            if conn.exact:
                acked = acknowledged_frames(taken.frames, write.start_pos, conn.acked_pos)
                messages, byte_count, rest = split_taken(taken, acked)
                if messages or byte_count:
                    self.in_flight_messages -= messages
                    self.record_delivered(messages, byte_count)
                if rest is None:
                    self.queue.settle(taken, delivered=True)
                    continue
                taken = rest
            self.record_retry(taken)
            pending.append(taken)
        conn.writes.clear()
        self._resend.extendleft(reversed(pending))
        self.signal_progress()
