"""Drain cursors over the spool: their journal and ``SpoolQueue``, a drain's queue on disk.

Each drain (known by its token, ``d.<uuid>``) reads its channel's messages by number
(``logplex.spool.log``: every channel numbers its messages from 0 for the life of the spool).
Its cursor is:

- ``next_n``: the first number not yet taken;
- ``open``: the extents ``[start, end)`` taken and not yet settled, each with the L10 it
  carried, oldest first — after a restart they are sent again first, exactly as they were,
  so each carries the same Frame-Id (``frame_id``: a hash of the spool's id, the drain's
  token and the extent);
- ``delivered`` / ``dropped``: the status counters, which continue across restarts;
- the L10 owed (``lost_pending``, since when).

Every change is appended to ``cursors.jnl`` as the drain's whole state (a CRC-framed msgpack
record, last one per drain wins), written with one ``os.write`` before the batch is sent, so
a SIGKILL never loses it (the page cache outlives the process); the journal is fsynced at
each compaction and at a clean shutdown. Compaction rewrites one record per drain into a new
file and renames it over the old one.

``SpoolQueue`` implements ``drains.DrainQueue``: ``take`` formats the messages from its
cursor (from the memory cache when the batch is recent, from disk otherwise: a drain hours
behind costs disk, not memory), and numbers the spool no longer holds (dropped by
``--spool-max-bytes``, or memory-only records lost to the cache while the disk failed) are
counted exactly into the next L10.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import msgpack
import trio

from drains import EncodeMessages, MakeNotice, Taken
from logplex.codecs.records import Batch, Message
from logplex.codecs.spoolformat import ScannedRecord, frame_record, scan_records


class ChannelReader(Protocol):
    """What a queue reads of its channel (``logplex.spool.log.ChannelLog``)."""

    @property
    def committed_n(self) -> int: ...
    def first_n(self) -> int: ...
    def batch_at(self, n: int) -> tuple[int, int, Batch | None] | None: ...
    def frame_bytes_estimate(self) -> int: ...
    def published_us_at(self, n: int) -> int: ...


class CursorSink(Protocol):
    """Where a queue's state goes when it changes (``CursorJournal``, or a cluster owner's
    checkpoint, ``logplex.cluster.partition``)."""

    def write(self, token: str, state: CursorState | None) -> None: ...


class SpoolSide(Protocol):
    """What a queue needs of its spool (``logplex.spool.log.Spool``)."""

    @property
    def spool_id(self) -> str: ...
    @property
    def journal(self) -> CursorSink: ...
    def count_budget_loss(self, count: int) -> None: ...
    def cursor_moved(self) -> None: ...


log = logging.getLogger(__name__)

JOURNAL_NAME: Final = "cursors.jnl"
COMPACT_AFTER_BYTES: Final = 4 * 1024 * 1024
NOTICE_DELAY_S: Final = 1.0


@dataclass(slots=True)
class OpenExtent:
    start: int
    end: int
    notice_count: int = 0
    notice_since_us: int = 0
    notice_now_us: int = 0

    def to_list(self) -> list[int]:
        return [self.start, self.end, self.notice_count, self.notice_since_us, self.notice_now_us]


@dataclass(slots=True)
class CursorState:
    channel: str
    next_n: int
    open: list[OpenExtent] = field(default_factory=list)
    delivered: int = 0
    dropped: int = 0
    lost_pending: int = 0
    lost_since_us: int = 0

    def to_list(self) -> list[Any]:
        return [
            self.channel,
            self.next_n,
            [extent.to_list() for extent in self.open],
            self.delivered,
            self.dropped,
            self.lost_pending,
            self.lost_since_us,
        ]


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _state_from(value: Any) -> CursorState | None:
    """A cursor state from its journal form, or None if it is not one."""
    if not (isinstance(value, list) and len(value) == 7 and isinstance(value[0], str)):
        return None
    channel, next_n, extents, delivered, dropped, lost, since = value
    if not all(_natural(v) for v in (next_n, delivered, dropped, lost, since)):
        return None
    if not isinstance(extents, list):
        return None
    opened = []
    for extent in extents:
        if not (isinstance(extent, list) and len(extent) == 5 and all(map(_natural, extent))):
            return None
        if extent[0] > extent[1] or (extent[0] == extent[1] and not extent[2]):
            return None
        opened.append(OpenExtent(*extent))
    return CursorState(channel, next_n, opened, delivered, dropped, lost, since)


def read_journal(path: Path) -> tuple[dict[str, CursorState], int]:
    """The last state of every drain in the journal, and how many records were unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    states: dict[str, CursorState] = {}
    damaged = 0
    for event in scan_records(data, 0):
        if not isinstance(event, ScannedRecord):
            damaged += 1
            continue
        try:
            token, value = msgpack.unpackb(event.body)
        except (ValueError, TypeError, msgpack.UnpackException):
            damaged += 1
            continue
        if not isinstance(token, str):
            damaged += 1
            continue
        if value is None:
            states.pop(token, None)
            continue
        state = _state_from(value)
        if state is None:
            damaged += 1
            continue
        states[token] = state
    return states, damaged


