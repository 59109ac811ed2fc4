"""The owner's pieces without NATS: checkpoints, history coverage, channel logs, posts and
their Frame-Ids (logplex.cluster.partition). The partition's stream is played into the
owner message by message, as its reader would."""

from __future__ import annotations

from typing import Any

import trio
import zstandard

from logplex.cluster.bridge import StreamMessage
from logplex.cluster.partition import (
    Checkpoint,
    DrainCursor,
    PartitionOwner,
    _History,
    cluster_frame_id,
)
from logplex.codecs.clusterbatch import encode_batch
from logplex.codecs.records import Message

COMPRESSOR = zstandard.ZstdCompressor()


class RecordingRouter:
    """The router side an owner talks to, recording what it was handed."""

    history_lines = 1500

    def __init__(self, channels_with_drains: set[str]) -> None:
        self.with_drains = channels_with_drains
        self.delivered: list[tuple[str, int]] = []

    def channel_has_drains(self, channel: str) -> bool:
        return channel in self.with_drains

    def deliver(self, channel: str, messages: list[Message]) -> None:
        self.delivered.append((channel, len(messages)))

    def history(self, channel: str) -> list[Message]:
        return []

    def drain_statuses(self, channel: str) -> dict[int, dict[str, object]]:
        return {}

    def start_partition_drains(self, partition: int) -> None:
        pass

    def stop_partition_drains(self, partition: int) -> None:
        pass


class Lease:
    def __init__(self) -> None:
        self.ok = True

    def valid(self) -> bool:
        return self.ok


def owner(router: RecordingRouter, lease: Lease | None = None) -> PartitionOwner:
    return PartitionOwner(
        0,
        bridge=None,
        router=router,
        lease=lease or Lease(),
        cluster_id="c1",  # type: ignore[arg-type]
    )


def messages(start: int, count: int) -> list[Message]:
    return [(1, 190, b"app", b"web.1", f"line {n}".encode()) for n in range(start, start + count)]


def stream(seq: int, channel: str, batch: list[Message]) -> StreamMessage:
    return StreamMessage("logplex.log.0", seq, encode_batch(channel, batch, 7, COMPRESSOR))


def encode(batch: list[Message]) -> list[bytes]:
    return [m[4] for m in batch]


def notice(count: int, since_us: int, now_us: int) -> Message:
    return (now_us, 172, b"heroku", b"logplex", f"lost {count}".encode())


def test_checkpoints_round_trip_and_damage_reads_as_empty() -> None:
    cursor = DrainCursor("ch", (5, 2), [((4, 0), (5, 2), 3, 10, 20)], 7, 3, 1, 99)
    checkpoint = Checkpoint(frontier=9, history={"ch": 4}, drains={"d.x": cursor})
    again = Checkpoint.from_bytes(checkpoint.to_bytes())
    assert again == checkpoint
    assert cursor.min_seq() == 4
    for damaged in (b"{", b"[]", b'{"v": 2}', b'{"v": 1, "frontier": -1}'):
        assert Checkpoint.from_bytes(damaged).frontier == 0
    mixed = (
        b'{"v":1,"frontier":3,"history":{"a":1,"b":"x"},'
        b'"drains":{"d.ok":["ch",[1,0],[],0,0,0,0],"d.bad":["ch",[1],[],0,0,0,0]}}'
    )
    read = Checkpoint.from_bytes(mixed)
    assert read.history == {"a": 1}
    assert set(read.drains) == {"d.ok"}


def test_a_round_goes_into_a_history_once_and_only_what_it_can_hold() -> None:
    router = RecordingRouter(set())
    router.history_lines = 1500
    first = owner(router)
    for seq in range(1, 6):
        first._feed(stream(seq, "ch", messages(seq * 1000, 1000)), live=True)
    first._feed(stream(6, "other", messages(0, 3)), live=True)
    first._flush_history()
    # Of five 1,000-line batches only the two that hold the last 1,500 lines are fed.
    assert router.delivered == [("ch", 2000), ("other", 3)]
    router.history_lines = 0
    first._feed(stream(7, "ch", messages(0, 10)), live=True)
    first._flush_history()
    assert router.delivered == [("ch", 2000), ("other", 3)]


def test_the_history_start_follows_the_ring() -> None:
    ring = _History()
    for seq in range(1, 11):
        ring.add(seq, 10, keep_lines=50)
    assert ring.first_seq() == 6  # 5 batches of 10 lines cover the 50 kept
    assert ring.dropped_seq == 5


