"""``application/logplex-1`` bodies: Heroku's HTTPS-drain layout and Logplex's input layout.

A body is RFC 6587 octet-counted frames back to back, each ``LEN SP SYSLOG-MSG``.

Output (DESIGN 5.2), what HTTPS drains receive: Heroku's layout without a STRUCTURED-DATA
field, ``LEN SP <PRI>1 SP TS SP host SP SOURCE SP PS SP - SP MSG LF``, LEN counting every
byte after its space including the LF. It is formatted by ``logplex.codecs.drain_frames``
(``https_frame``, ``https_frames``, ``encode_https_body``, importable from here too).
``parse_drain_body`` reads that layout back, byte-exactly by the counts, for receivers.

Input (DESIGN section 3), what ``POST /logs`` and the syslog listener receive: Logplex's
layout ``<PRI>1 TS HOST t.TOKEN PS - - MSG``. ``parse_input_frame`` reads one frame,
``parse_input_body`` a whole body; any malformed frame raises ``Logplex1Error`` naming its
1-based frame number, so the whole request can be refused. Rules:

- PRI 0..191 without leading zeros, VERSION 1, TIMESTAMP RFC 3339 (a validated date; more
  than six fraction digits are truncated, since log shippers send nanoseconds);
- HOSTNAME, APP-NAME, PROCID, MSGID: ``-`` or 1..255/48/128/32 PRINTUSASCII;
- STRUCTURED-DATA ``-`` or real SD elements (parsed by the strict RFC 5424 rules, dropped);
- the drain layout without STRUCTURED-DATA is accepted where it is unambiguous: MSGID ``-``
  followed by something that is neither ``-`` nor ``[`` starts MSG;
- one trailing LF and a leading UTF-8 BOM are removed from MSG; a frame over
  ``max_frame_bytes`` (10240, DESIGN 5.6) is malformed.

Splitting messages with embedded LF (DESIGN 3) is the job of ``input_messages``, which
turns frames into router messages under a source; ``input_messages_from_body`` is the fast
path from a body straight to messages, with no per-frame object.

``InputFrame`` and ``DrainFrame`` are immutable ``NamedTuple`` records (no instance dict):
creating one costs a third of a frozen slotted dataclass, and ingest creates one per line.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# The output layout is formatted by drain_frames, which the syslog layout shares; it is
# also this format's public face, so those names stay importable from here.
from logplex.codecs.drain_frames import (
    APP_NAME_MAX,
    HOSTNAME_MAX,
    MSGID_MAX,
    PRI_MAX,
    PROCID_MAX,
    check_header_field,
    encode_https_body,
    https_frame,
    https_frames,
)
from logplex.codecs.errors import Logplex1Error, OctetFramingError, ProtocolError
from logplex.codecs.lines import split_embedded_lines
from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.octet import _counts as _octet_counts  # the shared b"1".."10240" table
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import BOM, parse_structured_data
from logplex.codecs.timestamps import parse_ts

__all__ = [
    "MAX_FRAME_BYTES",
    "DrainFrame",
    "InputFrame",
    "Logplex1Error",
    "encode_https_body",
    "https_frame",
    "https_frames",
    "input_messages",
    "input_messages_from_body",
    "input_messages_with_count",
    "parse_drain_body",
    "parse_input_body",
    "parse_input_frame",
]

MAX_FRAME_BYTES: Final = 10240

# LF as an int: ``0x0A in data`` is a memchr, while ``b"\n" in data`` first tries the
# operand as an int, builds a TypeError message and discards it (about ten times the cost
# in CPython 3.11, once per line on the ingest paths).
_LF: Final = 0x0A


# --- input layout -----------------------------------------------------------------------


class InputFrame(NamedTuple):
    """One frame of Logplex's input layout; None stands for NILVALUE."""

    pri: int
    ts_us: int
    hostname: bytes | None
    app_name: bytes | None  # the token (``t.<uuid>``) on the syslog listener
    procid: bytes | None  # the ps
    msgid: bytes | None
    msg: bytes

    @property
    def ps(self) -> bytes:
        """The process name (PROCID); NILVALUE reads as ``-``."""
        return self.procid if self.procid is not None else b"-"


