"""The spool's log: segments, group commit, the channel index, the cache, retention, budget.

Follows DESIGN section 8 ("With the spool") and docs/reliability.md; the file format is
``logplex.codecs.spoolformat``.

- ``append(channel, messages, stream)`` (synchronous, from ``Router.publish``) numbers the
  messages in their channel, encodes one batch record into the pending buffer and returns a
  commit ticket; ``wait_durable(ticket)`` returns once that record is written and fsynced.
  The shim listener ACKs and ``POST /logs`` answers 204 only after it.
- ``run`` is the committer: whenever records are pending it writes them all with one
  ``os.write`` and one ``fdatasync`` in a worker thread (group commit: batches arriving
  during an fsync go into the next one, so no batch waits longer than about two fsyncs,
  and ``--spool-sync-ms`` is the bound it reports against), then wakes the drains of the
  channels written: **drains read only durable records**, so a number a drain has seen is
  never reused after a crash.
- Segments roll at ``segment_bytes``; each new one starts with a snapshot record (every
  channel's next number, every shim stream's acknowledged seq), so deleting old segments
  never forgets them.
- The index keeps, per channel, one ``Ref`` per batch (numbers, file position, publish time)
  and, for recent batches, the decoded ``Batch`` (the memory cache, ``cache_bytes`` in all),
  so a drain that keeps up reads memory and one that is behind reads disk.
- Retention: a segment is deleted once no drain and no history ring needs a record in it;
  the budget (``max_bytes``) deletes the oldest segments regardless, and each drain counts
  the numbers it lost exactly into its next L10 (``SpoolQueue.take``).
- A write or fsync error (ENOSPC, EIO) never crashes the router: the records of the failed
  commit and everything after stay in memory only (delivered from the cache, counted as lost
  when the cache lets them go before a drain took them), the router says so in its log,
  ``/healthcheck`` and metrics, and tries a new segment every ``retry_s`` until the disk
  takes writes again.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import errno
import logging
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio
import zstandard

from drains import EncodeMessages, MakeNotice
from logplex import metrics
from logplex.codecs.records import Batch, Message
from logplex.codecs.spoolformat import (
    RECORD_HEADER_BYTES,
    BatchRecord,
    SpoolFormatError,
    StreamMark,
    decode_body,
    decode_messages,
    encode_batch_body,
    encode_segment_header,
    encode_snapshot_body,
    frame_record,
    pack_messages,
)
from logplex.spool.cursors import CursorJournal, CursorState, SpoolQueue
from logplex.spool.recovery import ScanResult, scan_directory, segment_name

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES: Final = 64 * 1024 * 1024
DEFAULT_CACHE_BYTES: Final = 64 * 1024 * 1024
MAX_DECODED_BATCH_BYTES: Final = 256 * 1024 * 1024
RETRY_DISK_S: Final = 1.0
RETENTION_INTERVAL_S: Final = 1.0
MAX_REMEMBERED_STREAMS: Final = 100_000
SPOOL_ID_NAME: Final = "spool-id"
DELETED_PREFIX: Final = "#deleted:"  # journal key of a deleted channel's history cut-off
COMPRESSION_LEVEL: Final = 1


PENDING: Final = 0  # Ref.length of a batch not written yet
MEMORY_ONLY: Final = -1  # Ref.length of a batch the disk refused: memory only
CACHE_OVERHEAD_PER_MESSAGE: Final = 140  # bytes of Python objects a cached message costs

_PendingBatch = tuple[str, int, int, int, "StreamMark | None", bytes]


def _cached_size(ref: Ref) -> int:
    return ref.packed_bytes + CACHE_OVERHEAD_PER_MESSAGE * ref.count


class Segment:
    """One segment file: its base position, size, and a descriptor for reads."""

    __slots__ = ("base", "created_s", "path", "read_fd", "size")

    def __init__(self, path: Path, base: int, size: int, created_s: float) -> None:
        self.path = path
        self.base = base
        self.size = size
        self.created_s = created_s
        self.read_fd = -1

    def pread(self, length: int, offset: int) -> bytes:
        if self.read_fd < 0:
            self.read_fd = os.open(self.path, os.O_RDONLY)
        return os.pread(self.read_fd, length, offset)

    def close(self) -> None:
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1


class Ref:
    """One batch in the index: its numbers, where it is, and (when cached) its messages."""

    __slots__ = (
        "batch",
        "count",
        "first_n",
        "length",
        "offset",
        "packed_bytes",
        "published_us",
        "segment",
    )

    def __init__(
        self,
        first_n: int,
        count: int,
        published_us: int,
        segment: Segment | None,
        offset: int,
        length: int,
        batch: Batch | None,
        packed_bytes: int,
    ) -> None:
        self.first_n = first_n
        self.count = count
        self.published_us = published_us
        self.segment = segment  # None: not on disk (pending, or memory only)
        self.offset = offset
        self.length = length
        self.batch = batch
        self.packed_bytes = packed_bytes


def _first_n(ref: Ref) -> int:
    return ref.first_n


class ChannelLog:
    """The index of one channel's batches, oldest first."""

    __slots__ = (
        "_spool",
        "committed_n",
        "head",
        "history_from_n",
        "message_bytes",
        "messages",
        "name",
        "next_n",
        "queues",
        "refs",
    )

    def __init__(self, spool: Spool, name: str, next_n: int) -> None:
        self._spool = spool
        self.name = name
        self.refs: list[Ref] = []
        self.head = 0  # refs[:head] were dropped
        self.next_n = next_n  # the number the next appended message gets
        self.committed_n = next_n  # messages below it are durable (or memory only): readable
        self.queues: list[SpoolQueue] = []
        # Numbers below it belong to a deleted channel of the same name: never history again.
        self.history_from_n = 0
        self.messages = 0
        self.message_bytes = 0

    def first_n(self) -> int:
        """The lowest number still held (committed_n when nothing is)."""
        if self.head < len(self.refs):
            return self.refs[self.head].first_n
        return self.committed_n

    def frame_bytes_estimate(self) -> int:
        average = self.message_bytes // self.messages if self.messages else 100
        return average + 60  # a frame's header around the message

    def _ref_index(self, n: int) -> int:
        """Index of the first ref holding ``n`` or after it (len(refs) when none)."""
        index = bisect.bisect_right(self.refs, n, lo=self.head, key=_first_n) - 1
        if index < self.head:
            return self.head
        ref = self.refs[index]
        return index if n < ref.first_n + ref.count else index + 1

    def batch_at(self, n: int) -> tuple[int, int, Batch | None] | None:
        """The batch holding ``n`` or the next one after it: (first number, count, messages
        or None when they cannot be read); None when nothing is held from ``n`` on."""
        index = self._ref_index(n)
        if index >= len(self.refs):
            return None
        ref = self.refs[index]
        if ref.first_n >= self.committed_n:
            return None
        return ref.first_n, ref.count, self._spool.load(ref)

    def published_us_at(self, n: int) -> int:
        index = self._ref_index(n)
        return self.refs[index].published_us if index < len(self.refs) else 0

    def drop_through(self, segment: Segment) -> None:
        """Forget the refs in ``segment`` and before it (they are a prefix of the list)."""
        refs = self.refs
        head = self.head
        while head < len(refs):
            ref = refs[head]
            on_disk = ref.segment
            if on_disk is None:
                if ref.batch is not None or ref.first_n >= self.committed_n:
                    break
            elif on_disk.base > segment.base:
                break
            head += 1
        self.head = head
        if head > 1024 and head * 2 > len(refs):
            del refs[:head]
            self.head = 0

    def needed_position(self, history_lines: int) -> int | None:
        """The lowest spool position any reader of the channel needs (None: nothing)."""
        needed_n = max(self.history_from_n, self.committed_n - history_lines)
        for queue in self.queues:
            needed_n = min(needed_n, queue.low_water())
        index = self._ref_index(needed_n)
        while index < len(self.refs):
            segment = self.refs[index].segment
            if segment is not None:
                return segment.base
            index += 1
        return None


