"""A channel's history ring (DESIGN sections 3 and 7): the last N messages, oldest first.

The ring is bounded twice: at most ``max_lines`` messages (``--history``) and at most
``max_bytes`` bytes of message text (``--history-max-bytes``), whichever bites first; the
oldest lines go. A single message larger than ``max_bytes`` is not kept at all. Lines that
left early because of the byte bound are counted (``take_evicted_for_bytes``) for the
router's ``logplex_limit_refusals_total{limit="history_max_bytes"}``.

Writes are the hot path and reads are rare (a session start, ``GET /v3/channels/{ch}/logs``),
so ``extend`` appends a reference to the published batch list, and older batches that are
still in the ring when a newer one arrives — at least ``COMPACT_MIN_LINES`` of them — are
compacted then; the router's sweep (``compact``, about once a second for channels written
since) compacts the rest. The compact form is columnar:

- the timestamps in an ``array('q')``, PRIs in ``bytes`` (0..191 fit a byte), and each bytes
  column either as one shared value (the common case for ``source`` and ``ps``: one publish
  call comes from one writer) or as one joined buffer plus an ``array('I')`` of offsets. Every
  step is a C-level loop (``zip(*batch)``, ``b"".join``, ``itertools.accumulate``).
- blocks under ``COMPACT_MIN_LINES`` are merged again with newer lines at the next compaction,
  so a channel that receives one line at a time does not pay a block's fixed cost per line.

A 100-byte line then costs about 113 bytes (8 timestamp + 1 PRI + 4 offset + the message)
instead of about 250 as a tuple with its own bytes object. At most one batch per channel
(plus what arrived since the last sweep in batches under 64 lines) is held as tuples. On a
busy channel only the part of a batch that survives the next one is ever compacted.
Segments are dropped whole from the left once every line in them has fallen out of the
ring; ``_skip`` counts the lines of the first segment that already have.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Final

from logplex.codecs.records import MSG, Message

COMPACT_MIN_LINES: Final = 64
_message_text: Final = itemgetter(MSG)


def message_bytes(messages: list[Message]) -> int:
    """The bytes of message text in ``messages`` (a C-level loop: no per-line objects)."""
    return sum(map(len, map(_message_text, messages)))


class _BytesColumn:
    """A column of bytes values: one shared value, or a joined buffer and offsets."""

    __slots__ = ("_buffer", "_offsets", "_single")

    def __init__(self, values: tuple[bytes, ...]) -> None:
        first = values[0]
        if values.count(first) == len(values):
            self._single: bytes | None = first
            self._buffer = b""
            self._offsets = array("I")
        else:
            self._single = None
            self._buffer = b"".join(values)
            self._offsets = array("I", accumulate(map(len, values), initial=0))

    def values(self, start: int, count: int) -> list[bytes] | repeat[bytes]:
        if self._single is not None:
            return repeat(self._single, count - start)
        buffer = self._buffer
        offsets = self._offsets
        return [buffer[offsets[i] : offsets[i + 1]] for i in range(start, count)]

    def nbytes(self) -> int:
        return len(self._buffer) + self._offsets.itemsize * len(self._offsets)

    def span_bytes(self, start: int, stop: int) -> int:
        """The bytes of values ``start`` to ``stop`` (exclusive)."""
        if self._single is not None:
            return len(self._single) * (stop - start)
        return self._offsets[stop] - self._offsets[start]

    def values_covering(self, start: int, count: int, need_bytes: int) -> int:
        """How many values from ``start`` (at most ``count - start``) add up to at least
        ``need_bytes`` (all of them if they never do)."""
        if need_bytes <= 0:
            return 0
        if self._single is not None:
            size = len(self._single)
            return count - start if size == 0 else min(count - start, -(-need_bytes // size))
        offsets = self._offsets
        found = bisect_left(offsets, offsets[start] + need_bytes, start, count + 1)
        return min(count, found) - start


class _Block:
    """Messages of one compacted batch, stored column by column."""

    __slots__ = ("count", "msgs", "pris", "pss", "sources", "timestamps")

    def __init__(self, messages: list[Message]) -> None:
        ts_col, pri_col, source_col, ps_col, msg_col = zip(*messages, strict=True)
        self.count = len(messages)
        self.timestamps = array("q", ts_col)
        self.pris = bytes(pri_col)
        self.sources = _BytesColumn(source_col)
        self.pss = _BytesColumn(ps_col)
        self.msgs = _BytesColumn(msg_col)

    def __len__(self) -> int:
        return self.count

    def span_bytes(self, start: int) -> int:
        return self.msgs.span_bytes(start, self.count)

    def lines_covering(self, start: int, need_bytes: int) -> int:
        return self.msgs.values_covering(start, self.count, need_bytes)

    def messages(self, start: int) -> list[Message]:
        count = self.count
        return list(
            zip(
                self.timestamps[start:],
                self.pris[start:],
                self.sources.values(start, count),
                self.pss.values(start, count),
                self.msgs.values(start, count),
                strict=False,
            )
        )


def _span_bytes(segment: _Block | list[Message], start: int) -> int:
    if isinstance(segment, _Block):
        return segment.span_bytes(start)
    return message_bytes(segment[start:] if start else segment)


def _lines_covering(segment: _Block | list[Message], start: int, need_bytes: int) -> int:
    """How many lines of ``segment`` from ``start`` hold at least ``need_bytes`` of text."""
    if isinstance(segment, _Block):
        return segment.lines_covering(start, need_bytes)
    if need_bytes <= 0:
        return 0
    sizes = list(accumulate(map(len, map(_message_text, segment[start:]))))
    return min(len(sizes), bisect_left(sizes, need_bytes) + 1)


class HistoryRing:
    """The last ``max_lines`` messages of one channel, within ``max_bytes`` of message text
    (None: no byte bound); ``extend`` is O(1) per batch plus a C-level size sum.

    Segments, oldest first, are compacted ``_Block``s or fresh batch lists (held by
    reference: a published list is never changed afterwards). ``_skip`` counts the lines of
    the first segment that have already left the ring.
    """

    __slots__ = (
        "_bytes",
        "_evicted_for_bytes",
        "_fresh_lines",
        "_lines",
        "_segments",
        "_skip",
        "max_bytes",
        "max_lines",
    )

    def __init__(self, max_lines: int, max_bytes: int | None = None) -> None:
        if max_lines < 0:
            raise ValueError(f"history length must be 0 or more lines, not {max_lines}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"history size must be 0 or more bytes, not {max_bytes}")
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self._segments: deque[_Block | list[Message]] = deque()
        self._lines = 0  # lines in all segments, the skipped ones of the first included
        self._skip = 0
        self._fresh_lines = 0  # lines in fresh (not yet compacted) segments
        self._bytes = 0  # message text bytes of the lines in the ring (skipped ones excluded)
        self._evicted_for_bytes = 0

    def __len__(self) -> int:
        return self._lines - self._skip

    @property
    def text_bytes(self) -> int:
        """Bytes of message text the ring holds (kept only with a ``max_bytes`` bound)."""
        return self._bytes

    def take_evicted_for_bytes(self) -> int:
        """Lines that left before ``max_lines`` would have made them, since the last call."""
        evicted, self._evicted_for_bytes = self._evicted_for_bytes, 0
        return evicted

    @property
    def fresh_lines(self) -> int:
        """Lines held as tuples, waiting for ``compact``."""
        return self._fresh_lines

    def extend(self, messages: list[Message]) -> None:
        """Append a batch (oldest first); the oldest lines beyond ``max_lines`` fall out."""
        max_lines = self.max_lines
        if not messages or max_lines == 0:
            return
        if len(messages) > max_lines:
            messages = messages[-max_lines:]
        self._segments.append(messages)
        self._lines += len(messages)
        self._fresh_lines += len(messages)
        if self.max_bytes is not None:
            self._bytes += message_bytes(messages)
            if self._bytes > self.max_bytes or self._lines > max_lines:
                self._trim()
        elif self._lines > max_lines:
            self._trim_lines()
        if self._fresh_lines - len(messages) >= COMPACT_MIN_LINES:
            # Older fresh batches survived this one: compact them now, while their tuples
            # are still the newest allocations (freeing them then lets memory be reused).
            self.compact(keep_newest=True)

    def messages(self, last: int | None = None) -> list[Message]:
        """A copy of the ring (or its ``last`` newest lines), oldest first, as tuples."""
        out: list[Message] = []
        skip = self._skip
        for segment in self._segments:
            if isinstance(segment, _Block):
                out.extend(segment.messages(skip))
            else:
                out.extend(segment[skip:] if skip else segment)
            skip = 0
        if last is not None:
            return out[-last:] if last > 0 else []
        return out

    def compact(self, *, keep_newest: bool = False) -> None:
        """Turn fresh segments (and small blocks) into columnar blocks of 64+ lines.

        ``keep_newest`` leaves the newest segment as it is (``extend`` uses it: the newest
        batch may well leave the ring before it would be worth compacting).
        """
        if not self._fresh_lines:
            return
        segments = self._segments
        newest = segments.pop() if keep_newest and len(segments) > 1 else None
        kept: deque[_Block | list[Message]] = deque()
        run: list[Message] = []
        new_skip = 0
        for index, segment in enumerate(segments):
            skip = self._skip if index == 0 else 0
            if isinstance(segment, _Block) and segment.count >= COMPACT_MIN_LINES:
                if run:
                    kept.append(_Block(run))
                    run = []
                kept.append(segment)
                if index == 0:
                    new_skip = skip  # kept as it is, with its skip
                continue
            if isinstance(segment, _Block):
                run.extend(segment.messages(skip))
            else:
                run.extend(segment[skip:] if skip else segment)
            self._lines -= skip  # materialised without the skipped lines
        if run:
            kept.append(_Block(run))
        self._fresh_lines = 0
        if newest is not None:
            kept.append(newest)
            if not isinstance(newest, _Block):
                self._fresh_lines = len(newest)
        self._segments = kept
        self._skip = new_skip

    def clear(self) -> None:
        self._segments.clear()
        self._lines = 0
        self._skip = 0
        self._fresh_lines = 0
        self._bytes = 0

    def _trim(self) -> None:
        """Drop the oldest lines until both bounds hold (with ``max_bytes`` set)."""
        assert self.max_bytes is not None
        segments = self._segments
        drop_lines = max(0, len(self) - self.max_lines)  # for the line bound
        excess_bytes = self._bytes - self.max_bytes  # > 0: the byte bound wants lines out
        dropped = 0
        while segments:
            first = segments[0]
            skip = self._skip
            live = len(first) - skip
            lines_wanted = drop_lines - dropped
            if lines_wanted <= 0 and excess_bytes <= 0:
                break
            count = max(lines_wanted, _lines_covering(first, skip, excess_bytes))
            if count >= live:
                gone_bytes = _span_bytes(first, skip)
                segments.popleft()
                self._lines -= len(first)
                if not isinstance(first, _Block):
                    self._fresh_lines -= len(first)
                self._skip = 0
                dropped += live
            else:
                gone_bytes = _span_bytes(first, skip) - _span_bytes(first, skip + count)
                self._skip = skip + count
                dropped += count
            excess_bytes -= gone_bytes
            self._bytes -= gone_bytes
        if dropped > drop_lines:
            self._evicted_for_bytes += dropped - drop_lines

    def _trim_lines(self) -> None:
        segments = self._segments
        max_lines = self.max_lines
        while segments and self._lines - len(segments[0]) >= max_lines:
            first = segments.popleft()
            self._lines -= len(first)
            if not isinstance(first, _Block):
                self._fresh_lines -= len(first)
            self._skip = 0
        self._skip = max(0, self._lines - max_lines)  # < the first segment's count
