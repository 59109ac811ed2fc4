"""What every drain kind shares: its queue, counters, status and flush wait.

A drain kind (``http``, ``syslog``, ``udp``) subclasses ``DrainCore`` and writes only its
``run`` loop: take frames from ``self.queue``, send them, and report each outcome through
``record_delivered`` / ``record_failure`` / ``finish``. Status follows
``drains._interface.drain_state``; metrics follow ``drains._metrics``.

A success clears ``last_error``. The drain's state changes are logged on the ``drains``
logger once per transition, never per attempt: a warning when it becomes degraded or down
(a TLS failure included) with the reason, and a line when a delivery succeeds again; the
URL is always the redacted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from drains._buffer import DrainBuffer, DrainQueue, Taken
from drains._interface import DrainContext, DrainState, DrainStatus, drain_state
from drains._metrics import LIVE_DRAINS, KindMetrics
from drains._notices import l10_message
from drains._url import DrainURL, parse_drain_url
from logplex.codecs.records import Batch, Message

MAX_ERROR_CHARS = 500

log = logging.getLogger("drains")


class DrainCore:
    """Queue, accounting and status of one drain; subclasses add the delivery loop."""

    def __init__(
        self,
        ctx: DrainContext,
        url: DrainURL | None,
        *,
        encode: Callable[[list[Message]], list[bytes]],
        memo_key: str,
        queue: DrainQueue | None = None,
    ) -> None:
        self.ctx = ctx
        self.url = url if url is not None else parse_drain_url(ctx.url)
        self.kind = self.url.kind
        self.metrics = KindMetrics(self.kind)
        if queue is None and ctx.make_queue is not None:
            queue = ctx.make_queue(encode, memo_key, l10_message)
        self.queue: DrainQueue = queue or DrainBuffer(
            max_messages=ctx.settings.buffer_messages,
            max_bytes=ctx.settings.buffer_bytes,
            encode=encode,
            memo_key=memo_key,
            make_notice=l10_message,
        )
        self.in_flight_messages = 0
        self.delivered = self.queue.restored_delivered
        if ctx.carried_loss:
            # Already counted in the metrics by the drain this one replaces.
            self.queue.note_lost(ctx.carried_loss, int(time.time() * 1_000_000))
        self._dropped_reported = self.queue.dropped_total  # counted by an earlier process
        self._last_attempt_ok: bool | None = None
        self._last_success_s: float | None = None
        self._last_error: str | None = None
        self._logged_failing: DrainState | None = None  # the failing state last logged
        self._progress = trio.Event()
        LIVE_DRAINS.add(self)

    # -- the Drain interface ------------------------------------------------------------

    def push_batch(self, batch: Batch) -> None:
        self.queue.push_batch(batch)
        if self.queue.dropped_total != self._dropped_reported:
            self._report_dropped()

    async def wait_flushed(self) -> None:
        """Return once nothing is queued, in flight, or owed as an L10 that will go alone."""
        while self.queue.queued_messages or self.in_flight_messages or self.queue.notice_due:
            self._progress = trio.Event()
            await self._progress.wait()

    def status(self) -> DrainStatus:
        return DrainStatus(
            state=self.current_state(time.time()),
            delivered=self.delivered,
            dropped=self.queue.dropped_total,
            buffered=self.buffered_messages(),
            last_error=self._last_error,
            last_success_at=self._last_success_s,
        )

    def abandon(self) -> int:
        """Count what this drain still holds as dropped and return it (see ``Drain``).

        With the spool nothing is held here: the queue is the spool's, and the cursor stays
        with the drain's token (``SpoolQueue`` has no ``abandon``). In flight batches settle
        by their own outcome when their task is cancelled.
        """
        abandon = getattr(self.queue, "abandon", None)
        if abandon is None:
            return 0
        held = int(abandon()) + self.held_for_resend()
        if self.queue.dropped_total != self._dropped_reported:
            self._report_dropped()
        resent = self.held_for_resend()
        if resent:
            self.metrics.dropped.inc(resent)
        return held

    def held_for_resend(self) -> int:
        """Messages a drain kind keeps outside the queue to send again (syslog)."""
        return 0

    # -- observation for metrics ------------------------------------------------------

    def buffered_messages(self) -> int:
        return self.queue.queued_messages + self.in_flight_messages

    def current_state(self, now_s: float) -> DrainState:
        return drain_state(
            now_s=now_s,
            last_attempt_ok=self._last_attempt_ok,
            last_success_s=self._last_success_s,
        )

    # -- outcomes, reported by the delivery loop ---------------------------------------

    def begin(self, taken: Taken) -> None:
        """``taken`` is in flight (a drain may have more than one batch out at a time)."""
        self.in_flight_messages += taken.message_count

    def record_delivered(
        self, message_count: int, byte_count: int, *, all_attempts_ok: bool = True
    ) -> None:
        """Count a delivery; it clears ``last_error`` unless part of the send failed."""
        self.delivered += message_count
        self.queue.note_delivered(message_count)
        self.metrics.delivered.inc(message_count)
        self.metrics.bytes_delivered.inc(byte_count)
        self._last_attempt_ok = True
        self._last_success_s = time.time()
        if all_attempts_ok:
            self._last_error = None
        if self._logged_failing is not None:
            self._logged_failing = None
            log.info("%s is up again", self._log_name())

    def record_connected(self) -> None:
        """A connection opened: the drain is reachable again."""
        self._last_attempt_ok = True

    def record_failure(self, error: str) -> None:
        """Remember a failed attempt; ``error`` must already be free of credentials."""
        self._last_attempt_ok = False
        self._last_error = error[:MAX_ERROR_CHARS]
        state = self.current_state(time.time())
        if state != self._logged_failing:  # degraded or down, logged once each
            self._logged_failing = state
            log.warning("%s is %s: %s", self._log_name(), state, self._last_error)

    def _log_name(self) -> str:
        return f"drain {self.ctx.drain_id} of {self.ctx.channel} ({self.url.redacted()})"

    def record_retry(self, taken: Taken) -> None:
        self.metrics.retried.inc(taken.message_count)
        self.metrics.bytes_retried.inc(taken.byte_count)

    def finish(self, taken: Taken, *, delivered: bool, all_attempts_ok: bool = True) -> None:
        """Close out a taken batch (a batch given up on is counted into the next L10)."""
        if delivered:
            self.record_delivered(
                taken.message_count, taken.byte_count, all_attempts_ok=all_attempts_ok
            )
        else:
            self.metrics.bytes_dropped.inc(taken.byte_count)
        self.queue.settle(taken, delivered=delivered)
        self.in_flight_messages -= taken.message_count
        if self.queue.dropped_total != self._dropped_reported:
            self._report_dropped()
        self.signal_progress()

    def signal_progress(self) -> None:
        self._progress.set()

    def _report_dropped(self) -> None:
        total = self.queue.dropped_total
        self.metrics.dropped.inc(total - self._dropped_reported)
        self._dropped_reported = total
