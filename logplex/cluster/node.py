"""One router as a member of a cluster: the pieces of the cluster mode tied together.

``ClusterNode`` is what the router and the API see of the cluster (DESIGN section 10):

- the ingest side (``ClusterLog``: ``append``, ``wait_durable``);
- the partitions this router owns (``PartitionOwner`` each, started and stopped by the
  ``Coordinator``), whose drain queues the router asks for with ``queue_for``;
- reads that may be answered by another router: a channel's history and drain statuses
  (request/reply to the owner on ``logplex.owner.<n>``) and live tails (``ClusterTails``: one
  core subscription per partition with sessions here, shared by all of them);
- ``status()`` for ``GET /v3/cluster`` and ``/healthcheck``.

At start it makes sure the cluster's shape exists: its id and partition count in the
``logplex-cluster`` bucket (created by the first router, fixed afterwards: a router
configured with a different count uses the cluster's and says so), one stream per
partition, and the buckets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio
import zstandard

from logplex.cluster import names
from logplex.cluster.bridge import (
    BridgeError,
    KeyExists,
    NatsBridge,
    NoResponders,
    bridge_failure,
)
from logplex.cluster.ingest import ClusterLog
from logplex.cluster.ownership import DEFAULT_LEASE_TTL_S, Coordinator, LeaseHandle
from logplex.cluster.partition import PartitionOwner
from logplex.codecs.clusterbatch import (
    KIND_HISTORY,
    ClusterFormatError,
    decode_batch,
    decode_envelope,
)
from logplex.codecs.records import Message
from logplex.codecs.spoolformat import StreamMark

if TYPE_CHECKING:
    from drains import EncodeMessages, MakeNotice
    from logplex.cluster.partition import ClusterQueue, RouterSide
    from logplex.fanout.tails import TailSession

log = logging.getLogger(__name__)

STREAM_MAX_BYTES: Final = 256 * 1024 * 1024  # per partition
STREAM_MAX_AGE_S: Final = 3 * 24 * 3600.0
STREAM_DUPLICATE_WINDOW_S: Final = 120.0
OWNER_REQUEST_ATTEMPTS_S: Final = 8.0
TAIL_PENDING_BATCHES: Final = 1024
CATCH_UP_MAX_BATCHES: Final = 100_000
CATCH_UP_IDLE_FETCHES: Final = 3
CATCH_UP_PATIENCE_S: Final = 30.0
JETSTREAM_PROBE_S: Final = 1.0
JETSTREAM_PROBE_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    partitions: int = names.DEFAULT_PARTITIONS
    replicas: int = 1
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    stream_max_bytes: int = STREAM_MAX_BYTES
    stream_max_age_s: float = STREAM_MAX_AGE_S
    public_url: str = ""


@dataclass(eq=False, slots=True)
class _SeamedTail:
    """A tail session fed from the partition's tail subject, with the history seam: live
    batches at or below the history's last stream sequence are already in the history, and
    a batch is passed on once even when owners send it twice."""

    session: TailSession
    through: int | None = None
    pending: list[tuple[int, list[Message]]] = field(default_factory=list)

    def push(self, seq: int, messages: list[Message]) -> None:
        if self.through is None:
            self.pending.append((seq, messages))
            if len(self.pending) > TAIL_PENDING_BATCHES:
                # Bounded while the history or a catch-up is awaited: the oldest go, and
                # are told in the tail's next L11 (never passed on out of order).
                _, dropped = self.pending.pop(0)
                self.session.count_dropped(len(dropped))
            return
        # Stream sequences grow within a partition: one seen already is a repeat (a new
        # owner re-sends what its predecessor may have sent after its last checkpoint).
        if seq > self.through:
            self.through = seq
            self.session.push(messages)

    def set_through(self, seq: int) -> None:
        self.through = seq
        pending, self.pending = self.pending, []
        for pending_seq, messages in pending:
            self.push(pending_seq, messages)


class ClusterTails:
    """Live tails on this router for channels owned anywhere.

    One core subscription per partition with tails here. Each tail envelope names the
    partition's previous one (``prev_seq``); when one is missing (core NATS dropped it, this
    router's connection was down, the owner changed) every tail of the partition catches up
    by reading the partition's stream itself from the batch after the last one it saw up to
    the envelope that showed the gap (exactly the lines it missed, from the durable log),
    then goes on live; what arrives live meanwhile waits and is passed on after.
    """

    def __init__(self, bridge: NatsBridge, partitions: int) -> None:
        self.bridge = bridge
        self.partitions = partitions
        self._by_channel: dict[str, list[_SeamedTail]] = {}
        self._subscriptions: dict[int, tuple[trio.CancelScope, trio.Event, set[str]]] = {}
        self._last_seq: dict[int, int] = {}
        self._nursery: trio.Nursery | None = None
        self._decompressor = zstandard.ZstdDecompressor()
        self.catch_ups = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def attach(self, channel: str, session: TailSession) -> _SeamedTail:
        """Feed ``session`` from the channel's partition; returns once subscribed."""
        partition = names.partition_of(channel, self.partitions)
        seamed = _SeamedTail(session)
        self._by_channel.setdefault(channel, []).append(seamed)
        entry = self._subscriptions.get(partition)
        if entry is None:
            assert self._nursery is not None
            scope = trio.CancelScope()
            ready = trio.Event()
            entry = (scope, ready, set())
            self._subscriptions[partition] = entry
            self._nursery.start_soon(self._subscribe, partition, scope, ready)
        entry[2].add(channel)
        with trio.move_on_after(5.0):
            await entry[1].wait()
        return seamed

    def detach(self, channel: str, session: TailSession) -> None:
        tails = self._by_channel.get(channel, [])
        tails[:] = [t for t in tails if t.session is not session]
        if tails:
            return
        self._by_channel.pop(channel, None)
        partition = names.partition_of(channel, self.partitions)
        entry = self._subscriptions.get(partition)
        if entry is not None:
            entry[2].discard(channel)
            if not entry[2]:
                entry[0].cancel()
                del self._subscriptions[partition]
                self._last_seq.pop(partition, None)

    async def _subscribe(self, partition: int, scope: trio.CancelScope, ready: trio.Event) -> None:
        with scope:
            while True:
                try:
                    async with self.bridge.subscribe(names.tail_subject(partition)) as messages:
                        ready.set()
                        async for message in messages:
                            self._dispatch(partition, message.data)
                except Exception as exc:
                    if not bridge_failure(exc):
                        raise
                    log.info("tail subscription of partition %d: %s; again", partition, exc)
                ready.set()
                await trio.sleep(1.0)

    def _dispatch(self, partition: int, data: bytes) -> None:
        try:
            envelope = decode_envelope(data)
            batch = decode_batch(envelope.batch, self._decompressor)
        except ClusterFormatError:
            return
        last = self._last_seq.get(partition)
        self._last_seq[partition] = max(envelope.stream_seq, last or 0)
        if last is not None and envelope.prev_seq != last and envelope.stream_seq > last:
            self._start_catch_up(partition)
        for tail in self._by_channel.get(batch.channel, ()):
            tail.push(envelope.stream_seq, batch.messages)

    def _start_catch_up(self, partition: int) -> None:
        entry = self._subscriptions.get(partition)
        if entry is None or self._nursery is None:
            return
        self.catch_ups += 1
        for channel in entry[2]:
            for tail in self._by_channel.get(channel, ()):
                if tail.through is not None:
                    after = tail.through
                    tail.through = None  # live batches wait while the stream is read
                    target = self._last_seq[partition]
                    self._nursery.start_soon(
                        self._catch_up, partition, channel, tail, after, target
                    )

    async def _catch_up(
        self, partition: int, channel: str, tail: _SeamedTail, after: int, target: int
    ) -> None:
        """Pass on the channel's batches after ``after`` up to ``target`` from the stream,
        trying again through NATS failures for up to ``CATCH_UP_PATIENCE_S``."""
        stream = names.stream_name(partition)
        next_seq = after + 1
        read = 0
        deadline = trio.current_time() + CATCH_UP_PATIENCE_S
        try:
            while next_seq < target and trio.current_time() < deadline:
                try:
                    next_seq, count = await self._read_for_tail(
                        stream, channel, tail, next_seq, target, deadline
                    )
                    read += count
                except BridgeError as exc:
                    log.info("tail catch-up on partition %d: %s; again", partition, exc)
                    await trio.sleep(0.5)
                    continue
                if next_seq < target:
                    try:
                        info = await self.bridge.stream_info(stream)
                    except BridgeError as exc:
                        log.info("tail catch-up on partition %d: %s; again", partition, exc)
                        await trio.sleep(0.5)
                        continue
                    if info.first_seq > next_seq:
                        # The stream's limits removed them before they could be read.
                        log.warning(
                            "tail catch-up on partition %d: batches %d to %d are gone",
                            partition,
                            next_seq,
                            info.first_seq - 1,
                        )
                        next_seq = info.first_seq
        except BridgeError as exc:
            log.info("tail catch-up on partition %d: %s", partition, exc)
        finally:
            if next_seq < target:
                log.warning(
                    "tail catch-up on partition %d stopped at %d of %d", partition, next_seq, target
                )
            else:
                log.info(
                    "tail catch-up on partition %d: %d batches from %d to %d read",
                    partition,
                    read,
                    after + 1,
                    target - 1,
                )
            # From ``target`` on, the live batches (waiting meanwhile) are passed on.
            tail.set_through(target - 1)

    async def _read_for_tail(
        self,
        stream: str,
        channel: str,
        tail: _SeamedTail,
        start: int,
        target: int,
        deadline: float,
    ) -> tuple[int, int]:
        """Read ``stream`` from ``start`` until ``target`` (or an idle spell); returns the next
        sequence to read and how many batches were read."""
        reader = await self.bridge.open_reader(stream, start)
        read = 0
        try:
            idle = 0
            while reader.next_seq < target and read < CATCH_UP_MAX_BATCHES:
                if trio.current_time() >= deadline:
                    break
                messages = await reader.fetch(256, 1.0)
                if not messages:
                    idle += 1
                    if idle >= CATCH_UP_IDLE_FETCHES:
                        break
                    continue
                idle = 0
                for message in messages:
                    if message.seq >= target:
                        return target, read
                    read += 1
                    try:
                        batch = decode_batch(message.data, self._decompressor)
                    except ClusterFormatError:
                        continue
                    if batch.channel == channel and batch.messages:
                        tail.session.push(batch.messages)
            return reader.next_seq, read
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await reader.aclose()


