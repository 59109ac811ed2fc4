"""Shipping: the outbox's batches to the router over the shim stream protocol v1.

DESIGN section 4 (frames, READY/ACK/PING, resend after reconnect), section 6 (``--url``,
``--ca-file``, ``--flush-timeout``) and section 8 (at-least-once, de-duplicated by
(stream, seq); L13 after a refusal; undelivered count at exit).

One connection at a time, over TCP or TLS (``tls://``; system CAs or ``--ca-file``):

- The protocol's rules (which frame when, cumulative ACKs, the seq rule, PONG) are
  ``logplex.codecs.shimsession.ShimSession``; this module moves its bytes and the outbox's.
- HELLO (same stream uuid for the whole run) → READY. Everything above READY's ``acked`` is
  resent, byte-identical and within the new window, then new batches follow while fewer than
  ``window`` are unacked.
- A sender task cuts batches from the outbox when one is due (500 lines, 64 KiB, 20 ms after
  its first line, or at exit), at most ``BATCHES_PER_TURN`` per turn so the pipe readers are
  never kept waiting, and coalesces the frames of a turn into one write. A receiver task
  applies cumulative ACKs, answers PING with PONG and turns ERROR into a reconnect (after
  ``bad_frame``/``too_large`` the refused batch becomes an L13 notice, see ``Outbox``; only
  an ERROR after a batch went out on the connection refuses one, never an answer to HELLO).
- Any failure closes the connection; the next attempt waits a capped exponential backoff with
  jitter (``reconnect_delay_s``). The readers never wait for any of this: they push into the
  outbox, which drops the oldest lines when full (or, with ``--block``, makes them wait).

Failure streaks. The failures since the last healthy connection are one streak
(``FailureStreak``): its length is the backoff attempt, and READY alone does not end it — a
router that answers READY and then ERROR (``overloaded``, a refused batch) or cuts the
connection keeps the backoff growing. A connection proves healthy
(``connection_proved_healthy``) once the router acknowledges a batch first sent on it (the
resends of READY, an L13 replacement among them, do not count) or once it has stayed up
``HEALTHY_AFTER_S``; that ends the streak and the next failure waits the base delay again.
On stderr each distinct failure text is printed once per streak (``logshim: connection to
router … failed: …; retrying``), at most ``WARNINGS_PER_STREAK`` texts, so alternating
failures do not repeat either; the end of a streak is one line ``logshim: connected to router
… again after N failed attempts``.
"""

from __future__ import annotations

import random
import ssl
import time
import uuid
from collections import deque
from typing import Any, Final, NoReturn, cast

import trio
import zstandard

from logplex.codecs import notices
from logplex.codecs.backoff import equal_jitter_delay_s
from logplex.codecs.errors import ProtocolError
from logplex.codecs.shimbatch import compress_records
from logplex.codecs.shimproto import PROTOCOL_VERSION, Hello, encode_batch_payload
from logplex.codecs.shimsession import Acked, Refused, Resume, ShimSession
from logplex.codecs.version import package_version
from shims.console import warn
from shims.options import RouterAddress, ShimOptions
from shims.outbox import Outbox, Record, SentBatch

ZSTD_LEVEL: Final = 1
CONNECT_TIMEOUT_S: Final = 10.0
READY_TIMEOUT_S: Final = 10.0
BACKOFF_BASE_S: Final = 0.1
BACKOFF_CAP_S: Final = 5.0
MAX_ROUTER_FRAME_BYTES: Final = 64 * 1024
RECEIVE_BYTES: Final = 64 * 1024
MAX_WRITE_BYTES: Final = 1024 * 1024
# Batches cut per turn of the send loop before the pipe readers get the CPU back: cutting a
# batch (pack + compress) costs ~0.5 ms, reading 1 MiB of lines ~3 ms; with a long turn the
# shipper would keep a fast app waiting on its pipe (see perf/shim.py).
BATCHES_PER_TURN: Final = 4
# A connection that stays up this long after READY ends a failure streak even if the router
# acknowledged nothing new (an idle app). Twice the backoff cap: a router that cuts every
# connection sooner keeps the streak, and the backoff, growing.
HEALTHY_AFTER_S: Final = 2 * BACKOFF_CAP_S
# Distinct failure texts printed per streak: a router's messages may carry changing numbers.
WARNINGS_PER_STREAK: Final = 4


