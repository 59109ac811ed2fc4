"""Membership and partition ownership: rendezvous hashing plus KV leases with fencing.

DESIGN section 10.

- **Members**: every router writes ``m.<member id>`` (its HTTP URL and start time) into the
  ``logplex-members`` bucket every ``heartbeat_s``; every router watches the bucket and
  takes as live the members heard from within ``member_ttl_s`` (the bucket's TTL removes
  the keys of dead members; KV watches on nats-server 2.9 do not announce expiries, so
  liveness is judged by the heartbeats' arrival). A router that stops cleanly deletes its
  key, and the others rebalance at once.
- **Owners**: the owner of partition *p* is ``rendezvous_owner(p, live members)``: adding or
  removing a router moves only the partitions it wins or held.
- **Leases**: the designated owner takes ``p.<n>`` in ``logplex-leases`` with a create (only
  if absent) and renews it with a compare-and-set on its revision every ``renew_s``; the
  bucket's TTL (``ttl_s``) removes a lease its holder stopped renewing. The holder's *local
  deadline* is the start of its last successful renewal + ``ttl_s`` − ``margin_s``: a holder
  that could not renew in time (paused, cut off from NATS) stops delivering at its deadline,
  before any other router can have taken the lease, and a renewal refused because the
  revision moved (someone else holds it now) stops it at once.
- **Hand-off**: when the designated owner changes (a router joined), the holder stops the
  partition, writes its last checkpoint, and deletes the lease (CAS on its revision); the new
  owner's next attempt creates it and resumes from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

import trio

from logplex import metrics
from logplex.cluster import names
from logplex.cluster.bridge import (
    BridgeError,
    KeyExists,
    KvEntry,
    NatsBridge,
    WrongRevision,
    bridge_failure,
)

log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S: Final = 3.0
STARTUP_SETTLE_S: Final = 1.0


class Owned(Protocol):
    """A partition being delivered by this router (``PartitionOwner``)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...
    async def hand_off(self) -> None: ...


@dataclass(eq=False, slots=True)
class LeaseHandle:
    partition: int
    revision: int
    deadline: float  # trio clock
    acquired_at: float  # wall clock
    renewed_at: float  # wall clock

    def valid(self) -> bool:
        return trio.current_time() < self.deadline


