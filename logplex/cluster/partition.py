"""One partition on its owner: read the stream, feed history, tails and drains, checkpoint.

DESIGN section 10. While a router holds a partition's lease it runs one ``PartitionOwner``:

1. It reads the partition's checkpoint from the ``logplex-cursors`` bucket (key ``p.<n>``):
   every drain's cursor and every channel's history start, as *stream positions*
   ``(stream seq, index in the batch)``, which mean the same on every router.
2. It replays the stream from the oldest position any of them needs (history replay bounded
   by ``HISTORY_REPLAY_MAX_BATCHES``) up to the stream's end: histories are rebuilt, the drains'
   backlogs are in memory (or evicted and re-read on demand, below).
3. The router starts the partition's drains; each reads through a ``ClusterQueue`` — the
   spool's own ``SpoolQueue`` (cursor, open extents, L10 accounting) over a
   ``ClusterChannelLog`` instead of spool segments. Positions convert to the queue's dense
   message numbers and back, so a cursor written by one owner resumes on the next, and the
   Frame-Id of a post is derived from the cluster id, the drain and the stream positions of
   its first and last message: a batch re-sent by a new owner carries its original Frame-Id.
4. Live: every batch read goes to the channel's history ring and drains, and once, as read
   (not re-encoded), to the partition's core tail subject for tails on any router.
5. It answers history and drain-status requests on ``logplex.owner.<n>``.
6. It writes the checkpoint every ``CHECKPOINT_INTERVAL_S`` while its lease is valid, and a
   last time when it stops for a hand-off; then the router releases the lease.

Memory: the batches drains still need are held per partition up to ``cache_bytes``; past it
the oldest are evicted and a drain that reaches one re-reads it from the stream
(``get_message``) before taking it. Nothing is dropped for memory.

Fencing: drains take nothing while ``lease.valid()`` is False (the lease's local deadline,
``logplex.cluster.ownership``): a paused owner that wakes after its lease expired sends
nothing more, not even what it had taken before the pause but not yet posted... except a
post already on the wire, which the new owner repeats with the same Frame-Id.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio
import zstandard

from logplex import metrics
from logplex.cluster import names
from logplex.cluster.bridge import BridgeError, NatsBridge, StreamMessage, bridge_failure
from logplex.codecs.clusterbatch import (
    KIND_HISTORY,
    KIND_TAIL,
    ClusterFormatError,
    decode_batch,
    encode_batch,
    encode_envelope,
)
from logplex.codecs.records import Batch, Message
from logplex.spool.cursors import CursorState, OpenExtent, SpoolQueue

if TYPE_CHECKING:
    from drains import EncodeMessages, MakeNotice, Taken

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (stream seq, index of the message in that batch)

CHECKPOINT_INTERVAL_S: Final = 1.0
FETCH_BATCH: Final = 256
FETCH_TIMEOUT_S: Final = 0.5
FETCH_RETRY_S: Final = 0.5
# A takeover replays at most this many batches for histories alone (drains' cursors are not
# bounded by it): a quiet channel's older history is not worth a slower failover.
HISTORY_REPLAY_MAX_BATCHES: Final = 10_000
TAIL_PUBLISH_ATTEMPTS: Final = 5
TAIL_REPUBLISH_BATCHES: Final = (
    256  # a takeover re-sends to tails from this far before the checkpoint
)
DEFAULT_CACHE_BYTES: Final = 64 * 1024 * 1024
CHECKPOINT_VERSION: Final = 1


class Lease(Protocol):
    """What an owner needs of its lease (``logplex.cluster.ownership``)."""

    def valid(self) -> bool: ...


class RouterSide(Protocol):
    """What an owner needs of the router (``logplex.fanout.router.Router``)."""

    history_lines: int

    def channel_has_drains(self, channel: str) -> bool: ...
    def deliver(self, channel: str, messages: list[Message]) -> None: ...
    def history(self, channel: str) -> list[Message]: ...
    def drain_statuses(self, channel: str) -> dict[int, dict[str, object]]: ...
    def start_partition_drains(self, partition: int) -> None: ...
    def stop_partition_drains(self, partition: int) -> None: ...


# -- a channel's messages on the owner -------------------------------------------------


@dataclass(eq=False, slots=True)
class _Ref:
    first_n: int
    count: int
    seq: int
    published_us: int
    size: int
    batch: Batch | None  # None: evicted, re-read from the stream on demand
    lost: bool = False  # the stream no longer holds it: its numbers count as lost


class ClusterChannelLog:
    """One channel's batches on its owner, numbered densely from 0 for this owner's tenure
    (``logplex.spool.cursors.ChannelReader``)."""

    def __init__(self, owner: PartitionOwner, name: str) -> None:
        self.owner = owner
        self.name = name
        self.refs: list[_Ref] = []
        self._firsts: list[int] = []
        self.next_n = 0
        self.queues: list[ClusterQueue] = []
        self._bytes_seen = 0
        self._messages_seen = 0

    @property
    def committed_n(self) -> int:
        return self.next_n

    def first_n(self) -> int:
        return self.refs[0].first_n if self.refs else self.next_n

    def _index(self, n: int) -> int:
        return bisect.bisect_right(self._firsts, n) - 1

    def batch_at(self, n: int) -> tuple[int, int, Batch | None] | None:
        if n >= self.next_n:
            return None
        index = self._index(n)
        if index < 0:
            first = self.refs[0] if self.refs else None
            if first is None:
                return None
            return (first.first_n, first.count, first.batch)
        ref = self.refs[index]
        if n >= ref.first_n + ref.count:
            following = self.refs[index + 1] if index + 1 < len(self.refs) else None
            if following is None:
                return None
            return (following.first_n, following.count, following.batch)
        return (ref.first_n, ref.count, ref.batch)

    def frame_bytes_estimate(self) -> int:
        if not self._messages_seen:
            return 200
        return max(1, self._bytes_seen // self._messages_seen)

    def published_us_at(self, n: int) -> int:
        index = self._index(n)
        if 0 <= index < len(self.refs):
            return self.refs[index].published_us
        return 0

    def append(self, seq: int, published_us: int, batch: Batch, size: int) -> _Ref:
        ref = _Ref(self.next_n, len(batch), seq, published_us, size, batch)
        self.refs.append(ref)
        self._firsts.append(ref.first_n)
        self.next_n += len(batch)
        self._bytes_seen += size
        self._messages_seen += len(batch)
        for queue in self.queues:
            queue.wake()
        return ref

    def ref_at(self, n: int) -> _Ref | None:
        index = self._index(n)
        if 0 <= index < len(self.refs):
            ref = self.refs[index]
            if n < ref.first_n + ref.count:
                return ref
        return None

    def position_of(self, n: int) -> Position:
        """The stream position of message ``n``; for ``next_n``, the position after
        everything the owner has read."""
        ref = self.ref_at(n)
        if ref is not None:
            return (ref.seq, n - ref.first_n)
        return (self.owner.frontier + 1, 0)

    def n_of(self, position: Position) -> int:
        """The number of the message at ``position`` (or of the first one after it)."""
        seq, index = position
        for ref in self.refs:  # conversions happen at attach time only
            if ref.seq == seq:
                return ref.first_n + min(index, ref.count)
            if ref.seq > seq:
                return ref.first_n
        return self.next_n

    def trim(self) -> None:
        """Forget the batches no drain of this channel can need any more."""
        low = min(queue.low_water() for queue in self.queues) if self.queues else self.next_n
        drop = 0
        while drop < len(self.refs) and self.refs[drop].first_n + self.refs[drop].count <= low:
            drop += 1
        if drop:
            for ref in self.refs[:drop]:
                self.owner.uncache(ref)
            del self.refs[:drop]
            del self._firsts[:drop]


def cluster_frame_id(cluster_id: str, token: str, first: object, last: object, now_us: int) -> str:
    """32 uppercase hex digits, the same on every owner for the same post."""
    key = f"{cluster_id}/{token}/{first}/{last}/{now_us}"
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest().upper()


class ClusterQueue(SpoolQueue):
    """A drain's queue on its partition's owner (see the module docstring)."""

    channel: ClusterChannelLog

    def __init__(
        self,
        owner: PartitionOwner,
        channel: ClusterChannelLog,
        token: str,
        state: CursorState,
        *,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
    ) -> None:
        super().__init__(
            owner, channel, token, state, encode=encode, memo_key=memo_key, make_notice=make_notice
        )
        self.owner = owner

    def _head_n(self) -> int:
        return self._replay[0].start if self._replay else self.state.next_n

    def _head_missing(self) -> _Ref | None:
        ref = self.channel.ref_at(self._head_n())
        return ref if ref is not None and ref.batch is None and not ref.lost else None

    def take(self, max_messages: int, max_bytes: int) -> Taken | None:
        if not self.owner.lease.valid() or self._head_missing() is not None:
            return None
        return super().take(max_messages, max_bytes)

    async def wait_may_send(self) -> None:
        """Fencing for sends of what was taken before (retries, resends): once the lease is
        not valid, nothing more leaves; the router stops the drain soon after."""
        if not self.owner.lease.valid():
            await trio.sleep_forever()

    async def wait_takeable(self) -> None:
        while True:
            await super().wait_takeable()
            if not self.owner.lease.valid():
                # Fenced: this router may no longer deliver the partition; it stops it soon.
                await trio.sleep_forever()
            missing = self._head_missing()
            if missing is None:
                return
            await self.owner.reload(missing)

    def _take_stop(self, start: int, committed: int, max_messages: int) -> int:
        """A post never spans two stream batches, and a batch longer than a post is cut
        into fixed chunks counted from its first message: every owner forms the same
        posts from the same stream, so a post re-sent after a takeover keeps its Frame-Id."""
        ref = self.channel.ref_at(start)
        if ref is None:
            return committed
        chunk = max(1, max_messages)
        offset = start - ref.first_n
        return min(committed, ref.first_n + min(ref.count, (offset // chunk + 1) * chunk))

    def _taken(
        self, extent: OpenExtent, frames: list[bytes], byte_count: int, has_notice: bool
    ) -> Taken:
        taken = super()._taken(extent, frames, byte_count, has_notice)
        if extent.end > extent.start:
            first: object = self.channel.position_of(extent.start)
            last: object = self.channel.position_of(extent.end - 1)
        else:
            first = last = "notice"
        taken.frame_id = cluster_frame_id(
            self.owner.cluster_id, self.token, first, last, extent.notice_now_us
        )
        return taken


# -- the checkpoint ----------------------------------------------------------------------


def _position(value: Any) -> Position | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        return (value[0], value[1])
    return None


@dataclass(slots=True)
class DrainCursor:
    """A drain's cursor in stream positions (the checkpoint's form of ``CursorState``)."""

    channel: str
    next: Position
    open: list[tuple[Position, Position, int, int, int]] = field(default_factory=list)
    delivered: int = 0
    dropped: int = 0
    lost_pending: int = 0
    lost_since_us: int = 0

    def to_json(self) -> list[Any]:
        return [
            self.channel,
            list(self.next),
            [[list(a), list(b), c, d, e] for a, b, c, d, e in self.open],
            self.delivered,
            self.dropped,
            self.lost_pending,
            self.lost_since_us,
        ]

    @classmethod
    def from_json(cls, value: Any) -> DrainCursor | None:
        if not (isinstance(value, list) and len(value) == 7 and isinstance(value[0], str)):
            return None
        channel, nxt, extents, delivered, dropped, lost, since = value
        position = _position(nxt)
        counters = (delivered, dropped, lost, since)
        if position is None or not all(isinstance(c, int) and c >= 0 for c in counters):
            return None
        opened: list[tuple[Position, Position, int, int, int]] = []
        if not isinstance(extents, list):
            return None
        for extent in extents:
            if not (isinstance(extent, list) and len(extent) == 5):
                return None
            start, end = _position(extent[0]), _position(extent[1])
            rest = extent[2:]
            if start is None or end is None or not all(isinstance(v, int) for v in rest):
                return None
            opened.append((start, end, rest[0], rest[1], rest[2]))
        return cls(channel, position, opened, delivered, dropped, lost, since)

    def min_seq(self) -> int:
        return min([self.next[0], *(start[0] for start, *_ in self.open)])


@dataclass(slots=True)
class Checkpoint:
    frontier: int = 0  # the last stream seq the owner had read
    history: dict[str, int] = field(default_factory=dict)  # channel -> first seq it needs
    drains: dict[str, DrainCursor] = field(default_factory=dict)  # token -> cursor

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "v": CHECKPOINT_VERSION,
                "frontier": self.frontier,
                "history": self.history,
                "drains": {token: cursor.to_json() for token, cursor in self.drains.items()},
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        """The checkpoint in ``data``; a damaged one yields what can be read of it."""
        try:
            doc = json.loads(data)
        except ValueError:
            return cls()
        if not isinstance(doc, dict) or doc.get("v") != CHECKPOINT_VERSION:
            return cls()
        frontier = doc.get("frontier")
        history = doc.get("history")
        drains = doc.get("drains")
        checkpoint = cls(frontier if isinstance(frontier, int) and frontier >= 0 else 0)
        if isinstance(history, dict):
            checkpoint.history = {
                k: v for k, v in history.items() if isinstance(v, int) and not isinstance(v, bool)
            }
        if isinstance(drains, dict):
            for token, value in drains.items():
                cursor = DrainCursor.from_json(value)
                if cursor is not None:
                    checkpoint.drains[token] = cursor
        return checkpoint


# -- the owner ---------------------------------------------------------------------------


class _History:
    """Which stream batches a channel's history ring still holds lines of."""

    __slots__ = ("batches", "dropped_seq", "lines")

    def __init__(self) -> None:
        self.batches: collections.deque[tuple[int, int]] = collections.deque()  # (seq, count)
        self.lines = 0
        self.dropped_seq = 0  # the newest batch no longer held (0: none dropped)

    def add(self, seq: int, count: int, keep_lines: int) -> None:
        self.batches.append((seq, count))
        self.lines += count
        while self.batches and self.lines - self.batches[0][1] >= keep_lines:
            dropped, lines = self.batches.popleft()
            self.lines -= lines
            self.dropped_seq = dropped

    def first_seq(self) -> int | None:
        return self.batches[0][0] if self.batches else None


