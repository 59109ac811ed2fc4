"""The router's Prometheus metrics (the drains package keeps its own in ``drains._metrics``).

Ingest (per protocol), fan-out (publish batch sizes, messages for vanished channels), ingest
connections, the in-memory index sizes (gauges computed at scrape time by
``RouterIndexCollector``, so the hot path pays nothing) and event-loop lag (a task that
measures how late a periodic sleep wakes up). docs/operations.md lists them all.

Label values are bounded sets (protocol, reason, drain kind, outcome, state); never a token,
URL, channel name or message text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar, Protocol

import trio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

INGEST_MESSAGES = Counter(
    "logplex_ingest_messages_total",
    "Messages accepted into the router, by ingest protocol.",
    ["protocol"],  # shim | http | syslog
)
INGEST_BYTES = Counter(
    "logplex_ingest_bytes_total",
    "Message bytes accepted into the router, by ingest protocol.",
    ["protocol"],
)
INGEST_ERRORS = Counter(
    "logplex_ingest_errors_total",
    "Ingest inputs refused or skipped, by protocol and bounded reason.",
    ["protocol", "reason"],  # reason: unauthorized | unknown_token | malformed | too_large | ...
)

# -- guards (docs/security.md) -----------------------------------------------------------

LIMIT_REFUSALS = Counter(
    "logplex_limit_refusals_total",
    "Requests, connections or objects refused because a limit was reached, by limit name.",
    # limit: the flag's name without dashes' prefix, e.g. max_channels, max_connections_per_ip,
    # max_clients_per_session, history_max_bytes, auth_failure_limit, max_inflate_bytes
    ["limit"],
)
DEADLINE_CLOSES = Counter(
    "logplex_deadline_closes_total",
    "Connections closed because a peer was too slow or idle, by listener and deadline.",
    # listener: http | shim | syslog; deadline: idle | head | body | hello | frame | send
    ["listener", "deadline"],
)
# -- fan-out -----------------------------------------------------------------------------

PUBLISH_BATCH_MESSAGES = Histogram(
    "logplex_publish_batch_messages",
    "Messages per router.publish call (ingest hands batches, not lines, to the fan-out).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000),
)
PUBLISH_UNKNOWN_CHANNEL_MESSAGES = Counter(
    "logplex_publish_unknown_channel_messages_total",
    "Messages published to a channel that no longer exists (deleted meanwhile), dropped.",
)

# -- ingest connections and shim streams -------------------------------------------------

INGEST_CONNECTIONS = Gauge(
    "logplex_ingest_connections",
    "Open ingest connections, by protocol.",
    ["protocol"],  # shim | syslog
)
INGEST_CONNECTIONS_CLOSED = Counter(
    "logplex_ingest_connections_closed_total",
    "Ingest connections closed, by protocol and bounded reason.",
    # reason: eof | error | idle | hello_timeout | ping_timeout | send_timeout | frame_timeout
    ["protocol", "reason"],
)
SHIM_DUPLICATE_BATCHES = Counter(
    "logplex_shim_duplicate_batches_total",
    "Shim BATCH frames dropped because the router already held their (stream, seq).",
)

# -- the durable spool (logplex.spool) --------------------------------------------------

SPOOL_FSYNC_SECONDS = Histogram(
    "logplex_spool_commit_seconds",
    "Time of one group commit of the spool (write and fdatasync of every pending batch).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SPOOL_SYNC_OVERRUNS = Counter(
    "logplex_spool_sync_overruns_total",
    "Group commits that took longer than --spool-sync-ms.",
)
SPOOL_WRITE_ERRORS = Counter(
    "logplex_spool_write_errors_total",
    "Times the spool could not write or fsync and fell back to memory (ENOSPC, EIO, ...).",
)
SPOOL_MODE = Gauge(
    "logplex_spool_durable",
    "1 while accepted batches are fsynced before they are acknowledged, 0 while the spool "
    "runs on memory after a disk error.",
)
SPOOL_DROPPED_MESSAGES = Counter(
    "logplex_spool_dropped_messages_total",
    "Messages drains lost because the spool no longer held them (--spool-max-bytes, or "
    "memory-only batches let go while the disk failed), summed over drains.",
)
SPOOL_ABANDONED_MESSAGES = Counter(
    "logplex_spool_abandoned_messages_total",
    "Messages a drain had not delivered when it was removed.",
)
SPOOL_DAMAGED_RECORDS = Counter(
    "logplex_spool_damaged_records_total",
    "Damaged spool records found: a torn tail cut at start-up, damage skipped in the "
    "middle of a segment, or a record that could not be read back.",
    ["where"],  # tail | middle | read
)
SPOOL_TORN_BYTES = Counter(
    "logplex_spool_torn_bytes_total",
    "Bytes of torn segment tails cut at start-up.",
)
SPOOL_REPLAY_RECORDS = Gauge(
    "logplex_spool_replay_records",
    "Records read from the spool at start-up.",
)
SPOOL_REPLAY_SECONDS = Gauge(
    "logplex_spool_replay_seconds",
    "Time the start-up scan of the spool took.",
)
SPOOL_DISK_READS = Counter(
    "logplex_spool_disk_reads_total",
    "Batches a drain read back from disk (it was behind the memory cache).",
)

# -- event loop --------------------------------------------------------------------------

# -- cluster mode (DESIGN 10) ----------------------------------------------------------------

CLUSTER_CONNECTED = Gauge(
    "logplex_cluster_connected", "1 while the router's connection to NATS is up (cluster mode)."
)
CLUSTER_PENDING_BYTES = Gauge(
    "logplex_cluster_pending_bytes",
    "Bytes of accepted batches waiting for JetStream's acknowledgement.",
)
CLUSTER_PUBLISHED_BATCHES = Counter(
    "logplex_cluster_published_batches_total",
    "Batches JetStream acknowledged, by outcome.",
    ["outcome"],  # stored | duplicate (dropped by Nats-Msg-Id)
)
CLUSTER_PUBLISHED_MESSAGES = Counter(
    "logplex_cluster_published_messages_total", "Messages stored in the partition streams."
)
CLUSTER_PUBLISH_FAILURES = Counter(
    "logplex_cluster_publish_failures_total", "Publish rounds with a batch to retry."
)
CLUSTER_OWNED_PARTITIONS = Gauge(
    "logplex_cluster_owned_partitions", "Partitions this router owns (holds the lease of)."
)
CLUSTER_DELIVERED_BATCHES = Counter(
    "logplex_cluster_consumed_batches_total", "Stream batches an owner read from its partitions."
)
CLUSTER_LEASE_EVENTS = Counter(
    "logplex_cluster_lease_events_total",
    "Partition lease events, by kind.",
    ["event"],  # acquired | released | lost | expired_locally
)
CLUSTER_TAIL_DROPPED = Counter(
    "logplex_cluster_tail_dropped_total",
    "Tail batches a router could not take from NATS in time (its tails got an L11).",
)

EVENT_LOOP_LAG = Histogram(
    "logplex_event_loop_lag_seconds",
    "How late a periodic timer fired: time the event loop was busy with other work.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENT_LOOP_LAG_LAST = Gauge(
    "logplex_event_loop_lag_last_seconds",
    "The most recent event-loop lag measurement.",
)


async def measure_event_loop_lag(*, interval_s: float = 0.25) -> None:
    """Sleep ``interval_s`` in a loop and record how much later than asked each wake-up was."""
    while True:
        asked_at = trio.current_time()
        await trio.sleep(interval_s)
        lag_s = max(0.0, trio.current_time() - asked_at - interval_s)
        EVENT_LOOP_LAG.observe(lag_s)
        EVENT_LOOP_LAG_LAST.set(lag_s)


# -- index sizes, computed at scrape time ------------------------------------------------


class RouterIndexCollector(Collector):
    """Gauges of the router's in-memory index: channels, tokens, drains, tail sessions.

    ``counts`` is called at scrape time (``Router.counts``), so the hot path pays nothing.
    """

    def __init__(self, counts: Callable[[], RouterCountsLike]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        for name, documentation, value in (
            ("logplex_channels", "Channels known to the router.", counts.channels),
            ("logplex_tokens", "Tokens indexed for ingest.", counts.tokens),
            (
                "logplex_drains_configured",
                "Drains configured across all channels.",
                counts.drains,
            ),
            ("logplex_tail_sessions", "Open tail sessions.", counts.sessions),
        ):
            yield GaugeMetricFamily(name, documentation, value=value)


class SpoolLike(Protocol):
    def gauges(self) -> dict[str, float]: ...


class SpoolCollector(Collector):
    """Spool size, age and drain lag, computed at scrape time from ``Spool.gauges``."""

    DOCS: ClassVar[dict[str, str]] = {
        "logplex_spool_bytes": "Bytes of spool segments on disk.",
        "logplex_spool_segments": "Spool segment files.",
        "logplex_spool_max_bytes": "The spool's disk budget (--spool-max-bytes).",
        "logplex_spool_oldest_age_seconds": "Age of the oldest spool segment.",
        "logplex_spool_drain_lag_messages": "Messages drains have not taken yet, summed.",
        "logplex_spool_drain_lag_max_seconds": "Age of the oldest message a drain waits for.",
    }

    def __init__(self, spool: SpoolLike) -> None:
        self._spool = spool

    def collect(self) -> Iterator[Metric]:
        for name, value in self._spool.gauges().items():
            yield GaugeMetricFamily(name, self.DOCS.get(name, name), value=value)


def register_spool_collector(
    spool: SpoolLike, registry: CollectorRegistry = REGISTRY
) -> SpoolCollector:
    collector = SpoolCollector(spool)
    registry.register(collector)
    return collector


class RouterCountsLike(Protocol):
    @property
    def channels(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def drains(self) -> int: ...
    @property
    def sessions(self) -> int: ...


def register_router_collector(
    counts: Callable[[], RouterCountsLike], registry: CollectorRegistry = REGISTRY
) -> RouterIndexCollector:
    """Register the index gauges; unregister with ``registry.unregister(collector)``."""
    collector = RouterIndexCollector(counts)
    registry.register(collector)
    return collector


# -- trio tasks (for the soak: a leak of tasks shows as a rising gauge) ----------------------


def count_trio_tasks(root: trio.lowlevel.Task) -> int:
    """The tasks alive under ``root``, itself included (a walk of the nursery tree)."""
    count = 0
    pending = [root]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


class TaskCountCollector(Collector):
    """``logplex_tasks``: trio tasks alive in this process, walked at scrape time.

    A scrape from outside a trio run (a test's ``generate_latest``) reports nothing.
    """

    def collect(self) -> Iterator[Metric]:
        try:
            root = trio.lowlevel.current_root_task()
        except RuntimeError:
            return
        if root is not None:
            yield GaugeMetricFamily(
                "logplex_tasks", "Trio tasks alive in the router.", value=count_trio_tasks(root)
            )


_TASK_COLLECTORS: dict[int, TaskCountCollector] = {}


def register_task_collector(registry: CollectorRegistry = REGISTRY) -> TaskCountCollector:
    """Register ``logplex_tasks`` once per registry (later calls return the same collector)."""
    collector = _TASK_COLLECTORS.get(id(registry))
    if collector is None:
        collector = _TASK_COLLECTORS[id(registry)] = TaskCountCollector()
        registry.register(collector)
    return collector
