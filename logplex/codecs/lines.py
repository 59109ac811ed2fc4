"""Bytes from a pipe -> lines, for the shim's capture (DESIGN sections 5.6 and 6).

Rules: split on LF; strip one trailing CR from each line; keep every other byte exactly as it
is (invalid UTF-8 included); a line longer than ``max_line_bytes`` is split into chunks of at
most that many bytes, never inside a UTF-8 sequence; a partial line is held until its LF
arrives or ``flush()`` is called (at EOF), so a final line without LF is still shipped. The
final line returned by ``flush()`` also loses one trailing CR.

Cost: one C-level ``replace`` (only when the data holds a CR) and one ``split`` per ``feed``;
lines under the limit get no per-line Python work. A partial line that grows past the limit
without an LF is emitted chunk by chunk as soon as the chunk boundary is certain, so the held
bytes stay bounded by ``max_line_bytes + 1`` whatever the app writes.

Chunking rule (``split_utf8_chunks``): cut greedily at ``max_bytes``; when the byte at the cut
is a UTF-8 continuation byte and the lead byte of its sequence (at most three bytes back,
followed only by continuation bytes) declares a length that crosses the cut, cut just before
that lead byte instead. Anything that is not such a sequence is cut at ``max_bytes``.

``split_embedded_lines`` is the ingest rule of DESIGN section 3 for messages that arrive
whole (a logplex-1 frame, a syslog frame, a shim record): a message whose text holds LF
becomes one message per line, with the same time, PRI, source and ps, so no message anywhere
contains a raw LF. One trailing LF ends the text and makes no empty extra message.
"""

from __future__ import annotations

from typing import Final

from logplex.codecs.records import Message

__all__ = ["MIN_LINE_BYTES", "LineSplitter", "split_embedded_lines", "split_utf8_chunks"]

MIN_LINE_BYTES: Final = 4  # one chunk must hold the longest UTF-8 sequence


def _sequence_length(lead: int) -> int:
    """Bytes in the UTF-8 sequence that ``lead`` starts (0: not a multi-byte lead byte)."""
    if 0xC0 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF8:
        return 4
    return 0


def _safe_cut(line: bytes, cut: int) -> int:
    """``cut``, or the start of the UTF-8 sequence that ``cut`` would split."""
    if line[cut] & 0xC0 != 0x80:
        return cut
    for index in range(cut - 1, cut - 4, -1):
        byte = line[index]
        if byte & 0xC0 == 0x80:
            continue
        if index + _sequence_length(byte) > cut:
            return index
        return cut
    return cut


def split_utf8_chunks(line: bytes, max_bytes: int) -> list[bytes]:
    """``line`` cut into pieces of at most ``max_bytes`` (>= 4), never inside a UTF-8 sequence."""
    if len(line) <= max_bytes:
        return [line]
    if max_bytes < MIN_LINE_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_LINE_BYTES}, got {max_bytes}")
    chunks: list[bytes] = []
    start = 0
    while len(line) - start > max_bytes:
        cut = _safe_cut(line, start + max_bytes)
        chunks.append(line[start:cut])
        start = cut
    chunks.append(line[start:])
    return chunks


# From this limit on, long lines are looked for with ``rfind`` steps of up to ``limit`` bytes
# over the data (a few per MiB) rather than with ``len`` over every line (~60 ns a line).
_FIND_LONG_LINES_FROM_BYTES: Final = 1024


def _has_line_over(data: bytes, last_lf: int, limit: int, lines: list[bytes]) -> bool:
    """Whether one of ``lines`` (``data[:last_lf]`` split on LF) is longer than ``limit``."""
    if last_lf <= limit:
        return False
    if limit < _FIND_LONG_LINES_FROM_BYTES:
        return max(map(len, lines)) > limit
    # ``start`` begins a line; while more than ``limit`` bytes remain up to the last LF, the
    # line at ``start`` is short exactly when an LF lies within its next ``limit + 1``
    # bytes, and every line up to the last such LF is short too.
    start = 0
    while last_lf - start > limit:
        lf = data.rfind(b"\n", start, start + limit + 1)
        if lf < 0:
            return True
        start = lf + 1
    return False


class LineSplitter:
    """Incremental LF splitter with UTF-8-safe chunking of long lines."""

    __slots__ = ("_held", "_max_line_bytes", "pending")

    def __init__(self, max_line_bytes: int = 10000) -> None:
        if max_line_bytes < MIN_LINE_BYTES:
            raise ValueError(
                f"max_line_bytes must be at least {MIN_LINE_BYTES}, got {max_line_bytes}"
            )
        self._max_line_bytes = max_line_bytes
        self._held: list[bytes] = []
        #: bytes of the partial line held for the next ``feed`` or ``flush``
        self.pending = 0

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by ``data`` (and chunks of an over-long partial line)."""
        if b"\n" not in data:
            if not data:
                return []
            self._held.append(data)
            self.pending += len(data)
            if self.pending >= self._max_line_bytes + 2:
                return self._release_long_partial()
            return []
        if self._held:
            self._held.append(data)
            data = b"".join(self._held)
            self._held.clear()
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        lines = data.split(b"\n")
        partial = lines.pop()
        self.pending = len(partial)
        if partial:
            self._held.append(partial)
        limit = self._max_line_bytes
        if _has_line_over(data, len(data) - len(partial) - 1, limit, lines):
            lines = [chunk for line in lines for chunk in split_utf8_chunks(line, limit)]
        if self.pending >= limit + 2:
            lines.extend(self._release_long_partial())
        return lines

    def flush(self) -> list[bytes]:
        """The held partial line (one trailing CR stripped), chunked; [] when nothing is held."""
        if not self._held:
            return []
        line = b"".join(self._held)
        self._held.clear()
        self.pending = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        return split_utf8_chunks(line, self._max_line_bytes)

    def _release_long_partial(self) -> list[bytes]:
        # The partial line P has at least max+2 bytes, so the final line is longer than max
        # even if an LF strips a CR from P's end, and every cut before P's last chunk (a cut
        # looks at most one byte past itself) is already what the whole line will get. One
        # exception: a last chunk of one byte may be that CR; then the chunk before it may
        # turn out to be the line's last one, so both stay held.
        chunks = split_utf8_chunks(b"".join(self._held), self._max_line_bytes)
        rest = chunks.pop()
        if len(rest) == 1:
            rest = chunks.pop() + rest
        self._held[:] = [rest]
        self.pending = len(rest)
        return chunks


def split_embedded_lines(messages: list[Message]) -> list[Message]:
    """``messages`` with every text containing LF split into one message per line."""
    result: list[Message] = []
    for message in messages:
        text = message[4]
        # 0x0A, not b"\n": CPython 3.11 first tries a bytes operand as an int and builds
        # an error message it throws away, about ten times the cost of the search itself.
        if 0x0A not in text:
            result.append(message)
            continue
        lines = text.split(b"\n")
        if not lines[-1]:
            lines.pop()
        ts_us, pri, source, ps, _ = message
        result.extend([(ts_us, pri, source, ps, line) for line in lines])
    return result
