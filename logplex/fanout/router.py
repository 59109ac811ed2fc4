"""The router's fan-out core (DESIGN sections 7 and 8): channels, tokens, history, tails, drains.

``Router.publish(channel, messages)`` is the one entry point of channel traffic. It is
synchronous and never awaits: it appends the batch to the channel's history ring, hands it to
every tail session (bounded, drop-oldest, L11) and to every drain's ``push_batch`` (bounded,
drop-oldest, L10, owned by the drain), and returns. The batch is wrapped in one
``records.Batch`` shared by every drain, so formatting work is memoised once per batch.

The in-memory index the hot path reads (token -> ``TokenInfo``, channel -> state) is rebuilt
per channel by ``apply_channel``, which the API calls after each successful store write and
``serve`` calls at start-up; lookups never touch SQLite. Drains are created through
``drain_factory`` and each runs as one task in the router's nursery under its own cancel
scope, so removing a drain cancels its task and frees its buffer. ``flush_drains`` is the
deadline-bounded shutdown flush. ``run`` also compacts, about once a second, the histories
written since the last time (``HistoryRing.compact``), so the hot path only appends; the same
sweep counts the lines the ``history_max_bytes`` bound evicted (``/metrics``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

import trio

from logplex import metrics
from logplex.codecs.records import Batch, Message
from logplex.config.records import ChannelConfig, DrainConfig, TokenInfo
from logplex.fanout.history import HistoryRing
from logplex.fanout.tails import DEFAULT_TAIL_BUFFER_MESSAGES, TailSession, message_filter

if TYPE_CHECKING:
    # What the router needs of a drain is the drains' own protocol (docs/architecture.md,
    # "Drains"): push_batch, run, wait_flushed and status.
    from drains import Drain, DrainContext, DrainQueue, DrainSettings, EncodeMessages, MakeNotice
    from logplex.codecs.spoolformat import StreamMark
    from logplex.spool.log import Spool

__all__ = ["ClusterHooks", "DrainFactory", "Router", "TailSession", "message_filter"]

log = logging.getLogger(__name__)

DRAIN_RESTART_DELAYS_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
HISTORY_COMPACT_INTERVAL_S: Final = 1.0
HISTORY_COMPACT_CHANNELS_PER_STEP: Final = 20


DrainFactory = Callable[["DrainContext"], "Drain"]


class ClusterHooks(Protocol):
    """What the router needs of the cluster mode (``logplex.cluster.node.ClusterNode``)."""

    def partition_of(self, channel: str) -> int: ...
    def owns(self, channel: str) -> bool: ...
    def append(self, channel: str, messages: list[Message], stream: StreamMark | None) -> int: ...
    def latest_ticket(self) -> int: ...
    async def wait_durable(self, ticket: int) -> None: ...
    def queue_for(
        self,
        channel: str,
        token: str,
        encode: EncodeMessages,
        memo_key: str,
        make_notice: MakeNotice,
    ) -> DrainQueue: ...
    def forget_drain(self, token: str) -> None: ...
    @property
    def backlogged(self) -> bool: ...
    async def wait_capacity(self) -> None: ...
    def drain_lag(self) -> Sequence[tuple[object, int, float]]: ...
    async def history(self, channel: str) -> tuple[list[Message], int]: ...
    async def drain_statuses(self, channel: str) -> dict[int, dict[str, object]] | None: ...
    async def attach_tail(self, channel: str, session: TailSession) -> object: ...
    def detach_tail(self, channel: str, session: TailSession) -> None: ...


# Lines a channel's history let go early to stay within --history-max-bytes.
HISTORY_BYTES_EVICTIONS: Final = metrics.LIMIT_REFUSALS.labels(limit="history_max_bytes")


def pending_drain_status() -> dict[str, object]:
    """DESIGN 3 status of a drain that is configured but not (yet) running."""
    return {
        "state": "pending",
        "delivered": 0,
        "dropped": 0,
        "buffered": 0,
        "last_error": None,
        "last_success_at": None,
    }


def drain_restart_delay_s(crashes: int) -> float:
    """Delay before restarting a drain task after its ``crashes``-th crash in a row."""
    return DRAIN_RESTART_DELAYS_S[min(max(crashes, 1), len(DRAIN_RESTART_DELAYS_S)) - 1]


@dataclass(eq=False, slots=True)
class _DrainHandle:
    config: DrainConfig
    drain: Drain | None
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    started: bool = False


@dataclass(eq=False, slots=True)
class _Channel:
    name: str
    history: HistoryRing
    tokens: dict[str, TokenInfo] = field(default_factory=dict)  # token -> what it grants
    token_names: dict[str, str] = field(default_factory=dict)  # name -> token, as configured
    drains: dict[int, _DrainHandle] = field(default_factory=dict)
    drain_list: list[Drain] = field(default_factory=list)  # running drains, for publish
    tails: list[TailSession] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RouterCounts:
    """Sizes of the in-memory index, for the gauges of ``/metrics``."""

    channels: int
    tokens: int
    drains: int
    sessions: int


class Router:
    """Fan-out of channel traffic to history, tail sessions and drains."""

    def __init__(
        self,
        *,
        history_lines: int = 1500,
        history_max_bytes: int | None = None,
        drain_factory: DrainFactory | None = None,
        drain_settings: DrainSettings | None = None,
        tail_buffer_messages: int = DEFAULT_TAIL_BUFFER_MESSAGES,
        spool: Spool | None = None,
        cluster: ClusterHooks | None = None,
    ) -> None:
        if history_lines < 0:
            raise ValueError(f"--history must be 0 or more lines, not {history_lines}")
        if history_max_bytes is not None and history_max_bytes < 0:
            raise ValueError(f"--history-max-bytes must be 0 or more, not {history_max_bytes}")
        self.history_lines = history_lines
        self.history_max_bytes = history_max_bytes  # None: only the line bound
        self.tail_buffer_messages = tail_buffer_messages
        self._drain_factory = drain_factory
        self._drain_settings = drain_settings
        self._channels: dict[str, _Channel] = {}
        self._tokens: dict[str, TokenInfo] = {}
        self._nursery: trio.Nursery | None = None
        self._uncompacted: set[HistoryRing] = set()  # histories written since the last sweep
        # With the spool, publish appends there and drains read from it (their queues are
        # the spool's); without, each drain has its own memory buffer.
        self.spool = spool
        # In the cluster mode (DESIGN 10) publish appends to the partition streams; history
        # and drains live on each channel's partition owner (``deliver``), tails anywhere.
        self.cluster = cluster

    # -- hot path -------------------------------------------------------------------------

    def lookup_token(self, token: str) -> TokenInfo | None:
        """The channel and source a ``t.…`` token writes into, or None."""
        return self._tokens.get(token)

    def publish(
        self, channel: str, messages: list[Message], stream: StreamMark | None = None
    ) -> int:
        """Hand one batch to the channel's history, tails and drains; never awaits.

        The list is kept by reference (history, drains, tails): the caller hands it over
        and must not change it afterwards. With the spool the batch is appended there
        (``stream``: the shim stream batch it completes) and the drains read it once it is
        durable; the return value is the ticket for ``Spool.wait_durable`` (0: nothing to
        wait for).
        """
        state = self._channels.get(channel)
        if state is None:
            metrics.PUBLISH_UNKNOWN_CHANNEL_MESSAGES.inc(len(messages))
            return 0
        if not messages:
            return 0
        if self.cluster is not None:
            metrics.PUBLISH_BATCH_MESSAGES.observe(len(messages))
            return self.cluster.append(channel, messages, stream)
        state.history.extend(messages)
        self._uncompacted.add(state.history)
        for tail in state.tails:
            tail.push(messages)
        metrics.PUBLISH_BATCH_MESSAGES.observe(len(messages))
        if self.spool is not None:
            return self.spool.append(channel, messages, stream)
        if state.drain_list:
            batch = Batch(messages)
            for drain in state.drain_list:
                drain.push_batch(batch)
        return 0

    def spool_status(self) -> dict[str, object] | None:
        """The spool's mode, size and last error (None without a spool)."""
        return None if self.spool is None else self.spool.status().to_json()

    def deliver(self, channel: str, messages: list[Message]) -> None:
        """Cluster mode, on the partition's owner: a batch read from the stream goes into
        the channel's history (its drains read the owner's channel log; tails are fed from
        the partition's tail subject)."""
        state = self._channels.get(channel)
        if state is None:
            metrics.PUBLISH_UNKNOWN_CHANNEL_MESSAGES.inc(len(messages))
            return
        state.history.extend(messages)
        self._uncompacted.add(state.history)

    @property
    def backlogged(self) -> bool:
        """Cluster mode: accepted batches waiting for JetStream passed their bound."""
        return self.cluster is not None and self.cluster.backlogged

    async def wait_capacity(self) -> None:
        if self.cluster is not None:
            await self.cluster.wait_capacity()

    def channel_has_drains(self, channel: str) -> bool:
        state = self._channels.get(channel)
        return state is not None and bool(state.drains)

    async def wait_durable(self) -> None:
        """Return once everything published so far is durable (at once without a spool)."""
        if self.cluster is not None:
            await self.cluster.wait_durable(self.cluster.latest_ticket())
        elif self.spool is not None:
            await self.spool.wait_durable(self.spool.latest_ticket())

    def post_notice(self, channel: str, messages: list[Message]) -> None:
        """Router notices (L14) into the channel's history and tails, not its drains."""
        state = self._channels.get(channel)
        if state is None or not messages:
            return
        state.history.extend(messages)
        self._uncompacted.add(state.history)
        for tail in state.tails:
            tail.push(messages)

    # -- reads ----------------------------------------------------------------------------

    def has_channel(self, channel: str) -> bool:
        return channel in self._channels

    def history(self, channel: str) -> list[Message]:
        """A copy of the channel's history, oldest first (empty for an unknown channel)."""
        state = self._channels.get(channel)
        return state.history.messages() if state is not None else []

    async def fetch_history(self, channel: str) -> list[Message]:
        """The channel's history, from its owner in the cluster mode."""
        if self.cluster is not None and channel in self._channels:
            messages, _ = await self.cluster.history(channel)
            return messages
        return self.history(channel)

    async def fetch_drain_statuses(self, channel: str) -> dict[int, dict[str, object]]:
        """``drain_statuses``, asked of the channel's owner in the cluster mode."""
        if self.cluster is not None and channel in self._channels:
            statuses = await self.cluster.drain_statuses(channel)
            if statuses is not None:
                return statuses
            return {
                drain_id: {**pending_drain_status(), "state": "unknown"}
                for drain_id in self._channels[channel].drains
            }
        return self.drain_statuses(channel)

    async def open_view(
        self,
        channel: str,
        *,
        ps: bytes | None = None,
        source: bytes | None = None,
        tail: bool = False,
    ) -> tuple[TailSession | None, list[Message]]:
        """A session's start: its live tail (when ``tail``) and the channel's history, each
        line in exactly one of them. Raises KeyError for an unknown channel.

        Single process: both in one synchronous step (no publish between them). Cluster:
        the tail subscribes first, then the history comes from the owner with the last
        stream sequence it holds, and live batches up to that one are dropped from the tail.
        """
        session = self.open_tail(channel, ps=ps, source=source) if tail else None
        if self.cluster is None:
            return session, self.history(channel)
        try:
            seamed: object = None
            if session is not None:
                seamed = await self.cluster.attach_tail(channel, session)
            messages, through = await self.cluster.history(channel)
        except BaseException:
            if session is not None:
                session.close()
            raise
        if seamed is not None:
            seamed.set_through(through)  # type: ignore[attr-defined]
        return session, messages

    def open_tail(
        self, channel: str, *, ps: bytes | None = None, source: bytes | None = None
    ) -> TailSession:
        """A live session on the channel; raises KeyError for an unknown channel."""
        state = self._channels.get(channel)
        if state is None:
            raise KeyError(f"no channel named {channel!r}")
        accepts = None if ps is None and source is None else message_filter(ps=ps, source=source)
        tails = state.tails

        cluster = self.cluster

        def forget(session: TailSession) -> None:
            if session in tails:
                tails.remove(session)
            if cluster is not None:
                cluster.detach_tail(channel, session)

        session = TailSession(capacity=self.tail_buffer_messages, accepts=accepts, on_close=forget)
        tails.append(session)
        return session

    def drain_statuses(self, channel: str) -> dict[int, dict[str, object]]:
        """Drain id -> DESIGN 3 ``status`` object, for every drain of the channel.

        With the spool each also tells its lag: ``lag_messages`` (not yet taken) and
        ``lag_seconds`` (age of the oldest of them).
        """
        state = self._channels.get(channel)
        if state is None:
            return {}
        statuses: dict[int, dict[str, object]] = {}
        source = self.spool if self.spool is not None else self.cluster
        lags = (
            {
                getattr(queue, "token", ""): (messages, seconds)
                for queue, messages, seconds in source.drain_lag()
            }
            if source is not None
            else {}
        )
        for drain_id, handle in state.drains.items():
            status = (
                handle.drain.status().to_json()
                if handle.drain is not None
                else pending_drain_status()
            )
            lag = lags.get(handle.config.token)
            if lag is not None:
                status["lag_messages"] = lag[0]
                status["lag_seconds"] = round(lag[1], 3)
            statuses[drain_id] = status
        return statuses

    def restore_history(self, channel: str) -> int:
        """Refill the channel's history from the spool (at start-up); returns the lines kept.

        The ring's bounds apply as to live traffic: at most ``history_lines`` lines and
        ``history_max_bytes`` bytes of text, the newest kept.
        """
        state = self._channels.get(channel)
        if state is None or self.spool is None:
            return 0
        before = len(state.history)
        messages = self.spool.recent_messages(channel, self.history_lines)
        if messages:
            state.history.extend(messages)
            state.history.take_evicted_for_bytes()  # a restart is not a refusal to count
            self._uncompacted.add(state.history)
        return len(state.history) - before

    def counts(self) -> RouterCounts:
        channels = self._channels.values()
        return RouterCounts(
            channels=len(self._channels),
            tokens=len(self._tokens),
            drains=sum(len(c.drains) for c in channels),
            sessions=sum(len(c.tails) for c in channels),
        )

    # -- config ---------------------------------------------------------------------------

    def apply_channel(self, config: ChannelConfig) -> None:
        """Make ``config`` current: re-index its tokens, start, stop or replace its drains."""
        state = self._channels.get(config.name)
        if state is None:
            state = _Channel(
                name=config.name,
                history=HistoryRing(self.history_lines, self.history_max_bytes),
            )
            self._channels[config.name] = state
        self._reindex_tokens(state, config.tokens)

        wanted = {drain.id: drain for drain in config.drains}
        carried: dict[int, int] = {}
        for drain_id, handle in list(state.drains.items()):
            if wanted.get(drain_id) != handle.config:
                # A drain whose URL changed keeps its token, and with the spool its cursor:
                # its backlog goes to the new URL. Without the spool what its buffer held is
                # counted as dropped and told in the new URL's first L10 (DESIGN 8).
                kept = wanted.get(drain_id)
                removed = kept is None or kept.token != handle.config.token
                held = self._stop_drain(state, drain_id, removed=removed)
                if not removed and held:
                    carried[drain_id] = held
        for drain_id, drain_config in wanted.items():
            if drain_id not in state.drains:
                self._add_drain(state, drain_config, carried_loss=carried.get(drain_id, 0))

    def _reindex_tokens(self, state: _Channel, wanted: dict[str, str]) -> None:
        """Make the channel's tokens ``wanted`` (name -> token), touching only the changed
        ones: adding one token to a channel of thousands costs one entry, not thousands."""
        current = state.token_names
        if current == wanted:
            return
        for name, token in current.items():
            if wanted.get(name) != token:
                state.tokens.pop(token, None)
                self._tokens.pop(token, None)
        for name, token in wanted.items():
            if current.get(name) != token:
                info = TokenInfo(channel=state.name, source=name.encode())
                state.tokens[token] = info
                self._tokens[token] = info
        state.token_names = dict(wanted)

    def remove_channel(self, name: str) -> None:
        """Forget the channel: its tokens, drains (cancelled), history and tail sessions."""
        state = self._channels.pop(name, None)
        if state is None:
            return
        for token in state.tokens:
            self._tokens.pop(token, None)
        for drain_id in list(state.drains):
            self._stop_drain(state, drain_id, removed=True)
        for tail in list(state.tails):
            tail.finish()
        state.tails.clear()
        state.history.clear()
        if self.spool is not None:
            self.spool.forget_channel(name)

    def _add_drain(self, state: _Channel, config: DrainConfig, *, carried_loss: int = 0) -> None:
        if self.cluster is not None and not self.cluster.owns(state.name):
            # Another router owns the channel's partition and runs its drains.
            state.drains[config.id] = _DrainHandle(config=config, drain=None)
            return
        drain = self._open_drain(state.name, config, carried_loss)
        handle = _DrainHandle(config=config, drain=drain)
        state.drains[config.id] = handle
        if drain is not None:
            state.drain_list.append(drain)
            if self._nursery is not None:
                self._start_drain(state.name, handle)

    def _stop_drain(self, state: _Channel, drain_id: int, *, removed: bool) -> int:
        """Cancel the drain; returns the messages it still held (counted as dropped)."""
        handle = state.drains.pop(drain_id)
        handle.cancel_scope.cancel()
        held = 0
        if handle.drain is not None:
            if handle.drain in state.drain_list:
                state.drain_list.remove(handle.drain)
            held = handle.drain.abandon()
            if held:
                log.info(
                    "drain %d of channel %r %s with %d messages undelivered (counted as dropped)",
                    drain_id,
                    state.name,
                    "removed" if removed else "replaced for a new URL",
                    held,
                )
        if removed and self.spool is not None:
            self.spool.forget_drain(handle.config.token)
        if removed and self.cluster is not None:
            self.cluster.forget_drain(handle.config.token)
        return held

    # -- cluster mode: the drains of owned partitions ---------------------------------------

    def _partition_channels(self, partition: int) -> list[_Channel]:
        cluster = self.cluster
        assert cluster is not None
        return [c for c in self._channels.values() if cluster.partition_of(c.name) == partition]

    def start_partition_drains(self, partition: int) -> None:
        """This router took the partition over: start its channels' drains."""
        for state in self._partition_channels(partition):
            for handle in state.drains.values():
                if handle.drain is None:
                    handle.drain = self._open_drain(state.name, handle.config)
                    if handle.drain is not None:
                        state.drain_list.append(handle.drain)
                        if self._nursery is not None:
                            self._start_drain(state.name, handle)

    def stop_partition_drains(self, partition: int) -> None:
        """The partition moved away (or its lease was lost): stop its drains, keeping their
        cursors (the next owner resumes from them) — nothing is counted as dropped."""
        if self.cluster is None:
            return
        for state in self._partition_channels(partition):
            for handle in state.drains.values():
                if handle.drain is not None:
                    handle.cancel_scope.cancel()
                    if handle.drain in state.drain_list:
                        state.drain_list.remove(handle.drain)
                    handle.drain = None
                    handle.cancel_scope = trio.CancelScope()
                    handle.started = False

    def _open_drain(self, channel: str, config: DrainConfig, carried_loss: int = 0) -> Drain | None:
        if self._drain_factory is None:
            return None
        from drains import DrainContext, DrainSettings

        def post_notice(messages: list[Message]) -> None:
            self.post_notice(channel, messages)

        spool = self.spool
        cluster = self.cluster

        def make_queue(
            encode: EncodeMessages, memo_key: str, make_notice: MakeNotice
        ) -> DrainQueue:
            if cluster is not None:
                return cluster.queue_for(channel, config.token, encode, memo_key, make_notice)
            assert spool is not None
            return spool.queue_for(channel, config.token, encode, memo_key, make_notice)

        durable = spool is not None or cluster is not None
        settings = self._drain_settings or DrainSettings()
        if durable:
            # A batch is retried until it is delivered or refused for good (DESIGN 8).
            settings = dataclasses.replace(settings, retry_window_s=math.inf)
        context = DrainContext(
            channel=channel,
            drain_id=config.id,
            token=config.token,
            url=config.url,
            settings=settings,
            post_notice=post_notice,
            make_queue=make_queue if durable else None,
            carried_loss=carried_loss,
        )
        try:
            return self._drain_factory(context)
        except Exception:
            # A drain that cannot be built stays "pending"; the channel and its other drains
            # keep working. The URL is not logged: it may carry credentials.
            log.exception("drain %d of channel %r could not be created", config.id, channel)
            return None

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the drain tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for state in self._channels.values():
                    for handle in state.drains.values():
                        if handle.drain is not None and not handle.started:
                            self._start_drain(state.name, handle)
                task_status.started()
                await self._compact_histories_periodically()
        finally:
            self._nursery = None

    async def _compact_histories_periodically(self) -> None:
        while True:
            await trio.sleep(HISTORY_COMPACT_INTERVAL_S)
            await self.compact_histories()

    async def compact_histories(self) -> None:
        """Compact the histories written since the last call (see ``logplex.fanout.history``).

        Yields to other tasks between channels, so a sweep after a burst over many
        channels never holds the event loop for long.
        """
        rings, self._uncompacted = self._uncompacted, set()
        evicted = 0
        for count, ring in enumerate(rings, 1):
            ring.compact()
            evicted += ring.take_evicted_for_bytes()
            if count % HISTORY_COMPACT_CHANNELS_PER_STEP == 0:
                await trio.lowlevel.checkpoint()
        if evicted:
            HISTORY_BYTES_EVICTIONS.inc(evicted)

    def _start_drain(self, channel: str, handle: _DrainHandle) -> None:
        assert self._nursery is not None
        handle.started = True
        self._nursery.start_soon(self._run_drain, channel, handle)

    async def _run_drain(self, channel: str, handle: _DrainHandle) -> None:
        drain = handle.drain
        assert drain is not None
        crashes = 0
        with handle.cancel_scope:
            while True:
                try:
                    await drain.run()
                    return
                except Exception:
                    # A drain bug must not take the router (and every other drain) down.
                    crashes += 1
                    delay_s = drain_restart_delay_s(crashes)
                    log.exception(
                        "drain %d of channel %r failed; restarting it in %.0f s",
                        handle.config.id,
                        channel,
                        delay_s,
                    )
                    await trio.sleep(delay_s)

    async def flush_drains(self, grace_s: float) -> None:
        """Wait until every drain has delivered what it holds, for at most ``grace_s``."""
        drains = [d for c in self._channels.values() for d in c.drain_list]
        if not drains:
            return
        with trio.move_on_after(grace_s) as scope:
            async with trio.open_nursery() as nursery:
                for drain in drains:
                    nursery.start_soon(drain.wait_flushed)
        if scope.cancelled_caught:
            unflushed = sum(_buffered(d) for d in drains)
            if self.spool is not None or self.cluster is not None:
                log.info(
                    "shutdown grace of %.1f s ran out with %d messages not yet delivered; "
                    "they stay in the spool and drains resume from there at the next start",
                    grace_s,
                    unflushed,
                )
                return
            log.warning(
                "shutdown grace of %.1f s ran out with %d messages still buffered in drains",
                grace_s,
                unflushed,
            )


def _buffered(drain: Drain) -> int:
    value = drain.status().to_json().get("buffered", 0)
    return value if isinstance(value, int) else 0
