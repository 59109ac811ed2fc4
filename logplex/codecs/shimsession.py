"""The shim stream's rules, written once for both ends (DESIGN section 4, section 8 first bullet).

Sans-IO, as h11 keeps HTTP's: bytes in, events and bytes out, time passed in as ``now_s``
(no clocks, no sockets). ``RouterSession`` is the router's side of one connection,
``ShimSession`` the shim's; the I/O code around them only moves bytes, runs timers at
``deadline_s()`` and does what the events say.

Which frame may come (``IN``) or go (``OUT``) in which state is one table per side,
``ROUTER_TRANSITIONS`` and ``SHIM_TRANSITIONS``; a frame the table does not list for the
current state is ERROR ``bad_frame``. ERROR is the last frame either way: it closes.

The seq rule (``judge_seq``): seqs start at 1 and grow by one per batch within a stream. The
router answers READY with ``acked``, the highest seq it holds for the stream, or 0 when it
does not know the stream (a restart, or a stream it forgot): then the first seq the shim
sends starts the stream, whatever it is (the shim resends everything it holds
unacknowledged, so a restart may duplicate lines but never cuts a shim off). Once a stream
is known, a seq at or below ``acked`` is a resend of something held (dropped), ``acked + 1``
is the next batch, anything else is a gap (``bad_frame``). After READY the shim resends every
batch above ``acked``, oldest first, then goes on with new ones; ACKs are cumulative.

Before HELLO is accepted the router reads at most ``max_hello_bytes`` per frame (a HELLO is a
few hundred bytes), so an unauthenticated peer cannot make it hold a large partial frame, and
HELLO must arrive within ``hello_timeout_s``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from logplex.codecs import shimproto
from logplex.codecs.errors import ShimFrameError
from logplex.codecs.shimproto import (
    Ack,
    BatchFrame,
    ErrorFrame,
    Event,
    Hello,
    Ping,
    Pong,
    Ready,
    ShimFrameDecoder,
)

__all__ = [
    "IN",
    "MAX_HELLO_BYTES",
    "OUT",
    "REFUSAL_CODES",
    "ROUTER_TRANSITIONS",
    "SHIM_TRANSITIONS",
    "Acked",
    "BatchVerdict",
    "Refused",
    "Resume",
    "RouterSession",
    "RouterSessionLimits",
    "SessionTimeout",
    "ShimSession",
    "State",
    "judge_seq",
]

MAX_HELLO_BYTES: Final = 4096
# ERROR codes that refuse one batch for good (DESIGN 8: it becomes an L13, the shim goes on).
REFUSAL_CODES: Final = frozenset({"bad_frame", "too_large"})


class State(enum.Enum):
    IDLE = "idle"  # shim: connected, HELLO not yet sent
    AWAIT_HELLO = "await_hello"  # router: connected, HELLO not yet received
    AUTHENTICATING = "authenticating"  # router: HELLO received, its token not yet judged
    AWAIT_READY = "await_ready"  # shim: HELLO sent
    STREAMING = "streaming"  # both: READY went out / came in
    CLOSED = "closed"  # both: ERROR went out / came in


IN: Final = "in"
OUT: Final = "out"

Transitions = dict[tuple[State, str, type[Event]], State]

ROUTER_TRANSITIONS: Final[Transitions] = {
    (State.AWAIT_HELLO, IN, Hello): State.AUTHENTICATING,
    (State.AWAIT_HELLO, OUT, ErrorFrame): State.CLOSED,
    (State.AUTHENTICATING, OUT, Ready): State.STREAMING,
    (State.AUTHENTICATING, OUT, ErrorFrame): State.CLOSED,
    (State.STREAMING, IN, BatchFrame): State.STREAMING,
    (State.STREAMING, IN, Ping): State.STREAMING,
    (State.STREAMING, IN, Pong): State.STREAMING,
    (State.STREAMING, OUT, Ack): State.STREAMING,
    (State.STREAMING, OUT, Ping): State.STREAMING,
    (State.STREAMING, OUT, Pong): State.STREAMING,
    (State.STREAMING, OUT, ErrorFrame): State.CLOSED,
}

SHIM_TRANSITIONS: Final[Transitions] = {
    (State.IDLE, OUT, Hello): State.AWAIT_READY,
    (State.AWAIT_READY, IN, Ready): State.STREAMING,
    (State.AWAIT_READY, IN, ErrorFrame): State.CLOSED,
    (State.STREAMING, IN, Ack): State.STREAMING,
    (State.STREAMING, IN, Ping): State.STREAMING,
    (State.STREAMING, IN, ErrorFrame): State.CLOSED,
    (State.STREAMING, OUT, BatchFrame): State.STREAMING,
    (State.STREAMING, OUT, Pong): State.STREAMING,
}

_FRAME_NAMES: Final[dict[type[Event], str]] = {
    Hello: "HELLO",
    Ready: "READY",
    BatchFrame: "BATCH",
    Ack: "ACK",
    Ping: "PING",
    Pong: "PONG",
    ErrorFrame: "ERROR",
}


def _expected(table: Transitions, state: State, direction: str) -> str:
    names = [_FRAME_NAMES[kind] for (at, way, kind) in table if at is state and way == direction]
    return ", ".join(names) or "nothing"


def _step(table: Transitions, state: State, direction: str, kind: type[Event]) -> State:
    """The state after ``kind`` goes ``direction`` in ``state``; a frame received out of turn
    is the peer's error (``ShimFrameError``), one sent out of turn is ours (``RuntimeError``)."""
    following = table.get((state, direction, kind))
    if following is not None:
        return following
    if direction == IN:
        raise ShimFrameError(
            f"unexpected {_FRAME_NAMES[kind]} frame in state {state.value}; expected "
            f"{_expected(table, state, IN)} (DESIGN 4)"
        )
    raise RuntimeError(f"cannot send {_FRAME_NAMES[kind]} in state {state.value}")