def reconnect_delay_s(attempt: int, jitter: float) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based), ``jitter`` uniform in [0, 1).

    Capped exponential backoff with equal jitter: half the capped delay is fixed, half random,
    so a fleet of shims restarted together does not reconnect in lockstep.
    """
    return equal_jitter_delay_s(attempt, jitter, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S)


def connection_proved_healthy(acked_seq: int, first_new_seq: int, up_for_s: float) -> bool:
    """Whether a connection ends the failure streak (and so resets the backoff).

    ``acked_seq``: the highest seq the router acknowledged; ``first_new_seq``: the first seq
    cut after this connection's READY (everything below it was a resend); ``up_for_s``: how
    long the connection has been up since READY. Healthy: the router took a batch first sent
    on this connection, or the connection stayed up ``HEALTHY_AFTER_S``.
    """
    return acked_seq >= first_new_seq or up_for_s >= HEALTHY_AFTER_S


class FailureStreak:
    """The connection failures since the last healthy connection.

    ``failures`` is the streak's length (0: none); the next attempt waits
    ``reconnect_delay_s(failures - 1, …)``. ``failed`` tells whether a failure's text is to be
    printed: the first time that text occurs in the streak, for at most
    ``WARNINGS_PER_STREAK`` distinct texts. ``ended`` closes the streak and returns its length.
    """

    __slots__ = ("_shown", "failures")

    def __init__(self) -> None:
        self.failures = 0
        self._shown: set[str] = set()

    def failed(self, text: str) -> bool:
        """Count one failure; True if ``text`` is to be printed."""
        self.failures += 1
        if text in self._shown or len(self._shown) >= WARNINGS_PER_STREAK:
            return False
        self._shown.add(text)
        return True

    def ended(self) -> int:
        """A healthy connection: the streak is over; how many failures it had."""
        failures = self.failures
        self.failures = 0
        self._shown.clear()
        return failures


def agent_version() -> str:
    return f"logshim/{package_version()}"


class RouterRefused(Exception):
    """The router answered ERROR; the connection is over."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"router refused the stream: {code}: {message}")
        self.code = code


class ConnectionLost(Exception):
    """The router closed the connection or stopped answering."""


