"""Log sessions: short-lived capability URLs that stream a channel's history and tail.

DESIGN section 3 (``POST /v3/sessions``, ``GET /sessions/{uuid}``). A session records what
was asked (channel, filters, how many history lines, whether to tail); the URL's random uuid4
is the only credential needed to fetch it. A session may be fetched again and again; it
expires once nobody has fetched it for ``ttl_s`` (360 s, as Logplex).

Bounds (docs/operations.md, "Guards: limits"), each enforced when it would be passed:

- per channel, ``max_per_channel`` sessions (``--max-sessions-per-channel``): a new one
  replaces the channel's expired sessions, then its least recently used idle one; while all
  of them are being read, ``SessionLimitReached`` (429);
- per session URL, ``max_clients`` concurrent fetches (``--max-clients-per-session``):
  the next is ``SessionLimitReached`` (429);
- in all, ``max_sessions`` sessions (``MAX_SESSIONS``) with the same replacement rule across
  channels, then ``RegistryFull`` (503), and ``max_fetches`` concurrent fetches
  (``MAX_CONCURRENT_FETCHES``), then ``RegistryFull``. The per-channel bound times the number
  of channels is no bound at all, hence these two constants.

Everything here is synchronous and takes the time as an argument, so the expiry and eviction
rules are table-tested without a clock. ``parse_session_request`` turns the JSON body of
``POST /v3/sessions`` into a ``SessionSpec`` or a ``SessionRequestError`` saying what is wrong.

In a cluster a session created on one router is fetched on another: the spec travels as the
JSON of ``session_spec_json`` (the request body's own form, so ``parse_session_request``
validates it again on the way back), and the fetching router registers it under its id with
``adopt``, after which it is a session of that router like any other.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass

from logplex.api.numbers import parse_whole_number

SESSION_TTL_S = 360.0
MAX_SESSIONS = 10_000  # sessions in all channels together
MAX_CONCURRENT_FETCHES = 2_000  # session URLs being read at once, all channels together
DEFAULT_NUM = 100
MAX_FILTER_CHARS = 128


class SessionRequestError(ValueError):
    """The body of ``POST /v3/sessions`` is not acceptable; the message says why."""


class RegistryFull(Exception):
    """Every session slot of the router is held by a session being streamed right now, or
    the router serves ``max_fetches`` session fetches already."""


class SessionLimitReached(Exception):
    """A per-channel or per-session-URL limit is reached; ``limit`` names the setting
    (``max_sessions_per_channel`` or ``max_clients_per_session``), the message says what to
    do."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


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


def session_spec_json(spec: SessionSpec) -> dict[str, object]:
    """``spec`` as the JSON object ``parse_session_request`` reads back into an equal spec."""
    return {
        "channel_id": spec.channel,
        "num": spec.num,
        "ps": spec.ps.decode("ascii") if spec.ps is not None else None,
        "source": spec.source.decode("ascii") if spec.source is not None else None,
        "tail": spec.tail,
    }


@dataclass(slots=True)
class _Entry:
    spec: SessionSpec
    last_used_s: float
    streaming: int = 0