class ClusterNode:
    """This router's part in the cluster (see the module docstring)."""

    def __init__(
        self,
        bridge: NatsBridge,
        settings: ClusterSettings,
        *,
        member_id: str | None = None,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.bridge = bridge
        self.settings = settings
        self.member_id = member_id or uuid.uuid4().hex[:12]
        self.partitions = settings.partitions
        self.cluster_id = ""
        self._wall_clock_s = wall_clock_s
        self.router: RouterSide | None = None
        self.owners: dict[int, PartitionOwner] = {}
        self.log = ClusterLog(bridge, member_id=self.member_id, partitions=self.partitions)
        self.tails = ClusterTails(bridge, self.partitions)
        self.coordinator: Coordinator | None = None
        self.ready = False
        self._jetstream_ok = True
        self._decompressor = zstandard.ZstdDecompressor()

    # -- start-up -------------------------------------------------------------------------

    async def _shape(self) -> None:
        await self.bridge.ensure_kv(names.CLUSTER_BUCKET, replicas=self.settings.replicas)
        shape = json.dumps({"id": uuid.uuid4().hex, "partitions": self.partitions}).encode()
        with contextlib.suppress(KeyExists):
            await self.bridge.kv_create(names.CLUSTER_BUCKET, names.PARTITIONS_KEY, shape)
        entry = await self.bridge.kv_get(names.CLUSTER_BUCKET, names.PARTITIONS_KEY)
        if entry is None or entry.value is None:
            raise BridgeError("the cluster's shape key vanished; check the logplex-cluster bucket")
        doc = json.loads(entry.value)
        self.cluster_id = str(doc["id"])
        partitions = int(doc["partitions"])
        if partitions != self.partitions:
            log.warning(
                "the cluster has %d partitions (fixed when it was created), not %d: using %d",
                partitions,
                self.partitions,
                partitions,
            )
            self.partitions = partitions
            self.log.partitions = partitions
            self.tails.partitions = partitions
        for partition in range(self.partitions):
            await self.bridge.ensure_stream(
                names.stream_name(partition),
                [names.log_subject(partition)],
                replicas=self.settings.replicas,
                max_bytes=self.settings.stream_max_bytes,
                max_age_s=self.settings.stream_max_age_s,
                duplicate_window_s=STREAM_DUPLICATE_WINDOW_S,
            )

    def attach(self, router: RouterSide) -> None:
        self.router = router

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Make the cluster's shape, then ingest, own and tail until cancelled."""
        await self._shape()
        self.coordinator = Coordinator(
            self.bridge,
            member_id=self.member_id,
            partitions=self.partitions,
            make_owner=self._make_owner,
            info={"http": self.settings.public_url, "started": self._wall_clock_s()},
            ttl_s=self.settings.lease_ttl_s,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(self.log.run)
            await nursery.start(self.tails.run)
            await nursery.start(self.coordinator.run)
            nursery.start_soon(self._probe_jetstream)
            self.ready = True
            task_status.started()

    def _make_owner(self, partition: int, lease: LeaseHandle) -> PartitionOwner:
        assert self.router is not None
        owner = PartitionOwner(
            partition,
            bridge=self.bridge,
            router=self.router,
            lease=lease,
            cluster_id=self.cluster_id,
            on_stopped=self._owner_stopped,
            member_id=self.member_id,
        )
        self.owners[partition] = owner
        return owner

    def _owner_stopped(self, owner: PartitionOwner) -> None:
        if self.owners.get(owner.partition) is owner:
            del self.owners[owner.partition]

    async def shutdown(self) -> None:
        """Hand every owned partition off and leave (a clean stop)."""
        if self.coordinator is not None:
            await self.coordinator.shutdown()

    # -- what the router asks --------------------------------------------------------------

    def partition_of(self, channel: str) -> int:
        return names.partition_of(channel, self.partitions)

    def owns(self, channel: str) -> bool:
        return self.partition_of(channel) in self.owners

    def append(self, channel: str, messages: list[Message], stream: StreamMark | None) -> int:
        return self.log.append(channel, messages, stream)

    def latest_ticket(self) -> int:
        return self.log.latest_ticket()

    @property
    def backlogged(self) -> bool:
        return self.log.backlogged

    async def wait_capacity(self) -> None:
        await self.log.wait_capacity()

    async def wait_durable(self, ticket: int) -> None:
        await self.log.wait_durable(ticket)

    def queue_for(
        self,
        channel: str,
        token: str,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
    ) -> ClusterQueue:
        owner = self.owners[self.partition_of(channel)]
        return owner.queue_for(channel, token, encode, memo_key, make_notice)

    def forget_drain(self, token: str) -> None:
        for owner in self.owners.values():
            owner.forget_drain(token)

    def drain_lag(self) -> list[tuple[ClusterQueue, int, float]]:
        return [lag for owner in self.owners.values() for lag in owner.drain_lag()]

    async def attach_tail(self, channel: str, session: TailSession) -> _SeamedTail:
        return await self.tails.attach(channel, session)

    def detach_tail(self, channel: str, session: TailSession) -> None:
        self.tails.detach(channel, session)

    async def _ask_owner(self, channel: str, op: str) -> bytes | None:
        """The owner's answer, waiting through a hand-off or takeover; None if none came."""
        request = json.dumps({"op": op, "channel": channel}).encode()
        subject = names.owner_subject(self.partition_of(channel))
        deadline = trio.current_time() + OWNER_REQUEST_ATTEMPTS_S
        while True:
            try:
                return await self.bridge.request(subject, request, timeout_s=2.0)
            except NoResponders:
                pass
            except BridgeError as exc:
                log.info("no answer from the owner of %r's partition: %s", channel, exc)
            if trio.current_time() >= deadline:
                return None
            await trio.sleep(0.25)

    async def history(self, channel: str) -> tuple[list[Message], int]:
        """The channel's history and the last stream sequence it includes."""
        owner = self.owners.get(self.partition_of(channel))
        if owner is not None and owner.ready.is_set() and self.router is not None:
            return self.router.history(channel), owner.frontier
        reply = await self._ask_owner(channel, "history")
        if reply is None:
            return [], 0
        try:
            envelope = decode_envelope(reply)
            if envelope.kind != KIND_HISTORY:
                return [], 0
            return decode_batch(envelope.batch, self._decompressor).messages, envelope.stream_seq
        except ClusterFormatError:
            return [], 0

    async def drain_statuses(self, channel: str) -> dict[int, dict[str, object]] | None:
        """The owner's drain statuses (None: no owner answered)."""
        owner = self.owners.get(self.partition_of(channel))
        if owner is not None and self.router is not None:
            return self.router.drain_statuses(channel)
        reply = await self._ask_owner(channel, "drains")
        if reply is None:
            return None
        try:
            doc = json.loads(reply)
        except ValueError:
            return None
        if not isinstance(doc, dict) or "error" in doc:
            return None
        return {int(k): v for k, v in doc.items() if k.isdigit() and isinstance(v, dict)}

    # -- status ---------------------------------------------------------------------------

    async def _probe_jetstream(self) -> None:
        """Every second, ask JetStream about one partition stream: connected to a server is
        not enough, the streams need their quorum to store anything."""
        stream = names.stream_name(0)
        while True:
            problem: str | None = "no answer within 2 s"
            with trio.move_on_after(JETSTREAM_PROBE_TIMEOUT_S):
                try:
                    await self.bridge.stream_info(stream)
                    problem = None
                except BridgeError as exc:
                    problem = str(exc)
            if problem is not None and self._jetstream_ok:
                log.warning("JetStream does not answer (%s): /healthcheck says 503", problem)
            elif problem is None and not self._jetstream_ok:
                log.info("JetStream answers again")
            self._jetstream_ok = problem is None
            await trio.sleep(JETSTREAM_PROBE_S)

    def healthy(self) -> bool:
        """For ``/healthcheck``: connected to NATS, and JetStream answered the last probe."""
        return self.ready and self.bridge.connected and self._jetstream_ok

    async def status(self) -> dict[str, object]:
        """``GET /v3/cluster``: members, partitions per member, lease ages and consumer lag
        per partition, from any router (each partition's owner answers for it over NATS)."""
        coordinator = self.coordinator
        members: dict[str, object] = {}
        if coordinator is not None:
            members = dict(coordinator.status()["members"])  # type: ignore[call-overload]
        partitions: dict[str, dict[str, object]] = {}

        async def one(partition: int) -> None:
            entry: dict[str, object] = {}
            try:
                info = await self.bridge.stream_info(names.stream_name(partition))
                entry.update(
                    stream_last_seq=info.last_seq,
                    stream_messages=info.messages,
                    stream_bytes=info.bytes,
                    stream_leader=info.leader,
                )
            except BridgeError as exc:
                entry["error"] = str(exc)
            owner = self.owners.get(partition)
            view: object = None
            if owner is not None:
                view = owner.lag()
            else:
                try:
                    reply = await self.bridge.request(
                        names.owner_subject(partition),
                        b'{"op":"status","channel":""}',
                        timeout_s=1.0,
                    )
                    view = json.loads(reply)
                except (BridgeError, ValueError):
                    view = None
            if isinstance(view, dict) and "owner" in view:
                entry.update(view)
                last = entry.get("stream_last_seq")
                read = view.get("read_seq")
                if isinstance(last, int) and isinstance(read, int):
                    entry["lag_batches"] = max(0, last - read)
            else:
                entry["owner"] = None  # between owners (a takeover or hand-off)
            partitions[str(partition)] = entry

        async with trio.open_nursery() as nursery:
            for partition in range(self.partitions):
                nursery.start_soon(one, partition)
        per_member: dict[str, list[int]] = {}
        for key, entry in partitions.items():
            owner_id = entry.get("owner")
            if isinstance(owner_id, str):
                per_member.setdefault(owner_id, []).append(int(key))
        for member_id, view in members.items():
            if isinstance(view, dict):
                view["partitions"] = sorted(per_member.get(member_id, []))
        return {
            "cluster_id": self.cluster_id,
            "member": self.member_id,
            "partitions": self.partitions,
            "nats": self.bridge.status(),
            "members": members,
            "owned": sorted(self.owners),
            "partition_status": {k: partitions[k] for k in sorted(partitions, key=int)},
            "pending_bytes": self.log.pending_bytes,
        }
