"""The syslog TCP listener: RFC 6587 octet-counted RFC 5424, token in APP-NAME (DESIGN 2, 3).

Logplex's raw TCP input: each frame is ``LEN <PRI>1 TS HOST t.TOKEN PS MSGID SD MSG``. The
token in APP-NAME picks the channel and source; PRI, TIMESTAMP (the receive time when it is
NIL or unreadable), PROCID (the ps) and MSG are kept, HOSTNAME, MSGID and STRUCTURED-DATA are
dropped, and a MSG holding LF becomes one message per line.

Framing is ``OctetFrameDecoder`` with the ``resync`` policy: garbage, a frame over
``max_frame_bytes`` or a bad length is skipped up to the next plausible frame start and
counted (``logplex_ingest_errors_total{protocol="syslog",reason="malformed"}``); a frame
that does not parse, or names an unknown token, is counted and skipped too. Nothing is
answered (syslog has no acknowledgement). Frames of one read are grouped by channel in
arrival order and published as lists (``frames_to_batches``, a plain function). A
connection that sends nothing for ``idle_timeout_s`` is closed; each connection is its own
task, so one client can never stall another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Final

import trio

from logplex import metrics
from logplex.codecs.errors import EncodeError, Logplex1Error, ProtocolError
from logplex.codecs.lines import split_embedded_lines
from logplex.codecs.logplex1 import parse_input_frame
from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import PROCID_MAX, check_header_field, parse_lenient
from logplex.connections import AcceptLoop, close_within
from logplex.model import TokenInfo
from logplex.router import Router

log = logging.getLogger(__name__)

PROTOCOL: Final = "syslog"
RECEIVE_BYTES: Final = 256 * 1024
CLOSE_TIMEOUT_S: Final = 1.0  # a TLS close_notify to a peer that does not read
NIL_PS: Final = b"-"

_MSG = itemgetter(4)
_MESSAGES = metrics.INGEST_MESSAGES.labels(protocol=PROTOCOL)
_BYTES = metrics.INGEST_BYTES.labels(protocol=PROTOCOL)
_MALFORMED = metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="malformed")
_UNKNOWN_TOKEN = metrics.INGEST_ERRORS.labels(protocol=PROTOCOL, reason="unknown_token")
_CONNECTIONS = metrics.INGEST_CONNECTIONS.labels(protocol=PROTOCOL)


@dataclass(frozen=True, slots=True)
class SyslogListenerSettings:
    # DESIGN 5.6 caps a frame at 10240 bytes; senders that wrap long lines stay under it.
    max_frame_bytes: int = 10240
    idle_timeout_s: float = 300.0
    max_connections: int = 10_000


@dataclass(slots=True)
class ReadOutcome:
    """What one read's frames became: batches per channel in order, and what was skipped."""

    batches: list[tuple[str, list[Message]]]
    unknown_tokens: int = 0
    malformed: int = 0


def _parse_frame_leniently(
    frame: bytes, now_us: int
) -> tuple[int, int, bytes | None, bytes, bytes]:
    """(pri, ts_us, token, ps, msg) by the lenient RFC 5424 parser; raises ProtocolError.

    A NIL or unreadable TIMESTAMP becomes ``now_us``, the receive time.
    """
    parsed = parse_lenient(frame)
    ts_us = parsed.timestamp_us if parsed.timestamp_us is not None else now_us
    ps = parsed.procid or NIL_PS
    try:  # drains put the ps in PROCID: it must stay a valid one
        check_header_field("PROCID", ps, PROCID_MAX)
    except EncodeError:
        ps = NIL_PS
    return parsed.pri, ts_us, parsed.app_name, ps, parsed.msg


def frames_to_batches(
    frames: list[bytes],
    lookup_token: Callable[[str], TokenInfo | None],
    now_us: int,
) -> ReadOutcome:
    """Parse frames and group consecutive ones of the same channel into one batch each."""
    outcome = ReadOutcome([])
    batches = outcome.batches
    channel = ""
    current: list[Message] = []
    append = current.append
    last_token: bytes | None = None
    source: bytes | None = None  # None while the current token is unknown
    has_lf = False
    for frame in frames:
        # Logplex's input layout is the fast path; what it refuses gets a second chance with
        # the lenient RFC 5424 parser (NIL timestamp, odd spacing), so a sender's quirks cost
        # time only on the frames that have them.
        try:
            pri, ts_us, _, token, ps, _, msg = parse_input_frame(frame)
        except Logplex1Error:
            try:
                pri, ts_us, token, ps, msg = _parse_frame_leniently(frame, now_us)
            except ProtocolError:
                outcome.malformed += 1
                continue
        if token != last_token:  # consecutive frames nearly always carry the same token
            last_token = token
            info = lookup_token(token.decode("ascii", "replace")) if token else None
            source = info.source if info is not None else None
            if info is not None and info.channel != channel:
                if current:
                    batches.append((channel, current))
                channel = info.channel
                current = []
                append = current.append
        if source is None:
            outcome.unknown_tokens += 1
            continue
        append((ts_us, pri, source, ps or NIL_PS, msg))
        if 0x0A in msg:  # LF; the int test is ~10x cheaper than a bytes one in CPython 3.11
            has_lf = True
    if current:
        batches.append((channel, current))
    if has_lf:
        outcome.batches = [(name, split_embedded_lines(messages)) for name, messages in batches]
    return outcome


class SyslogListener:
    """Serves octet-counted syslog connections into a ``Router``."""

    def __init__(self, router: Router, settings: SyslogListenerSettings | None = None) -> None:
        self.router = router
        self.settings = settings or SyslogListenerSettings()
        self._accept_loop = AcceptLoop(PROTOCOL, self.settings.max_connections)

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
        await self._accept_loop.serve(
            listeners,
            self.handle_connection,
            refuse=self.refuse_overloaded,
            task_status=task_status,
        )

    async def refuse_overloaded(self, stream: trio.abc.Stream) -> None:
        """Past ``max_connections`` a new connection is closed at once (syslog has no way
        to say why); the sender reconnects later."""
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
        resyncs = 0
        while True:
            with trio.move_on_after(self.settings.idle_timeout_s):
                data = await stream.receive_some(RECEIVE_BYTES)
                if not data:
                    return "eof"
                decoder.feed(bytes(data))
                frames = decoder.frames()
                if decoder.resyncs != resyncs:
                    _MALFORMED.inc(decoder.resyncs - resyncs)
                    resyncs = decoder.resyncs
                if not frames:
                    continue
                outcome = frames_to_batches(frames, lookup_token, time.time_ns() // 1000)
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
                continue
            # Only a timeout gets here: every path inside the scope returns or continues.
            log.info("syslog connection idle for %.0f s: closed", self.settings.idle_timeout_s)
            return "idle"
