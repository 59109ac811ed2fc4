"""The shipper against routers that fail right after READY (DESIGN 4 and 8).

A failure streak lasts until a connection proves healthy, READY or not: the backoff keeps
growing, stderr hears of each failure once per streak, and a refused batch goes out once and
becomes an L13. The shipper runs in-process against a scripted router on a loopback port,
in virtual time, so minutes of reconnecting take milliseconds and connection attempts can be
counted.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing

from logplex.codecs.records import KIND_NOTICE, KIND_STDOUT
from logplex.codecs.shimbatch import decode_batch_records
from logplex.codecs.shimproto import (
    BatchFrame,
    Event,
    ShimFrameDecoder,
    encode_ack,
    encode_error,
    encode_ready,
)
from shims.options import RouterAddress, ShimOptions
from shims.shipper import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    HEALTHY_AFTER_S,
    WARNINGS_PER_STREAK,
    FailureStreak,
    Shipper,
    connection_proved_healthy,
)

MAX_FRAME_BYTES = 1024 * 1024
L13 = re.compile(rb"Error L13 \(Local delivery error\): (\d+) messages lost since \S+\.")
FAILED = re.compile(r"logshim: connection to router tcp://127\.0\.0\.1:\d+ failed: (.*); retrying")
AGAIN = re.compile(
    r"logshim: connected to router tcp://127\.0\.0\.1:\d+ again after (\d+) failed attempts"
)
Records = list[list[Any]]

# --- the pure decisions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acked_seq", "first_new_seq", "up_for_s", "healthy"),
    [
        (0, 1, 0.0, False),  # READY alone proves nothing
        (4, 5, 0.0, False),  # only the resends of READY were acknowledged (an L13 among them)
        (5, 5, 0.0, True),  # the first batch cut on this connection was acknowledged
        (9, 5, 0.1, True),
        (4, 5, HEALTHY_AFTER_S - 0.001, False),
        (4, 5, HEALTHY_AFTER_S, True),  # stayed up long enough, idle or not
        (0, 1, 3600.0, True),
    ],
)
def test_connection_proved_healthy(
    acked_seq: int, first_new_seq: int, up_for_s: float, healthy: bool
) -> None:
    assert connection_proved_healthy(acked_seq, first_new_seq, up_for_s) is healthy


@pytest.mark.parametrize(
    ("events", "shown", "ended_with"),
    [
        # (failure text | "healthy") → which failures are printed, what each end reports
        (["A", "A", "A"], [True, False, False], []),
        (["A", "B", "A", "B"], [True, True, False, False], []),
        (["A", "healthy", "A"], [True, True], [1]),
        (["A", "A", "healthy", "healthy", "A"], [True, False, True], [2, 0]),
        (["healthy"], [], [0]),
        (
            [f"text {n}" for n in range(WARNINGS_PER_STREAK + 2)],
            [True] * WARNINGS_PER_STREAK + [False, False],
            [],
        ),
    ],
)
def test_failure_streak(events: list[str], shown: list[bool], ended_with: list[int]) -> None:
    streak = FailureStreak()
    printed: list[bool] = []
    ended: list[int] = []
    for event in events:
        if event == "healthy":
            ended.append(streak.ended())
        else:
            printed.append(streak.failed(event))
    assert (printed, ended) == (shown, ended_with)


def test_failure_streak_length_is_the_backoff_attempt() -> None:
    streak = FailureStreak()
    for failures in range(1, 6):
        streak.failed("A")
        assert streak.failures == failures
    assert streak.ended() == 5
    assert streak.failures == 0


# --- a scripted router on a loopback port ---------------------------------------------------

# What a connection does after HELLO:
#   "serve"              READY, hold and ACK batches (seq rule of DESIGN 8), refuse `refuse`
#   "ready_then_error"   READY, then ERROR `code` at once
#   "ready_then_close"   READY, then close
#   "silent_then_close"  READY, then nothing for `silent_s`, then close
#   "refuse_first_batch" READY, ERROR bad_frame for the first batch that arrives
#   "ack_one_then_refuse" READY, hold and ACK the first batch, ERROR bad_frame for the next
#   "hold_no_ack"        READY, read batches, remember and acknowledge nothing
#   "error_before_ready" ERROR bad_frame in answer to HELLO


@dataclass
class Connection:
    opened_at_s: float
    mode: str
    closed_at_s: float | None = None


@dataclass
class ScriptedRouter:
    mode: str = "serve"
    code: str = "overloaded"
    window: int = 8
    silent_s: float = 0.0
    refuse: Callable[[Records], bool] = lambda records: False
    script: deque[str] = field(default_factory=deque)  # modes of the next connections
    port: int = 0
    connections: list[Connection] = field(default_factory=list)
    acked: int = 0
    held: dict[int, Records] = field(default_factory=dict)
    arrivals: list[tuple[int, Records]] = field(default_factory=list)
    refusals: int = 0
    violations: list[str] = field(default_factory=list)
    _live: set[trio.CancelScope] = field(default_factory=set)
    _changed: trio.Event = field(default_factory=trio.Event)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    def changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 600.0) -> None:
        with trio.fail_after(timeout_s):
            while not predicate():
                await self._changed.wait()

    def cut_all(self) -> None:
        for scope in list(self._live):
            scope.cancel()

    def held_lines(self, kind: int) -> list[bytes]:
        return [data for seq in sorted(self.held) for _ts, k, data in self.held[seq] if k == kind]

    async def _handle(self, stream: trio.SocketStream) -> None:
        mode = self.script.popleft() if self.script else self.mode
        connection = Connection(trio.current_time(), mode)
        self.connections.append(connection)
        self.changed()
        with trio.CancelScope() as scope:
            self._live.add(scope)
            try:
                async with stream:
                    await self._converse(stream, mode)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._live.discard(scope)
        connection.closed_at_s = trio.current_time()
        self.changed()

    async def _converse(self, stream: trio.SocketStream, mode: str) -> None:
        decoder = ShimFrameDecoder(MAX_FRAME_BYTES)
        await _next_event(stream, decoder)  # HELLO
        if mode == "error_before_ready":
            await self._end(stream, encode_error("bad_frame", "refused by the scripted router"))
            return
        await stream.send_all(encode_ready(self.acked, self.window, 65536))
        if mode == "ready_then_error":
            await self._end(stream, encode_error(self.code, "scripted failure"))
            return
        if mode == "ready_then_close":
            await self._end(stream, b"")
            return
        if mode == "silent_then_close":
            await trio.sleep(self.silent_s)
            await self._end(stream, b"")
            return
        batches_here = 0
        while (event := await _next_event(stream, decoder)) is not None:
            if not isinstance(event, BatchFrame):
                continue
            records = decode_batch_records(event.payload, max_bytes=65536, max_records=1000)
            self.arrivals.append((event.seq, records))
            batches_here += 1
            self.changed()
            if mode == "hold_no_ack":
                continue
            if (
                mode == "refuse_first_batch"
                or (mode == "ack_one_then_refuse" and batches_here == 2)
                or self.refuse(records)
            ):
                self.refusals += 1
                await self._end(stream, encode_error("bad_frame", "refused by the scripted router"))
                return
            if self.acked == 0 or event.seq == self.acked + 1:
                self.held[event.seq] = records
                self.acked = event.seq
            elif event.seq > self.acked + 1:
                self.violations.append(f"gap: seq {event.seq} after {self.acked}")
                await self._end(stream, encode_error("bad_frame", "seq gap"))
                return
            await stream.send_all(encode_ack(self.acked))
            self.changed()

    async def _end(self, stream: trio.SocketStream, last_frame: bytes) -> None:
        """Send the last frame and close without a reset: read what the shim still sends
        until it closes, so the shim reads ERROR rather than ECONNRESET."""
        if last_frame:
            await stream.send_all(last_frame)
        await stream.send_eof()
        with trio.move_on_after(30):
            while await stream.receive_some(65536):
                pass


async def _next_event(stream: trio.SocketStream, decoder: ShimFrameDecoder) -> Event | None:
    while (event := decoder.next_event()) is None:
        data = await stream.receive_some(65536)
        if not data:
            return None
        decoder.feed(bytes(data))
    return event


def make_shipper(router: ScriptedRouter) -> Shipper:
    options = ShimOptions(
        command=["app"],
        router=RouterAddress("127.0.0.1", router.port, tls=False),
        token="t.test",
        ps="web.1",
    )
    return Shipper(options, rng=random.Random(7))


def push(shipper: Shipper, lines: list[bytes]) -> None:
    shipper.push_lines(time.time_ns() // 1000, KIND_STDOUT, lines, trio.current_time())


async def until(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Poll in virtual time (the shim's state has no event to wait on)."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


def gaps_s(router: ScriptedRouter) -> list[float]:
    """Seconds from the end of each connection to the start of the next one."""
    pairs = zip(router.connections, router.connections[1:], strict=False)
    return [after.opened_at_s - (before.closed_at_s or 0.0) for before, after in pairs]


def failures_printed(stderr: str) -> list[str]:
    return [m.group(1) for line in stderr.splitlines() if (m := FAILED.fullmatch(line))]


def agains_printed(stderr: str) -> list[int]:
    return [int(m.group(1)) for line in stderr.splitlines() if (m := AGAIN.fullmatch(line))]


# --- the streak: backoff and stderr ---------------------------------------------------------

SPAN_S = 60.0


@pytest.mark.parametrize(
    ("mode", "window", "failure"),
    [
        ("ready_then_error", 8, "router refused the stream: overloaded: scripted failure"),
        ("ready_then_close", 8, "the router closed the connection"),
        # Each connection refuses the batch it gets first: the L13 standing in for the last.
        ("refuse_first_batch", 8, "router refused the stream: bad_frame: refused by the"),
        # Each connection acknowledges the L13 resend, then refuses the next new batch.
        ("ack_one_then_refuse", 1, "router refused the stream: bad_frame: refused by the"),
    ],
)
async def test_a_failure_right_after_ready_keeps_the_backoff_growing_and_is_printed_once(
    autojump_clock: trio.testing.MockClock,
    capfd: pytest.CaptureFixture[str],
    mode: str,
    window: int,
    failure: str,
) -> None:
    router = ScriptedRouter(mode=mode, window=window)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        shipper = make_shipper(router)
        push(shipper, [b"line %d" % n for n in range(30_000)])
        nursery.start_soon(shipper.run)
        await trio.sleep(SPAN_S)
        nursery.cancel_scope.cancel()
    attempts = len(router.connections)
    # Base delay for ever would be ~800 attempts in a minute; a growing one is ~20.
    assert 10 <= attempts <= 30, attempts
    # Once grown, every wait is at least half the cap (equal jitter).
    assert all(gap >= BACKOFF_CAP_S / 2 for gap in gaps_s(router)[-5:]), gaps_s(router)
    printed = failures_printed(capfd.readouterr().err)
    assert len(printed) == 1, printed
    assert printed[0].startswith(failure)
    assert router.violations == []


async def test_a_healthy_connection_ends_the_streak_once_and_the_next_streak_starts_over(
    autojump_clock: trio.testing.MockClock, capfd: pytest.CaptureFixture[str]
) -> None:
    router = ScriptedRouter(mode="ready_then_error")
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        shipper = make_shipper(router)
        nursery.start_soon(shipper.run)
        await trio.sleep(30.0)
        failed = len(router.connections)
        assert failed <= 20
        router.mode = "serve"
        push(shipper, [b"first %d" % n for n in range(10)])
        await router.wait_for(lambda: len(router.held_lines(KIND_STDOUT)) == 10)
        await until(shipper.outbox.is_empty)  # the shim read the ACK
        stderr = capfd.readouterr().err
        assert failures_printed(stderr) == [
            "router refused the stream: overloaded: scripted failure"
        ]
        assert agains_printed(stderr) == [failed]
        # The healthy connection lives on; then the router cuts it and refuses again.
        await trio.sleep(60.0)
        assert len(router.connections) == failed + 1
        router.mode = "ready_then_error"
        cut_at_s = trio.current_time()
        router.cut_all()
        await router.wait_for(lambda: len(router.connections) >= failed + 3)
        nursery.cancel_scope.cancel()
    # A new streak: its first wait is the base delay again, not the grown one.
    assert router.connections[failed + 1].opened_at_s - cut_at_s <= 2 * BACKOFF_BASE_S
    stderr = capfd.readouterr().err
    assert failures_printed(stderr) == [
        "the router closed the connection",
        "router refused the stream: overloaded: scripted failure",
    ]
    assert agains_printed(stderr) == []


@pytest.mark.parametrize(
    ("silent_s", "healthy"), [(HEALTHY_AFTER_S + 2.0, True), (HEALTHY_AFTER_S - 2.0, False)]
)
async def test_a_connection_that_stays_up_long_enough_is_healthy_even_when_idle(
    autojump_clock: trio.testing.MockClock,
    capfd: pytest.CaptureFixture[str],
    silent_s: float,
    healthy: bool,
) -> None:
    router = ScriptedRouter(mode="silent_then_close", silent_s=silent_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        nursery.start_soon(make_shipper(router).run)
        await router.wait_for(lambda: len(router.connections) >= 9)
        nursery.cancel_scope.cancel()
    gaps = gaps_s(router)[:8]
    stderr = capfd.readouterr().err
    if healthy:
        # Each connection ended its streak: every reconnect waits the base delay.
        assert all(gap <= 2 * BACKOFF_BASE_S for gap in gaps), gaps
        assert len(failures_printed(stderr)) == 8
        assert agains_printed(stderr) == [1] * 7
    else:
        assert gaps[-1] >= BACKOFF_CAP_S / 2, gaps
        assert failures_printed(stderr) == ["the router closed the connection"]
        assert agains_printed(stderr) == []


# --- refused batches --------------------------------------------------------------------------


async def test_a_refused_batch_is_sent_once_and_the_shim_goes_on_with_the_next(
    autojump_clock: trio.testing.MockClock, capfd: pytest.CaptureFixture[str]
) -> None:
    """DESIGN 8: a batch refused for good becomes an L13 on the next connection; the router
    never sees it again, however often it would refuse it."""

    def poisoned(records: Records) -> bool:
        return any(data == b"poison" for _ts, _kind, data in records)

    router = ScriptedRouter(refuse=poisoned)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        shipper = make_shipper(router)
        nursery.start_soon(shipper.run)
        push(shipper, [b"before %d" % n for n in range(10)])
        await router.wait_for(lambda: len(router.held_lines(KIND_STDOUT)) == 10)
        push(shipper, [b"poison"])
        await router.wait_for(lambda: router.refusals == 1)
        push(shipper, [b"after %d" % n for n in range(10)])
        await router.wait_for(lambda: len(router.held_lines(KIND_STDOUT)) == 20)
        await trio.sleep(120.0)  # time for any resend loop to show
        nursery.cancel_scope.cancel()
    assert sum(poisoned(records) for _seq, records in router.arrivals) == 1
    assert router.refusals == 1
    assert len(router.connections) == 2
    assert sorted(router.held) == [1, 2, 3]
    assert router.held_lines(KIND_STDOUT) == [b"before %d" % n for n in range(10)] + [
        b"after %d" % n for n in range(10)
    ]
    notices = router.held_lines(KIND_NOTICE)
    assert [int(m.group(1)) for line in notices if (m := L13.fullmatch(line))] == [1]
    assert shipper.outbox.lost_total == 1
    stderr = capfd.readouterr().err
    assert failures_printed(stderr) == [
        "router refused the stream: bad_frame: refused by the scripted router"
    ]
    assert agains_printed(stderr) == [1]


async def test_an_error_in_answer_to_hello_refuses_no_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """bad_frame before READY judged no batch: what the shim holds unacknowledged from an
    earlier connection is resent whole, not replaced by an L13."""
    router = ScriptedRouter(script=deque(["hold_no_ack", "error_before_ready"]))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.serve)
        shipper = make_shipper(router)
        nursery.start_soon(shipper.run)
        push(shipper, [b"line %d" % n for n in range(10)])
        await router.wait_for(lambda: len(router.arrivals) == 1)
        router.cut_all()
        await router.wait_for(lambda: len(router.held_lines(KIND_STDOUT)) == 10)
        nursery.cancel_scope.cancel()
    assert [c.mode for c in router.connections] == ["hold_no_ack", "error_before_ready", "serve"]
    assert router.held_lines(KIND_STDOUT) == [b"line %d" % n for n in range(10)]
    assert router.held_lines(KIND_NOTICE) == []
    assert shipper.outbox.lost_total == 0