class BatchVerdict(enum.Enum):
    ACCEPT = "accept"  # the next batch of the stream (or the first of an unknown one)
    DUPLICATE = "duplicate"  # already held: drop it, acknowledge it
    REFUSE = "refuse"  # a gap: ERROR bad_frame


def judge_seq(seq: int, acked: int) -> BatchVerdict:
    """The router's seq rule for one BATCH; ``acked`` 0 means the stream is not known."""
    if acked == 0 or seq == acked + 1:
        return BatchVerdict.ACCEPT
    if seq <= acked:
        return BatchVerdict.DUPLICATE
    return BatchVerdict.REFUSE


class SessionTimeout(Exception):
    """A deadline ran out: close without ERROR. ``reason`` is a bounded metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- the router's side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouterSessionLimits:
    """What the router offers in READY, its frame bounds and its timers (DESIGN 4)."""

    window: int
    max_batch_bytes: int
    max_frame_bytes: int
    max_hello_bytes: int = MAX_HELLO_BYTES
    hello_timeout_s: float = 10.0
    idle_ping_s: float = 30.0
    pong_timeout_s: float = 10.0
    frame_timeout_s: float = 30.0


class RouterSession:
    """The router's side of one shim connection.

    ``receive_data(data, now_s)``, then ``next_event()`` until None: it returns only HELLO
    (answer with ``accept_hello`` or ``refuse``) and BATCH (judge it with ``admit_batch``,
    and once its records are in the router, ``batch_held``); PING and PONG are handled here
    (a PONG is queued). After the read, ``data_to_send()`` gives the PONGs and one
    cumulative ACK. ``deadline_s()`` is when ``on_deadline(now_s)`` is due: it returns a
    PING or raises ``SessionTimeout``. Protocol errors raise ``ProtocolError`` (answer with
    ``refuse(exc.code, exc.message)`` and close).
    """

    __slots__ = (
        "_ack_sent",
        "_decoder",
        "_frame_started_s",
        "_framed_since_feed",
        "_hello_deadline_s",
        "_last_activity_s",
        "_outgoing",
        "_pinged",
        "_receive_s",
        "acked",
        "limits",
        "state",
    )

    def __init__(self, limits: RouterSessionLimits, now_s: float) -> None:
        self.limits = limits
        self.state = State.AWAIT_HELLO
        self.acked = 0
        self._ack_sent = 0
        self._decoder = ShimFrameDecoder(max_frame_bytes=limits.max_hello_bytes)
        self._outgoing: list[bytes] = []
        self._hello_deadline_s = now_s + limits.hello_timeout_s
        self._last_activity_s = now_s
        self._receive_s = now_s
        self._pinged = False
        self._frame_started_s: float | None = None
        self._framed_since_feed = False

    @property
    def max_frame_bytes(self) -> int:
        """The bound on the next frame: HELLO-sized until HELLO is accepted."""
        return self._decoder.max_frame_bytes

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def receive_data(self, data: bytes, now_s: float) -> None:
        self._decoder.feed(data)
        self._receive_s = self._last_activity_s = now_s
        self._pinged = False
        self._framed_since_feed = False

    def next_event(self) -> Hello | BatchFrame | None:
        """The next HELLO or BATCH of what was received; None once all complete frames are
        taken (call ``data_to_send`` then)."""
        while True:
            event = self._decoder.next_event()
            if event is None:
                if not self._decoder.buffered:
                    self._frame_started_s = None
                elif self._frame_started_s is None or self._framed_since_feed:
                    self._frame_started_s = self._receive_s
                return None
            self._framed_since_feed = True
            self.state = _step(ROUTER_TRANSITIONS, self.state, IN, type(event))
            if isinstance(event, BatchFrame | Hello):
                return event
            if isinstance(event, Ping):
                self._send(Pong, shimproto.encode_pong())

    def accept_hello(self, acked: int) -> bytes:
        """HELLO's token is good: READY with ``acked`` (0 for a stream not known here)."""
        ready = shimproto.encode_ready(
            acked=acked, window=self.limits.window, max_batch_bytes=self.limits.max_batch_bytes
        )
        self.state = _step(ROUTER_TRANSITIONS, self.state, OUT, Ready)
        self.acked = self._ack_sent = acked
        self._decoder.max_frame_bytes = self.limits.max_frame_bytes
        return ready

    def admit_batch(self, frame: BatchFrame, stream_acked: int = 0) -> BatchVerdict:
        """Judge one BATCH by the seq rule. ``stream_acked`` is what the router holds for the
        stream beyond this connection (another connection of the same stream may have moved
        it on). ACCEPT: decode it, then ``batch_held``; DUPLICATE: drop it; a gap raises
        ``ShimFrameError`` (bad_frame)."""
        if stream_acked > self.acked:
            self.acked = stream_acked
        verdict = judge_seq(frame.seq, self.acked)
        if verdict is BatchVerdict.REFUSE:
            raise ShimFrameError(
                f"batch seq {frame.seq} does not follow {self.acked}: seqs increase by one per "
                "batch and a reconnecting shim resends from READY's acked + 1"
            )
        return verdict

    def batch_held(self, seq: int) -> None:
        """The accepted batch ``seq`` is in the router: it is acknowledged with this read."""
        self.acked = seq

    def data_to_send(self) -> bytes:
        """The frames due after a read: PONGs, then one cumulative ACK if ``acked`` moved."""
        if self.acked != self._ack_sent and self.state is State.STREAMING:
            self._ack_sent = self.acked
            self._send(Ack, shimproto.encode_ack(self.acked))
        frames = self._outgoing
        if not frames:
            return b""
        self._outgoing = []
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def refuse(self, code: str, message: str) -> bytes:
        """ERROR ``code``: the last frame of the connection."""
        self.state = _step(ROUTER_TRANSITIONS, self.state, OUT, ErrorFrame)
        return shimproto.encode_error(code, message)

    def deadline_s(self) -> float:
        """When ``on_deadline`` is due unless more bytes arrive first."""
        limits = self.limits
        if self.state is not State.STREAMING:
            return self._hello_deadline_s
        idle_s = limits.pong_timeout_s if self._pinged else limits.idle_ping_s
        deadline = self._last_activity_s + idle_s
        if self._frame_started_s is not None:
            deadline = min(deadline, self._frame_started_s + limits.frame_timeout_s)
        return deadline

    def on_deadline(self, now_s: float) -> bytes:
        """The deadline passed: the PING to send, or ``SessionTimeout``."""
        limits = self.limits
        if self.state is not State.STREAMING:
            raise SessionTimeout("hello_timeout", f"no HELLO within {limits.hello_timeout_s:.0f} s")
        if (
            self._frame_started_s is not None
            and now_s >= self._frame_started_s + limits.frame_timeout_s
        ):
            raise SessionTimeout(
                "frame_timeout",
                f"a frame took longer than {limits.frame_timeout_s:.0f} s to arrive",
            )
        if self._pinged:
            raise SessionTimeout("ping_timeout", f"no PONG within {limits.pong_timeout_s:.0f} s")
        self._pinged = True
        self._last_activity_s = now_s
        self.state = _step(ROUTER_TRANSITIONS, self.state, OUT, Ping)
        return shimproto.encode_ping()

    def _send(self, kind: type[Event], frame: bytes) -> None:
        self.state = _step(ROUTER_TRANSITIONS, self.state, OUT, kind)
        self._outgoing.append(frame)