CONNECTION_ERRORS: Final = (
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    ProtocolError,
    RouterRefused,
    ConnectionLost,
    ssl.SSLError,
)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def describe_failure(exc: BaseException) -> str:
    """One line about why a connection failed: trio's wrappers name their cause."""
    while isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); pass --ca-file or fix the CA"
    return str(exc) or type(exc).__name__


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the router with the system CAs, or only with ``--ca-file`` when given."""
    return ssl.create_default_context(cafile=ca_file)


class Shipper:
    """Owns the outbox and the connection to the router."""

    def __init__(self, options: ShimOptions, *, rng: random.Random | None = None) -> None:
        assert options.router is not None
        assert options.token is not None
        self.router: RouterAddress = options.router
        self.options = options
        self.stream_id = str(uuid.uuid4())
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self.outbox = Outbox(
            options.buffer_bytes,
            encode=self._encode,
            overflow_notice=notices.l12_local_overflow,
            delivery_notice=notices.l13_local_delivery,
            block=options.block,
        )
        self._rng = rng or random.Random()
        self._ssl_context = ssl_context(options.ca_file) if options.router.tls else None
        self._hello = Hello(
            PROTOCOL_VERSION,
            options.token,
            options.ps,
            self.stream_id,
            agent_version(),
            options.platform_token,
        )
        self.flushing = False
        self.connected = False
        self.window = 1
        self.max_batch_bytes = 64 * 1024
        self.connections = 0
        self.batches_sent = 0
        self.batches_resent = 0
        self.streak = FailureStreak()
        # The current connection: when READY came, the first seq cut after it, whether it
        # proved healthy yet, and whether a batch went out on it (a refusal names one).
        self._ready_at_s = 0.0
        self._first_new_seq = 1
        self._proved_healthy = False
        self._sent_on_connection = False
        self._wake = trio.Event()
        self._progress = trio.Event()

    # --- the sink the pipe readers push into -----------------------------------------

    def push_lines(self, ts_us: int, kind: int, lines: list[bytes], now_s: float) -> None:
        self.outbox.push_lines(ts_us, kind, lines, now_s)
        self._wake.set()

    def push_notice(self, text: bytes) -> None:
        self.outbox.push_notice(time.time_ns() // 1000, text, trio.current_time())
        self._wake.set()

    async def wait_for_room(self) -> None:
        """``--block``: return once the outbox has room again (after an ack frees it)."""
        while not self.outbox.has_room():
            progress = self._progress
            await progress.wait()

    def _encode(self, seq: int, records: list[Record]) -> bytes:
        compressed = compress_records(cast("list[list[Any]]", records), self._compressor)
        return encode_batch_payload(seq, compressed)

    def _made_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
        self._wake.set()

    # --- lifecycle --------------------------------------------------------------------

    async def flush(self, timeout_s: float) -> None:
        """Cut everything pending now, and wait until all is acknowledged or the timeout."""
        self.flushing = True
        self._wake.set()
        with trio.move_on_after(timeout_s):
            while not self.outbox.is_empty():
                await self._progress.wait()

    async def run(self) -> None:
        """Connect, ship, and reconnect with backoff, until cancelled."""
        while True:
            try:
                await self._connect_and_ship()
            except* CONNECTION_ERRORS as failures:
                self._check_health()  # it may have lasted long enough before it failed
                self._report(_first_leaf(failures))
            self.connected = False
            attempt = max(self.streak.failures - 1, 0)
            await trio.sleep(reconnect_delay_s(attempt, self._rng.random()))

    def _report(self, exc: BaseException) -> None:
        text = describe_failure(exc)
        if self.streak.failed(text):
            warn(f"logshim: connection to router {self.router!r} failed: {text}; retrying")

    def _check_health(self) -> None:
        """End the failure streak once the current connection proved healthy."""
        if not self.connected or self._proved_healthy:
            return
        up_for_s = trio.current_time() - self._ready_at_s
        if not connection_proved_healthy(self.outbox.acked_seq, self._first_new_seq, up_for_s):
            return
        self._proved_healthy = True
        failures = self.streak.ended()
        if failures:
            warn(
                f"logshim: connected to router {self.router!r} again "
                f"after {failures} failed attempts"
            )

    async def _check_health_later(self) -> None:
        await trio.sleep(HEALTHY_AFTER_S)
        self._check_health()

    async def _open_stream(self) -> trio.abc.Stream:
        with trio.fail_after(CONNECT_TIMEOUT_S):
            tcp = await trio.open_tcp_stream(self.router.host, self.router.port)
            if self._ssl_context is None:
                tcp.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, 1)
                return tcp
            tls = trio.SSLStream(tcp, self._ssl_context, server_hostname=self.router.host)
            await tls.do_handshake()
            return tls

    async def _connect_and_ship(self) -> None:
        self._sent_on_connection = False
        stream = await self._open_stream()
        async with stream:
            session = ShimSession(self._hello, max_frame_bytes=MAX_ROUTER_FRAME_BYTES)
            await stream.send_all(session.start())
            with trio.fail_after(READY_TIMEOUT_S):
                resume = await self._receive_ready(stream, session)
            self.connections += 1
            self.window = resume.window
            self.max_batch_bytes = resume.max_batch_bytes
            resend = deque(self.outbox.resume(resume.acked, time.time_ns() // 1000))
            self.connected = True
            self._ready_at_s = trio.current_time()
            self._first_new_seq = self.outbox.next_seq
            self._proved_healthy = False
            self._made_progress()
            self.batches_resent += len(resend)
            send_lock = trio.StrictFIFOLock()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive_loop, stream, session, send_lock)
                nursery.start_soon(self._check_health_later)
                await self._send_loop(stream, session, send_lock, resend)

    async def _receive_ready(self, stream: trio.abc.Stream, session: ShimSession) -> Resume:
        while True:
            event = session.next_event()
            if event is None:
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    raise ConnectionLost("the router closed the connection before READY")
                session.receive_data(bytes(data))
                continue
            if isinstance(event, Refused):
                self._refused(event)
            assert isinstance(event, Resume)  # the session's table allows nothing else
            return event

    def _refused(self, event: Refused) -> NoReturn:
        # bad_frame/too_large refuse the first unacknowledged batch only if one went out on
        # this connection: before that (an ERROR in answer to HELLO) no batch was judged.
        if event.batch_refused and self._sent_on_connection:
            self.outbox.note_refusal(time.time_ns() // 1000)
        raise RouterRefused(event.code, event.message)

    async def _receive_loop(
        self, stream: trio.abc.Stream, session: ShimSession, send_lock: trio.StrictFIFOLock
    ) -> None:
        while True:
            # The frames after READY in its own read come first.
            while (event := session.next_event()) is not None:
                if isinstance(event, Acked):
                    if self.outbox.ack(event.seq):
                        self._made_progress()
                        if not self._proved_healthy:
                            self._check_health()
                else:
                    assert isinstance(event, Refused)  # the session's table allows no other
                    self._refused(event)
            pongs = session.data_to_send()
            if pongs:
                async with send_lock:
                    await stream.send_all(pongs)
            data = await stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise ConnectionLost("the router closed the connection")
            session.receive_data(bytes(data))

    async def _send_loop(
        self,
        stream: trio.abc.Stream,
        session: ShimSession,
        send_lock: trio.StrictFIFOLock,
        resend: deque[SentBatch],
    ) -> None:
        """Send what the window allows: first the resends (oldest first), then new batches."""
        outbox = self.outbox
        while True:
            wake = self._wake = trio.Event()
            now_s = trio.current_time()
            frames: list[bytes] = []
            size = 0
            # Resends count against the window once they are on the wire, like new batches.
            while (
                resend
                and session.may_send(len(outbox.unacked) - len(resend))
                and size < MAX_WRITE_BYTES
            ):
                resent = resend.popleft()
                session.sending(resent.seq)
                frames.append(resent.frame)
                size += len(resent.frame)
            while (
                not resend
                and session.may_send(len(outbox.unacked))
                and len(frames) < BATCHES_PER_TURN
                and outbox.batch_due(now_s, flushing=self.flushing)
            ):
                batch = outbox.cut_batch(time.time_ns() // 1000, self.max_batch_bytes)
                if batch is None:
                    break
                session.sending(batch.seq)
                frames.append(batch.frame)
                size += len(batch.frame)
            if frames:
                self.batches_sent += len(frames)  # resends included
                self._sent_on_connection = True
                async with send_lock:
                    await stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))
                continue
            deadline = outbox.batch_deadline_s()
            if deadline is None or resend or not session.may_send(len(outbox.unacked)):
                deadline = trio.current_time() + 3600.0
            with trio.move_on_at(deadline):
                await wake.wait()