class SessionRegistry:
    """Session id -> ``SessionSpec``, bounded, with idle expiry. Not thread-safe (trio only)."""

    def __init__(
        self,
        *,
        ttl_s: float = SESSION_TTL_S,
        max_sessions: int = MAX_SESSIONS,
        max_fetches: int = MAX_CONCURRENT_FETCHES,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_fetches = max_fetches
        # Least recently used first, in all and per channel (the same entries).
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._by_channel: dict[str, OrderedDict[str, _Entry]] = {}
        self._fetches = 0  # fetches in progress, all sessions together

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def fetches(self) -> int:
        """Session fetches in progress right now."""
        return self._fetches

    def channel_sessions(self, channel: str) -> int:
        return len(self._by_channel.get(channel, ()))

    def _expired(self, entry: _Entry, now_s: float) -> bool:
        return entry.streaming == 0 and now_s - entry.last_used_s >= self.ttl_s

    def _remove(self, session_id: str) -> None:
        entry = self._entries.pop(session_id)
        sessions = self._by_channel[entry.spec.channel]
        del sessions[session_id]
        if not sessions:
            del self._by_channel[entry.spec.channel]

    def _touch(self, session_id: str, entry: _Entry) -> None:
        self._entries.move_to_end(session_id)
        self._by_channel[entry.spec.channel].move_to_end(session_id)

    def expire(self, now_s: float) -> int:
        """Forget every idle session unused for ``ttl_s``; return how many went."""
        gone = [sid for sid, entry in self._entries.items() if self._expired(entry, now_s)]
        for sid in gone:
            self._remove(sid)
        return len(gone)

    def _make_room(self, sessions: OrderedDict[str, _Entry], limit: int, now_s: float) -> bool:
        """Bring ``sessions`` under ``limit`` by dropping expired, then least recently used
        idle ones; False when every one left is being read."""
        if len(sessions) < limit:
            return True
        for sid in [sid for sid, entry in sessions.items() if self._expired(entry, now_s)]:
            self._remove(sid)
        while len(sessions) >= limit:
            idle = next((sid for sid, e in sessions.items() if e.streaming == 0), None)
            if idle is None:
                return False
            self._remove(idle)
        return True

    def create(self, spec: SessionSpec, now_s: float, *, max_per_channel: int | None = None) -> str:
        """Register ``spec``; return its new random id (a uuid4 string)."""
        session_id = str(uuid.uuid4())
        self._insert(session_id, spec, now_s, max_per_channel)
        return session_id

    def adopt(
        self,
        session_id: str,
        spec: SessionSpec,
        now_s: float,
        *,
        max_per_channel: int | None = None,
    ) -> None:
        """Register ``spec`` under ``session_id``, an id another router of the cluster
        created, with the same bounds as ``create``. An id this registry already holds is
        left as it is."""
        if session_id not in self._entries:
            self._insert(session_id, spec, now_s, max_per_channel)

    def discard(self, session_id: str) -> None:
        """Forget an idle session (one whose creation could not be completed)."""
        entry = self._entries.get(session_id)
        if entry is not None and entry.streaming == 0:
            self._remove(session_id)

    def _insert(
        self, session_id: str, spec: SessionSpec, now_s: float, max_per_channel: int | None
    ) -> None:
        sessions = self._by_channel.get(spec.channel)
        if (
            max_per_channel is not None
            and sessions is not None
            and not self._make_room(sessions, max_per_channel, now_s)
        ):
            raise SessionLimitReached(
                "max_sessions_per_channel",
                f"session limit reached: channel {spec.channel!r} has {len(sessions)} "
                f"sessions being read (--max-sessions-per-channel={max_per_channel}); "
                "try again when one ends",
            )
        if not self._make_room(self._entries, self.max_sessions, now_s):
            raise RegistryFull(
                f"{self.max_sessions} sessions are streaming; try again when one ends"
            )
        entry = _Entry(spec, now_s)
        self._entries[session_id] = entry
        self._by_channel.setdefault(spec.channel, OrderedDict())[session_id] = entry

    def begin_fetch(
        self, session_id: str, now_s: float, *, max_clients: int | None = None
    ) -> SessionSpec | None:
        """Start streaming ``session_id``: its spec, or None if unknown or expired.

        Raises ``SessionLimitReached`` when ``max_clients`` fetches of this URL are in
        progress, ``RegistryFull`` when ``max_fetches`` of all sessions are.
        """
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if self._expired(entry, now_s):
            self._remove(session_id)
            return None
        if max_clients is not None and entry.streaming >= max_clients:
            raise SessionLimitReached(
                "max_clients_per_session",
                f"client limit reached: {entry.streaming} clients are reading this session "
                f"URL (--max-clients-per-session={max_clients}); close one or create "
                "another session",
            )
        if self._fetches >= self.max_fetches:
            raise RegistryFull(
                f"the router serves {self._fetches} session fetches already, its maximum; "
                "try again when one ends"
            )
        entry.streaming += 1
        self._fetches += 1
        entry.last_used_s = now_s
        self._touch(session_id, entry)
        return entry.spec

    def end_fetch(self, session_id: str, now_s: float) -> None:
        """A fetch ended; the idle clock restarts now."""
        entry = self._entries.get(session_id)
        if entry is not None and entry.streaming > 0:
            entry.streaming -= 1
            self._fetches -= 1
            entry.last_used_s = now_s
            self._touch(session_id, entry)

    def forget_channel(self, channel: str) -> None:
        """Drop every idle session of a deleted channel (streaming ones end on their own)."""
        for sid, entry in list(self._by_channel.get(channel, {}).items()):
            if entry.streaming == 0:
                self._remove(sid)

    def streaming_count(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.streaming)
