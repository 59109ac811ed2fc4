"""The drain buffer: caps, drop-oldest, L10 placement and carry-over (DESIGN 5.5, 8)."""

from __future__ import annotations

import hypothesis
import hypothesis.strategies as st
import pytest
import trio

from drains._buffer import DrainBuffer, Taken
from logplex.codecs.records import Batch, Message

WALL_S = 1_795_000_000.0


def encode(messages: list[Message]) -> list[bytes]:
    return [m[4] + b"\n" for m in messages]


def notice(count: int, since_us: int, now_us: int) -> Message:
    return (now_us, 172, b"heroku", b"logplex", b"L10 %d since %d" % (count, since_us))


def make_buffer(max_messages: int = 10, max_bytes: int = 1 << 20) -> DrainBuffer:
    return DrainBuffer(
        max_messages=max_messages,
        max_bytes=max_bytes,
        encode=encode,
        memo_key="test",
        make_notice=notice,
        wall_clock_s=lambda: WALL_S,
    )


def batch(*numbers: int) -> Batch:
    return Batch([(0, 190, b"app", b"web.1", b"m%d" % n) for n in numbers])


def texts(taken: Taken | None) -> list[bytes]:
    assert taken is not None
    return [frame.rstrip(b"\n") for frame in taken.frames]


@pytest.mark.parametrize(
    ("pushes", "max_messages", "kept", "dropped"),
    [
        ([[1, 2, 3]], 10, [1, 2, 3], 0),
        ([[1, 2, 3], [4, 5]], 4, [2, 3, 4, 5], 1),  # oldest message of the first batch
        ([[1, 2], [3, 4], [5, 6]], 3, [4, 5, 6], 3),  # a whole batch and part of the next
        ([list(range(20))], 5, list(range(15, 20)), 15),  # one batch bigger than the cap
        ([[1], [2], [3], [4]], 1, [4], 3),
    ],
)
async def test_message_cap_drops_the_oldest(
    pushes: list[list[int]], max_messages: int, kept: list[int], dropped: int
) -> None:
    buffer = make_buffer(max_messages=max_messages)
    for numbers in pushes:
        buffer.push_batch(batch(*numbers))
    assert buffer.queued_messages == len(kept)
    assert buffer.dropped_total == dropped
    taken = buffer.take(1000, 1 << 20)
    expected = [b"m%d" % n for n in kept]
    if dropped:
        assert texts(taken)[0] == b"L10 %d since %d" % (dropped, WALL_S * 1_000_000)
        assert texts(taken)[1:] == expected
    else:
        assert texts(taken) == expected


async def test_byte_cap_drops_the_oldest() -> None:
    buffer = make_buffer(max_messages=1000, max_bytes=10)  # frames are 3 bytes: "mN\n"
    buffer.push_batch(batch(1, 2, 3))
    buffer.push_batch(batch(4, 5))
    assert buffer.queued_bytes == 9
    assert buffer.dropped_total == 2
    assert texts(buffer.take(100, 1000))[1:] == [b"m3", b"m4", b"m5"]


async def test_take_respects_message_and_byte_limits_and_keeps_order() -> None:
    buffer = make_buffer(max_messages=1000)
    buffer.push_batch(batch(*range(10)))
    buffer.push_batch(batch(*range(10, 20)))
    assert texts(buffer.take(4, 1 << 20)) == [b"m0", b"m1", b"m2", b"m3"]
    assert texts(buffer.take(100, 9)) == [b"m4", b"m5", b"m6"]  # 3 bytes each
    assert texts(buffer.take(8, 1 << 20)) == [b"m%d" % n for n in range(7, 15)]
    assert texts(buffer.take(100, 1 << 20)) == [b"m%d" % n for n in range(15, 20)]
    assert buffer.take(100, 100) is None
    assert buffer.queued_messages == 0
    assert buffer.queued_bytes == 0