_FIELD_LIMITS: Final = (
    ("HOSTNAME", HOSTNAME_MAX),
    ("APP-NAME", APP_NAME_MAX),
    ("PROCID", PROCID_MAX),
    ("MSGID", MSGID_MAX),
)
_CACHE_LIMIT: Final = 4096
# b"<190>1" -> 190, for the PRI+VERSION heads already validated
_pri_by_head: dict[bytes, int] = {}
# (HOSTNAME, APP-NAME, PROCID, MSGID) already validated
_valid_fields: set[tuple[bytes, bytes, bytes, bytes]] = set()


def _head_pri(head: bytes) -> int:
    if (
        len(head) < 4
        or head[0] != 0x3C
        or not head.endswith(b">1")
        or not head[1:-2].isdigit()
        or (head[1] == 0x30 and len(head) > 4)
        or int(head[1:-2]) > PRI_MAX
    ):
        raise ValueError(
            f"header {head[:12]!r} must be <PRI>1 with PRI 0..{PRI_MAX} (no leading zeros)"
        )
    pri = int(head[1:-2])
    _pri_by_head[head] = pri  # at most 192 entries: only valid heads are stored
    return pri


def _check_fields(key: tuple[bytes, bytes, bytes, bytes]) -> None:
    for (name, max_len), value in zip(_FIELD_LIMITS, key, strict=True):
        if value != b"-":
            check_header_field(name, value, max_len)
    if len(_valid_fields) >= _CACHE_LIMIT:
        _valid_fields.clear()
    _valid_fields.add(key)


# "YYYY-MM-DDTHH:MM:SS." of the last "+00:00" timestamp with six fraction digits that
# _parse_input read through parse_ts, and that second in microseconds: the frames of one
# sender mostly share their second. The placeholder never starts a timestamp.
_last_input_second: tuple[bytes, int] = (b"\xff", 0)


def _parse_input(frame: bytes) -> tuple[int, int, bytes, bytes, bytes, bytes, bytes]:
    """(pri, ts_us, hostname, app_name, procid, msgid, msg) with NILVALUE kept as ``-``.

    Raises ValueError (EncodeError from the field checks) or ProtocolError (timestamp,
    structured data) saying what is wrong.
    """
    parts = frame.split(b" ", 7)
    if len(parts) == 8:
        head, stamp, hostname, app_name, procid, msgid, structured, msg = parts
    elif len(parts) == 7:
        head, stamp, hostname, app_name, procid, msgid, structured = parts
        msg = b""
    else:
        raise ValueError(
            "a frame needs <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA, "
            f"found {len(parts)} of these 7 fields"
        )
    global _last_input_second
    pri = _pri_by_head.get(head)
    if pri is None:
        pri = _head_pri(head)
    second_head, second_us = _last_input_second
    fraction = stamp[20:26]
    if stamp.startswith(second_head) and stamp[26:] == b"+00:00" and fraction.isdigit():
        ts_us = second_us + int(fraction, 10)  # the second of the frame before
    else:
        ts_us = parse_ts(stamp, lenient=True)
        if len(stamp) == 32 and stamp.endswith(b"+00:00"):
            _last_input_second = (stamp[:20], ts_us - ts_us % 1_000_000)
    key = (hostname, app_name, procid, msgid)
    if key not in _valid_fields:
        _check_fields(key)
    if structured != b"-":
        if structured[:1] == b"[":
            start = len(frame) - len(msg) - len(structured) - (len(parts) == 8)
            end = parse_structured_data(frame, start, strict=True)[1]
            if end < len(frame) and frame[end] != 0x20:
                raise ValueError("STRUCTURED-DATA must be followed by a space and MSG")
            msg = frame[end + 1 :]
        elif msgid == b"-":
            # Heroku's drain layout: no STRUCTURED-DATA field, MSG right after MSGID.
            msg = structured + b" " + msg if len(parts) == 8 else structured
        else:
            raise ValueError(f"STRUCTURED-DATA must be '-' or '[', found {structured[:20]!r}")
    if msg[-1:] == b"\n":
        msg = msg[:-1]
    if msg[:3] == BOM:
        msg = msg[3:]
    return pri, ts_us, hostname, app_name, procid, msgid, msg


