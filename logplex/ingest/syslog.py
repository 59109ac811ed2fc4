"""The syslog TCP listener: RFC 6587 octet-counted RFC 5424, token in APP-NAME (DESIGN 2, 3).

The reading itself is pure and lives in ``logplex.codecs.syslog_reader``: frames become
batches per channel run, with counts of what was skipped. This module owns the sockets, the
clock and the metrics around it.

Framing is ``OctetFrameDecoder`` with the ``resync`` policy: garbage, a frame over
``max_frame_bytes`` or a bad length is skipped up to the next plausible frame start and
counted (``logplex_ingest_errors_total{protocol="syslog",reason="malformed"}``); a frame
that does not parse, or names an unknown token, is counted and skipped too. Nothing is
answered (syslog has no acknowledgement). Each read's batches are published as lists, one
``router.publish`` per channel run. Each connection is its own task, so one client can never
stall another.

Deadlines (``logplex_deadline_closes_total{listener="syslog"}``): a connection that
completes no frame for ``idle_timeout_s`` is closed (``idle``: counted from the last
complete frame, or from the accept, so bytes that never make a frame do not keep it open),
and a frame begun must complete within ``frame_timeout_s`` (``frame``: a 1 byte/s trickler,
or garbage the decoder keeps skipping, is closed then whatever the idle timeout). A frame
counts as complete when framing cuts it, whether its content parses or not.
Connection caps: ``max_connections`` and ``max_connections_per_ip`` (``AcceptLoop``); past
either a new connection is closed at once.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

import trio

from logplex import metrics
from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.syslog_reader import C_SCANNER, read_decoder
from logplex.fanout.router import Router
from logplex.ingest.accept import AcceptLoop, Refusal, close_within

log = logging.getLogger(__name__)

PROTOCOL: Final = "syslog"
RECEIVE_BYTES: Final = 256 * 1024
CLOSE_TIMEOUT_S: Final = 1.0  # a TLS close_notify to a peer that does not read

_MSG = itemgetter(4)
_MESSAGES = metrics.INGEST_MESSAGES.labels(protocol=PROTOCOL)
_BYTES = metrics.INGEST_BYTES.labels(protocol=PROTOCOL)
_MALFORMED = metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="malformed")
_UNKNOWN_TOKEN = metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="unknown_token")
_CONNECTIONS = metrics.INGEST_CONNECTIONS.labels(protocol=PROTOCOL)
_IDLE_DEADLINE = metrics.DEADLINE_CLOSES.labels(listener=PROTOCOL, deadline="idle")
_FRAME_DEADLINE = metrics.DEADLINE_CLOSES.labels(listener=PROTOCOL, deadline="frame")


@dataclass(frozen=True, slots=True)
class SyslogListenerSettings:
    # DESIGN 5.6 caps a frame at 10240 bytes; senders that wrap long lines stay under it.
    max_frame_bytes: int = 10240
    idle_timeout_s: float = 300.0
    frame_timeout_s: float = 30.0
    max_connections: int = 10_000
    max_connections_per_ip: int = 1000


class SyslogListener:
    """Serves octet-counted syslog connections into a ``Router``."""

    def __init__(self, router: Router, settings: SyslogListenerSettings | None = None) -> None:
        self.router = router
        self.settings = settings or SyslogListenerSettings()
        self._accept_loop = AcceptLoop(
            PROTOCOL, self.settings.max_connections, self.settings.max_connections_per_ip
        )

    @property
    def open_connections(self) -> int:
        return self._accept_loop.open_connections

    async def serve(
        self,
        listeners: list[trio.SocketListener] | list[trio.abc.Listener[trio.abc.Stream]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections on ``listeners`` until cancelled."""
        if C_SCANNER is None:
            log.warning(
                "logplex.codecs._syslogscan is not built (no C compiler at install time): syslog "
                "ingest uses the pure-Python reader, about a third of the speed; install a "
                "C compiler and reinstall logplex for full speed"
            )
        await self._accept_loop.serve(
            listeners,
            self.handle_connection,
            refuse=self.refuse_overloaded,
            task_status=task_status,
        )

    async def refuse_overloaded(self, stream: trio.abc.Stream, refusal: Refusal) -> None:
        """Past a connection cap a new connection is closed at once (syslog has no way to
        say why; the log and ``logplex_limit_refusals_total`` do); the sender reconnects
        later."""
        metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="overloaded").inc()
        await close_within(stream, CLOSE_TIMEOUT_S)

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Read frames until EOF, idle timeout or error; never raises."""
        _CONNECTIONS.inc()
        reason = "eof"
        try:
            reason = await self._read_frames(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            reason = "error"
        except Exception:
            reason = "error"
            log.exception("syslog connection failed unexpectedly; closing it")
        finally:
            await close_within(stream, CLOSE_TIMEOUT_S)
            _CONNECTIONS.dec()
            metrics.INGEST_CONNECTIONS_CLOSED.labels(protocol=PROTOCOL, reason=reason).inc()

    async def _read_frames(self, stream: trio.abc.Stream) -> str:
        decoder = OctetFrameDecoder(self.settings.max_frame_bytes, policy="resync")
        router = self.router
        lookup_token = router.lookup_token
        idle_timeout_s = self.settings.idle_timeout_s
        frame_timeout_s = self.settings.frame_timeout_s
        resyncs = 0
        now_s = trio.current_time()
        idle_deadline_s = now_s + idle_timeout_s
        frame_deadline_s = math.inf  # no frame begun
        while True:
            if router.backlogged:
                # Cluster mode with JetStream slow or away: stop reading (TCP back-pressure)
                # rather than hold unbounded batches; the deadlines start again after.
                await router.wait_capacity()
                idle_deadline_s = trio.current_time() + idle_timeout_s
            with trio.move_on_at(min(idle_deadline_s, frame_deadline_s)):
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return "eof"
                outcome = read_decoder(decoder, lookup_token, time.time_ns() // 1000, bytes(data))
                if decoder.resyncs != resyncs:
                    _MALFORMED.inc(decoder.resyncs - resyncs)
                    resyncs = decoder.resyncs
                published = 0
                message_bytes = 0
                for channel, messages in outcome.batches:
                    router.publish(channel, messages)
                    published += len(messages)
                    message_bytes += sum(map(len, map(_MSG, messages)))
                _MESSAGES.inc(published)
                _BYTES.inc(message_bytes)
                if outcome.malformed:
                    _MALFORMED.inc(outcome.malformed)
                if outcome.unknown_tokens:
                    _UNKNOWN_TOKEN.inc(outcome.unknown_tokens)
                now_s = trio.current_time()
                idle_deadline_s, frame_deadline_s = next_deadlines(
                    now_s,
                    frames_completed=bool(
                        outcome.batches or outcome.malformed or outcome.unknown_tokens
                    ),
                    partial_frame=not decoder.is_empty,
                    idle_deadline_s=idle_deadline_s,
                    frame_deadline_s=frame_deadline_s,
                    idle_timeout_s=idle_timeout_s,
                    frame_timeout_s=frame_timeout_s,
                )
                continue
            # Only a deadline gets here: every path inside the scope returns or continues.
            if frame_deadline_s <= idle_deadline_s:
                log.info(
                    "syslog connection closed: a frame begun was not complete within %.0f s",
                    frame_timeout_s,
                )
                _FRAME_DEADLINE.inc()
                return "frame_timeout"
            log.info("syslog connection completed no frame for %.0f s: closed", idle_timeout_s)
            _IDLE_DEADLINE.inc()
            return "idle"


def next_deadlines(
    now_s: float,
    *,
    frames_completed: bool,
    partial_frame: bool,
    idle_deadline_s: float,
    frame_deadline_s: float,
    idle_timeout_s: float,
    frame_timeout_s: float,
) -> tuple[float, float]:
    """The (idle, frame) deadlines after a read at ``now_s``.

    A read that completes a frame moves the idle deadline on; only such a read does. The
    frame deadline runs while the decoder holds the start of a frame (or garbage it is
    skipping): from the read that began it, or, when a read completes frames and leaves the
    start of the next one, from that read. With nothing held there is no frame deadline.
    """
    if frames_completed:
        idle_deadline_s = now_s + idle_timeout_s
    if not partial_frame:
        return idle_deadline_s, math.inf
    if frames_completed or frame_deadline_s == math.inf:
        return idle_deadline_s, now_s + frame_timeout_s
    return idle_deadline_s, frame_deadline_s