async def test_take_always_hands_out_one_frame_even_over_the_byte_limit() -> None:
    buffer = make_buffer()
    buffer.push_batch(batch(123456))
    assert texts(buffer.take(10, 1)) == [b"m123456"]


async def test_frames_are_formatted_once_per_batch_and_key() -> None:
    calls: list[int] = []

    def counting(messages: list[Message]) -> list[bytes]:
        calls.append(len(messages))
        return encode(messages)

    shared = batch(1, 2, 3)
    for _ in range(10):
        other = DrainBuffer(
            max_messages=10, max_bytes=100, encode=counting, memo_key="k", make_notice=notice
        )
        other.push_batch(shared)
    assert calls == [3]


async def test_exactly_one_l10_per_loss_streak() -> None:
    buffer = make_buffer(max_messages=2)
    buffer.push_batch(batch(1, 2, 3))
    buffer.push_batch(batch(4, 5, 6))
    first = texts(buffer.take(100, 1 << 20))
    assert first[0].startswith(b"L10 4 since")
    buffer.push_batch(batch(7))
    assert texts(buffer.take(100, 1 << 20)) == [b"m7"]


async def test_given_up_batch_carries_its_count_and_its_notice_count() -> None:
    buffer = make_buffer(max_messages=2)
    buffer.push_batch(batch(1, 2, 3))  # drops m1
    taken = buffer.take(100, 1 << 20)
    assert texts(taken) == [b"L10 1 since %d" % (WALL_S * 1_000_000), b"m2", b"m3"]
    assert taken is not None
    buffer.settle(taken, delivered=False)  # e.g. a 404: 2 messages plus the notice's 1
    assert buffer.dropped_total == 3
    buffer.push_batch(batch(9))
    again = texts(buffer.take(100, 1 << 20))
    assert again == [b"L10 3 since %d" % (WALL_S * 1_000_000), b"m9"]


async def test_lone_notice_becomes_takeable_after_one_second(
    autojump_clock: trio.abc.Clock,
) -> None:
    buffer = make_buffer()
    buffer.push_batch(batch(1))
    taken = buffer.take(100, 1 << 20)
    assert taken is not None
    start = trio.current_time()
    buffer.settle(taken, delivered=False)
    assert buffer.take(100, 1 << 20) is None  # not yet: a batch may still follow
    await buffer.wait_takeable()
    assert trio.current_time() - start == pytest.approx(1.0)
    assert texts(buffer.take(100, 1 << 20)) == [b"L10 1 since %d" % (WALL_S * 1_000_000)]


async def test_notice_goes_with_the_next_batch_within_one_second(
    autojump_clock: trio.abc.Clock,
) -> None:
    buffer = make_buffer()
    buffer.push_batch(batch(1))
    taken = buffer.take(100, 1 << 20)
    assert taken is not None
    buffer.settle(taken, delivered=False)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def push_later() -> None:
            await trio.sleep(0.3)
            buffer.push_batch(batch(2))

        nursery.start_soon(push_later)
        await buffer.wait_takeable()
    assert trio.current_time() - start == pytest.approx(0.3)
    assert texts(buffer.take(100, 1 << 20))[1:] == [b"m2"]


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        make_buffer(max_messages=0)


async def test_unformattable_message_is_left_out_and_counted() -> None:
    def strict(messages: list[Message]) -> list[bytes]:
        for m in messages:
            if b" " in m[3]:
                raise ValueError("PROCID may not contain a space")
        return encode(messages)

    buffer = DrainBuffer(
        max_messages=10,
        max_bytes=1000,
        encode=strict,
        memo_key="strict",
        make_notice=notice,
        wall_clock_s=lambda: WALL_S,
    )
    bad = Batch([(0, 190, b"app", b"web.1", b"a"), (0, 190, b"app", b"web 1", b"b")])
    buffer.push_batch(bad)  # must not raise into the router's publish
    assert buffer.dropped_total == 1
    assert texts(buffer.take(10, 1000)) == [b"L10 1 since %d" % (WALL_S * 1_000_000), b"a"]


