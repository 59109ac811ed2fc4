"""Log sessions: short-lived capability URLs that stream a channel's history and tail.

DESIGN section 3 (``POST /v3/sessions``, ``GET /sessions/{uuid}``). A session records what
was asked (channel, filters, how many history lines, whether to tail); the URL's random uuid4
is the only credential needed to fetch it. A session may be fetched again and again; it
expires once nobody has fetched it for ``ttl_s`` (360 s, as Logplex). The registry is bounded:
when full, expired sessions go first, then the least recently used idle ones; while every
slot holds a session being streamed, creating another is refused.

Everything here is synchronous and takes the time as an argument, so the expiry and eviction
rules are table-tested without a clock. ``parse_session_request`` turns the JSON body of
``POST /v3/sessions`` into a ``SessionSpec`` or a ``SessionRequestError`` saying what is wrong.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from logplex.api.numbers import parse_whole_number

SESSION_TTL_S = 360.0
MAX_SESSIONS = 10_000
DEFAULT_NUM = 100
MAX_FILTER_CHARS = 128


class SessionRequestError(ValueError):
    """The body of ``POST /v3/sessions`` is not acceptable; the message says why."""


class RegistryFull(Exception):
    """Every session slot is held by a session being streamed right now."""


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a session streams: ``num`` history lines of ``channel`` after the filters."""

    channel: str
    num: int = DEFAULT_NUM
    ps: bytes | None = None
    source: bytes | None = None
    tail: bool = False


def _parse_num(value: object) -> int:
    if isinstance(value, bool):
        raise SessionRequestError("num must be a whole number of lines, not a boolean")
    if isinstance(value, int):
        num = value
    elif isinstance(value, str) and (parsed := parse_whole_number(value.strip())) is not None:
        num = parsed
    else:
        shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "…"
        raise SessionRequestError(
            f"num must be a non-negative whole number (a number or a string), got {shown!r}"
        )
    if num < 0:
        raise SessionRequestError(f"num must not be negative, got {num}")
    return num


def _parse_filter(body: dict[str, object], key: str) -> bytes | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_FILTER_CHARS:
        raise SessionRequestError(f"{key} must be a string of at most {MAX_FILTER_CHARS} chars")
    try:
        return value.encode("ascii")
    except UnicodeEncodeError:
        raise SessionRequestError(f"{key} must be ASCII, as syslog header fields are") from None


def parse_session_request(body: object) -> SessionSpec:
    """Validate a ``POST /v3/sessions`` body (already JSON-decoded).

    ``channel_id`` is required (a string; a number is accepted and turned into one); ``num``
    is a number or a numeric string, default 100; ``ps`` and ``source`` are optional filters;
    a present ``tail`` that is not ``false`` asks for a live tail (DESIGN section 3).
    """
    if not isinstance(body, dict):
        raise SessionRequestError('the body must be a JSON object like {"channel_id": "app"}')
    channel = body.get("channel_id")
    if isinstance(channel, int) and not isinstance(channel, bool):
        channel = str(channel)
    if not isinstance(channel, str) or not channel:
        raise SessionRequestError("channel_id is required and must be a channel name (a string)")
    num = _parse_num(body["num"]) if "num" in body else DEFAULT_NUM
    return SessionSpec(
        channel=channel,
        num=num,
        ps=_parse_filter(body, "ps"),
        source=_parse_filter(body, "source"),
        tail="tail" in body and body["tail"] is not False,
    )


@dataclass(slots=True)
class _Entry:
    spec: SessionSpec
    last_used_s: float
    streaming: int = 0


class SessionRegistry:
    """Session id -> ``SessionSpec``, bounded, with idle expiry. Not thread-safe (trio only)."""

    def __init__(self, *, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        # Least recently used first.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _expired(self, entry: _Entry, now_s: float) -> bool:
        return entry.streaming == 0 and now_s - entry.last_used_s >= self.ttl_s

    def expire(self, now_s: float) -> int:
        """Forget every idle session unused for ``ttl_s``; return how many went."""
        gone = [sid for sid, entry in self._entries.items() if self._expired(entry, now_s)]
        for sid in gone:
            del self._entries[sid]
        return len(gone)

    def create(self, spec: SessionSpec, now_s: float) -> str:
        """Register ``spec``; return its new random id (a uuid4 string)."""
        if len(self._entries) >= self.max_sessions:
            self.expire(now_s)
        if len(self._entries) >= self.max_sessions:
            idle = next((sid for sid, e in self._entries.items() if e.streaming == 0), None)
            if idle is None:
                raise RegistryFull(
                    f"{self.max_sessions} sessions are streaming; try again when one ends"
                )
            del self._entries[idle]
        session_id = str(uuid.uuid4())
        self._entries[session_id] = _Entry(spec, now_s)
        return session_id

    def begin_fetch(self, session_id: str, now_s: float) -> SessionSpec | None:
        """Start streaming ``session_id``: its spec, or None if unknown or expired."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if self._expired(entry, now_s):
            del self._entries[session_id]
            return None
        entry.streaming += 1
        entry.last_used_s = now_s
        self._entries.move_to_end(session_id)
        return entry.spec

    def end_fetch(self, session_id: str, now_s: float) -> None:
        """A fetch ended; the idle clock restarts now."""
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.streaming = max(0, entry.streaming - 1)
            entry.last_used_s = now_s
            self._entries.move_to_end(session_id)

    def forget_channel(self, channel: str) -> None:
        """Drop every idle session of a deleted channel (streaming ones end on their own)."""
        for sid in [s for s, e in self._entries.items() if e.spec.channel == channel]:
            if self._entries[sid].streaming == 0:
                del self._entries[sid]

    def streaming_count(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.streaming)