class CursorJournal:
    """The append-only journal of drain cursor states (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / JOURNAL_NAME
        self.states, self.damaged = read_journal(self.path)
        self._fd = -1
        self._size = 0
        self.write_errors = 0
        self._compact()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size

    def _compact(self) -> None:
        """Rewrite the journal as one record per drain (tmp file, fsync, rename)."""
        tmp = self.path.with_name(JOURNAL_NAME + ".tmp")
        data = b"".join(
            frame_record(msgpack.packb([token, state.to_list()]))
            for token, state in self.states.items()
        )
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        if self._fd >= 0:
            os.close(self._fd)
        self._open()

    def write(self, token: str, state: CursorState | None) -> None:
        """Append ``token``'s state (None: the drain is gone); never raises for disk errors."""
        if state is None:
            self.states.pop(token, None)
        else:
            self.states[token] = state
        record = frame_record(msgpack.packb([token, None if state is None else state.to_list()]))
        try:
            os.write(self._fd, record)
            self._size += len(record)
            if self._size > COMPACT_AFTER_BYTES:
                self._compact()
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.warning("cannot write the drain cursor journal %s: %s", self.path, exc)

    def close(self) -> None:
        """Compact and fsync (a clean shutdown), then close."""
        try:
            self._compact()
        except OSError as exc:
            log.warning("cannot compact the drain cursor journal %s: %s", self.path, exc)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def frame_id(spool_id: str, token: str, extent: OpenExtent) -> str:
    """32 uppercase hex digits, the same for the same extent of the same drain and spool.

    The L10's time is part of it: two lone notices at one position are different posts.
    """
    key = f"{spool_id}/{token}/{extent.start}/{extent.end}/{extent.notice_now_us}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest().upper()