@dataclass(frozen=True, slots=True)
class SpoolStatus:
    """What ``/healthcheck`` and the metrics say about the spool."""

    directory: str
    mode: str  # "durable" | "memory" (the disk failed; see last_error)
    segments: int
    bytes: int
    max_bytes: int
    oldest_age_s: float
    last_error: str | None
    pending_records: int

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "segments": self.segments,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "oldest_age_s": round(self.oldest_age_s, 3),
            "last_error": self.last_error,
        }


class Spool:
    """The durable log under the drains (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        sync_ms: int,
        history_lines: int,
        segment_bytes: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sync_s = sync_ms / 1000
        self.history_lines = history_lines
        self.segment_bytes = segment_bytes or max(
            256 * 1024, min(DEFAULT_SEGMENT_BYTES, max_bytes // 16)
        )
        self.cache_bytes = cache_bytes
        self.spool_id = ""
        self.channels: dict[str, ChannelLog] = {}
        self.streams: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
        self.segments: collections.deque[Segment] = collections.deque()
        self.journal: CursorJournal
        self.recovered: ScanResult | None = None
        self._compressor = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
        self._decompressor = zstandard.ZstdDecompressor()
        self._active: Segment | None = None
        self._write_fd = -1
        self._pending: list[_PendingBatch] = []
        self._pending_refs: list[tuple[ChannelLog, Ref]] = []
        self._pending_streams: dict[tuple[str, str], int] = {}
        self._pending_event = trio.Event()
        self._next_ticket = 1
        self._durable_ticket = 0
        self._durable_changed = trio.Event()
        self._cache: collections.deque[Ref] = collections.deque()
        self._cached_bytes = 0
        self._live_queues: dict[str, SpoolQueue] = {}
        self.memory_only = False
        self.last_error: str | None = None
        self._retry_at = 0.0
        self._overruns_logged = False

    # -- opening ------------------------------------------------------------------------

    def open(self) -> ScanResult:
        """Read the directory and start a new segment; synchronous (run it in a thread)."""
        began = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool_id = self._read_spool_id()
        found = scan_directory(self.directory, repair=True)
        self.recovered = found
        segments = [Segment(s.path, s.base, s.size, s.created_us / 1e6) for s in found.segments]
        self.segments.extend(segments)
        for name, next_n in found.next_numbers.items():
            channel = self._channel(name)
            channel.next_n = channel.committed_n = max(channel.next_n, next_n)
        for name, batches in found.batches.items():
            channel = self._channel(name)
            channel.refs = [
                Ref(
                    b.first_n,
                    b.count,
                    b.published_us,
                    segments[b.segment],
                    b.offset,
                    b.length,
                    None,
                    0,
                )
                for b in batches
            ]
        for key, seq in found.streams.items():
            self.streams[key] = seq
        while len(self.streams) > MAX_REMEMBERED_STREAMS:
            self.streams.popitem(last=False)
        self.journal = CursorJournal(self.directory)
        for journal_key, state in self.journal.states.items():
            if journal_key.startswith(DELETED_PREFIX) and state.channel in self.channels:
                self.channels[state.channel].history_from_n = state.next_n
        self._start_segment()
        for problem in found.problems:
            log.warning("spool %s: %s", self.directory, problem)
        metrics.SPOOL_DAMAGED_RECORDS.labels(where="middle").inc(found.damaged_spans)
        metrics.SPOOL_DAMAGED_RECORDS.labels(where="tail").inc(len(found.cut_segments))
        metrics.SPOOL_TORN_BYTES.inc(found.torn_bytes)
        metrics.SPOOL_REPLAY_RECORDS.set(found.records)
        metrics.SPOOL_REPLAY_SECONDS.set(time.monotonic() - began)
        return found

    def _read_spool_id(self) -> str:
        path = self.directory / SPOOL_ID_NAME
        try:
            text = path.read_text().strip()
            uuid.UUID(text)
            return text
        except (FileNotFoundError, ValueError):
            pass
        text = str(uuid.uuid4())
        tmp = path.with_name(SPOOL_ID_NAME + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
        return text

    def _channel(self, name: str) -> ChannelLog:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = ChannelLog(self, name, 0)
        return channel

    def _snapshot_record(self) -> bytes:
        numbers = {name: channel.committed_n for name, channel in self.channels.items()}
        marks = [StreamMark(token, stream, seq) for (token, stream), seq in self.streams.items()]
        return frame_record(encode_snapshot_body(numbers, marks))

    def _next_base(self) -> int:
        if self._active is not None:
            return self._active.base + self._active.size
        if self.segments:
            last = self.segments[-1]
            return last.base + last.size
        return 0

    def _start_segment(self) -> None:
        """Open a new segment (header and snapshot written and fsynced); may raise OSError."""
        base = self._next_base()
        path = self.directory / segment_name(base)
        prefix = encode_segment_header(base, int(time.time() * 1e6)) + self._snapshot_record()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            _write_all(fd, prefix)
            os.fdatasync(fd)
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        if self._write_fd >= 0:
            os.close(self._write_fd)
        self._write_fd = fd
        segment = Segment(path, base, len(prefix), time.time())
        self.segments.append(segment)
        self._active = segment

    # -- the hot path -------------------------------------------------------------------

    def append(
        self, channel_name: str, messages: list[Message], stream: StreamMark | None = None
    ) -> int:
        """Number and spool one batch; returns the ticket ``wait_durable`` takes."""
        channel = self.channels.get(channel_name)
        if channel is None:
            channel = self._channel(channel_name)
        first_n = channel.next_n
        count = len(messages)
        channel.next_n = first_n + count
        now_us = int(time.time() * 1_000_000)
        batch = Batch(messages)
        if self.memory_only:
            packed_bytes = sum(len(m[4]) for m in messages) + 20 * count
            ref = Ref(first_n, count, now_us, None, 0, MEMORY_ONLY, batch, packed_bytes)
            channel.refs.append(ref)
            channel.committed_n = channel.next_n
            self._account(channel, ref)
            self._cache_ref(ref)
            for queue in channel.queues:
                queue.wake()
            if stream is not None:
                self._remember_stream(stream.token, stream.stream, stream.seq)
            return 0
        # Packed here (msgpack holds the GIL either way); compressed, framed and written by
        # the committer's thread, where zstd runs beside the event loop.
        packed = pack_messages(messages)
        ref = Ref(first_n, count, now_us, None, 0, PENDING, batch, len(packed))
        channel.refs.append(ref)
        self._account(channel, ref)
        self._pending.append((channel_name, first_n, count, now_us, stream, packed))
        self._pending_refs.append((channel, ref))
        if stream is not None:
            self._pending_streams[(stream.token, stream.stream)] = stream.seq
        self._cache_ref(ref)
        self._pending_event.set()
        return self._next_ticket

    def _account(self, channel: ChannelLog, ref: Ref) -> None:
        channel.messages += ref.count
        channel.message_bytes += ref.packed_bytes
        if channel.messages > 1 << 40:
            channel.messages >>= 1
            channel.message_bytes >>= 1

    def latest_ticket(self) -> int:
        """The ticket of the most recent append (waiting for it covers all before it)."""
        return self._next_ticket if self._pending else self._durable_ticket

    def is_durable(self, ticket: int) -> bool:
        return ticket <= self._durable_ticket

    async def wait_durable(self, ticket: int) -> None:
        while ticket > self._durable_ticket:
            await self._durable_changed.wait()

    def acked_seq(self, token: str, stream: str) -> int:
        """The highest durable seq of a shim stream (0: not known)."""
        return self.streams.get((token, stream), 0)

    def _remember_stream(self, token: str, stream: str, seq: int) -> None:
        key = (token, stream)
        if seq > self.streams.get(key, 0):
            self.streams[key] = seq
        self.streams.move_to_end(key)
        if len(self.streams) > MAX_REMEMBERED_STREAMS:
            self.streams.popitem(last=False)

    # -- the cache ----------------------------------------------------------------------

    def _cache_ref(self, ref: Ref) -> None:
        self._cache.append(ref)
        self._cached_bytes += _cached_size(ref)
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            old = self._cache[0]
            if old.length == PENDING:
                break  # not written yet: it goes once it is
            self._cache.popleft()
            self._cached_bytes -= _cached_size(old)
            old.batch = None  # on disk: read again when needed; memory only: lost

    def load(self, ref: Ref) -> Batch | None:
        """The messages of ``ref``, from the cache or from disk (None: cannot be read)."""
        if ref.batch is not None:
            return ref.batch
        segment = ref.segment
        if segment is None:
            return None
        try:
            data = segment.pread(ref.length, ref.offset)
            record = decode_body(data[RECORD_HEADER_BYTES:])
            if len(data) != ref.length or not isinstance(record, BatchRecord):
                raise SpoolFormatError("record changed on disk")
            messages = decode_messages(
                record.payload, record.count, self._decompressor, MAX_DECODED_BATCH_BYTES
            )
        except (OSError, SpoolFormatError) as exc:
            metrics.SPOOL_DAMAGED_RECORDS.labels(where="read").inc()
            log.warning(
                "spool %s: cannot read a batch of %d messages at %s+%d (%s); counted as lost",
                self.directory,
                ref.count,
                segment.path.name,
                ref.offset,
                exc,
            )
            ref.segment = None
            ref.length = MEMORY_ONLY
            return None
        metrics.SPOOL_DISK_READS.inc()
        return Batch(messages)

    # -- history ------------------------------------------------------------------------

    def recent_messages(self, channel_name: str, limit: int) -> list[Message]:
        """The last ``limit`` messages of the channel the spool holds, oldest first."""
        channel = self.channels.get(channel_name)
        if channel is None or limit <= 0:
            return []
        parts: list[list[Message]] = []
        held = 0
        for index in range(len(channel.refs) - 1, channel.head - 1, -1):
            ref = channel.refs[index]
            if ref.first_n < channel.history_from_n:
                break
            if ref.first_n >= channel.committed_n:
                continue
            batch = self.load(ref)
            if batch is None:
                continue
            parts.append(batch.messages)
            held += len(batch.messages)
            if held >= limit:
                break
        messages = [m for part in reversed(parts) for m in part]
        return messages[-limit:]

    # -- drains -------------------------------------------------------------------------

    def queue_for(
        self,
        channel_name: str,
        token: str,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
    ) -> SpoolQueue:
        """The queue of drain ``token``: from its persisted cursor, or at the channel's end."""
        channel = self._channel(channel_name)
        state = self.journal.states.get(token)
        if state is None or state.channel != channel_name:
            state = CursorState(channel=channel_name, next_n=channel.committed_n)
        elif state.next_n > channel.next_n:
            # The spool holds less than the cursor saw (its files were removed): go on from
            # what there is; the open extents beyond it are gone.
            state.next_n = channel.next_n
            state.open = [e for e in state.open if e.end <= channel.next_n]
        previous = self._live_queues.pop(token, None)
        if previous is not None:
            previous.detached = True
            previous.wake()
            owner = self.channels.get(previous.state.channel)
            if owner is not None and previous in owner.queues:
                owner.queues.remove(previous)
        queue = SpoolQueue(
            self,
            channel,
            token,
            state,
            encode=encode,
            memo_key=memo_key,
            make_notice=make_notice,
        )
        self._live_queues[token] = queue
        channel.queues.append(queue)
        self.journal.write(token, state)
        return queue

    def forget_drain(self, token: str) -> None:
        """The drain was removed: its cursor goes, and what it had not delivered is counted."""
        queue = self._live_queues.pop(token, None)
        if queue is not None:
            abandoned = queue.queued_messages
            if abandoned:
                metrics.SPOOL_ABANDONED_MESSAGES.inc(abandoned)
            queue.detached = True
            queue.wake()
            owner = self.channels.get(queue.state.channel)
            if owner is not None and queue in owner.queues:
                owner.queues.remove(queue)
        self.journal.write(token, None)

    def forget_channel(self, name: str) -> None:
        """The channel was deleted: what the spool holds of it never comes back as history,
        not even for a new channel of the same name (persisted in the cursor journal)."""
        channel = self.channels.get(name)
        if channel is None:
            return
        channel.history_from_n = channel.next_n
        self.journal.write(DELETED_PREFIX + name, CursorState(channel=name, next_n=channel.next_n))

    def forget_unknown_drains(self, tokens: Iterable[str]) -> None:
        """At start-up: drop the cursors of drains no longer configured."""
        keep = set(tokens)
        for token in [
            t for t in self.journal.states if t not in keep and not t.startswith(DELETED_PREFIX)
        ]:
            self.journal.write(token, None)

    def count_budget_loss(self, count: int) -> None:
        metrics.SPOOL_DROPPED_MESSAGES.inc(count)

    def cursor_moved(self) -> None:
        """A drain settled a batch: retention may be able to delete a segment sooner."""

    def drain_lag(self) -> list[tuple[SpoolQueue, int, float]]:
        now_us = int(time.time() * 1_000_000)
        return [(q, q.queued_messages, q.lag_seconds(now_us)) for q in self._live_queues.values()]

    # -- the committer ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit pending records until cancelled; also runs retention about once a second."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retention_loop)
            while True:
                await self._pending_event.wait()
                self._pending_event = trio.Event()
                await self.commit()

    async def commit(self) -> None:
        """Write and fsync what is pending (in a thread); wake its waiters and drains."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        refs, self._pending_refs = self._pending_refs, []
        streams, self._pending_streams = self._pending_streams, {}
        ticket = self._next_ticket
        self._next_ticket += 1
        started = trio.current_time()
        error: OSError | None = None
        try:
            if self.memory_only:
                raise OSError(errno.EIO, self.last_error or "the spool is in memory mode")
            target = self._active
            assert target is not None
            if target.size >= self.segment_bytes:
                await trio.to_thread.run_sync(self._start_segment)
                target = self._active
                assert target is not None
            lengths = await trio.to_thread.run_sync(self._write_and_sync, records)
        except OSError as exc:
            error = exc
        elapsed_s = trio.current_time() - started
        if error is None:
            metrics.SPOOL_FSYNC_SECONDS.observe(elapsed_s)
            assert target is not None
            offset = target.size
            for (_, ref), length in zip(refs, lengths, strict=True):
                ref.offset = offset
                ref.length = length
                ref.segment = target
                offset += length
            target.size = offset
            for (token, stream), seq in streams.items():
                self._remember_stream(token, stream, seq)
            if elapsed_s > self.sync_s:
                metrics.SPOOL_SYNC_OVERRUNS.inc()
                if not self._overruns_logged:
                    self._overruns_logged = True
                    log.warning(
                        "spool %s: a commit took %.0f ms, over --spool-sync-ms %.0f",
                        self.directory,
                        elapsed_s * 1000,
                        self.sync_s * 1000,
                    )
        else:
            self._enter_memory_mode(error, refs)
            for (token, stream), seq in streams.items():
                self._remember_stream(token, stream, seq)
        woken: set[int] = set()
        for channel, ref in refs:
            end = ref.first_n + ref.count
            if end > channel.committed_n:
                channel.committed_n = end
            if id(channel) not in woken:
                woken.add(id(channel))
                for queue in channel.queues:
                    queue.wake()
        self._durable_ticket = ticket
        self._durable_changed.set()
        self._durable_changed = trio.Event()

    def _write_and_sync(self, batches: list[_PendingBatch]) -> list[int]:
        """Compress, frame, write and fdatasync ``batches`` (in the committer's thread);
        the record length of each."""
        compress = self._compressor.compress
        records = [
            frame_record(
                encode_batch_body(channel, first_n, count, published_us, stream, compress(packed))
            )
            for channel, first_n, count, published_us, stream, packed in batches
        ]
        _write_all(self._write_fd, b"".join(records))
        os.fdatasync(self._write_fd)
        return [len(record) for record in records]

    def _enter_memory_mode(self, error: OSError, refs: list[tuple[ChannelLog, Ref]]) -> None:
        for _, ref in refs:
            ref.segment = None
            ref.length = MEMORY_ONLY  # the cache may let it go (then it is lost)
        if not self.memory_only:
            self.memory_only = True
            self.last_error = (
                f"{error.strerror or error} ({errno.errorcode.get(error.errno or 0, '?')})"
            )
            self._retry_at = trio.current_time() + RETRY_DISK_S
            metrics.SPOOL_WRITE_ERRORS.inc()
            metrics.SPOOL_MODE.set(0)
            log.error(
                "spool %s: cannot write (%s); keeping new batches in memory only (drains "
                "count what the memory cannot hold in L10) until the disk takes writes again",
                self.directory,
                self.last_error,
            )
            if self._write_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._write_fd)
                self._write_fd = -1
            self._active = None

    async def _try_leave_memory_mode(self) -> None:
        try:
            await trio.to_thread.run_sync(self._start_segment)
        except OSError as exc:
            self._retry_at = trio.current_time() + RETRY_DISK_S
            log.debug("spool %s still cannot write: %s", self.directory, exc)
            return
        self.memory_only = False
        self.last_error = None
        metrics.SPOOL_MODE.set(1)
        log.warning(
            "spool %s: the disk takes writes again; batches are durable again", self.directory
        )

    # -- retention and the budget -------------------------------------------------------

    async def _retention_loop(self) -> None:
        while True:
            await trio.sleep(RETENTION_INTERVAL_S)
            if self.memory_only and trio.current_time() >= self._retry_at:
                await self._try_leave_memory_mode()
            for queue in list(self._live_queues.values()):
                queue.flush_state()
            self.enforce_retention()

    def total_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def enforce_retention(self) -> list[Segment]:
        """Delete segments no reader needs, then the oldest beyond the budget."""
        deleted: list[Segment] = []
        needed: int | None = None
        for channel in list(self.channels.values()):
            position = channel.needed_position(self.history_lines)
            if position is not None and (needed is None or position < needed):
                needed = position
        while len(self.segments) > 1:
            oldest = self.segments[0]
            if oldest is self._active:
                break
            over_budget = self.total_bytes() > self.max_bytes
            unneeded = needed is None or oldest.base < needed
            if not (over_budget or unneeded):
                break
            self._delete_oldest()
            deleted.append(oldest)
        return deleted

    def _delete_oldest(self) -> None:
        segment = self.segments.popleft()
        for channel in self.channels.values():
            channel.drop_through(segment)
        segment.close()
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("spool %s: cannot delete %s: %s", self.directory, segment.path, exc)

    # -- status and shutdown ------------------------------------------------------------

    def status(self) -> SpoolStatus:
        oldest = self.segments[0].created_s if self.segments else time.time()
        return SpoolStatus(
            directory=str(self.directory),
            mode="memory" if self.memory_only else "durable",
            segments=len(self.segments),
            bytes=self.total_bytes(),
            max_bytes=self.max_bytes,
            oldest_age_s=max(0.0, time.time() - oldest),
            last_error=self.last_error,
            pending_records=len(self._pending),
        )

    def gauges(self) -> dict[str, float]:
        """The scrape-time gauges (``logplex.metrics.SpoolCollector``)."""
        status = self.status()
        lags = self.drain_lag()
        return {
            "logplex_spool_bytes": float(status.bytes),
            "logplex_spool_segments": float(status.segments),
            "logplex_spool_max_bytes": float(self.max_bytes),
            "logplex_spool_oldest_age_seconds": status.oldest_age_s,
            "logplex_spool_drain_lag_messages": float(sum(lag for _, lag, _ in lags)),
            "logplex_spool_drain_lag_max_seconds": max((s for _, _, s in lags), default=0.0),
        }

    async def close(self) -> None:
        """Commit what is pending, persist every cursor and close the files (shielded)."""
        with trio.CancelScope(shield=True):
            await self.commit()
            for queue in list(self._live_queues.values()):
                queue.flush_state()
            await trio.to_thread.run_sync(self._close_files)

    def _close_files(self) -> None:
        self.journal.close()
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        for segment in self.segments:
            segment.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
