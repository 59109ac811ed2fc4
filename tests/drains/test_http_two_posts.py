"""An HTTPS drain with two posts in flight on two keep-alive connections (docs/drains.md).

The second connection carries a post only while a full post (1000 messages or 100 KiB) is
waiting; each post keeps its own Frame-Id, retries and accounting, and DESIGN 8's balance
(delivered + the L10 counts = published) holds whichever post fails. Over real loopback
sockets with the scriptable receiver; time is virtual.
"""

from __future__ import annotations

from collections.abc import Awaitable

import pytest
import trio
import trio.testing
from drains_fake_http import FakeHttpReceiver, Recorded, Reply
from drains_support import T0_US, app_messages, batches, https_fields, octet_frames, tally
from test_http import assert_accounted, make_drain, received, running

from drains._buffer import DrainBuffer
from drains.http import lane_to_use
from logplex.codecs.records import Batch, Message


@pytest.mark.parametrize(
    ("busy", "backlogged", "retrying", "lane"),
    [
        ([False, False], False, False, 0),  # idle: the first connection, whatever is queued
        ([False, False], True, False, 0),
        ([True, False], False, False, None),  # one in flight, a partial post waiting: wait
        ([True, False], True, False, 1),  # one in flight, a full post waiting: the other one
        ([False, True], True, False, 0),
        ([False, True], False, False, None),
        ([True, False], True, True, None),  # the one in flight is being retried: wait
        ([False, True], True, True, None),
        ([True, True], True, False, None),  # both in flight: wait for one
        ([True, True], False, False, None),
    ],
)
def test_lane_to_use(busy: list[bool], backlogged: bool, retrying: bool, lane: int | None) -> None:
    assert lane_to_use(busy, backlogged=backlogged, retrying=retrying) == lane


def numbers_of(request: Recorded) -> list[int]:
    """The message numbers (``line N``) of one post's app frames, in body order."""
    out = []
    for payload in octet_frames(request.body):
        msg = https_fields(payload)[5]
        if msg.startswith(b"line "):
            out.append(int(msg.split()[1]))
    return out


class InFlight:
    """A responder that holds each request ``delay_s`` and records the most held at once."""

    def __init__(self, delay_s: float, statuses: dict[int, int] | None = None) -> None:
        self.delay_s = delay_s
        self.statuses = statuses or {}
        self.now = 0
        self.most = 0
        self.connections_of: dict[int, int] = {}

    async def __call__(self, request: Recorded, index: int) -> Reply:
        self.now += 1
        self.most = max(self.most, self.now)
        self.connections_of[index] = request.connection
        try:
            await trio.sleep(self.delay_s)
        finally:
            self.now -= 1
        return Reply(self.statuses.get(index, 204))


async def test_a_backlog_uses_both_connections_and_status_counts_both_posts(
    io_clock: trio.testing.MockClock,
) -> None:
    stall = trio.Event()

    async def respond(request: Recorded, index: int) -> Reply:
        await stall.wait()
        return Reply(204)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver, buffer_messages=10_000) as drain:
        for batch in batches(3000, 100):
            drain.push_batch(batch)
        while len(receiver.requests) < 2:
            await receiver.arrived.wait()
        await trio.sleep(1)
        assert len(receiver.requests) == 2  # never more than two posts out
        assert receiver.connections == 2
        assert drain.status().buffered == 3000  # 1000 queued, two posts of 1000 in flight
        assert drain.queue.queued_messages == 1000
        stall.set()
        await drain.wait_flushed()
    for request in receiver.requests:  # in order within each post
        numbers = numbers_of(request)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert len({r.headers["logplex-frame-id"] for r in receiver.requests}) == 3
    assert assert_accounted(receiver, 3000) == (3000, 0)
    assert drain.status().buffered == 0