async def test_posts_are_cut_at_stream_batches_and_fixed_chunks() -> None:
    router = RecordingRouter({"ch"})
    first = owner(router)
    first._feed(stream(1, "ch", messages(0, 30)), live=True)
    first._feed(stream(2, "other", messages(0, 5)), live=True)
    first._feed(stream(3, "ch", messages(30, 250)), live=True)
    first._flush_history()
    queue = first.queue_for("ch", "d.1", encode, "k", notice)
    queue.state.next_n = 0
    taken = [queue.take(100, 1 << 30) for _ in range(5)]
    extents = [t.extent for t in taken if t is not None]
    # Never across two stream batches; inside one, chunks of 100 from its first message.
    assert extents == [(0, 30), (30, 130), (130, 230), (230, 280)]
    assert taken[4] is None
    # The history gets each channel's part of the round once.
    assert router.delivered == [("ch", 280), ("other", 5)]


async def test_a_new_owner_forms_the_same_posts_under_the_same_frame_ids() -> None:
    batches = [(0, 30), (30, 250), (280, 40)]
    router = RecordingRouter({"ch"})
    first = owner(router)
    queue = first.queue_for("ch", "d.1", encode, "k", notice)
    checkpoint = first.checkpoint()  # the last checkpoint: before anything was taken
    posts = []
    # Live: each batch is taken as soon as it is read, so posts follow the arrivals.
    for seq, (start, count) in enumerate(batches, 1):
        first._feed(stream(seq, "ch", messages(start, count)), live=True)
        while (taken := queue.take(100, 1 << 30)) is not None:
            posts.append(taken)
    assert [p.extent for p in posts] == [(0, 30), (30, 130), (130, 230), (230, 280), (280, 320)]

    # The next owner replays everything at once from that checkpoint: the same posts come
    # again under the Frame-Ids they had (the receiver drops them as repeats).
    second = owner(RecordingRouter({"ch"}))
    second._attach_positions = dict(checkpoint.drains)
    second._default_position = (checkpoint.frontier + 1, 0)
    for seq, (start, count) in enumerate(batches, 1):
        second._feed(stream(seq, "ch", messages(start, count)), live=False)
    replayed = second.queue_for("ch", "d.1", encode, "k", notice)
    again = []
    while (taken := replayed.take(100, 1 << 30)) is not None:
        again.append(taken)
    assert [t.extent for t in again] == [p.extent for p in posts]
    assert [t.frame_id for t in again] == [p.frame_id for p in posts]
    assert len({p.frame_id for p in posts}) == len(posts)
    assert cluster_frame_id("c1", "d.1", (2, 0), (2, 99), 0) != cluster_frame_id(
        "c1", "d.2", (2, 0), (2, 99), 0
    )


async def test_a_lapsed_lease_stops_takes_and_sends() -> None:
    lease = Lease()
    first = owner(RecordingRouter({"ch"}), lease)
    first._feed(stream(1, "ch", messages(0, 10)), live=True)
    queue = first.queue_for("ch", "d.1", encode, "k", notice)
    queue.state.next_n = 0
    lease.ok = False
    assert queue.take(100, 1 << 30) is None
    with trio.move_on_after(0.2) as waited:
        await queue.wait_may_send()
    assert waited.cancelled_caught
    lease.ok = True
    await queue.wait_may_send()
    assert queue.take(100, 1 << 30) is not None


def test_the_channel_log_maps_numbers_and_positions_both_ways() -> None:
    first = owner(RecordingRouter({"ch"}))
    first._feed(stream(4, "ch", messages(0, 3)), live=True)
    first._feed(stream(6, "ch", messages(3, 2)), live=True)
    log: Any = first.channels["ch"]
    assert log.committed_n == 5
    assert [log.position_of(n) for n in range(5)] == [(4, 0), (4, 1), (4, 2), (6, 0), (6, 1)]
    assert log.position_of(5) == (first.frontier + 1, 0)
    assert [log.n_of(p) for p in [(4, 0), (4, 2), (5, 0), (6, 1), (9, 0)]] == [0, 2, 3, 4, 5]
    assert log.batch_at(4)[:2] == (3, 2)
    assert log.batch_at(5) is None
    log.trim()  # no queue: nothing needed any more
    assert log.refs == []


async def test_a_waiting_tail_stays_bounded_and_tells_what_it_let_go() -> None:
    from logplex.cluster import node
    from logplex.fanout.tails import TailSession

    session = TailSession(capacity=10_000)
    tail = node._SeamedTail(session)  # waiting for its history: batches are held
    cap = node.TAIL_PENDING_BATCHES
    for seq in range(1, cap + 6):
        tail.push(seq, messages(seq * 10, 2))
    assert len(tail.pending) == cap
    tail.set_through(3)  # the history held everything up to seq 3
    received = await session.receive()
    notice, lines = received[0], received[1:]
    assert notice[2:4] == (b"heroku", b"logplex")
    assert b"L11" in notice[4]
    assert b" 10 messages" in notice[4]  # the five oldest batches of two lines
    # What was kept comes in order, after the history's last batch, each batch once.
    assert lines == [m for seq in range(6, cap + 6) for m in messages(seq * 10, 2)]
    tail.push(cap + 5, messages(0, 1))  # a repeat of a batch already passed on
    tail.push(cap + 6, messages(1, 1))
    assert await session.receive() == messages(1, 1)
