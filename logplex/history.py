"""A channel's history ring (DESIGN sections 3 and 7): the last N messages, oldest first.

Writes are the hot path and reads are rare (a session start, ``GET /v3/channels/{ch}/logs``),
so the ring stores messages in a compact columnar form rather than one tuple per line:

- Batches of ``COMPACT_MIN_LINES`` or more messages become one block straight away: the
  timestamps in an ``array('q')``, PRIs in ``bytes`` (0..191 fit a byte), and each bytes column
  either as one shared value (the common case for ``source`` and ``ps``: one publish call comes
  from one writer) or as one joined buffer plus an ``array('I')`` of offsets. Every step is a
  C-level loop (``zip(*batch)``, ``b"".join``, ``itertools.accumulate``); no per-line Python.
- Smaller batches collect as tuples in a pending list until it reaches that size and is
  compacted in turn, so a channel that receives one line at a time does not pay a block's
  fixed overhead per line.

A 100-byte line then costs about 113 bytes (8 timestamp + 1 PRI + 4 offset + the message)
instead of about 250 as a tuple with its own bytes object. Blocks are dropped whole from the
left once every line in them has fallen out of the ring; ``_skip`` counts the lines of the
first block that already have.
"""

from __future__ import annotations

from array import array
from collections import deque
from itertools import accumulate, repeat
from typing import Final

from logplex.codecs.records import Message

COMPACT_MIN_LINES: Final = 64


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


class HistoryRing:
    """The last ``max_lines`` messages of one channel; ``extend`` is O(batch) in C."""

    __slots__ = ("_block_lines", "_blocks", "_pending", "_skip", "max_lines")

    def __init__(self, max_lines: int) -> None:
        if max_lines < 0:
            raise ValueError(f"history length must be 0 or more lines, not {max_lines}")
        self.max_lines = max_lines
        self._blocks: deque[_Block] = deque()
        self._block_lines = 0  # lines in all blocks, the skipped ones of the first included
        self._skip = 0  # lines of the first block that have left the ring
        self._pending: list[Message] = []

    def __len__(self) -> int:
        return self._block_lines - self._skip + len(self._pending)

    def extend(self, messages: list[Message]) -> None:
        """Append a batch (oldest first); the oldest lines beyond ``max_lines`` fall out."""
        max_lines = self.max_lines
        if not messages or max_lines == 0:
            return
        if len(messages) > max_lines:
            messages = messages[-max_lines:]
        pending = self._pending
        if len(messages) >= COMPACT_MIN_LINES:
            if pending:
                self._append_block(pending)
                self._pending = []
            self._append_block(messages)
        else:
            pending.extend(messages)
            if len(pending) >= COMPACT_MIN_LINES:
                self._append_block(pending)
                self._pending = []
        self._trim()

    def messages(self, last: int | None = None) -> list[Message]:
        """A copy of the ring (or its ``last`` newest lines), oldest first, as tuples."""
        out: list[Message] = []
        skip = self._skip
        for block in self._blocks:
            out.extend(block.messages(skip))
            skip = 0
        out.extend(self._pending)
        if last is not None:
            return out[-last:] if last > 0 else []
        return out

    def clear(self) -> None:
        self._blocks.clear()
        self._block_lines = 0
        self._skip = 0
        self._pending = []

    def _append_block(self, messages: list[Message]) -> None:
        self._blocks.append(_Block(messages))
        self._block_lines += len(messages)

    def _trim(self) -> None:
        blocks = self._blocks
        held = self._block_lines + len(self._pending)
        while blocks and held - blocks[0].count >= self.max_lines:
            dropped = blocks.popleft().count
            self._block_lines -= dropped
            held -= dropped
        excess = held - self.max_lines
        if excess <= 0:
            self._skip = 0
        elif blocks:
            self._skip = excess  # < blocks[0].count, by the loop above
        else:
            del self._pending[:excess]
            self._skip = 0
