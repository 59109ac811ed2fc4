"""The shim's bounded buffer between capture and shipping, and its loss accounting.

DESIGN sections 4, 5.5 (L12, L13), 6 (``--buffer-bytes``, ``--block``) and 8 (shim → router).
This module is synchronous and does no I/O: the pipe readers push lines into it and never
wait; the shipper cuts batches from it, hands them to the network and reports acks. Every
decision (when a batch is due, where it is cut, which lines are dropped, what is resent, what
is counted as lost) is made here, so it is tested with plain tables.

Memory model. ``used_bytes`` = pending lines + batches sent but not acknowledged, each line
costing its length plus ``RECORD_OVERHEAD_BYTES``. Sent batches are kept until the router
acknowledges them (they are resent after a reconnect) and are never dropped while the shim
runs. When ``used_bytes`` passes ``max_bytes`` the OLDEST pending lines (not yet in a batch)
are dropped and counted; the count goes out as an L12 notice at the head of the next batch
cut, i.e. once shipping resumes. With ``block=True`` nothing is dropped: the readers check
``has_room()`` before reading, so the app blocks on its full pipe instead.

A batch the router refuses for good (ERROR ``bad_frame``/``too_large``) is replaced, under the
same seq so the stream stays gapless, by a batch holding one L13 notice that counts its
messages. Seqs start at 1 and grow by one per batch for the life of the shim.

Batches hold at most ``BATCH_MAX_LINES`` records and at most ``max_batch_bytes`` of msgpack
content (64 KiB, or less if the router asks); a batch is due when it would be full or when its
oldest line has waited ``BATCH_LINGER_S``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from itertools import accumulate, repeat
from typing import Final

from logplex.codecs.records import KIND_NOTICE

Record = tuple[int, int, bytes]
EncodeBatch = Callable[[int, list[Record]], bytes]
LossNotice = Callable[[int, int], bytes]

RECORD_OVERHEAD_BYTES: Final = 16  # msgpack: array(1) + uint64(9) + kind(1) + bin header(<=5)
ARRAY_HEADER_BYTES: Final = 5
BATCH_MAX_LINES: Final = 500
BATCH_MAX_BYTES: Final = 64 * 1024
BATCH_LINGER_S: Final = 0.020


class SentBatch:
    """A batch handed to the network: kept, byte-identical, until acknowledged."""

    __slots__ = ("cost_bytes", "frame", "records", "reported_losses", "seq")

    def __init__(
        self, seq: int, frame: bytes, records: int, cost_bytes: int, reported_losses: int
    ) -> None:
        self.seq = seq
        self.frame = frame
        self.records = records
        self.cost_bytes = cost_bytes
        self.reported_losses = reported_losses  # messages counted by an L12/L13 inside it

    def messages(self) -> int:
        """The messages this batch stands for: its records, except that an L12/L13 record
        stands for the losses it counts, not for itself."""
        if self.reported_losses:
            return self.records - 1 + self.reported_losses
        return self.records

    def __repr__(self) -> str:
        return f"SentBatch(seq={self.seq}, records={self.records})"


class _Chunk:
    """Lines of one read: shared timestamp and kind, cumulative lengths for O(log n) cuts."""

    __slots__ = ("cumulative", "kind", "lines", "start", "ts_us")

    def __init__(self, ts_us: int, kind: int, lines: list[bytes]) -> None:
        self.ts_us = ts_us
        self.kind = kind
        self.lines = lines
        self.cumulative = list(accumulate(map(len, lines), initial=0))
        self.start = 0

    def cost(self, start: int, end: int) -> int:
        return self.cumulative[end] - self.cumulative[start] + RECORD_OVERHEAD_BYTES * (end - start)

    def lines_within(self, end_limit: int, budget_bytes: int) -> int:
        """The largest ``end <= end_limit`` such that lines start..end cost <= budget."""
        start = self.start
        if self.cost(start, end_limit) <= budget_bytes:
            return end_limit
        # cost(start, end) is increasing in end: binary search over the index range.
        return (
            start
            - 1
            + bisect_right(
                range(start, end_limit + 1), budget_bytes, key=lambda end: self.cost(start, end)
            )
        )

    def lines_covering(self, excess_bytes: int) -> int:
        """The smallest ``end`` such that dropping lines start..end frees >= excess bytes."""
        start, total = self.start, len(self.lines)
        return start + bisect_left(
            range(start, total + 1), excess_bytes, key=lambda end: self.cost(start, end)
        )


class Outbox:
    """Pending lines, the unacknowledged window, and the L12/L13 accounting."""

    def __init__(
        self,
        max_bytes: int,
        *,
        encode: EncodeBatch,
        overflow_notice: LossNotice,
        delivery_notice: LossNotice,
        block: bool = False,
    ) -> None:
        self.max_bytes = max_bytes
        self.block = block
        self._encode = encode
        self._overflow_notice = overflow_notice
        self._delivery_notice = delivery_notice
        self._chunks: deque[_Chunk] = deque()
        self.pending_lines = 0
        self.pending_bytes = 0
        self.oldest_pending_s: float | None = None
        self.unacked: deque[SentBatch] = deque()
        self.unacked_bytes = 0
        self.next_seq = 1
        self.acked_seq = 0
        self.delivered_records = 0
        # Lines dropped on overflow and not yet reported by an L12 batch.
        self.dropped_lines = 0
        self.dropped_since_us = 0
        self.dropped_total = 0
        # Messages of refused batches; reported by the L13 batch that replaces them.
        self.lost_total = 0
        self.refusal_pending = False
        self._refused_at_us = 0

    # --- capture side -------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        return self.pending_bytes + self.unacked_bytes

    def has_room(self) -> bool:
        """False when the buffer is full (``--block`` readers wait instead of reading)."""
        return self.used_bytes < self.max_bytes

    def push_lines(self, ts_us: int, kind: int, lines: list[bytes], now_s: float) -> None:
        """Add the lines of one read; never blocks; drops the oldest pending lines if full."""
        if not lines:
            return
        chunk = _Chunk(ts_us, kind, lines)
        self._chunks.append(chunk)
        self.pending_lines += len(lines)
        self.pending_bytes += chunk.cost(0, len(lines))
        if self.oldest_pending_s is None:
            self.oldest_pending_s = now_s
        if not self.block and self.used_bytes > self.max_bytes:
            self._drop_oldest(self.used_bytes - self.max_bytes, ts_us)

    def push_notice(self, ts_us: int, text: bytes, now_s: float) -> None:
        """A shim notice (kind 3): buffered like a line, in order with the app's output."""
        self.push_lines(ts_us, KIND_NOTICE, [text], now_s)

    def note_dropped(self, count: int, since_us: int) -> None:
        """Count lines dropped before they reached the outbox (during start-up)."""
        if not self.dropped_lines:
            self.dropped_since_us = since_us
        self.dropped_lines += count
        self.dropped_total += count

    def _drop_oldest(self, excess_bytes: int, now_us: int) -> None:
        dropped = 0
        while excess_bytes > 0 and self._chunks:
            chunk = self._chunks[0]
            total = len(chunk.lines)
            end = total
            if chunk.cost(chunk.start, total) > excess_bytes:
                end = chunk.lines_covering(excess_bytes)
            freed = chunk.cost(chunk.start, end)
            dropped += end - chunk.start
            excess_bytes -= freed
            self.pending_bytes -= freed
            if end == total:
                self._chunks.popleft()
            else:
                chunk.start = end
        if not dropped:
            return
        self.pending_lines -= dropped
        if not self._chunks:
            self.oldest_pending_s = None
        if not self.dropped_lines:
            self.dropped_since_us = now_us
        self.dropped_lines += dropped
        self.dropped_total += dropped

    # --- shipping side ------------------------------------------------------------------

    def batch_due(self, now_s: float, *, flushing: bool = False) -> bool:
        """Whether a batch should be cut now (full, lingered ``BATCH_LINGER_S``, or exit)."""
        if not self.pending_lines and not self.dropped_lines:
            return False
        if flushing or self.dropped_lines:
            return True
        if self.pending_lines >= BATCH_MAX_LINES or self.pending_bytes >= BATCH_MAX_BYTES:
            return True
        deadline_s = self.batch_deadline_s()
        return deadline_s is not None and now_s >= deadline_s

    def batch_deadline_s(self) -> float | None:
        """When the oldest pending line will have lingered long enough; None if none pend."""
        if self.oldest_pending_s is None:
            return None
        return self.oldest_pending_s + BATCH_LINGER_S

    def cut_batch(self, now_us: int, max_batch_bytes: int = BATCH_MAX_BYTES) -> SentBatch | None:
        """Move up to 500 records / ``max_batch_bytes`` into a new batch; None if nothing pends.

        An L12 notice for lines dropped since the last batch goes first.
        """
        budget = min(max_batch_bytes, BATCH_MAX_BYTES) - ARRAY_HEADER_BYTES
        records: list[Record] = []
        reported = 0
        if self.dropped_lines:
            notice = self._overflow_notice(self.dropped_lines, self.dropped_since_us)
            records.append((now_us, KIND_NOTICE, notice))
            budget -= len(notice) + RECORD_OVERHEAD_BYTES
            reported = self.dropped_lines
            self.dropped_lines = 0
        cost_total = 0
        lines_left = BATCH_MAX_LINES - len(records)
        while self._chunks and lines_left > 0:
            chunk = self._chunks[0]
            total = len(chunk.lines)
            end = chunk.lines_within(min(total, chunk.start + lines_left), budget)
            if end == chunk.start:
                break
            records.extend(
                zip(repeat(chunk.ts_us), repeat(chunk.kind), chunk.lines[chunk.start : end])
            )
            cost = chunk.cost(chunk.start, end)
            cost_total += cost
            budget -= cost
            lines_left -= end - chunk.start
            self.pending_lines -= end - chunk.start
            self.pending_bytes -= cost
            if end == total:
                self._chunks.popleft()
            else:
                chunk.start = end
        if not records:
            return None
        if not self._chunks:
            self.oldest_pending_s = None
        if reported:
            cost_total += len(records[0][2]) + RECORD_OVERHEAD_BYTES
        return self._add_sent(records, cost_total, reported)

    def _add_sent(self, records: list[Record], cost_bytes: int, reported: int) -> SentBatch:
        seq = self.next_seq
        self.next_seq += 1
        batch = SentBatch(seq, self._encode(seq, records), len(records), cost_bytes, reported)
        self.unacked.append(batch)
        self.unacked_bytes += cost_bytes
        return batch

    def ack(self, seq: int) -> int:
        """Apply a cumulative ACK; return how many batches it released."""
        released = 0
        while self.unacked and self.unacked[0].seq <= seq:
            batch = self.unacked.popleft()
            self.unacked_bytes -= batch.cost_bytes
            self.delivered_records += batch.records
            released += 1
        self.acked_seq = max(self.acked_seq, min(seq, self.next_seq - 1))
        return released

    def note_refusal(self, now_us: int) -> None:
        """The router answered ERROR bad_frame/too_large: its first unacked batch is refused.

        Which batch that is becomes certain with the next READY (``resume``), whose ``acked``
        says what the router holds.
        """
        self.refusal_pending = True
        self._refused_at_us = now_us

    def resume(self, acked: int, now_us: int) -> list[SentBatch]:
        """A new connection's READY: release what the router holds, return what to resend.

        After a refusal, the first batch above ``acked`` is replaced (same seq) by an L13
        batch counting its messages.
        """
        self.ack(acked)
        if self.refusal_pending and self.unacked:
            refused = self.unacked.popleft()
            self.unacked_bytes -= refused.cost_bytes
            lost = refused.messages()
            self.lost_total += lost
            notice = self._delivery_notice(lost, self._refused_at_us or now_us)
            records: list[Record] = [(now_us, KIND_NOTICE, notice)]
            cost = len(notice) + RECORD_OVERHEAD_BYTES
            replacement = SentBatch(refused.seq, self._encode(refused.seq, records), 1, cost, lost)
            self.unacked.appendleft(replacement)
            self.unacked_bytes += cost
        self.refusal_pending = False
        return list(self.unacked)

    # --- exit ---------------------------------------------------------------------------

    def is_empty(self) -> bool:
        """Nothing pending, nothing unacknowledged, no loss left to report."""
        return not (self.pending_lines or self.unacked or self.dropped_lines)

    def undelivered(self) -> int:
        """Messages the router does not hold and no delivered notice accounts for."""
        # An L12/L13 record is not a message of its own: what it stands for is what it counts.
        in_flight = sum(batch.messages() for batch in self.unacked)
        return self.pending_lines + in_flight + self.dropped_lines