def parse_input_frame(frame: bytes, frame_number: int = 1) -> InputFrame:
    """One input-layout frame (without its ``LEN SP``); ``Logplex1Error`` when malformed."""
    try:
        pri, ts_us, hostname, app_name, procid, msgid, msg = _parse_input(frame)
    except (ValueError, ProtocolError) as exc:
        raise Logplex1Error(str(exc), frame_number=frame_number) from None
    # tuple.__new__ skips NamedTuple's Python-level __new__: a third of the cost, per line.
    return tuple.__new__(
        InputFrame,
        (
            pri,
            ts_us,
            None if hostname == b"-" else hostname,
            None if app_name == b"-" else app_name,
            None if procid == b"-" else procid,
            None if msgid == b"-" else msgid,
            msg,
        ),
    )


def _body_frames(body: bytes, max_frame_bytes: int) -> list[bytes]:
    decoder = OctetFrameDecoder(max_frame_bytes, "strict")
    decoder.feed(body)
    frames: list[bytes] = []
    try:
        frames.extend(decoder.frames())
        if decoder.buffered:
            frames.extend(decoder.frames())  # raises: garbage follows the good frames
    except OctetFramingError as exc:
        raise Logplex1Error(exc.message, frame_number=len(frames) + 1, offset=exc.offset) from None
    if decoder.buffered:
        offset = len(body) - decoder.buffered
        raise Logplex1Error(
            f"the body ends inside this frame, which starts at byte {offset} "
            "(the count is larger than the bytes that follow)",
            frame_number=len(frames) + 1,
            offset=offset,
        )
    return frames