class PartitionOwner:
    """The delivery side of one owned partition (see the module docstring)."""

    def __init__(
        self,
        partition: int,
        *,
        bridge: NatsBridge,
        router: RouterSide,
        lease: Lease,
        cluster_id: str,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        wall_clock_s: Callable[[], float] = time.time,
        on_stopped: Callable[[PartitionOwner], None] | None = None,
        member_id: str = "",
    ) -> None:
        self.partition = partition
        self.member_id = member_id
        self._on_stopped = on_stopped
        self.bridge = bridge
        self.router = router
        self.lease = lease
        self.cluster_id = cluster_id
        self.stream = names.stream_name(partition)
        self.cache_bytes = cache_bytes
        self._wall_clock_s = wall_clock_s
        self.frontier = 0
        self.channels: dict[str, ClusterChannelLog] = {}
        self._histories: dict[str, _History] = {}
        self._checkpoint = Checkpoint()
        self._attach_positions: dict[str, DrainCursor] = {}
        self._default_position: Position | None = None  # for drains without a cursor
        self._queues: dict[str, ClusterQueue] = {}
        self._cache: collections.deque[_Ref] = collections.deque()
        self._cached_bytes = 0
        self._decompressor = zstandard.ZstdDecompressor()
        self._dirty = True
        self.ready = trio.Event()
        self.lag_batches = 0
        self.last_read_at: float | None = None
        self.bad_messages = 0
        self._needed_channels: set[str] = set()  # channels of checkpointed cursors, at takeover
        self._tail_prev = 0  # the stream seq of the last tail envelope sent (0: none yet)
        # Batches of the round being fed, per channel, for its history ring.
        self._held: dict[str, list[Any]] = {}

    # -- SpoolSide, for the queues ----------------------------------------------------------

    @property
    def spool_id(self) -> str:
        return self.cluster_id

    @property
    def journal(self) -> PartitionOwner:
        return self

    def write(self, token: str, state: CursorState | None) -> None:
        """A queue's state changed (``CursorJournal.write``): checkpointed soon."""
        del token, state
        self._dirty = True

    def count_budget_loss(self, count: int) -> None:
        metrics.SPOOL_DROPPED_MESSAGES.inc(count)

    def cursor_moved(self) -> None:
        self._dirty = True

    # -- the cache ----------------------------------------------------------------------

    def _cache_ref(self, ref: _Ref) -> None:
        self._cache.append(ref)
        self._cached_bytes += ref.size
        while self._cached_bytes > self.cache_bytes and self._cache:
            old = self._cache.popleft()
            if old.batch is not None:
                old.batch = None
                self._cached_bytes -= old.size

    def uncache(self, ref: _Ref) -> None:
        if ref.batch is not None:
            ref.batch = None
            self._cached_bytes -= ref.size

    async def reload(self, ref: _Ref) -> None:
        """Read an evicted batch back from the stream (a drain far behind needs it)."""
        while ref.batch is None:
            try:
                message = await self.bridge.get_message(self.stream, ref.seq)
            except BridgeError as exc:
                log.info(
                    "partition %d: cannot re-read seq %d yet: %s", self.partition, ref.seq, exc
                )
                await trio.sleep(1.0)
                continue
            metrics.SPOOL_DISK_READS.inc()
            messages: list[Message] = []
            if message is not None:
                try:
                    messages = decode_batch(message.data, self._decompressor).messages
                except ClusterFormatError:
                    messages = []
            if len(messages) != ref.count:
                # The stream no longer holds it (its limits removed it): the queue counts
                # its numbers into the next L10, exactly.
                ref.lost = True
                return
            ref.batch = Batch(messages)
            self._cache_ref(ref)

    # -- the queues ----------------------------------------------------------------------

    def queue_for(
        self,
        channel_name: str,
        token: str,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
    ) -> ClusterQueue:
        channel = self._channel(channel_name)
        cursor = self._attach_positions.pop(token, None)
        if cursor is not None and cursor.channel == channel_name:
            state = CursorState(
                channel=channel_name,
                next_n=channel.n_of(cursor.next),
                open=[
                    OpenExtent(channel.n_of(a), channel.n_of(b), c, d, e)
                    for a, b, c, d, e in cursor.open
                ],
                delivered=cursor.delivered,
                dropped=cursor.dropped,
                lost_pending=cursor.lost_pending,
                lost_since_us=cursor.lost_since_us,
            )
            state.open = [e for e in state.open if e.end > e.start or e.notice_count]
        elif self._default_position is not None and not self.ready.is_set():
            # A drain with no cursor yet, at a takeover: from where the last owner stopped,
            # so nothing it had not checkpointed is skipped.
            state = CursorState(channel=channel_name, next_n=channel.n_of(self._default_position))
        else:
            state = CursorState(channel=channel_name, next_n=channel.next_n)
        self.forget_drain(token)  # a drain replaced for a new URL: the old queue stops
        queue = ClusterQueue(
            self, channel, token, state, encode=encode, memo_key=memo_key, make_notice=make_notice
        )
        self._queues[token] = queue
        channel.queues.append(queue)
        self._dirty = True
        return queue

    def forget_drain(self, token: str) -> None:
        """The drain's queue stops and leaves its channel (its cursor goes with it)."""
        queue = self._queues.pop(token, None)
        if queue is not None:
            queue.detached = True
            queue.wake()
            if queue in queue.channel.queues:
                queue.channel.queues.remove(queue)
        self._dirty = True

    def detach_all(self) -> None:
        """The partition is being handed off: queues stop (their cursors are checkpointed)."""
        for queue in self._queues.values():
            queue.detached = True
            queue.wake()

    def drain_lag(self) -> list[tuple[ClusterQueue, int, float]]:
        now_us = int(self._wall_clock_s() * 1_000_000)
        return [(q, q.queued_messages, q.lag_seconds(now_us)) for q in self._queues.values()]

    def _channel(self, name: str) -> ClusterChannelLog:
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = ClusterChannelLog(self, name)
        return channel

    # -- reading the stream ---------------------------------------------------------------

    def _feed(self, message: StreamMessage, *, live: bool) -> bytes | None:
        """One stream message into history and drains; returns the bytes to pass to tails."""
        self.frontier = max(self.frontier, message.seq)
        try:
            batch = decode_batch(message.data, self._decompressor)
        except ClusterFormatError as exc:
            self.bad_messages += 1
            if self.bad_messages == 1:
                log.warning(
                    "partition %d: unreadable message %d: %s", self.partition, message.seq, exc
                )
            return None
        if not batch.messages:
            return None
        channel = batch.channel
        history = self._histories.get(channel)
        if history is None:
            history = self._histories[channel] = _History()
        history.add(message.seq, len(batch.messages), self.router.history_lines)
        self._hold_for_history(channel, batch.messages)
        if channel in self._needed_channels or self.router.channel_has_drains(channel):
            ref = self._channel(channel).append(
                message.seq, batch.published_us, Batch(batch.messages), len(message.data)
            )
            self._cache_ref(ref)
        self._dirty = True
        return message.data if live else None

    def _replay_start(self, checkpoint: Checkpoint, first_seq: int, last_seq: int) -> int:
        candidates = [checkpoint.frontier + 1]
        history_floor = max(first_seq, last_seq - HISTORY_REPLAY_MAX_BATCHES)
        candidates.extend(max(seq, history_floor) for seq in checkpoint.history.values())
        candidates.extend(cursor.min_seq() for cursor in checkpoint.drains.values())
        if checkpoint.frontier == 0 and not checkpoint.drains:
            candidates.append(history_floor)
        return max(first_seq, min(candidates))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take over, replay, start the drains, then deliver until cancelled."""
        entry = await self.bridge.kv_get(names.CURSORS_BUCKET, names.checkpoint_key(self.partition))
        checkpoint = Checkpoint.from_bytes(entry.value) if entry and entry.value else Checkpoint()
        self._checkpoint = checkpoint
        self._attach_positions = dict(checkpoint.drains)
        self._needed_channels = {cursor.channel for cursor in checkpoint.drains.values()}
        info = await self.bridge.stream_info(self.stream)
        first_seq = max(info.first_seq, 1)
        start = self._replay_start(checkpoint, first_seq, info.last_seq)
        self._default_position = (checkpoint.frontier + 1, 0) if checkpoint.frontier else (start, 0)
        self.frontier = start - 1
        reader = await self.bridge.open_reader(self.stream, start)
        try:
            replayed = 0
            while reader.next_seq <= info.last_seq:
                messages = await self._fetch(reader)
                if not messages:
                    try:
                        refreshed = await self.bridge.stream_info(self.stream)
                    except BridgeError:
                        continue
                    if (
                        refreshed.first_seq > reader.next_seq
                        or refreshed.last_seq < reader.next_seq
                    ):
                        break
                    continue
                # Batches past the last owner's checkpoint may not have reached the tails:
                # they go there again (tails drop the stream sequences they have seen).
                await self._feed_all(
                    messages, tails_after=max(0, checkpoint.frontier - TAIL_REPUBLISH_BATCHES)
                )
                replayed += len(messages)
            if replayed:
                log.info(
                    "partition %d: replayed %d batches (seq %d to %d)",
                    self.partition,
                    replayed,
                    start,
                    self.frontier,
                )
            self.router.start_partition_drains(self.partition)
            self._attach_positions.clear()
            self._needed_channels = set()
            self.ready.set()
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._checkpoint_periodically)
                await nursery.start(self._serve_requests)
                await self._deliver_live(reader)
        finally:
            self.detach_all()
            self.router.stop_partition_drains(self.partition)
            if self._on_stopped is not None:
                self._on_stopped(self)
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await reader.aclose()

    async def _deliver_live(self, reader: Any) -> None:
        while True:
            messages = await self._fetch(reader)
            if not messages:
                continue
            self.last_read_at = self._wall_clock_s()
            await self._feed_all(messages, tails_after=0)

    async def _fetch(self, reader: Any) -> list[StreamMessage]:
        """The next messages; while NATS is away, none (the reader resumes where it was,
        and the lease, which cannot be renewed meanwhile, fences this owner)."""
        try:
            messages: list[StreamMessage] = await reader.fetch(FETCH_BATCH, FETCH_TIMEOUT_S)
        except BridgeError as exc:
            log.info("partition %d: reading the stream: %s", self.partition, exc)
            await trio.sleep(FETCH_RETRY_S)
            return []
        return messages

    def _hold_for_history(self, channel: str, messages: list[Message]) -> None:
        """Keep a batch for the channel's history until the round is fed, only as much as
        the history can hold: a round of many large batches of one channel goes into its
        ring once, not batch by batch (each of which the ring would compact, then drop)."""
        held = self._held.get(channel)
        if held is None:
            held = self._held[channel] = [collections.deque(), 0]
        batches, count = held
        batches.append(messages)
        count += len(messages)
        keep = self.router.history_lines
        while batches and count - len(batches[0]) >= keep:
            count -= len(batches.popleft())
        held[1] = count

    def _flush_history(self) -> None:
        for channel, (batches, _) in self._held.items():
            if len(batches) == 1:
                self.router.deliver(channel, batches[0])
            elif batches:
                self.router.deliver(channel, list(itertools.chain.from_iterable(batches)))
        self._held.clear()

    async def _feed_all(self, messages: list[StreamMessage], *, tails_after: int) -> None:
        """Feed a fetched round; the batches past ``tails_after`` go to the tails in one
        crossing."""
        metrics.CLUSTER_DELIVERED_BATCHES.inc(len(messages))
        tail_subject = names.tail_subject(self.partition)
        tails: list[tuple[str, bytes]] = []
        for message in messages:
            data = self._feed(message, live=message.seq > tails_after)
            if data is not None:
                envelope = encode_envelope(KIND_TAIL, message.seq, data, self._tail_prev)
                tails.append((tail_subject, envelope))
                self._tail_prev = message.seq
        self._flush_history()
        if tails:
            for attempt in range(TAIL_PUBLISH_ATTEMPTS):
                try:
                    await self.bridge.publish_core(tails)
                    break
                except BridgeError:
                    if attempt + 1 == TAIL_PUBLISH_ATTEMPTS:
                        # The next envelope's prev_seq shows the gap: tails catch up from
                        # the history.
                        metrics.CLUSTER_TAIL_DROPPED.inc(len(tails))
                    else:
                        await trio.sleep(0.2)

    # -- checkpoints ------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        """The current positions of everything this owner delivers."""
        history: dict[str, int] = {}
        for name, ring in self._histories.items():
            seq = ring.first_seq()
            if seq is not None:
                history[name] = seq
        drains: dict[str, DrainCursor] = {}
        for token, queue in self._queues.items():
            channel = queue.channel
            state = queue.state
            drains[token] = DrainCursor(
                channel=channel.name,
                next=channel.position_of(state.next_n),
                open=[
                    (
                        channel.position_of(e.start),
                        channel.position_of(e.end)
                        if e.end > e.start
                        else channel.position_of(e.start),
                        e.notice_count,
                        e.notice_since_us,
                        e.notice_now_us,
                    )
                    for e in state.open
                ],
                delivered=state.delivered,
                dropped=state.dropped,
                lost_pending=state.lost_pending,
                lost_since_us=state.lost_since_us,
            )
        # Cursors of drains this owner never attached (their channel's config not seen yet)
        # are kept as they were.
        for token, cursor in self._attach_positions.items():
            drains.setdefault(token, cursor)
        return Checkpoint(frontier=self.frontier, history=history, drains=drains)

    async def write_checkpoint(self) -> bool:
        """Store the checkpoint if the lease is still valid; True when written."""
        if not self.lease.valid():
            return False
        self._dirty = False
        data = self.checkpoint().to_bytes()
        try:
            await self.bridge.kv_put(
                names.CURSORS_BUCKET, names.checkpoint_key(self.partition), data
            )
        except BridgeError as exc:
            self._dirty = True
            log.info("partition %d: checkpoint not written: %s", self.partition, exc)
            return False
        return True

    async def _checkpoint_periodically(self) -> None:
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL_S)
            for channel in self.channels.values():
                channel.trim()
            if self._dirty:
                await self.write_checkpoint()

    async def hand_off(self) -> None:
        """Stop delivering: drains stop, the last checkpoint is written (lease permitting)."""
        self.detach_all()
        self.router.stop_partition_drains(self.partition)
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await self.write_checkpoint()

    # -- requests from other routers --------------------------------------------------------

    async def _serve_requests(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer on the owner subject, again after any NATS failure."""
        subject = names.owner_subject(self.partition)
        while True:
            try:
                await self.bridge.serve(subject, self._answer, task_status=task_status)
            except Exception as exc:
                if not bridge_failure(exc):
                    raise
                log.info("partition %d: serving requests: %s; again", self.partition, exc)
            task_status = trio.TASK_STATUS_IGNORED
            await trio.sleep(FETCH_RETRY_S)

    async def _answer(self, data: bytes) -> bytes:
        try:
            request = json.loads(data)
        except ValueError:
            return b'{"error":"not json"}'
        if not isinstance(request, dict) or not isinstance(request.get("channel"), str):
            return b'{"error":"bad request"}'
        channel = request["channel"]
        if request.get("op") == "history":
            messages = self.router.history(channel)
            batch = encode_batch(channel, messages, 0, zstandard.ZstdCompressor(level=1))
            return encode_envelope(KIND_HISTORY, self.frontier, batch)
        if request.get("op") == "status":
            return json.dumps(self.lag()).encode()
        if request.get("op") == "drains":
            statuses = self.router.drain_statuses(channel)
            return json.dumps({str(k): v for k, v in statuses.items()}).encode()
        return b'{"error":"unknown op"}'

    def lag(self) -> dict[str, object]:
        """This partition as ``GET /v3/cluster`` shows it."""
        now = self._wall_clock_s()
        acquired = getattr(self.lease, "acquired_at", None)
        renewed = getattr(self.lease, "renewed_at", None)
        return {
            "owner": self.member_id,
            "read_seq": self.frontier,
            "drains": len(self._queues),
            "ready": self.ready.is_set(),
            "backlog_messages": sum(q.queued_messages for q in self._queues.values()),
            "lease_age_s": None if acquired is None else round(now - acquired, 3),
            "lease_renewed_s_ago": None if renewed is None else round(now - renewed, 3),
        }


__all__ = ["Checkpoint", "ClusterQueue", "DrainCursor", "PartitionOwner"]
