"""The outbox's decisions, as tables: batch cuts, drop-oldest accounting, acks, refusals.

Expected values come from DESIGN sections 4, 5.5 and 8: batches of at most 500 lines and
64 KiB (msgpack content), due 20 ms after their first line; on overflow the oldest pending
lines go and are counted in the next L12; a refused batch is replaced, same seq, by an L13.
"""

from __future__ import annotations

import pytest

from logplex.codecs import notices
from logplex.codecs.records import KIND_NOTICE, KIND_STDERR, KIND_STDOUT
from shims.outbox import (
    ARRAY_HEADER_BYTES,
    BATCH_LINGER_S,
    RECORD_OVERHEAD_BYTES,
    Outbox,
    Record,
)

COST = RECORD_OVERHEAD_BYTES


class Encoded:
    """A fake encoder that remembers what each seq carried."""

    def __init__(self) -> None:
        self.by_seq: dict[int, list[Record]] = {}

    def __call__(self, seq: int, records: list[Record]) -> bytes:
        self.by_seq[seq] = list(records)
        return b"batch %d" % seq


def make(max_bytes: int = 1 << 20, *, block: bool = False) -> tuple[Outbox, Encoded]:
    encoded = Encoded()
    outbox = Outbox(
        max_bytes,
        encode=encoded,
        overflow_notice=notices.l12_local_overflow,
        delivery_notice=notices.l13_local_delivery,
        block=block,
    )
    return outbox, encoded


def lines(count: int, size: int = 10, start: int = 0) -> list[bytes]:
    return [(b"%d:" % (start + n)).ljust(size, b"x") for n in range(count)]


