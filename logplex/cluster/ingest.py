"""Ingest into the cluster: publish-then-ack to the partition streams (DESIGN section 10).

``ClusterLog`` takes the place of the spool on the ingest side. ``append`` is synchronous,
as ``Router.publish`` is: it encodes the batch (``logplex.codecs.clusterbatch``, compressed
once) and queues it; ``run`` publishes what is queued to JetStream in one crossing per
round (``NatsBridge.publish_many``, pipelined) and marks the tickets durable once
JetStream acknowledged them. A shim gets its ACK, and ``POST /logs`` its 204, only after
``wait_durable`` of their ticket returned.

- ``Nats-Msg-Id``: a shim batch is ``s.<token hash>.<stream>.<seq>``, so the resend of a
  batch to another router after a reconnect is dropped by JetStream's duplicate window; every
  other batch
  gets ``m.<member>.<counter>``, unique for the life of this router (resends after a failed
  publish reuse it).
- A failed publish (NATS down, no quorum, a timeout) is retried with the same ids, with
  capped backoff, until it succeeds: nothing accepted is dropped. Meanwhile the queue is
  bounded by ``max_pending_bytes``: past it ``backlogged`` is True and ingest waits on
  ``wait_capacity`` (TCP back-pressure to syslog senders, shims waiting for their ACK).
- Order: batches of one partition are published in the order appended; a batch whose publish
  failed and was retried may land after batches that followed it in the same round.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Final

import trio
import zstandard

from logplex import metrics
from logplex.cluster import names
from logplex.cluster.bridge import BridgeError, NatsBridge, PubAck
from logplex.codecs.clusterbatch import encode_batch
from logplex.codecs.records import Message
from logplex.codecs.spoolformat import StreamMark

log = logging.getLogger(__name__)

MAX_ITEMS_PER_ROUND: Final = 512
MAX_BYTES_PER_ROUND: Final = 16 * 1024 * 1024
DEFAULT_MAX_PENDING_BYTES: Final = 256 * 1024 * 1024
RETRY_DELAYS_S: Final = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
TOKEN_TAG_CACHE: Final = 10_000


@dataclass(slots=True)
class _Pending:
    ticket: int
    subject: str
    data: bytes
    msg_id: str
    messages: int


class ClusterLog:
    """The ingest side of the cluster's durable log (see the module docstring)."""

    def __init__(
        self,
        bridge: NatsBridge,
        *,
        member_id: str,
        partitions: int,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self.bridge = bridge
        self.member_id = member_id
        self.partitions = partitions
        self.max_pending_bytes = max_pending_bytes
        self._compressor = zstandard.ZstdCompressor(level=1)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._pending_bytes = 0
        self._next_ticket = 1
        self._counter = 0
        self._token_tags: dict[str, str] = {}
        # Tickets published but not yet all acknowledged below them: the durable frontier
        # is one less than the smallest ticket not yet acknowledged.
        self._unacked: set[int] = set()
        self._durable = 0
        self._progress = trio.Event()
        self._wakeup = trio.Event()
        self.published_batches = 0
        self.duplicates = 0
        self.failed_rounds = 0
        self.last_error: str | None = None

    # -- the hot path (synchronous) -------------------------------------------------------

    def append(self, channel: str, messages: list[Message], stream: StreamMark | None) -> int:
        """Queue one channel batch for its partition; returns its ticket."""
        partition = names.partition_of(channel, self.partitions)
        published_us = int(time.time() * 1_000_000)
        data = encode_batch(channel, messages, published_us, self._compressor)
        if stream is not None:
            msg_id = f"s.{self._token_tag(stream.token)}.{stream.stream}.{stream.seq}"
        else:
            self._counter += 1
            msg_id = f"m.{self.member_id}.{self._counter}"
        ticket = self._next_ticket
        self._next_ticket += 1
        self._queue.append(
            _Pending(ticket, names.log_subject(partition), data, msg_id, len(messages))
        )
        self._unacked.add(ticket)
        self._pending_bytes += len(data)
        metrics.CLUSTER_PENDING_BYTES.set(self._pending_bytes)
        self._wakeup.set()
        return ticket

    def _token_tag(self, token: str) -> str:
        """A short hash of the shim's token: two shims that chose the same stream id under
        different tokens are never taken for each other's resends (the token itself is a
        credential and stays out of NATS headers)."""
        tag = self._token_tags.get(token)
        if tag is None:
            if len(self._token_tags) >= TOKEN_TAG_CACHE:
                self._token_tags.clear()
            tag = hashlib.blake2b(token.encode(), digest_size=8).hexdigest()
            self._token_tags[token] = tag
        return tag

    def latest_ticket(self) -> int:
        return self._next_ticket - 1

    def is_durable(self, ticket: int) -> bool:
        return ticket <= self._durable

    @property
    def backlogged(self) -> bool:
        return self._pending_bytes > self.max_pending_bytes

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    async def wait_durable(self, ticket: int) -> None:
        while ticket > self._durable:
            await self._progress.wait()

    async def wait_capacity(self) -> None:
        while self.backlogged:
            await self._progress.wait()

    # -- publishing -----------------------------------------------------------------------

    def _take_round(self) -> list[_Pending]:
        taken: list[_Pending] = []
        size = 0
        while self._queue and len(taken) < MAX_ITEMS_PER_ROUND:
            item = self._queue[0]
            if taken and size + len(item.data) > MAX_BYTES_PER_ROUND:
                break
            taken.append(self._queue.popleft())
            size += len(item.data)
        return taken

    def _settle(self, item: _Pending, ack: PubAck) -> None:
        self._unacked.discard(item.ticket)
        self._pending_bytes -= len(item.data)
        self.published_batches += 1
        if ack.duplicate:
            self.duplicates += 1
            metrics.CLUSTER_PUBLISHED_BATCHES.labels(outcome="duplicate").inc()
        else:
            metrics.CLUSTER_PUBLISHED_BATCHES.labels(outcome="stored").inc()
            metrics.CLUSTER_PUBLISHED_MESSAGES.inc(item.messages)

    def _advance(self) -> None:
        frontier = min(self._unacked) - 1 if self._unacked else self._next_ticket - 1
        if frontier > self._durable:
            self._durable = frontier
        metrics.CLUSTER_PENDING_BYTES.set(self._pending_bytes)
        self._progress.set()
        self._progress = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish what is appended until cancelled."""
        task_status.started()
        failures = 0
        while True:
            if not self._queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            batch = self._take_round()
            results: list[PubAck | BridgeError]
            try:
                results = list(
                    await self.bridge.publish_many(
                        [(item.subject, item.data, item.msg_id) for item in batch]
                    )
                )
            except BridgeError as exc:
                results = [exc] * len(batch)
            failed: list[_Pending] = []
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, PubAck):
                    self._settle(item, result)
                else:
                    failed.append(item)
                    self.last_error = str(result)
            self._advance()
            if failed:
                # Back at the head, in their order, with the same ids.
                self._queue.extendleft(reversed(failed))
                self.failed_rounds += 1
                metrics.CLUSTER_PUBLISH_FAILURES.inc()
                if failures == 0:
                    log.warning(
                        "publishing to JetStream failed (%s); retrying, %d batches wait",
                        self.last_error,
                        len(self._queue),
                    )
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                await trio.sleep(delay)
            elif failures:
                log.info("publishing to JetStream works again after %d failed rounds", failures)
                failures = 0
                self.last_error = None


__all__ = ["BridgeError", "ClusterLog"]