async def test_a_light_load_keeps_one_connection_and_strict_order(
    io_clock: trio.testing.MockClock,
) -> None:
    responder = InFlight(delay_s=0.1)
    receiver = FakeHttpReceiver(responder)
    async with running(receiver, buffer_messages=10_000) as drain:
        for batch in batches(3000, 100):  # 500 messages arrive per post's round trip
            drain.push_batch(batch)
            await trio.sleep(0.02)
        await drain.wait_flushed()
    assert receiver.connections == 1
    assert responder.most == 1
    assert [n for r in receiver.requests for n in numbers_of(r)] == list(range(3000))
    assert assert_accounted(receiver, 3000) == (3000, 0)


async def test_one_post_retried_after_500_while_the_other_is_delivered(
    io_clock: trio.testing.MockClock,
) -> None:
    responder = InFlight(delay_s=0.5, statuses={0: 500})
    receiver = FakeHttpReceiver(responder)
    async with running(receiver, buffer_messages=10_000) as drain:
        for batch in batches(2500, 500):
            drain.push_batch(batch)
        await drain.wait_flushed()
    first = receiver.requests[0]
    assert first.headers["x-test-outcome"] == "500"
    assert responder.most == 2
    assert responder.connections_of[1] != responder.connections_of[0]
    [retry] = [
        r
        for r in receiver.requests[1:]
        if r.headers["logplex-frame-id"] == first.headers["logplex-frame-id"]
    ]
    assert retry.body == first.body
    assert retry.headers["x-test-outcome"] == "204"
    assert assert_accounted(receiver, 2500) == (2500, 0)
    status = drain.status()
    assert (status.delivered, status.dropped, status.buffered) == (2500, 0, 0)


async def test_a_404_on_one_of_two_posts_is_reported_once_with_its_exact_count(
    io_clock: trio.testing.MockClock,
) -> None:
    responder = InFlight(delay_s=0.5, statuses={1: 404})
    receiver = FakeHttpReceiver(responder)
    async with running(receiver, buffer_messages=10_000) as drain:
        for batch in batches(2500, 500):
            drain.push_batch(batch)
        await drain.wait_flushed()
        drain.push_batch(Batch(app_messages(5, start=2500)))  # carries the L10
        await drain.wait_flushed()
    assert responder.most == 2
    refused = receiver.requests[1]
    assert refused.headers["x-test-outcome"] == "404"
    refused_count = int(refused.headers["logplex-msg-count"])
    assert refused_count == len(numbers_of(refused)) > 0
    _, lost, notices = tally(received(receiver))
    assert (lost, notices) == (refused_count, 1)
    assert assert_accounted(receiver, 2505) == (2505 - refused_count, refused_count)
    assert drain.status().dropped == refused_count


async def test_removing_the_drain_closes_both_connections(
    io_clock: trio.testing.MockClock,
) -> None:
    stall = trio.Event()

    async def respond(request: Recorded, index: int) -> Reply:
        await stall.wait()
        return Reply(204)

    receiver = FakeHttpReceiver(respond)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(receiver.url, buffer_messages=10_000)
        drain_scope = trio.CancelScope()

        async def run_drain() -> None:
            with drain_scope:
                await drain.run()

        nursery.start_soon(run_drain)
        for batch in batches(3000, 1000):
            drain.push_batch(batch)
        while len(receiver.requests) < 2:
            await receiver.arrived.wait()
        drain_scope.cancel()  # what the router does when the drain is removed
        stall.set()  # the receiver answers into closed connections, then sees them gone
        with trio.fail_after(5):
            while receiver.closed < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert (receiver.connections, receiver.closed) == (2, 2)


def encode(messages: list[Message]) -> list[bytes]:
    return [m[4] + b"\n" for m in messages]


def notice(count: int, since_us: int, now_us: int) -> Message:
    return (now_us, 172, b"heroku", b"logplex", b"L10 %d since %d" % (count, since_us))


