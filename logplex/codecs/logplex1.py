"""``application/logplex-1`` bodies: Heroku's HTTPS-drain layout and Logplex's input layout.

A body is RFC 6587 octet-counted frames back to back, each ``LEN SP SYSLOG-MSG``.

Output (DESIGN 5.2), what HTTPS drains receive: Heroku's layout without a STRUCTURED-DATA
field, ``LEN SP <PRI>1 SP TS SP host SP SOURCE SP PS SP - SP MSG LF``, LEN counting every
byte after its space including the LF. ``encode_https_body`` formats a whole batch with one
join; header fields are validated once per distinct (PRI, host, source, ps).
"""

from __future__ import annotations

from typing import Final

from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import (
    APP_NAME_MAX,
    HOSTNAME_MAX,
    PROCID_MAX,
    check_header_field,
    check_pri,
)
from logplex.codecs.timestamps import format_ts

__all__ = ["encode_https_body", "https_frame"]

_HEADER_CACHE_LIMIT: Final = 4096
_TS_LEN: Final = 32

# (host, pri, source, ps) -> (b"<PRI>1 ", b" host SOURCE PS - ", fixed byte count)
_https_headers: dict[tuple[bytes, int, bytes, bytes], tuple[bytes, bytes, int]] = {}


def _https_header(key: tuple[bytes, int, bytes, bytes]) -> tuple[bytes, bytes, int]:
    host, pri, source, ps = key
    check_pri(pri)
    check_header_field("HOSTNAME", host, HOSTNAME_MAX)
    check_header_field("APP-NAME (source)", source, APP_NAME_MAX)
    check_header_field("PROCID (ps)", ps, PROCID_MAX)
    head = b"<%d>1 " % pri
    middle = b" %b %b %b - " % (host, source, ps)
    parts = (head, middle, len(head) + _TS_LEN + len(middle) + 1)
    if len(_https_headers) >= _HEADER_CACHE_LIMIT:
        _https_headers.clear()
    _https_headers[key] = parts
    return parts


def https_frame(m: Message, host: bytes = b"host") -> bytes:
    """One HTTPS-drain frame (DESIGN 5.2), ``LEN SP <PRI>1 ... MSG LF``."""
    ts_us, pri, source, ps, msg = m
    key = (host, pri, source, ps)
    parts = _https_headers.get(key)
    if parts is None:
        parts = _https_header(key)
    head, middle, fixed = parts
    return b"".join(
        (str(fixed + len(msg)).encode(), b" ", head, format_ts(ts_us), middle, msg, b"\n")
    )


def encode_https_body(messages: list[Message], host: bytes = b"host") -> tuple[bytes, int]:
    """The logplex-1 body of ``messages`` and its message count (``Logplex-Msg-Count``)."""
    headers = _https_headers
    pieces: list[bytes] = []
    append = pieces.append
    for ts_us, pri, source, ps, msg in messages:
        key = (host, pri, source, ps)
        parts = headers.get(key)
        if parts is None:
            parts = _https_header(key)
        head, middle, fixed = parts
        append(str(fixed + len(msg)).encode())
        append(b" ")
        append(head)
        append(format_ts(ts_us))
        append(middle)
        append(msg)
        append(b"\n")
    return b"".join(pieces), len(messages)