@dataclass(eq=False, slots=True)
class _Holding:
    lease: LeaseHandle
    owner: Owned
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class Coordinator:
    """Membership, leases and the owners of this router's partitions."""

    def __init__(
        self,
        bridge: NatsBridge,
        *,
        member_id: str,
        partitions: int,
        make_owner: Callable[[int, LeaseHandle], Owned],
        info: dict[str, object] | None = None,
        ttl_s: float = DEFAULT_LEASE_TTL_S,
        wall_clock_s: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s < 1.0:
            raise ValueError(f"the lease TTL must be at least 1 s, not {ttl_s}")
        self.bridge = bridge
        self.member_id = member_id
        self.partitions = partitions
        self.make_owner = make_owner
        self.info = dict(info or {})
        self.ttl_s = ttl_s
        self.renew_s = ttl_s / 3
        self.heartbeat_s = ttl_s / 3
        self.member_ttl_s = ttl_s
        self.margin_s = min(1.0, ttl_s / 4)
        self._wall_clock_s = wall_clock_s
        self.members: dict[str, dict[str, object]] = {}
        self._last_heard: dict[str, float] = {}
        self.held: dict[int, _Holding] = {}
        self._changed = trio.Event()
        self._stopping = False
        self._nursery: trio.Nursery | None = None
        self.acquired = 0
        self.lost = 0

    # -- views ----------------------------------------------------------------------------

    def live_members(self) -> list[str]:
        now = trio.current_time()
        live = [m for m, heard in self._last_heard.items() if now - heard < self.member_ttl_s]
        if self.member_id not in live and not self._stopping:
            live.append(self.member_id)
        return sorted(live)

    def designated(self, partition: int) -> str | None:
        return names.rendezvous_owner(partition, self.live_members())

    def owns(self, partition: int) -> bool:
        holding = self.held.get(partition)
        return holding is not None and holding.lease.valid()

    def status(self) -> dict[str, object]:
        now_wall = self._wall_clock_s()
        return {
            "member": self.member_id,
            "members": {
                m: {**self.members.get(m, {}), "live": m in self.live_members()}
                for m in sorted(set(self.members) | {self.member_id})
            },
            "leases": {
                str(p): {
                    "age_s": round(now_wall - h.lease.acquired_at, 3),
                    "renewed_s_ago": round(now_wall - h.lease.renewed_at, 3),
                    "valid": h.lease.valid(),
                }
                for p, h in sorted(self.held.items())
            },
        }

    # -- the run --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.bridge.ensure_kv(names.MEMBERS_BUCKET, ttl_s=self.member_ttl_s * 2)
        await self.bridge.ensure_kv(names.LEASES_BUCKET, ttl_s=self.ttl_s)
        await self.bridge.ensure_kv(names.CURSORS_BUCKET, max_value_bytes=8 * 1024 * 1024)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._watch_members)
                await self._heartbeat()
                nursery.start_soon(self._heartbeat_periodically)
                # Hear from the others before claiming anything: routers starting together
                # would otherwise each grab every partition and hand most of them back.
                await trio.sleep(STARTUP_SETTLE_S)
                task_status.started()
                await self._balance_periodically()
        finally:
            self._nursery = None

    async def _heartbeat(self) -> None:
        value = json.dumps({**self.info, "heartbeat": self._wall_clock_s()}).encode()
        try:
            await self.bridge.kv_put(names.MEMBERS_BUCKET, names.member_key(self.member_id), value)
        except BridgeError as exc:
            log.info("membership heartbeat not written: %s", exc)

    async def _heartbeat_periodically(self) -> None:
        while not self._stopping:
            await trio.sleep(self.heartbeat_s)
            await self._heartbeat()

    async def _watch_members(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        while True:
            try:
                async with self.bridge.kv_watch(names.MEMBERS_BUCKET) as entries:
                    async for entry in entries:
                        if not entry.key:
                            if not started:
                                started = True
                                task_status.started()
                            continue
                        self._member_update(entry)
            except Exception as exc:
                if not bridge_failure(exc) or not started:
                    raise
                log.info("the members watch failed (%s); opening it again", exc)
            await trio.sleep(self.heartbeat_s)

    def _member_update(self, entry: KvEntry) -> None:
        member = entry.key.removeprefix("m.")
        if entry.value is None:
            self.members.pop(member, None)
            self._last_heard.pop(member, None)
        else:
            try:
                value = json.loads(entry.value)
            except ValueError:
                return
            if isinstance(value, dict):
                self.members[member] = value
                self._last_heard[member] = trio.current_time()
        self._changed.set()

    async def _balance_periodically(self) -> None:
        while True:
            await self.balance()
            with trio.move_on_after(self.renew_s):
                await self._changed.wait()
            self._changed = trio.Event()

    async def balance(self) -> None:
        """Renew held leases, hand off what moved, take what is ours and free."""
        if self._stopping:
            return
        async with trio.open_nursery() as nursery:
            for partition in list(self.held):
                nursery.start_soon(self._keep_or_release, partition)
        live = self.live_members()
        async with trio.open_nursery() as nursery:
            for partition in range(self.partitions):
                if partition not in self.held and (
                    names.rendezvous_owner(partition, live) == self.member_id
                ):
                    nursery.start_soon(self._try_acquire, partition)
        metrics.CLUSTER_OWNED_PARTITIONS.set(len(self.held))

    async def _keep_or_release(self, partition: int) -> None:
        holding = self.held[partition]
        lease = holding.lease
        if not lease.valid():
            log.warning("partition %d: lease not renewed in time; stopping delivery", partition)
            metrics.CLUSTER_LEASE_EVENTS.labels(event="expired_locally").inc()
            await self._stop(partition, hand_off=False)
            return
        if self.designated(partition) != self.member_id:
            await self.release(partition)
            return
        started = trio.current_time()
        try:
            revision = await self.bridge.kv_update(
                names.LEASES_BUCKET,
                names.lease_key(partition),
                self.member_id.encode(),
                lease.revision,
            )
        except WrongRevision:
            log.warning("partition %d: lease taken by another router; stopping", partition)
            metrics.CLUSTER_LEASE_EVENTS.labels(event="lost").inc()
            self.lost += 1
            await self._stop(partition, hand_off=False)
            return
        except BridgeError as exc:
            log.info("partition %d: lease not renewed (%s); retrying", partition, exc)
            return
        lease.revision = revision
        lease.deadline = started + self.ttl_s - self.margin_s
        lease.renewed_at = self._wall_clock_s()

    async def _try_acquire(self, partition: int) -> None:
        started = trio.current_time()
        try:
            revision = await self.bridge.kv_create(
                names.LEASES_BUCKET, names.lease_key(partition), self.member_id.encode()
            )
        except KeyExists:
            return  # held: by the previous owner handing off, or expiring
        except BridgeError as exc:
            log.info("partition %d: lease not taken (%s)", partition, exc)
            return
        now_wall = self._wall_clock_s()
        lease = LeaseHandle(
            partition, revision, started + self.ttl_s - self.margin_s, now_wall, now_wall
        )
        holding = _Holding(lease, self.make_owner(partition, lease))
        self.held[partition] = holding
        self.acquired += 1
        metrics.CLUSTER_LEASE_EVENTS.labels(event="acquired").inc()
        log.info("partition %d: lease acquired", partition)
        assert self._nursery is not None
        self._nursery.start_soon(self._run_owner, partition, holding)

    async def _run_owner(self, partition: int, holding: _Holding) -> None:
        try:
            with holding.scope:
                await holding.owner.run()
        except Exception as exc:
            if not bridge_failure(exc):
                raise
            log.warning("partition %d: delivery stopped: %s; giving the lease up", partition, exc)
            self._nursery_release_soon(partition, holding)
        finally:
            holding.done.set()

    def _nursery_release_soon(self, partition: int, holding: _Holding) -> None:
        if self._nursery is not None and self.held.get(partition) is holding:
            self._nursery.start_soon(self._stop, partition, False)

    async def _stop(self, partition: int, hand_off: bool) -> None:
        holding = self.held.pop(partition, None)
        if holding is None:
            return
        if hand_off:
            await holding.owner.hand_off()
        holding.scope.cancel()
        # Without a hand-off there is no last checkpoint: another router may hold the lease
        # by now (fencing), so this one only stops.
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            await holding.done.wait()

    async def release(self, partition: int) -> None:
        """Hand the partition off cleanly: stop, checkpoint, delete the lease."""
        holding = self.held.get(partition)
        if holding is None:
            return
        revision = holding.lease.revision
        await self._stop(partition, hand_off=True)
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            try:
                await self.bridge.kv_delete(
                    names.LEASES_BUCKET, names.lease_key(partition), last_revision=revision
                )
            except BridgeError as exc:
                log.info("partition %d: lease not deleted (%s); it expires", partition, exc)
        metrics.CLUSTER_LEASE_EVENTS.labels(event="released").inc()
        log.info("partition %d: handed off", partition)

    async def shutdown(self) -> None:
        """A clean stop: leave the membership, hand every partition off."""
        self._stopping = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(3.0):
                try:
                    await self.bridge.kv_delete(
                        names.MEMBERS_BUCKET, names.member_key(self.member_id)
                    )
                except BridgeError as exc:
                    log.info("membership key not deleted: %s", exc)
            async with trio.open_nursery() as nursery:
                for partition in list(self.held):
                    nursery.start_soon(self.release, partition)


__all__ = ["Coordinator", "LeaseHandle"]
