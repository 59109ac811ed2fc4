"""RFC 5424 syslog messages: the syslog-drain encoder (DESIGN 5.1) and two parsers.

Encoding (DESIGN 5.1): ``LEN SP <PRI>1 SP TS SP d.TOKEN SP SOURCE SP PS SP - SP - SP MSG LF``
for TCP/TLS drains (RFC 6587 section 3.4.1 octet counting; LEN counts every byte after its
space, the LF included), and the same message without ``LEN SP`` and LF, cut to 2048 bytes,
for UDP drains (RFC 5426). The drain token goes in HOSTNAME, the source in APP-NAME, the ps
in PROCID; MSGID and STRUCTURED-DATA are NILVALUE. Header fields must be PRINTUSASCII
(33..126) of 1..N bytes (RFC 5424 section 6: HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID
32); the encoder refuses anything else with ``EncodeError``. Validation and the formatting of
the constant parts happen once per distinct (token, PRI, source, ps) thanks to a small cache,
so the per-message cost is a timestamp and one join.

Parsing: ``parse_strict`` implements the ABNF of RFC 5424 section 6 (see its docstring);
``parse_lenient`` also reads Heroku's HTTPS-drain layout and other near misses.
"""

from __future__ import annotations

from typing import Final

from logplex.codecs.errors import EncodeError
from logplex.codecs.lines import split_utf8_chunks
from logplex.codecs.records import Message
from logplex.codecs.timestamps import format_ts

__all__ = [
    "APP_NAME_MAX",
    "HOSTNAME_MAX",
    "MSGID_MAX",
    "PROCID_MAX",
    "UDP_MAX_BYTES",
    "check_header_field",
    "syslog_datagram",
    "syslog_frame",
]

HOSTNAME_MAX: Final = 255
APP_NAME_MAX: Final = 48
PROCID_MAX: Final = 128
MSGID_MAX: Final = 32
PRI_MAX: Final = 191
UDP_MAX_BYTES: Final = 2048
_HEADER_CACHE_LIMIT: Final = 4096

_PRINTUSASCII: Final = bytes(range(33, 127))


def check_header_field(name: str, value: bytes, max_len: int) -> None:
    """Raise ``EncodeError`` unless ``value`` is 1..max_len bytes of PRINTUSASCII (33..126)."""
    if not value:
        raise EncodeError(f"syslog {name} must not be empty (RFC 5424 section 6)")
    if len(value) > max_len:
        raise EncodeError(
            f"syslog {name} {value[:40]!r}... is {len(value)} bytes; RFC 5424 allows at most "
            f"{max_len}"
        )
    if value.translate(None, _PRINTUSASCII):
        raise EncodeError(
            f"syslog {name} {value!r} may only hold printable US-ASCII without spaces "
            "(bytes 33..126, RFC 5424 section 6)"
        )


def check_pri(pri: int) -> None:
    """Raise ``EncodeError`` unless ``pri`` is an RFC 5424 PRI value (0..191)."""
    if type(pri) is not int or not 0 <= pri <= PRI_MAX:
        raise EncodeError(f"syslog PRI {pri!r} is outside 0..{PRI_MAX}")


# (hostname, pri, source, ps) -> (b"<PRI>1 ", b" HOST APP PROCID - - ")
_syslog_headers: dict[tuple[bytes, int, bytes, bytes], tuple[bytes, bytes]] = {}


def _syslog_header(key: tuple[bytes, int, bytes, bytes]) -> tuple[bytes, bytes]:
    hostname, pri, source, ps = key
    check_pri(pri)
    check_header_field("HOSTNAME (drain token)", hostname, HOSTNAME_MAX)
    check_header_field("APP-NAME (source)", source, APP_NAME_MAX)
    check_header_field("PROCID (ps)", ps, PROCID_MAX)
    parts = (b"<%d>1 " % pri, b" %b %b %b - - " % (hostname, source, ps))
    if len(_syslog_headers) >= _HEADER_CACHE_LIMIT:
        _syslog_headers.clear()
    _syslog_headers[key] = parts
    return parts


def syslog_frame(m: Message, drain_token: bytes) -> bytes:
    """One octet-counted syslog-drain frame (DESIGN 5.1), ``LEN SP ... MSG LF``."""
    ts_us, pri, source, ps, msg = m
    key = (drain_token, pri, source, ps)
    parts = _syslog_headers.get(key)
    if parts is None:
        parts = _syslog_header(key)
    head, middle = parts
    length = len(head) + 32 + len(middle) + len(msg) + 1
    return b"".join((str(length).encode(), b" ", head, format_ts(ts_us), middle, msg, b"\n"))


def syslog_datagram(m: Message, drain_token: bytes) -> bytes:
    """One UDP syslog message (DESIGN 5.1): no LEN, no LF, at most 2048 bytes.

    A longer message is cut at 2048 bytes, never inside a UTF-8 sequence.
    """
    ts_us, pri, source, ps, msg = m
    key = (drain_token, pri, source, ps)
    parts = _syslog_headers.get(key)
    if parts is None:
        parts = _syslog_header(key)
    head, middle = parts
    datagram = b"".join((head, format_ts(ts_us), middle, msg))
    if len(datagram) > UDP_MAX_BYTES:
        datagram = split_utf8_chunks(datagram, UDP_MAX_BYTES)[0]
    return datagram
