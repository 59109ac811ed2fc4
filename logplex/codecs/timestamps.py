"""Timestamps: integer microseconds since the epoch <-> RFC 3339 bytes.

Output (DESIGN section 5): always UTC, always six fraction digits, always ``+00:00``:
``2026-11-27T20:39:33.123456+00:00``. ``format_ts`` runs once per line on drain hot paths, so
it caches the per-millisecond prefix (built from a per-second one) and appends the last three
digits with the offset from a table: a dict lookup and one concatenation per call. Its domain
is ``0 <= ts_us < MAX_TS_US`` (years 1970..9999); decoders enforce that range on input.

Input: the TIMESTAMP of RFC 5424 section 6.2.3, which is RFC 3339 section 5.6 ``date-time``
with upper-case ``T`` and ``Z``, at most six fraction digits and no leap second
(``TIME-SECOND`` is 00..59). Dates are validated (month lengths, leap years); the offset is
applied, so the result is always UTC microseconds. ``lenient=True`` also accepts seven or
more fraction digits (truncated to microseconds), for producers that send nanoseconds.
Instants before 1970 or from the year 10000 on (in UTC) are refused: every layer keeps
``ts_us`` as a non-negative int that ``format_ts`` can render.
"""

from __future__ import annotations

import datetime
import re
from typing import Final

from logplex.codecs.errors import TimestampError

__all__ = ["MAX_TS_US", "MICROS_UTC", "format_ts", "millisecond_prefix", "parse_ts"]

MAX_TS_US: Final = 253_402_300_800_000_000  # 10000-01-01T00:00:00Z, first value out of range

_EPOCH_ORDINAL: Final = datetime.date(1970, 1, 1).toordinal()
_EPOCH: Final = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_CACHE_LIMIT: Final = 4096

# seconds since the epoch -> b"YYYY-MM-DDTHH:MM:SS."
_prefix_by_second: dict[int, bytes] = {}
# milliseconds since the epoch -> b"YYYY-MM-DDTHH:MM:SS.mmm": one lookup per call on a hit
_prefix_by_millisecond: dict[int, bytes] = {}
# b"YYYY-MM-DDTHH:MM:SS" -> seconds since the epoch (before the offset is applied)
_second_by_head: dict[bytes, int] = {}
# The last head parsed and its seconds: lines of one body mostly share their second, and
# ``startswith`` compares without slicing or hashing. The placeholder never matches.
_last_head_second: tuple[bytes, int] = (b"\xff" * 19, 0)

_HEAD: Final = re.compile(rb"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})")
_TAIL: Final = re.compile(rb"(?:\.([0-9]+))?(?:Z|([+-])([0-9]{2}):([0-9]{2}))")
# Three-digit groups of the fraction, the second one with the offset appended: two list
# indexings and two concatenations are several times cheaper than bytes %-formatting.
# ``MICROS_UTC[ts_us % 1000]`` ends a timestamp whose ``millisecond_prefix`` came first.
_MILLIS: Final = [b"%03d" % n for n in range(1000)]
MICROS_UTC: Final = [b"%03d+00:00" % n for n in range(1000)]


def _millisecond_prefix(ts_ms: int) -> bytes:
    """``b"YYYY-MM-DDTHH:MM:SS.mmm"`` for a millisecond, built from the per-second cache."""
    second, millis = divmod(ts_ms, 1000)
    second_prefix = _prefix_by_second.get(second)
    if second_prefix is None:
        moment = _EPOCH + datetime.timedelta(seconds=second)
        second_prefix = moment.strftime("%Y-%m-%dT%H:%M:%S.").encode()
        if len(_prefix_by_second) >= _CACHE_LIMIT:
            _prefix_by_second.clear()
        _prefix_by_second[second] = second_prefix
    prefix = second_prefix + _MILLIS[millis]
    if len(_prefix_by_millisecond) >= _CACHE_LIMIT:
        _prefix_by_millisecond.clear()
    _prefix_by_millisecond[ts_ms] = prefix
    return prefix


