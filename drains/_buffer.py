"""The per-drain buffer: bounded, drop-oldest, with in-band loss accounting (L10).

Follows DESIGN section 8 ("Router → drains") and 5.5 (L10). In the spirit of Logplex's
``logplex_drain_buffer.erl``: one bounded buffer per drain, losses told in-band.

- ``push_batch`` is synchronous and O(1) amortised: the batch's frames (formatted once per
  batch and memoised in ``Batch.encoded`` under the drain's key) are appended as one entry.
- Caps: ``max_messages`` and ``max_bytes`` (frame bytes). Overflow drops the OLDEST
  messages, counts them and remembers the wall-clock time of the first drop.
- ``take(max_messages, max_bytes)`` hands out up to that many frames; when losses are
  pending, the L10 notice is the first frame, and exactly one is sent per loss streak.
- ``settle(taken, delivered=False)`` returns a batch the drain gave up on: its messages and
  the count its L10 carried are added to the next L10 (nothing vanishes silently).
- When losses are pending and nothing is queued, the notice becomes takeable on its own
  ``notice_delay_s`` (1 s) after the loss, so it is never held back indefinitely.
- A notice that was itself given up on (sent alone and refused, or out of retries) does not
  beget another lone notice: its count waits for the next batch, or for the next loss of
  messages, so a drain that refuses everything gets one lone L10 per loss, not one a second.

``DrainQueue`` is the seam for the durable spool (DESIGN section 2, ``--spool``): drains use
only that protocol; ``logplex.spool.SpoolQueue`` implements it over the spool with the same
loss reporting, handed to the drain through ``DrainContext.make_queue``.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from logplex.codecs.records import Batch, Message

EncodeMessages = Callable[[list[Message]], list[bytes]]
MakeNotice = Callable[[int, int, int], Message]  # (count, since_us, now_us) -> L10 message


@dataclass(slots=True)
class Taken:
    """Frames handed to a drain for one send, with what they stand for.

    ``frames`` begins with the L10 frame when ``notice_count`` > 0; ``message_count`` counts
    only the buffered messages (the notice is not a published message).
    """

    frames: list[bytes]
    message_count: int
    byte_count: int
    notice_count: int = 0
    notice_since_us: int = 0
    # Set by a spool queue: the Frame-Id every send of these frames carries (also after a
    # restart), and the channel message numbers [start, end) they hold.
    frame_id: str | None = None
    extent: tuple[int, int] | None = None


class DrainQueue(Protocol):
    """What a drain reads through: the in-memory ``DrainBuffer`` or, later, a spool."""

    @property
    def queued_messages(self) -> int: ...

    @property
    def queued_bytes(self) -> int: ...

    @property
    def dropped_total(self) -> int: ...

    @property
    def lost_pending(self) -> int: ...

    @property
    def notice_due(self) -> bool:
        """An L10 is owed and will be sent on its own if no batch comes to carry it."""
        ...

    def push_batch(self, batch: Batch) -> None: ...

    def take(self, max_messages: int, max_bytes: int) -> Taken | None: ...

    def settle(self, taken: Taken, *, delivered: bool) -> None: ...

    async def wait_takeable(self) -> None: ...

    async def wait_may_send(self) -> None:
        """Return when this router may send (at once, except for a cluster owner that lost
        its partition's lease: it never returns there, and the drain is stopped)."""

    @property
    def restored_delivered(self) -> int:
        """Messages delivered before this process started (a spool keeps the count)."""
        ...

    def note_delivered(self, message_count: int) -> None:
        """``message_count`` more messages were delivered (a spool persists the count)."""

    def note_lost(self, message_count: int, since_us: int) -> None:
        """Count ``message_count`` messages lost elsewhere into the next L10."""


QueueFactory = Callable[[EncodeMessages, str, MakeNotice], DrainQueue]
"""Builds a drain's queue from its encoder, memo key and L10 maker (``DrainContext``)."""


class DrainBuffer:
    """The in-memory ``DrainQueue`` of one drain."""

    def __init__(
        self,
        *,
        max_messages: int,
        max_bytes: int,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
        notice_delay_s: float = 1.0,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("drain buffer caps must be positive")
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._encode = encode
        self._memo_key = memo_key
        self._make_notice = make_notice
        self._notice_delay_s = notice_delay_s
        self._wall_clock_s = wall_clock_s
        # Entries are [frames, offsets, start]: frames[start:] are still queued; offsets[i] is
        # the byte count of frames[: i + 1] (shared by every drain of the batch's memo key).
        self._entries: collections.deque[list[object]] = collections.deque()
        self._queued_messages = 0
        self._queued_bytes = 0
        self._lost_pending = 0  # messages to report in the next L10
        self._lost_since_us = 0  # wall-clock time of the first loss of the streak
        self._notice_due_at = math.inf  # trio time at which a lone notice becomes takeable
        self._dropped_total = 0
        self._wakeup = trio.Event()

    # -- observation ------------------------------------------------------------------

    @property
    def queued_messages(self) -> int:
        return self._queued_messages

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def dropped_total(self) -> int:
        """Messages dropped so far (overflow and batches given up), for status and tests."""
        return self._dropped_total

    @property
    def restored_delivered(self) -> int:
        return 0  # memory only: nothing survives a restart

    def note_delivered(self, message_count: int) -> None:
        del message_count  # DrainCore counts deliveries; memory keeps nothing more

    def note_lost(self, message_count: int, since_us: int) -> None:
        self._record_loss(message_count, since_us)

    def abandon(self) -> int:
        """Give up everything queued (the drain is going away): the messages queued plus the
        L10 count still owed, which nobody will be told unless the caller carries it on."""
        held = self._queued_messages + self._lost_pending
        self._dropped_total += self._queued_messages
        self._entries.clear()
        self._queued_messages = self._queued_bytes = 0
        self._lost_pending = 0
        return held

    @property
    def lost_pending(self) -> int:
        return self._lost_pending

    @property
    def notice_due(self) -> bool:
        return self._lost_pending > 0 and self._notice_due_at != math.inf

    # -- producer side (synchronous, called from the router's publish) ----------------

    def frames_of(self, batch: Batch) -> tuple[list[bytes], list[int], int]:
        """The batch's frames, their cumulative sizes, and how many messages failed to format.

        Formatted once per batch and memo key. A message the encoder refuses (a header field
        no receiver could parse) is left out and counted into the next L10, so one bad
        record never fails the router's publish or vanishes silently.
        """
        memo = batch.encoded.get(self._memo_key)
        if memo is None:
            unformattable = 0
            try:
                frames = self._encode(batch.messages)
            except ValueError:  # codecs.errors.EncodeError and ProtocolError subclasses
                frames = []
                for message in batch.messages:
                    try:
                        frames.extend(self._encode([message]))
                    except ValueError:
                        unformattable += 1
            memo = (frames, list(itertools.accumulate(map(len, frames))), unformattable)
            batch.encoded[self._memo_key] = memo
        return memo  # type: ignore[return-value]

    def push_batch(self, batch: Batch) -> None:
        if not batch.messages:
            return
        frames, offsets, unformattable = self.frames_of(batch)
        if unformattable:
            self._record_loss(unformattable, self._now_us())
        if not frames:
            return
        self._entries.append([frames, offsets, 0])
        self._queued_messages += len(frames)
        self._queued_bytes += offsets[-1]
        if self._queued_messages > self._max_messages or self._queued_bytes > self._max_bytes:
            self._drop_oldest()
        self._wakeup.set()

    def _drop_oldest(self) -> None:
        dropped = 0
        while self._entries and (
            self._queued_messages > self._max_messages or self._queued_bytes > self._max_bytes
        ):
            entry = self._entries[0]
            frames: list[bytes] = entry[0]  # type: ignore[assignment]
            offsets: list[int] = entry[1]  # type: ignore[assignment]
            start: int = entry[2]  # type: ignore[assignment]
            base = offsets[start - 1] if start else 0
            left = len(frames) - start
            remaining_bytes = offsets[-1] - base
            excess_messages = self._queued_messages - self._max_messages
            excess_bytes = self._queued_bytes - self._max_bytes
            if excess_messages >= left or excess_bytes >= remaining_bytes:
                self._entries.popleft()
                self._queued_bytes -= remaining_bytes
                cut = left
            else:
                # Part of this entry goes: enough messages for the message cap, and enough
                # bytes for the byte cap (both end inside the entry: excess < remaining).
                end = start + max(excess_messages, 0)
                if excess_bytes > 0:
                    end = max(end, bisect.bisect_left(offsets, base + excess_bytes, start) + 1)
                cut = end - start
                entry[2] = end
                self._queued_bytes -= offsets[end - 1] - base
            self._queued_messages -= cut
            dropped += cut
        self._record_loss(dropped, int(self._wall_clock_s() * 1_000_000))

    def _record_loss(self, count: int, since_us: int, *, messages_lost: bool = True) -> None:
        """Count ``count`` losses into the next L10.

        ``messages_lost`` False: only the count of a notice that was given up on, which
        rides on the next batch (or the next loss) instead of going alone again.
        """
        if count <= 0:
            return
        if self._lost_pending == 0:
            self._lost_since_us = since_us
            self._notice_due_at = math.inf
        else:
            self._lost_since_us = min(self._lost_since_us, since_us)
        if messages_lost and self._notice_due_at == math.inf:
            self._notice_due_at = trio.current_time() + self._notice_delay_s
        self._lost_pending += count
        self._dropped_total += count
        self._wakeup.set()

    # -- consumer side (the drain's task) ---------------------------------------------

    def _notice_takeable(self) -> bool:
        return self._lost_pending > 0 and trio.current_time() >= self._notice_due_at

    async def wait_may_send(self) -> None:
        return

    async def wait_takeable(self) -> None:
        """Wait until ``take`` would return something."""
        while True:
            if self._queued_messages or self._notice_takeable():
                return
            self._wakeup = trio.Event()
            if self._lost_pending:
                with trio.move_on_at(self._notice_due_at):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()

    def take(self, max_messages: int, max_bytes: int) -> Taken | None:
        """Up to ``max_messages`` frames and about ``max_bytes`` bytes (always at least one).

        Returns None when there is nothing to send yet.
        """
        if not self._queued_messages and not self._notice_takeable():
            return None
        taken = Taken(frames=[], message_count=0, byte_count=0)
        if self._lost_pending:
            now_us = int(self._wall_clock_s() * 1_000_000)
            notice = self._make_notice(self._lost_pending, self._lost_since_us, now_us)
            notice_frame = self._encode([notice])[0]
            taken.frames.append(notice_frame)
            taken.byte_count = len(notice_frame)
            taken.notice_count = self._lost_pending
            taken.notice_since_us = self._lost_since_us
            self._lost_pending = 0
        out = taken.frames
        byte_count = taken.byte_count
        room = max_messages
        entries = self._entries
        while entries and room > 0:
            entry = entries[0]
            frames: list[bytes] = entry[0]  # type: ignore[assignment]
            offsets: list[int] = entry[1]  # type: ignore[assignment]
            start: int = entry[2]  # type: ignore[assignment]
            base = offsets[start - 1] if start else 0
            left = len(frames) - start
            remaining_bytes = offsets[-1] - base
            if left <= room and byte_count + remaining_bytes <= max_bytes:
                out.extend(frames if start == 0 else frames[start:])
                byte_count += remaining_bytes
                room -= left
                entries.popleft()
                continue
            # Cut inside this entry at the caps (bisect on the cumulative sizes), taking at
            # least one frame so an oversized frame cannot block the drain.
            limit = start + min(left, room)
            end = bisect.bisect_right(offsets, base + max_bytes - byte_count, start, limit)
            if end == start and not out:
                end = start + 1
            out.extend(frames[start:end])
            byte_count += (offsets[end - 1] - base) if end > start else 0
            room -= end - start
            if end - start == left:
                entries.popleft()
            else:
                entry[2] = end
            break
        taken.message_count = len(out) - (1 if taken.notice_count else 0)
        self._queued_messages -= taken.message_count
        self._queued_bytes -= byte_count - (len(out[0]) if taken.notice_count else 0)
        taken.byte_count = byte_count
        return taken

    def settle(self, taken: Taken, *, delivered: bool) -> None:
        """Close out a taken batch; one given up on is counted into the next L10."""
        if delivered:
            return
        since_us = taken.notice_since_us if taken.notice_count else self._now_us()
        if taken.notice_count:
            # The notice's own count is already in dropped_total; carry it over.
            self._dropped_total -= taken.notice_count
        self._record_loss(
            taken.notice_count + taken.message_count,
            since_us,
            messages_lost=taken.message_count > 0,
        )

    def _now_us(self) -> int:
        return int(self._wall_clock_s() * 1_000_000)
