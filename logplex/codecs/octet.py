"""RFC 6587 section 3.4.1 octet counting: ``MSG-LEN SP SYSLOG-MSG``, frames back to back.

``MSG-LEN = NONZERO-DIGIT *DIGIT`` counts the octets of the message that follows the space.
Anything else where a frame must start is garbage: a leading zero, a non-digit, no space
after at most ``len(str(max_frame_bytes))`` digits, or a count above ``max_frame_bytes``.

``OctetFrameDecoder`` is incremental: ``feed(data)``, then ``frames()`` (all complete
frames) or ``next_frame()`` (one). Two policies for garbage:

- ``strict`` (HTTP bodies): raise ``OctetFramingError`` naming the absolute byte offset of
  the garbage. Frames completed before the garbage are returned first; the error is raised
  by the call that reaches it, and again by every later call.
- ``resync`` (TCP streams): skip to the next plausible frame start and go on. The rule: the
  first later position where ``[1-9][0-9]{0,D-1} SP <`` matches and that is not preceded
  by a digit (D the digit count of ``max_frame_bytes``; ``<`` opens every syslog PRI; a
  count is a whole digit run, never the tail of a longer or zero-led number). The skipped
  bytes are added to ``skipped_bytes``, each recovery to ``resyncs``. While no candidate is
  in sight only the last D+1 bytes are kept (plus one byte of context for the look-behind),
  since a candidate may start there.

A caller with a faster reader of its own (the syslog listener reads and parses frames in
one pass) takes ``complete_bytes()``, cuts the whole frames it can by the rules above, and
hands back their length with ``consume(count)``; it stops where anything else begins, and
``frames()`` goes on from there, with the policy. While ``is_empty`` such a caller may read a
new chunk before feeding it, ``advance`` by what it took and ``feed`` only the rest.

Cost: the decoder never looks at more than D+1 bytes to read a header, and once a header
is read it does nothing until the buffer holds the whole frame, so feeding one byte at a
time stays linear. Frames are cut from one ``bytes`` snapshot of the buffer per call, taken
only when at least one frame is complete.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Final, Literal, NoReturn

from logplex.codecs.errors import OctetFramingError

__all__ = ["OctetFrameDecoder", "encode_octet_frame", "octet_frames"]

Policy = Literal["strict", "resync"]

_COUNT_TABLE_MAX: Final = 10240  # the logplex-1 frame limit (DESIGN 5.6)
_count_table: dict[bytes, int] = {}


def _counts() -> dict[bytes, int]:
    """b"1".."10240" -> int, built on first use (about 1 MB). One dict lookup checks the
    digits, the absence of a leading zero and the value at once, for half the cost of
    isdigit() and int(); longer counts take that slower path."""
    if not _count_table:
        _count_table.update((b"%d" % n, n) for n in range(1, _COUNT_TABLE_MAX + 1))
    return _count_table


def encode_octet_frame(payload: bytes) -> bytes:
    """``MSG-LEN SP payload`` (payload must not be empty: MSG-LEN starts with 1..9)."""
    if not payload:
        raise ValueError("an octet-counted frame cannot be empty (MSG-LEN is at least 1)")
    return b"%d %b" % (len(payload), payload)


class OctetFrameDecoder:
    """Incremental RFC 6587 octet-counting decoder with a frame size limit."""

    __slots__ = (
        "_buffer",
        "_candidate",
        "_consumed",
        "_digits",
        "_frame_end",
        "_max_frame_bytes",
        "_policy",
        "_ready",
        "_resyncing",
        "resyncs",
        "skipped_bytes",
    )

    def __init__(self, max_frame_bytes: int, policy: Policy = "strict") -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        if policy not in ("strict", "resync"):
            raise ValueError(f"policy must be 'strict' or 'resync', got {policy!r}")
        self._max_frame_bytes = max_frame_bytes
        self._policy: Policy = policy
        self._digits = len(str(max_frame_bytes))
        self._candidate = re.compile(rb"(?<![0-9])[1-9][0-9]{0,%d} <" % (self._digits - 1))
        self._buffer = bytearray()
        self._consumed = 0  # absolute stream offset of _buffer[0]
        self._frame_end = 0  # end in _buffer of the frame whose header was read; 0: none
        self._resyncing = False
        self._ready: deque[bytes] = deque()
        #: bytes dropped while looking for a frame start (resync policy)
        self.skipped_bytes = 0
        #: times the decoder found its way back to a frame start (resync policy)
        self.resyncs = 0

    @property
    def max_frame_bytes(self) -> int:
        return self._max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames (nor skipped)."""
        return len(self._buffer) - self._resyncing + sum(map(len, self._ready))

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame's message, or None until more bytes arrive."""
        if not self._ready:
            self._ready.extend(self._decode())
        return self._ready.popleft() if self._ready else None

    def frames(self) -> list[bytes]:
        """Every complete frame's message, in order."""
        if self._ready:
            frames = list(self._ready)
            self._ready.clear()
            frames.extend(self._decode())
            return frames
        return self._decode()

    def complete_bytes(self) -> bytes:
        """The buffered bytes from the next frame start on, for a caller that cuts whole
        frames itself (by the rules of this module) and then ``consume``s them.

        Empty while decoding is not at a frame start (resyncing, or frames already decoded
        and waiting for ``next_frame``) and while the frame whose header was read is still
        incomplete: then ``frames()`` is the way on, and waiting stays free per byte.
        """
        buffer = self._buffer
        if self._resyncing or self._ready or self._frame_end > len(buffer):
            return b""
        return bytes(buffer)

    def consume(self, count: int) -> None:
        """Drop the first ``count`` bytes of ``complete_bytes()``: whole frames taken."""
        if not 0 <= count <= len(self._buffer):
            raise ValueError(
                f"cannot consume {count} bytes: {len(self._buffer)} are buffered "
                "(consume only whole frames read from complete_bytes())"
            )
        if count:
            del self._buffer[:count]
            self._consumed += count
            self._frame_end = 0

    def take_back(self, *, incomplete: bool = False) -> bytes:
        """``complete_bytes()``, handed back: the buffer is emptied without advancing the
        stream offset, so a caller reads them in front of its next chunk, then ``advance``s
        by what it took and ``feed``s the rest.

        With ``incomplete`` a frame still arriving is handed back too (whenever decoding is
        at a frame start): for a caller about to read a large chunk, one copy of the held
        bytes in front of it costs less than feeding the chunk and copying it back out.
        """
        if incomplete and not self._resyncing and not self._ready:
            held = bytes(self._buffer)
        else:
            held = self.complete_bytes()
        if held:
            self._buffer.clear()
            self._frame_end = 0
        return held

    @property
    def is_empty(self) -> bool:
        """Nothing buffered nor queued: the next byte fed starts a frame."""
        return not self._buffer and not self._ready

    def advance(self, count: int) -> None:
        """Count ``count`` stream bytes that a caller read as whole frames without feeding
        them (only while ``is_empty``): byte offsets in later errors stay exact."""
        if not self.is_empty:
            raise ValueError(
                "advance() is only for frames read while the decoder is empty; "
                "feed() the bytes and use complete_bytes() and consume() instead"
            )
        self._consumed += count

    def _decode(self) -> list[bytes]:
        buffer = self._buffer
        size = len(buffer)
        if self._frame_end > size or size == 0:
            return []
        self._frame_end = 0
        data = bytes(buffer)
        frames: list[bytes] = []
        append = frames.append
        counts = _counts()
        digits = self._digits
        max_frame_bytes = self._max_frame_bytes
        position = 0
        if self._resyncing:
            # _buffer[0] is one byte of context (already counted as skipped) that lets the
            # look-behind see whether a digit run continues an earlier one.
            position = self._resync(data, 1, 1)
            if self._resyncing:
                size = position  # still nothing plausible: skip the loop
        find = data.find
        window = digits + 1
        while position < size:
            space = find(b" ", position, position + window)
            if space > position:
                count = data[position:space]
                length = counts.get(count)
                if length is None and count.isdigit() and count[0] != 0x30:
                    length = int(count, 10)  # beyond the table; base 10 given: faster
                if length is not None and length <= max_frame_bytes:
                    end = space + 1 + length
                    if end > size:
                        self._frame_end = end - position
                        break
                    append(data[space + 1 : end])
                    position = end
                    continue
            elif (
                space < 0
                and size - position <= digits
                and 0x31 <= data[position] <= 0x39
                and data[position:size].isdigit()
            ):
                break  # a header still arriving
            # Garbage where a frame must start.
            if self._policy == "strict":
                if frames:
                    break  # hand out the good frames first; the next call raises
                self._raise_garbage(data, position)
            position = self._resync(data, position + 1, position)
            if self._resyncing:
                break
        if position:
            del buffer[:position]
            self._consumed += position
        return frames

    def _resync(self, data: bytes, search_from: int, skipped_from: int) -> int:
        """Where decoding goes on: the next candidate frame start, or (none in sight) the
        byte before the last D+1 bytes, kept as context while more data arrives."""
        match = self._candidate.search(data, search_from)
        if match is not None:
            self.skipped_bytes += match.start() - skipped_from
            self.resyncs += 1
            self._resyncing = False
            return match.start()
        keep_from = max(search_from, len(data) - (self._digits + 1))
        self.skipped_bytes += keep_from - skipped_from
        self._resyncing = True
        return keep_from - 1

    def _raise_garbage(self, data: bytes, position: int) -> NoReturn:
        offset = self._consumed + position
        head = data[position : position + self._digits + 1]
        space = head.find(b" ")
        count = head[:space] if space > 0 else head
        if count[:1] == b"0" and count.isdigit():
            reason = f"MSG-LEN {count!r} has a leading zero"
        elif space > 0 and count.isdigit():
            reason = f"MSG-LEN {int(count)} exceeds the limit of {self._max_frame_bytes} bytes"
        elif count.isdigit():
            reason = (
                f"MSG-LEN {count!r}... has more than {self._digits} digits "
                f"(the limit is {self._max_frame_bytes} bytes)"
            )
        else:
            reason = f"expected MSG-LEN SP (digits then a space), found {head!r}"
        raise OctetFramingError(
            f"octet-counted framing broken at byte {offset}: {reason}", offset=offset
        )


def octet_frames(data: bytes, max_frame_bytes: int) -> list[bytes]:
    """Every frame of a complete octet-counted body (strict); raises on garbage or a cut."""
    decoder = OctetFrameDecoder(max_frame_bytes, "strict")
    decoder.feed(data)
    frames = decoder.frames()
    if decoder.buffered:
        frames.extend(decoder.frames())  # raises when garbage follows the first frames
        offset = len(data) - decoder.buffered
        raise OctetFramingError(
            f"octet-counted body ends inside a frame that starts at byte {offset} "
            f"({decoder.buffered} bytes of it present)",
            offset=offset,
        )
    return frames