# -- property: the buffer behaves like the obvious list model ----------------------------

Op = tuple[str, int, int]


@hypothesis.given(
    max_messages=st.integers(1, 30),
    max_bytes=st.integers(5, 300),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(1, 12), st.integers(0, 20)),
            st.tuples(st.just("take"), st.integers(1, 15), st.integers(1, 120)),
        ),
        max_size=40,
    ),
)
async def test_matches_a_list_model(max_messages: int, max_bytes: int, ops: list[Op]) -> None:
    buffer = make_buffer(max_messages=max_messages, max_bytes=max_bytes)
    model: list[bytes] = []
    lost = 0
    counter = 0
    for kind, a, b in ops:
        if kind == "push":
            numbers = list(range(counter, counter + a))
            counter += a
            frames = [b"m%d" % n + b"." * ((n * 7 + b) % 9) for n in numbers]
            buffer.push_batch(Batch([(0, 190, b"app", b"web.1", f) for f in frames]))
            model.extend(f + b"\n" for f in frames)
            while len(model) > max_messages or sum(map(len, model)) > max_bytes:
                model.pop(0)
                lost += 1
        elif model:
            taken = buffer.take(a, b)
            assert taken is not None
            expected: list[bytes] = []
            size = 0
            if lost:
                notice_frame = b"L10 %d since %d\n" % (lost, WALL_S * 1_000_000)
                expected.append(notice_frame)
                size = len(notice_frame)
                lost = 0
            count = 0
            while model and count < a:
                if size + len(model[0]) > b and expected:
                    break
                size += len(model[0])
                expected.append(model.pop(0))
                count += 1
            assert taken.frames == expected
            assert taken.byte_count == size
            assert taken.message_count == count
        assert buffer.queued_messages == len(model)
        assert buffer.queued_bytes == sum(map(len, model))
        assert buffer.lost_pending == lost


async def test_a_refused_lone_notice_waits_for_the_next_batch(
    autojump_clock: trio.abc.Clock,
) -> None:
    buffer = make_buffer()
    buffer.push_batch(batch(1))
    first = buffer.take(100, 1 << 20)
    assert first is not None
    buffer.settle(first, delivered=False)  # refused for good: m1 is lost
    await buffer.wait_takeable()
    notice = buffer.take(100, 1 << 20)
    assert texts(notice) == [b"L10 1 since %d" % (WALL_S * 1_000_000)]
    assert notice is not None
    buffer.settle(notice, delivered=False)  # the lone notice is refused too
    # It does not beget another lone notice: nothing is takeable, however long we wait,
    # and a flush does not wait for it.
    assert not buffer.notice_due
    with trio.move_on_after(3600) as waited:
        await buffer.wait_takeable()
    assert waited.cancelled_caught
    assert buffer.take(100, 1 << 20) is None
    assert (buffer.lost_pending, buffer.dropped_total) == (1, 1)
    # The next batch carries the count.
    buffer.push_batch(batch(2))
    assert texts(buffer.take(100, 1 << 20)) == [b"L10 1 since %d" % (WALL_S * 1_000_000), b"m2"]


async def test_a_new_loss_after_a_refused_notice_is_told_alone_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    buffer = make_buffer(max_messages=1)
    buffer.push_batch(batch(1))
    first = buffer.take(100, 1 << 20)
    assert first is not None
    buffer.settle(first, delivered=False)
    await buffer.wait_takeable()
    notice = buffer.take(100, 1 << 20)
    assert notice is not None
    buffer.settle(notice, delivered=False)
    assert not buffer.notice_due
    buffer.push_batch(batch(2, 3))  # overflow: m2 dropped, m3 queued
    assert buffer.notice_due
    taken = buffer.take(100, 1 << 20)
    assert texts(taken) == [b"L10 2 since %d" % (WALL_S * 1_000_000), b"m3"]