@pytest.mark.parametrize("failed", ["with_notice", "without_notice", "both", "neither"])
async def test_buffer_with_two_outstanding_takes_reports_each_loss_once(failed: str) -> None:
    buffer = DrainBuffer(
        max_messages=5,
        max_bytes=1 << 20,
        encode=encode,
        memo_key="test",
        make_notice=notice,
        wall_clock_s=lambda: 1_795_000_000.0,
    )
    buffer.push_batch(Batch([(T0_US, 190, b"app", b"web.1", b"m%d" % n) for n in range(8)]))
    assert buffer.dropped_total == 3  # the oldest three: an L10 of 3 is owed
    first = buffer.take(2, 1 << 20)
    second = buffer.take(2, 1 << 20)
    assert first is not None
    assert second is not None
    assert (first.notice_count, first.message_count) == (3, 2)  # the notice goes in one only
    assert (second.notice_count, second.message_count) == (0, 2)
    fail_first = failed in ("with_notice", "both")
    fail_second = failed in ("without_notice", "both")
    buffer.settle(second, delivered=not fail_second)  # out of order, as posts may finish
    buffer.settle(first, delivered=not fail_first)
    owed = (3 + 2 if fail_first else 0) + (2 if fail_second else 0)
    assert buffer.lost_pending == owed
    assert buffer.dropped_total == 3 + (2 if fail_first else 0) + (2 if fail_second else 0)
    last = buffer.take(10, 1 << 20)
    assert last is not None
    assert last.notice_count == owed
    assert last.message_count == 1
    delivered = (0 if fail_first else 2) + (0 if fail_second else 2) + 1
    reported_in_delivered_notices = (0 if fail_first else 3) + owed
    assert delivered + reported_in_delivered_notices == 8


async def test_a_request_unanswered_for_10_s_is_retried_on_a_new_connection(
    io_clock: trio.testing.MockClock,
) -> None:
    async def respond(request: Recorded, index: int) -> Reply:
        if index == 0:
            await trio.sleep(30)  # never answered in time
        # The retry's answer waits a little, so the error of the timed-out attempt is read
        # before the delivery clears it.
        return Reply(204, delay_s=0.1)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(3)))
        await receiver.arrived.wait()
        started = trio.current_time()
        await receiver.arrived.wait()  # the retry
        waited = trio.current_time() - started
        error = drain.status().last_error
        await drain.wait_flushed()
    assert 10.0 <= waited <= 10.5  # the timeout, then a backoff of at most 0.5 s
    assert error is not None
    assert error.startswith("request timed out after 10 s (http://localhost:")
    first, retry = receiver.requests
    assert retry.connection != first.connection
    assert retry.body == first.body
    assert retry.headers["logplex-frame-id"] == first.headers["logplex-frame-id"]
    assert assert_accounted(receiver, 3) == (3, 0)


async def test_at_most_one_post_overtakes_a_post_being_retried(
    io_clock: trio.testing.MockClock,
) -> None:
    # The first post fails three times while a backlog of eight more waits: only the post
    # already in flight beside it may be delivered first.
    responder = InFlight(delay_s=0.2)
    failures_left: dict[str, int] = {}

    def respond(request: Recorded, index: int) -> Reply | Awaitable[Reply]:
        frame_id = request.headers["logplex-frame-id"]
        if index == 0:
            failures_left[frame_id] = 3
        if failures_left.get(frame_id, 0) > 0:
            failures_left[frame_id] -= 1
            return Reply(503)
        return responder(request, index)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver, buffer_messages=20_000) as drain:
        for batch in batches(9000, 1000):
            drain.push_batch(batch)
        await drain.wait_flushed()
    first_id = receiver.requests[0].headers["logplex-frame-id"]
    delivered_ids = [r.headers["logplex-frame-id"] for r in receiver.delivered()]
    assert [r.headers["x-test-outcome"] for r in receiver.requests].count("503") == 3
    assert delivered_ids.index(first_id) <= 1
    assert len(delivered_ids) == len(set(delivered_ids)) == 9
    assert assert_accounted(receiver, 9000) == (9000, 0)