class SpoolQueue:
    """One drain's ``DrainQueue`` over the spool (see the module docstring)."""

    def __init__(
        self,
        spool: SpoolSide,
        channel: ChannelReader,
        token: str,
        state: CursorState,
        *,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._spool = spool
        self.channel = channel
        self.token = token
        self.state = state
        self._encode = encode
        self._memo_key = memo_key + "/spool"
        self._make_notice = make_notice
        self._wall_clock_s = wall_clock_s
        # Extents taken before a restart (or by the drain this one replaced): sent first.
        self._replay: collections.deque[OpenExtent] = collections.deque(state.open)
        state.open = list(state.open)
        self._notice_due_at = math.inf if not state.lost_pending else 0.0
        self._wakeup = trio.Event()
        self.detached = False
        self._dirty = False

    # -- observation --------------------------------------------------------------------

    @property
    def queued_messages(self) -> int:
        replay = sum(extent.end - extent.start for extent in self._replay)
        return replay + max(0, self.channel.committed_n - self.state.next_n)

    @property
    def queued_bytes(self) -> int:
        return self.queued_messages * self.channel.frame_bytes_estimate()

    @property
    def dropped_total(self) -> int:
        return self.state.dropped

    @property
    def lost_pending(self) -> int:
        return self.state.lost_pending

    @property
    def notice_due(self) -> bool:
        return self.state.lost_pending > 0 and self._notice_due_at != math.inf

    @property
    def restored_delivered(self) -> int:
        return self.state.delivered

    def low_water(self) -> int:
        """The lowest message number this drain may still need."""
        starts = [extent.start for extent in self.state.open]
        return min(starts) if starts else self.state.next_n

    def lag_seconds(self, now_us: int) -> float:
        """Age of the oldest message this drain has not taken yet (0 when caught up)."""
        if self.queued_messages == 0:
            return 0.0
        published_us = self.channel.published_us_at(self.low_water())
        return max(0.0, (now_us - published_us) / 1e6) if published_us else 0.0

    # -- producer side ------------------------------------------------------------------

    def push_batch(self, batch: Batch) -> None:
        """Unused: the spool itself feeds the drain (``wake`` after each commit)."""
        del batch

    def wake(self) -> None:
        self._wakeup.set()

    def note_delivered(self, message_count: int) -> None:
        self.state.delivered += message_count
        self._dirty = True

    def note_lost(self, message_count: int, since_us: int) -> None:
        self._record_loss(message_count, since_us)

    def flush_state(self) -> None:
        """Persist the counters if they changed since the last journal write."""
        if self._dirty and not self.detached:
            self._persist()

    def _persist(self) -> None:
        self._dirty = False
        self._spool.journal.write(self.token, self.state)

    # -- consumer side ------------------------------------------------------------------

    def _notice_takeable(self) -> bool:
        return self.state.lost_pending > 0 and trio.current_time() >= self._notice_due_at

    def _takeable(self) -> bool:
        if self.detached:
            return False
        return (
            bool(self._replay or self.channel.committed_n > self.state.next_n)
            or self._notice_takeable()
        )

    async def wait_may_send(self) -> None:
        """The spool's queues may always send (``drains.DrainQueue``)."""
        return

    async def wait_takeable(self) -> None:
        while not self._takeable():
            self._wakeup = trio.Event()
            if self.state.lost_pending and not self.detached:
                with trio.move_on_at(self._notice_due_at):
                    await self._wakeup.wait()
            else:
                await self._wakeup.wait()

    def _record_loss(self, count: int, since_us: int, *, messages_lost: bool = True) -> None:
        if count <= 0:
            return
        state = self.state
        if state.lost_pending == 0:
            state.lost_since_us = since_us
            self._notice_due_at = math.inf
        else:
            state.lost_since_us = min(state.lost_since_us, since_us)
        if messages_lost and self._notice_due_at == math.inf:
            self._notice_due_at = trio.current_time() + NOTICE_DELAY_S
        state.lost_pending += count
        state.dropped += count
        self._dirty = True
        self._wakeup.set()

    def _frames_of(self, batch: Batch) -> tuple[list[bytes], list[int], bool]:
        """One frame per message (b"" for one the encoder refuses), cumulative sizes, and
        whether any was refused."""
        memo = batch.encoded.get(self._memo_key)
        if memo is None:
            refused = False
            try:
                frames = self._encode(batch.messages)
            except ValueError:
                frames = []
            if len(frames) != len(batch.messages):
                refused = True
                frames = []
                for message in batch.messages:
                    try:
                        frames.extend(self._encode([message]))
                    except ValueError:
                        frames.append(b"")
            memo = (frames, list(itertools.accumulate(map(len, frames))), refused)
            batch.encoded[self._memo_key] = memo
        return memo  # type: ignore[return-value]

    def _gather(
        self, start: int, stop: int, max_messages: int, max_bytes: int, out: list[bytes]
    ) -> tuple[int, int, int]:
        """Frames of messages ``start`` up to ``stop`` into ``out``, within the caps.

        Returns (the number after the last message taken, bytes added, messages missing:
        numbers the spool no longer holds or the encoder refused). Stops at a gap once
        something was taken, so a batch never spans lost numbers.
        """
        n = start
        added_bytes = 0
        missing = 0
        taken = 0
        while n < stop and taken < max_messages:
            found = self.channel.batch_at(n)
            if found is None:
                break
            first_n, count, batch = found
            if batch is None or first_n > n:
                # Numbers below first_n are gone; so is a record that cannot be read.
                gap_end = min(first_n if batch is not None else first_n + count, stop)
                if taken:
                    break
                missing += gap_end - n
                n = gap_end
                continue
            frames, offsets, refused = self._frames_of(batch)
            index = n - first_n
            base = offsets[index - 1] if index else 0
            limit = min(len(frames), index + (max_messages - taken), index + (stop - n))
            # The cut at the byte cap, by bisection on the cumulative sizes; at least one
            # frame when nothing is taken yet, so an oversized frame cannot block the drain.
            end = bisect.bisect_right(offsets, base + max_bytes - added_bytes, index, limit)
            if end == index and not out and index < limit:
                end = index + 1
            if end == index:
                break
            if refused:
                for frame in frames[index:end]:
                    if frame:
                        out.append(frame)
                    else:
                        missing += 1
            else:
                out.extend(frames if index == 0 and end == len(frames) else frames[index:end])
            added_bytes += offsets[end - 1] - base
            taken += end - index
            n = first_n + end
            if end < len(frames):
                break
        return n, added_bytes, missing

    def take(self, max_messages: int, max_bytes: int) -> Taken | None:
        if self.detached:
            return None
        state = self.state
        if self._replay:
            extent = self._replay.popleft()
            return self._take_extent(extent)
        committed = self.channel.committed_n
        if state.next_n < committed:
            first = self.channel.first_n()
            if state.next_n < first:
                # Pushed out by the disk budget (or lost from memory while the disk failed).
                self._spool.count_budget_loss(min(first, committed) - state.next_n)
                self._record_loss(min(first, committed) - state.next_n, self._now_us())
                state.next_n = min(first, committed)
        if state.next_n >= committed and not self._notice_takeable():
            if self._dirty:
                self._persist()
            return None
        frames: list[bytes] = []
        extent = OpenExtent(state.next_n, state.next_n)
        if state.lost_pending and (state.next_n < committed or self._notice_takeable()):
            now_us = self._now_us()
            extent.notice_count = state.lost_pending
            extent.notice_since_us = state.lost_since_us
            extent.notice_now_us = now_us
            state.lost_pending = 0
        notice_frame = self._notice_frame(extent)
        if notice_frame:
            frames.append(notice_frame)
        end, byte_count, missing = self._gather(
            state.next_n,
            self._take_stop(state.next_n, committed, max_messages),
            max_messages,
            max_bytes - len(notice_frame),
            frames,
        )
        if missing:
            self._record_loss(missing, self._now_us())
        extent.end = end
        state.next_n = end
        if not frames:
            self._persist()
            return None
        state.open.append(extent)
        self._persist()
        return self._taken(extent, frames, byte_count + len(notice_frame), bool(notice_frame))

    def _take_stop(self, start: int, committed: int, max_messages: int) -> int:
        """Where a take from ``start`` must end at the latest (a subclass may cut it)."""
        del start, max_messages
        return committed

    def _taken(
        self, extent: OpenExtent, frames: list[bytes], byte_count: int, has_notice: bool
    ) -> Taken:
        """The ``Taken`` of ``extent``: its frames under its derived Frame-Id."""
        return Taken(
            frames=frames,
            message_count=len(frames) - (1 if has_notice else 0),
            byte_count=byte_count,
            notice_count=extent.notice_count,
            notice_since_us=extent.notice_since_us,
            frame_id=frame_id(self._spool.spool_id, self.token, extent),
            extent=(extent.start, extent.end),
        )

    def _notice_frame(self, extent: OpenExtent) -> bytes:
        if not extent.notice_count:
            return b""
        notice: Message = self._make_notice(
            extent.notice_count, extent.notice_since_us, extent.notice_now_us
        )
        return self._encode([notice])[0]

    def _take_extent(self, extent: OpenExtent) -> Taken | None:
        """An extent taken before, sent again as it was (same frames, same Frame-Id)."""
        frames: list[bytes] = []
        notice_frame = self._notice_frame(extent)
        if notice_frame:
            frames.append(notice_frame)
        n = extent.start
        byte_count = 0
        while n < extent.end:
            end, added, missing = self._gather(n, extent.end, extent.end - n, 1 << 62, frames)
            if missing:
                self._record_loss(missing, self._now_us())
            byte_count += added
            if end == n:
                break
            n = end
        if not frames:
            self._close_extent(extent.end)
            self._persist()
            return None
        self._persist()
        return self._taken(extent, frames, byte_count + len(notice_frame), bool(notice_frame))

    def _close_extent(self, end: int) -> OpenExtent | None:
        for position, extent in enumerate(self.state.open):
            if extent.end == end:
                return self.state.open.pop(position)
        return None

    def settle(self, taken: Taken, *, delivered: bool) -> None:
        if self.detached or taken.extent is None:
            return
        self._close_extent(taken.extent[1])
        if not delivered:
            since_us = taken.notice_since_us if taken.notice_count else self._now_us()
            if taken.notice_count:
                self.state.dropped -= taken.notice_count  # counted when it was first owed
            self._record_loss(
                taken.notice_count + taken.message_count,
                since_us,
                messages_lost=taken.message_count > 0,
            )
        self._persist()
        self._spool.cursor_moved()

    def _now_us(self) -> int:
        return int(self._wall_clock_s() * 1_000_000)