# --- the shim's side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resume:
    """READY came: resend every batch above ``acked`` (oldest first, within ``window``
    unacknowledged), then go on with new ones of at most ``max_batch_bytes`` of content."""

    acked: int
    window: int
    max_batch_bytes: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The router holds every batch up to ``seq`` (cumulative; only sent when it advances)."""

    seq: int


@dataclass(frozen=True, slots=True)
class Refused:
    """ERROR from the router; the connection is over. ``batch_refused``: the first
    unacknowledged batch is refused for good (it becomes an L13 on the next connection)."""

    code: str
    message: str
    batch_refused: bool


class ShimSession:
    """The shim's side of one connection to the router.

    ``start()`` gives HELLO. ``receive_data(data)``, then ``next_event()`` until None:
    ``Resume`` (once, after READY), ``Acked``, ``Refused`` (the end); PING is answered here
    (``data_to_send()`` gives the PONG). Before sending a BATCH call ``may_send`` with the
    count of batches in flight and ``sending(seq)``, which checks the seq rule.
    """

    __slots__ = ("_decoder", "_hello", "_last_sent", "_outgoing", "acked", "state", "window")

    def __init__(self, hello: Hello, *, max_frame_bytes: int) -> None:
        self.state = State.IDLE
        self.acked = 0
        self.window = 0
        self._hello = hello
        self._decoder = ShimFrameDecoder(max_frame_bytes=max_frame_bytes)
        self._outgoing: list[bytes] = []
        self._last_sent = 0

    def start(self) -> bytes:
        self.state = _step(SHIM_TRANSITIONS, self.state, OUT, Hello)
        hello = self._hello
        return shimproto.encode_hello(
            hello.token, hello.ps, hello.stream, hello.agent, hello.platform_token
        )

    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_event(self) -> Resume | Acked | Refused | None:
        while (event := self._decoder.next_event()) is not None:
            self.state = _step(SHIM_TRANSITIONS, self.state, IN, type(event))
            if isinstance(event, Ack):
                if event.seq > self.acked:
                    self.acked = event.seq
                    return Acked(event.seq)
            elif isinstance(event, Ping):
                self.state = _step(SHIM_TRANSITIONS, self.state, OUT, Pong)
                self._outgoing.append(shimproto.encode_pong())
            elif isinstance(event, Ready):
                self.acked = event.acked
                self.window = event.window
                return Resume(event.acked, event.window, event.max_batch_bytes)
            else:
                assert isinstance(event, ErrorFrame)
                return Refused(event.code, event.message, event.code in REFUSAL_CODES)
        return None

    def data_to_send(self) -> bytes:
        frames = self._outgoing
        self._outgoing = []
        return b"".join(frames)

    def may_send(self, in_flight: int) -> bool:
        """Whether one more batch fits the window, with ``in_flight`` unacknowledged."""
        return self.state is State.STREAMING and in_flight < self.window

    def sending(self, seq: int) -> None:
        """A BATCH goes out. The seq rule on this side: the first after READY is the oldest
        batch above ``acked`` (any seq, if the router did not know the stream), each next
        one is one more; a break is this shim's own bug (``RuntimeError``)."""
        self.state = _step(SHIM_TRANSITIONS, self.state, OUT, BatchFrame)
        if self._last_sent and seq != self._last_sent + 1:
            raise RuntimeError(f"batch seq {seq} does not follow {self._last_sent}")
        self._last_sent = seq