@pytest.mark.parametrize(
    ("pushed", "size", "elapsed_s", "flushing", "due"),
    [
        (0, 10, 1.0, True, False),  # nothing to send, even at exit
        (1, 10, 0.0, False, False),
        (1, 10, BATCH_LINGER_S - 0.001, False, False),
        (1, 10, BATCH_LINGER_S, False, True),  # lingered 20 ms
        (499, 10, 0.0, False, False),
        (500, 10, 0.0, False, True),  # a full batch of lines
        (10, 64 * 1024 // 10, 0.0, False, True),  # a full batch of bytes
        (1, 10, 0.0, True, True),  # exit: everything goes now
    ],
)
def test_batch_due(pushed: int, size: int, elapsed_s: float, flushing: bool, due: bool) -> None:
    outbox, _ = make()
    outbox.push_lines(1, KIND_STDOUT, lines(pushed, size), now_s=100.0)
    assert outbox.batch_due(100.0 + elapsed_s, flushing=flushing) is due


@pytest.mark.parametrize(
    ("count", "size", "max_batch_bytes", "expected_sizes"),
    [
        (1200, 10, 65536, [500, 500, 200]),
        # 1000-byte lines: (65536 - 5) // 1016 = 64 per batch
        (130, 1000, 65536, [64, 64, 2]),
        # a router offering more still gets batches of 64 KiB at most
        (130, 1000, 1 << 20, [64, 64, 2]),
        (3, 10000, 65536, [3]),
    ],
)
def test_cut_sizes(count: int, size: int, max_batch_bytes: int, expected_sizes: list[int]) -> None:
    outbox, encoded = make()
    outbox.push_lines(7, KIND_STDOUT, lines(count, size), now_s=0.0)
    sizes = []
    while (batch := outbox.cut_batch(now_us=9, max_batch_bytes=max_batch_bytes)) is not None:
        sizes.append(batch.records)
        content = sum(len(data) + COST for _, _, data in encoded.by_seq[batch.seq])
        assert content + ARRAY_HEADER_BYTES <= 65536
    assert sizes == expected_sizes
    assert [r[2] for seq in sorted(encoded.by_seq) for r in encoded.by_seq[seq]] == lines(
        count, size
    )
    assert sorted(encoded.by_seq) == list(range(1, len(expected_sizes) + 1))


def test_records_keep_read_timestamp_kind_and_order_across_chunks() -> None:
    outbox, encoded = make()
    outbox.push_lines(100, KIND_STDOUT, [b"a", b"b"], now_s=0.0)
    outbox.push_lines(200, KIND_STDERR, [b"c"], now_s=0.0)
    outbox.push_notice(300, b"note", now_s=0.0)
    batch = outbox.cut_batch(now_us=400)
    assert batch is not None
    assert encoded.by_seq[batch.seq] == [
        (100, KIND_STDOUT, b"a"),
        (100, KIND_STDOUT, b"b"),
        (200, KIND_STDERR, b"c"),
        (300, KIND_NOTICE, b"note"),
    ]
    assert outbox.pending_lines == 0
    assert outbox.oldest_pending_s is None


def test_overflow_drops_the_oldest_pending_lines_and_reports_them_in_the_next_batch() -> None:
    line_cost = 10 + COST
    outbox, encoded = make(max_bytes=100 * line_cost)
    outbox.push_lines(1_000, KIND_STDOUT, lines(60, start=0), now_s=0.0)
    outbox.push_lines(2_000, KIND_STDOUT, lines(60, start=60), now_s=0.0)  # 20 too many
    assert outbox.dropped_lines == 20
    assert outbox.dropped_since_us == 2_000
    assert outbox.used_bytes == 100 * line_cost
    outbox.push_lines(3_000, KIND_STDOUT, lines(5, start=120), now_s=0.0)
    assert outbox.dropped_lines == 25
    assert outbox.dropped_since_us == 2_000  # the time of the first loss of this run
    batch = outbox.cut_batch(now_us=5_000)
    assert batch is not None
    records = encoded.by_seq[batch.seq]
    assert records[0] == (5_000, KIND_NOTICE, notices.l12_local_overflow(25, 2_000))
    assert [r[2] for r in records[1:]] == lines(100, start=25)
    assert batch.reported_losses == 25
    assert outbox.dropped_lines == 0
    assert outbox.dropped_total == 25


def test_unacked_batches_count_against_the_budget_and_are_never_dropped() -> None:
    line_cost = 10 + COST
    outbox, _ = make(max_bytes=50 * line_cost)
    outbox.push_lines(1, KIND_STDOUT, lines(50), now_s=0.0)
    sent = outbox.cut_batch(now_us=2)
    assert sent is not None
    assert not outbox.has_room()
    outbox.push_lines(3, KIND_STDOUT, lines(10, start=50), now_s=0.0)
    # The window holds the whole budget: the new lines are the oldest unsent ones.
    assert outbox.dropped_lines == 10
    assert list(outbox.unacked) == [sent]
    assert outbox.ack(sent.seq) == 1
    assert outbox.has_room()
    assert outbox.delivered_records == 50


def test_a_line_split_across_a_chunk_boundary_is_dropped_whole_lines_only() -> None:
    outbox, _ = make(max_bytes=3 * (100 + COST))
    outbox.push_lines(1, KIND_STDOUT, lines(3, size=100), now_s=0.0)
    outbox.push_lines(2, KIND_STDOUT, [b"y"], now_s=0.0)  # 1 + 16 bytes over
    assert outbox.dropped_lines == 1  # one whole old line covers the excess
    assert outbox.pending_lines == 3


def test_block_mode_never_drops() -> None:
    outbox, _ = make(max_bytes=10 * (10 + COST), block=True)
    outbox.push_lines(1, KIND_STDOUT, lines(30), now_s=0.0)
    assert outbox.dropped_lines == 0
    assert outbox.pending_lines == 30
    assert not outbox.has_room()


@pytest.mark.parametrize(
    ("acks", "expected_unacked", "expected_acked"),
    [
        ([2], [3, 4], 2),
        ([1, 3], [4], 3),
        ([3, 1], [4], 3),  # a stale, lower ACK changes nothing
        ([9], [], 4),  # an ACK beyond what was sent releases only what was sent
        ([0], [1, 2, 3, 4], 0),
    ],
)
def test_cumulative_acks(acks: list[int], expected_unacked: list[int], expected_acked: int) -> None:
    outbox, _ = make()
    for n in range(4):
        outbox.push_lines(n, KIND_STDOUT, [b"x"], now_s=0.0)
        assert outbox.cut_batch(now_us=n) is not None
    for seq in acks:
        outbox.ack(seq)
    assert [b.seq for b in outbox.unacked] == expected_unacked
    assert outbox.acked_seq == expected_acked


def test_resume_resends_everything_above_the_routers_acked_byte_identical() -> None:
    outbox, _ = make()
    frames = []
    for n in range(5):
        outbox.push_lines(n, KIND_STDOUT, [b"x"], now_s=0.0)
        batch = outbox.cut_batch(now_us=n)
        assert batch is not None
        frames.append(batch.frame)
    outbox.ack(1)
    resend = outbox.resume(acked=3, now_us=99)
    assert [b.seq for b in resend] == [4, 5]
    assert [b.frame for b in resend] == frames[3:]
    assert outbox.next_seq == 6


def test_refused_batch_is_replaced_by_l13_under_the_same_seq() -> None:
    line_cost = 1 + COST
    outbox, encoded = make(max_bytes=20 * line_cost)
    outbox.push_lines(1, KIND_STDOUT, [b"a"] * 25, now_s=0.0)  # 5 dropped
    first = outbox.cut_batch(now_us=10, max_batch_bytes=65536)
    assert first is not None
    outbox.push_lines(2, KIND_STDOUT, [b"b"] * 3, now_s=0.0)
    second = outbox.cut_batch(now_us=20)
    assert second is not None
    # Batch 1 (one L12 for 5, then 20 lines) is refused for good.
    outbox.note_refusal(now_us=30)
    resend = outbox.resume(acked=0, now_us=40)
    assert [b.seq for b in resend] == [1, 2]
    assert encoded.by_seq[1] == [(40, KIND_NOTICE, notices.l13_local_delivery(25, 30))]
    assert resend[1].frame == second.frame
    assert outbox.lost_total == 25  # the 20 lines and the 5 its L12 reported
    assert not outbox.refusal_pending


def test_undelivered_counts_pending_in_flight_and_unreported_losses() -> None:
    outbox, _ = make(max_bytes=20 * (1 + COST))
    outbox.push_lines(1, KIND_STDOUT, [b"a"] * 10, now_s=0.0)
    assert outbox.cut_batch(now_us=2) is not None  # 10 in flight
    outbox.push_lines(3, KIND_STDOUT, [b"b"] * 15, now_s=0.0)  # 10 pending, 5 dropped
    assert outbox.undelivered() == 10 + 10 + 5
    assert not outbox.is_empty()
    outbox.ack(1)
    assert outbox.undelivered() == 15
    batch = outbox.cut_batch(now_us=4)  # L12 + 10 lines
    assert batch is not None
    assert outbox.undelivered() == 10 + 5  # the L12 record stands for the 5 it counts
    outbox.ack(batch.seq)
    assert outbox.undelivered() == 0
    assert outbox.is_empty()
