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
written since the last time (``HistoryRing.compact``), so the hot path only appends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from logplex import metrics
from logplex.codecs.records import Batch, Message
from logplex.config.records import ChannelConfig, DrainConfig, TokenInfo
from logplex.fanout.history import HistoryRing
from logplex.fanout.tails import DEFAULT_TAIL_BUFFER_MESSAGES, TailSession, message_filter

if TYPE_CHECKING:
    # What the router needs of a drain is the drains' own protocol (docs/architecture.md,
    # "Drains"): push_batch, run, wait_flushed and status.
    from drains import Drain, DrainContext, DrainSettings

__all__ = ["DrainFactory", "Router", "TailSession", "message_filter"]

log = logging.getLogger(__name__)

DRAIN_RESTART_DELAYS_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0)
HISTORY_COMPACT_INTERVAL_S: Final = 1.0
HISTORY_COMPACT_CHANNELS_PER_STEP: Final = 20


DrainFactory = Callable[["DrainContext"], "Drain"]


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
    tokens: dict[str, TokenInfo] = field(default_factory=dict)
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
        drain_factory: DrainFactory | None = None,
        drain_settings: DrainSettings | None = None,
        tail_buffer_messages: int = DEFAULT_TAIL_BUFFER_MESSAGES,
    ) -> None:
        if history_lines < 0:
            raise ValueError(f"--history must be 0 or more lines, not {history_lines}")
        self.history_lines = history_lines
        self.tail_buffer_messages = tail_buffer_messages
        self._drain_factory = drain_factory
        self._drain_settings = drain_settings
        self._channels: dict[str, _Channel] = {}
        self._tokens: dict[str, TokenInfo] = {}
        self._nursery: trio.Nursery | None = None
        self._uncompacted: set[HistoryRing] = set()  # histories written since the last sweep

    # -- hot path -------------------------------------------------------------------------

    def lookup_token(self, token: str) -> TokenInfo | None:
        """The channel and source a ``t.…`` token writes into, or None."""
        return self._tokens.get(token)

    def publish(self, channel: str, messages: list[Message]) -> None:
        """Hand one batch to the channel's history, tails and drains; never awaits.

        The list is kept by reference (history, drains, tails): the caller hands it over
        and must not change it afterwards.
        """
        state = self._channels.get(channel)
        if state is None:
            metrics.PUBLISH_UNKNOWN_CHANNEL_MESSAGES.inc(len(messages))
            return
        if not messages:
            return
        state.history.extend(messages)
        self._uncompacted.add(state.history)
        for tail in state.tails:
            tail.push(messages)
        if state.drain_list:
            batch = Batch(messages)
            for drain in state.drain_list:
                drain.push_batch(batch)
        metrics.PUBLISH_BATCH_MESSAGES.observe(len(messages))

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

    def open_tail(
        self, channel: str, *, ps: bytes | None = None, source: bytes | None = None
    ) -> TailSession:
        """A live session on the channel; raises KeyError for an unknown channel."""
        state = self._channels.get(channel)
        if state is None:
            raise KeyError(f"no channel named {channel!r}")
        accepts = None if ps is None and source is None else message_filter(ps=ps, source=source)
        tails = state.tails

        def forget(session: TailSession) -> None:
            if session in tails:
                tails.remove(session)

        session = TailSession(capacity=self.tail_buffer_messages, accepts=accepts, on_close=forget)
        tails.append(session)
        return session

    def drain_statuses(self, channel: str) -> dict[int, dict[str, object]]:
        """Drain id -> DESIGN 3 ``status`` object, for every drain of the channel."""
        state = self._channels.get(channel)
        if state is None:
            return {}
        return {
            drain_id: handle.drain.status().to_json()
            if handle.drain is not None
            else pending_drain_status()
            for drain_id, handle in state.drains.items()
        }

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
            state = _Channel(name=config.name, history=HistoryRing(self.history_lines))
            self._channels[config.name] = state
        for token in state.tokens:
            self._tokens.pop(token, None)
        state.tokens = {
            token: TokenInfo(channel=config.name, source=name.encode())
            for name, token in config.tokens.items()
        }
        self._tokens.update(state.tokens)

        wanted = {drain.id: drain for drain in config.drains}
        for drain_id, handle in list(state.drains.items()):
            if wanted.get(drain_id) != handle.config:
                self._stop_drain(state, drain_id)
        for drain_id, drain_config in wanted.items():
            if drain_id not in state.drains:
                self._add_drain(state, drain_config)

    def remove_channel(self, name: str) -> None:
        """Forget the channel: its tokens, drains (cancelled), history and tail sessions."""
        state = self._channels.pop(name, None)
        if state is None:
            return
        for token in state.tokens:
            self._tokens.pop(token, None)
        for drain_id in list(state.drains):
            self._stop_drain(state, drain_id)
        for tail in list(state.tails):
            tail.finish()
        state.tails.clear()
        state.history.clear()

    def _add_drain(self, state: _Channel, config: DrainConfig) -> None:
        drain = self._open_drain(state.name, config)
        handle = _DrainHandle(config=config, drain=drain)
        state.drains[config.id] = handle
        if drain is not None:
            state.drain_list.append(drain)
            if self._nursery is not None:
                self._start_drain(state.name, handle)

    def _stop_drain(self, state: _Channel, drain_id: int) -> None:
        handle = state.drains.pop(drain_id)
        handle.cancel_scope.cancel()
        if handle.drain is not None and handle.drain in state.drain_list:
            state.drain_list.remove(handle.drain)

    def _open_drain(self, channel: str, config: DrainConfig) -> Drain | None:
        if self._drain_factory is None:
            return None
        from drains import DrainContext, DrainSettings

        def post_notice(messages: list[Message]) -> None:
            self.post_notice(channel, messages)

        context = DrainContext(
            channel=channel,
            drain_id=config.id,
            token=config.token,
            url=config.url,
            settings=self._drain_settings or DrainSettings(),
            post_notice=post_notice,
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
        for count, ring in enumerate(rings, 1):
            ring.compact()
            if count % HISTORY_COMPACT_CHANNELS_PER_STEP == 0:
                await trio.lowlevel.checkpoint()

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
            log.warning(
                "shutdown grace of %.1f s ran out with %d messages still buffered in drains",
                grace_s,
                unflushed,
            )


def _buffered(drain: Drain) -> int:
    value = drain.status().to_json().get("buffered", 0)
    return value if isinstance(value, int) else 0