def millisecond_prefix(ts_ms: int) -> bytes:
    """``b"YYYY-MM-DDTHH:MM:SS.mmm"`` of ``ts_ms`` milliseconds since the epoch (cached).

    With ``MICROS_UTC`` it lets a formatter of many timestamps (``drain_frames``) build each
    prefix once per millisecond: ``format_ts(t) == millisecond_prefix(t // 1000) +
    MICROS_UTC[t % 1000]``.
    """
    return _prefix_by_millisecond.get(ts_ms) or _millisecond_prefix(ts_ms)


def format_ts(ts_us: int) -> bytes:
    """``2026-11-27T20:39:33.123456+00:00`` for ``ts_us`` microseconds since the epoch."""
    prefix = _prefix_by_millisecond.get(ts_us // 1000)
    if prefix is None:
        prefix = _millisecond_prefix(ts_us // 1000)
    return prefix + MICROS_UTC[ts_us % 1000]


def _head_second(head: bytes, value: bytes) -> int:
    match = _HEAD.fullmatch(head)
    if match is None:
        raise TimestampError(
            f"timestamp {value[:40]!r} is not RFC 3339 (expected YYYY-MM-DDTHH:MM:SS)"
        )
    year, month, day, hour, minute, second = map(int, match.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise TimestampError(
            f"timestamp {value[:40]!r} has a time out of range "
            "(hour 00-23, minute 00-59, second 00-59; leap seconds are not allowed)"
        )
    try:
        ordinal = datetime.date(year, month, day).toordinal()
    except ValueError:
        raise TimestampError(f"timestamp {value[:40]!r} names a date that does not exist") from None
    result = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    if len(_second_by_head) >= _CACHE_LIMIT:
        _second_by_head.clear()
    _second_by_head[head] = result
    return result


def parse_ts(value: bytes, *, lenient: bool = False) -> int:
    """Microseconds since the epoch (UTC) of an RFC 5424 TIMESTAMP.

    Raises ``TimestampError`` (a ``ProtocolError``) for anything else. With ``lenient``, more
    than six fraction digits are accepted and truncated.
    """
    global _last_head_second
    last_head, second = _last_head_second
    if not value.startswith(last_head):
        head = value[:19]
        cached = _second_by_head.get(head)
        second = _head_second(head, value) if cached is None else cached
        _last_head_second = (head, second)
    # Fast paths: six fraction digits and "+00:00" (what we write) or "Z", from 1970 on (an
    # earlier second takes the slow path, which refuses it).
    size = len(value)
    if second >= 0 and (
        (size == 32 and value.endswith(b"+00:00")) or (size == 27 and value.endswith(b"Z"))
    ):
        fraction = value[20:26]
        if value[19] == 0x2E and fraction.isdigit():
            return second * 1_000_000 + int(fraction, 10)  # base 10: twice as fast on bytes
    match = _TAIL.fullmatch(value, 19)
    if match is None:
        raise TimestampError(
            f"timestamp {value[:40]!r} must end with optional fraction digits and then "
            "Z or an offset +HH:MM / -HH:MM"
        )
    fraction, sign, offset_hours, offset_minutes = match.groups()
    micros = 0
    if fraction is not None:
        if len(fraction) > 6 and not lenient:
            raise TimestampError(
                f"timestamp {value[:40]!r} has more than 6 fraction digits (RFC 5424 6.2.3)"
            )
        micros = int((fraction + b"00000")[:6])
    if sign is not None:
        hours, minutes = int(offset_hours), int(offset_minutes)
        if hours > 23 or minutes > 59:
            raise TimestampError(f"timestamp {value[:40]!r} has an offset out of range")
        offset = hours * 3600 + minutes * 60
        second = second - offset if sign == b"+" else second + offset
    ts_us = second * 1_000_000 + micros
    if not 0 <= ts_us < MAX_TS_US:
        raise TimestampError(
            f"timestamp {value[:40]!r} is before 1970 or after 9999 in UTC; not supported"
        )
    return ts_us
