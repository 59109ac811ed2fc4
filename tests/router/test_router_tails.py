"""Tail sessions: filters (DESIGN 3), bounded drop-oldest buffer and the L11 notice (5.5)."""

from __future__ import annotations

import re

import pytest
import trio
import trio.testing
from dataplane_helpers import make_messages

from logplex.codecs.records import PRI_ROUTER_NOTICE, Message
from logplex.fanout.tails import TailSession, message_filter, overflow_after_push

L11 = re.compile(
    rb"Error L11 \(Tail buffer overflow\) -> This tail session dropped (\d+) messages since "
    rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00\.$"
)


def msg(source: bytes, ps: bytes) -> Message:
    return (0, 190, source, ps, b"x")


@pytest.mark.parametrize(
    ("ps", "source", "message", "expected"),
    [
        (None, None, msg(b"app", b"web.1"), True),
        (b"web", None, msg(b"app", b"web.1"), True),
        (b"web", None, msg(b"app", b"web"), True),
        (b"web", None, msg(b"app", b"webx.1"), False),
        (b"web", None, msg(b"app", b"worker.1"), False),
        (b"web.1", None, msg(b"app", b"web.1"), True),
        (b"web.1", None, msg(b"app", b"web.10"), False),
        (b"web.1", None, msg(b"app", b"web.1.2"), True),
        (None, b"app", msg(b"app", b"web.1"), True),
        (None, b"app", msg(b"heroku", b"router"), False),
        (None, b"ap", msg(b"app", b"web.1"), False),  # source is exact, never a prefix
        (b"web", b"app", msg(b"app", b"web.2"), True),
        (b"web", b"app", msg(b"heroku", b"web.2"), False),
    ],
)
def test_message_filter(
    ps: bytes | None, source: bytes | None, message: Message, expected: bool
) -> None:
    assert message_filter(ps=ps, source=source)(message) is expected


@pytest.mark.parametrize(
    ("buffered", "incoming", "capacity", "lost"),
    [
        (0, 10, 1024, 0),
        (1000, 24, 1024, 0),
        (1000, 25, 1024, 1),
        (1024, 1, 1024, 1),
        (0, 3000, 1024, 1976),
        (5, 5, 1, 9),
    ],
)
def test_overflow_accounting(buffered: int, incoming: int, capacity: int, lost: int) -> None:
    assert overflow_after_push(buffered, incoming, capacity) == lost


async def test_receive_waits_for_pushed_messages() -> None:
    session = TailSession(capacity=10)
    received: list[list[Message]] = []

    async def reader() -> None:
        received.append(await session.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert received == []
        session.push(make_messages(3))
    assert received == [make_messages(3)]


async def test_overflow_drops_oldest_then_one_l11_first() -> None:
    session = TailSession(capacity=1024)
    for start in range(0, 3000, 100):
        session.push(make_messages(100, start=start))
    first = await session.receive()
    notice, rest = first[0], first[1:]
    assert notice[1] == PRI_ROUTER_NOTICE
    assert notice[2:4] == (b"heroku", b"logplex")
    match = L11.match(notice[4])
    assert match is not None, notice[4]
    assert int(match.group(1)) == 3000 - 1024
    assert rest == make_messages(1024, start=3000 - 1024)  # the newest survive, in order
    # Accounting invariant: delivered + reported = published.
    assert len(rest) + int(match.group(1)) == 3000
    session.push(make_messages(1, start=5000))
    assert await session.receive() == make_messages(1, start=5000)  # no second notice


async def test_filter_applies_at_push_so_l11_counts_only_matching() -> None:
    session = TailSession(capacity=4, accepts=message_filter(ps=b"web", source=None))
    session.push(make_messages(10, ps=b"worker.1"))
    session.push(make_messages(6, ps=b"web.2"))
    got = await session.receive()
    match = L11.match(got[0][4])
    assert match is not None
    assert int(match.group(1)) == 2
    assert [m[3] for m in got[1:]] == [b"web.2"] * 4


async def test_finish_delivers_what_is_buffered_then_end_of_channel() -> None:
    session = TailSession(capacity=10)
    session.push(make_messages(2))
    session.finish()
    session.push(make_messages(2, start=2))  # ignored once finished
    assert await session.receive() == make_messages(2)
    with pytest.raises(trio.EndOfChannel):
        await session.receive()


async def test_close_wakes_a_waiting_reader_and_calls_back_once() -> None:
    closed: list[TailSession] = []
    session = TailSession(capacity=10, on_close=closed.append)

    async def reader() -> None:
        with pytest.raises(trio.EndOfChannel):
            await session.receive()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        with session:
            pass
    session.close()
    assert closed == [session]


async def test_one_batch_larger_than_the_buffer() -> None:
    session = TailSession(capacity=1024)
    session.push(make_messages(10))
    session.push(make_messages(5000, start=10))
    got = await session.receive()
    match = L11.match(got[0][4])
    assert match is not None
    assert int(match.group(1)) == 5010 - 1024
    assert got[1:] == make_messages(1024, start=5010 - 1024)