def parse_input_body(body: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> list[InputFrame]:
    """Every frame of a logplex-1 input body; ``Logplex1Error`` names the first bad frame."""
    return [
        parse_input_frame(frame, number)
        for number, frame in enumerate(_body_frames(body, max_frame_bytes), 1)
    ]


def input_messages(frames: list[InputFrame], source: bytes) -> list[Message]:
    """Router messages of ``frames`` under ``source``; embedded LF splits a message."""
    return split_embedded_lines(
        [(frame.ts_us, frame.pri, source, frame.ps, frame.msg) for frame in frames]
    )


def input_messages_from_body(
    body: bytes, *, source: bytes, max_frame_bytes: int = MAX_FRAME_BYTES
) -> list[Message]:
    """``input_messages(parse_input_body(body), source)`` without the per-frame objects."""
    return input_messages_with_count(body, source=source, max_frame_bytes=max_frame_bytes)[0]


def input_messages_with_count(
    body: bytes, *, source: bytes, max_frame_bytes: int = MAX_FRAME_BYTES
) -> tuple[list[Message], int]:
    """The router messages of an input body and its frame count (``Logplex-Msg-Count``).

    Same result and same ``Logplex1Error`` as ``parse_input_body`` then ``input_messages``.
    The body is cut and parsed in one loop. A frame takes the fast path when its
    ``<PRI>1`` head and (HOSTNAME, APP-NAME, PROCID, MSGID) are already known valid, its
    STRUCTURED-DATA is ``-``, and its timestamp is ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00`` of
    the same second as the frame before (the second is then not parsed again). Any other
    frame goes through the full parser; anything wrong (framing or content) hands the whole
    body to the exact path, which names the error the way ``parse_input_body`` does.
    """
    counts = _octet_counts()
    pri_by_head = _pri_by_head
    valid_fields = _valid_fields
    find = body.find
    size = len(body)
    messages: list[Message] = []
    append = messages.append
    split = False
    position = 0
    # The second _parse_input last read through parse_ts (see _last_input_second).
    second_head, second_us = _last_input_second
    while position < size:
        # No end bound: a count is found within a few bytes, and a body without a space
        # is scanned once before it goes to the exact path.
        space = find(b" ", position)
        length = counts.get(body[position:space]) if space > position else None
        if length is None or length > max_frame_bytes or space + 1 + length > size:
            return _input_messages_exact(body, source, max_frame_bytes)
        position = space + 1 + length
        frame = body[space + 1 : position]
        parts = frame.split(b" ", 7)
        if len(parts) == 8 and parts[6] == b"-":
            head, stamp, hostname, app_name, procid, msgid, _, msg = parts
            pri = pri_by_head.get(head)
            fraction = stamp[20:26]
            if (
                pri is not None
                and stamp.startswith(second_head)
                and stamp[26:] == b"+00:00"
                and fraction.isdigit()
                and (hostname, app_name, procid, msgid) in valid_fields
            ):
                if _LF in msg:
                    if msg[-1:] == b"\n":
                        msg = msg[:-1]
                    split = split or _LF in msg
                if msg[:3] == BOM:
                    msg = msg[3:]
                append((second_us + int(fraction, 10), pri, source, procid, msg))
                continue
        try:
            pri, ts_us, _, _, procid, _, msg = _parse_input(frame)
        except (ValueError, ProtocolError):
            return _input_messages_exact(body, source, max_frame_bytes)
        second_head, second_us = _last_input_second  # what _parse_input last read
        if _LF in msg:
            split = True
        append((ts_us, pri, source, procid, msg))
    return (split_embedded_lines(messages) if split else messages), len(messages)


def _input_messages_exact(
    body: bytes, source: bytes, max_frame_bytes: int
) -> tuple[list[Message], int]:
    """``input_messages_with_count`` the plain way: every frame cut, then every one parsed."""
    frames = _body_frames(body, max_frame_bytes)
    messages: list[Message] = []
    for number, frame in enumerate(frames, 1):
        try:
            pri, ts_us, _, _, procid, _, msg = _parse_input(frame)
        except (ValueError, ProtocolError) as exc:
            raise Logplex1Error(str(exc), frame_number=number) from None
        messages.append((ts_us, pri, source, procid, msg))
    return split_embedded_lines(messages), len(frames)


# --- drain layout (for receivers) -------------------------------------------------------


class DrainFrame(NamedTuple):
    """One frame of the HTTPS-drain layout (DESIGN 5.2)."""

    pri: int
    ts_us: int
    hostname: bytes
    source: bytes
    ps: bytes
    msg: bytes


def _parse_drain(frame: bytes) -> DrainFrame:
    parts = frame.split(b" ", 6)
    if len(parts) < 7 or parts[5] != b"-":
        raise ValueError(
            "a drain frame is <PRI>1 TIMESTAMP HOST SOURCE PS - MSG LF (DESIGN 5.2), "
            f"found {frame[:60]!r}"
        )
    head, stamp, hostname, source, ps, _, msg = parts
    pri = _pri_by_head.get(head)
    if pri is None:
        pri = _head_pri(head)
    ts_us = parse_ts(stamp)
    key = (hostname, source, ps, b"-")
    if key not in _valid_fields:
        _check_fields(key)
    if msg[-1:] == b"\n":
        msg = msg[:-1]
    if _LF in msg:
        raise ValueError("a drain message must not contain LF (line receivers split on it)")
    return DrainFrame(pri, ts_us, hostname, source, ps, msg)


def parse_drain_body(body: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> list[DrainFrame]:
    """Every frame of an HTTPS-drain body, read byte-exactly by the counts.

    Raises ``Logplex1Error`` naming the first bad frame: a count that does not match the
    bytes, a frame that is not the 5.2 layout, a message holding LF. The LF that ends each
    frame (and is counted in its length) is removed; a last frame without it is accepted,
    as some producers omit it.
    """
    frames: list[DrainFrame] = []
    for number, frame in enumerate(_body_frames(body, max_frame_bytes), 1):
        try:
            frames.append(_parse_drain(frame))
        except (ValueError, ProtocolError) as exc:
            raise Logplex1Error(str(exc), frame_number=number) from None
    return frames
