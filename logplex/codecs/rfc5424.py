r"""RFC 5424 syslog messages: the syslog-drain encoder (DESIGN 5.1) and two parsers.

Encoding (DESIGN 5.1): ``LEN SP <PRI>1 SP TS SP d.TOKEN SP SOURCE SP PS SP - SP - SP MSG LF``
for TCP/TLS drains (RFC 6587 section 3.4.1 octet counting; LEN counts every byte after its
space, the LF included), and the same message without ``LEN SP`` and LF, cut to 2048 bytes,
for UDP drains (RFC 5426). The drain token goes in HOSTNAME, the source in APP-NAME, the ps
in PROCID; MSGID and STRUCTURED-DATA are NILVALUE. Header fields must be PRINTUSASCII
(33..126) of 1..N bytes (RFC 5424 section 6: HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID
32); the encoder refuses anything else with ``EncodeError``. Validation and the formatting of
the constant parts happen once per distinct (token, PRI, source, ps) thanks to a small cache,
so the per-message cost is a timestamp and one join.

Parsing: ``parse_strict`` implements the ABNF of RFC 5424 section 6:

- PRI ``<0>``..``<191>`` without leading zeros; VERSION ``NONZERO-DIGIT 0*2DIGIT``;
- TIMESTAMP NILVALUE or RFC 3339 with a validated date and time, 1..6 fraction digits and
  ``Z`` or an offset (``timestamps.parse_ts``);
- HOSTNAME, APP-NAME, PROCID, MSGID: NILVALUE or 1..255/48/128/32 PRINTUSASCII;
- STRUCTURED-DATA: NILVALUE or one or more ``[SD-ID *(SP PARAM-NAME="PARAM-VALUE")]``, the
  names 1..32 PRINTUSASCII except ``= SP ] "``, the values UTF-8 with ``"``, ``\`` and ``]``
  escaped by a backslash (a backslash before any other character is an ordinary backslash,
  RFC 5424 6.3.3); values are returned unescaped;
- MSG: empty, or SP and any octets; with a UTF-8 BOM first it must be valid UTF-8 (the BOM
  is removed and ``bom`` set). One trailing LF is removed (TCP senders add one).

Exactly one SP separates the fields. ``parse_lenient`` reads what real senders produce:
Heroku's HTTPS-drain layout without the STRUCTURED-DATA field (``... PROCID MSGID MSG``),
runs of spaces between fields, more than six fraction digits (truncated), lower-case ``t``
and ``z``, unescaped ``]`` in values, over-long or non-ASCII header fields, a PRI with
leading zeros. When it cannot find a field it stops there: the fields not found are None
(``version`` 0 when there is no VERSION, as in RFC 3164 messages) and the rest of the input
is MSG. Ambiguity of the drain layout: after MSGID, ``- `` or ``-`` at the end is read as a
NILVALUE STRUCTURED-DATA and ``[`` as STRUCTURED-DATA when it parses as such; anything else
starts MSG. Only a missing or malformed PRI makes ``parse_lenient`` raise.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from logplex.codecs.errors import EncodeError, ProtocolError, SyslogParseError
from logplex.codecs.lines import split_utf8_chunks
from logplex.codecs.records import Message
from logplex.codecs.timestamps import (  # the format caches are shared within the package
    _MICROS_UTC,
    _millisecond_prefix,
    _prefix_by_millisecond,
    format_ts,
    parse_ts,
)

__all__ = [
    "APP_NAME_MAX",
    "HOSTNAME_MAX",
    "MSGID_MAX",
    "PROCID_MAX",
    "UDP_MAX_BYTES",
    "SDElement",
    "SyslogMessage",
    "check_header_field",
    "parse_lenient",
    "parse_strict",
    "parse_structured_data",
    "syslog_datagram",
    "syslog_frame",
    "syslog_frames",
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


# (hostname, pri, source, ps) -> (b"<PRI>1 ", b" HOST APP PROCID - - ", the frame's byte
# count without MSG: everything after ``LEN SP``, timestamp and LF included)
_syslog_headers: dict[tuple[bytes, int, bytes, bytes], tuple[bytes, bytes, int]] = {}


def _syslog_header(key: tuple[bytes, int, bytes, bytes]) -> tuple[bytes, bytes, int]:
    hostname, pri, source, ps = key
    check_pri(pri)
    check_header_field("HOSTNAME (drain token)", hostname, HOSTNAME_MAX)
    check_header_field("APP-NAME (source)", source, APP_NAME_MAX)
    check_header_field("PROCID (ps)", ps, PROCID_MAX)
    head = b"<%d>1 " % pri
    middle = b" %b %b %b - - " % (hostname, source, ps)
    parts = (head, middle, len(head) + 32 + len(middle) + 1)
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
    head, middle, fixed = parts
    return b"".join(
        (str(fixed + len(msg)).encode(), b" ", head, format_ts(ts_us), middle, msg, b"\n")
    )


# b"N " for every length a frame of a 10240-byte message can reach with the longest header
# fields: one list index per frame instead of formatting an int.
_LENGTH_PREFIXES: Final = [b"%d " % n for n in range(10240 + 1024)]


def syslog_frames(messages: list[Message], drain_token: bytes) -> list[bytes]:
    """``[syslog_frame(m, drain_token) for m in messages]``, for a whole batch at once.

    A drain buffer keeps one frame per message (it cuts writes and counts acknowledged
    frames by frame), so this returns the list.
    """
    return _frames_with_headers(messages, drain_token, _syslog_headers, _syslog_header)


HeaderParts = tuple[bytes, bytes, int]
HeaderKey = tuple[bytes, int, bytes, bytes]


class _PartsByPs(dict[bytes, HeaderParts]):
    """The header parts of one (first field, PRI, source) by ps, within one batch.

    A miss (``__missing__``) reads the shared cache, or builds and validates the parts.
    """

    __slots__ = ("_first_field", "_headers", "_make_header", "_pri", "_source")

    def __init__(
        self,
        first_field: bytes,
        pri: int,
        source: bytes,
        headers: dict[HeaderKey, HeaderParts],
        make_header: Callable[[HeaderKey], HeaderParts],
    ) -> None:
        super().__init__()
        self._first_field = first_field
        self._pri = pri
        self._source = source
        self._headers = headers
        self._make_header = make_header

    def __missing__(self, ps: bytes) -> HeaderParts:
        key = (self._first_field, self._pri, self._source, ps)
        parts = self._headers.get(key) or self._make_header(key)
        self[ps] = parts
        return parts


FramesWithHeaders = Callable[
    [list[Message], bytes, dict[HeaderKey, HeaderParts], Callable[[HeaderKey], HeaderParts]],
    list[bytes],
]


def _ts_prefix(ts_ms: int) -> bytes:
    return _prefix_by_millisecond.get(ts_ms) or _millisecond_prefix(ts_ms)


def _frames_with_headers_c(
    messages: list[Message],
    first_field: bytes,
    headers: dict[HeaderKey, HeaderParts],
    make_header: Callable[[HeaderKey], HeaderParts],
) -> list[bytes]:
    """``_frames_with_headers_python`` through ``logplex.codecs._cframes`` (same frames, same
    errors, about five times faster); a batch it finds unusual goes the Python way."""

    def parts_of(pri: int, source: bytes, ps: bytes) -> HeaderParts:
        key = (first_field, pri, source, ps)
        return headers.get(key) or make_header(key)

    frames = _c_frames(messages, parts_of, _ts_prefix)
    if frames is None:
        return _frames_with_headers_python(messages, first_field, headers, make_header)
    return frames


def _frames_with_headers_python(
    messages: list[Message],
    first_field: bytes,
    headers: dict[HeaderKey, HeaderParts],
    make_header: Callable[[HeaderKey], HeaderParts],
) -> list[bytes]:
    """Octet-counted frames ``LEN SP head TS middle MSG LF`` of a batch, for both drain
    layouts (``first_field`` is the syslog drain token or the HTTPS ``host``).

    The header parts are looked up only when (PRI, source, ps) differs from the previous
    message's and the timestamp prefix only when the millisecond does: in a router batch both
    mostly repeat, and what is left per message is one join of seven parts. When the ps
    alternates (several dynos of one app interleaved), the parts are found by ps alone in a
    dict of this batch's (PRI, source): a bytes key whose hash is cached, where the shared
    cache's 4-tuple key would be built, hashed and compared per message (17 % of a batch's
    formatting with 8 alternating ps, measured best-of-40).
    """
    length_prefixes = _LENGTH_PREFIXES
    longest = len(length_prefixes)
    ts_prefixes = _prefix_by_millisecond
    ts_tails = _MICROS_UTC
    frames: list[bytes] = []
    append = frames.append
    join = b"".join
    by_ps = _PartsByPs(first_field, -1, b"", headers, make_header)  # replaced at once
    # None never equals a field: the first message looks its header up (and validates it).
    last_pri: int | None = None
    last_source: bytes | None = None
    last_ps: bytes | None = None
    last_ms: int | None = None
    head = middle = ts_prefix = b""
    fixed = 0
    for ts_us, pri, source, ps, msg in messages:
        if ps != last_ps or source != last_source or pri != last_pri:
            if source != last_source or pri != last_pri:
                by_ps = _PartsByPs(first_field, pri, source, headers, make_header)
                last_pri = pri
                last_source = source
            head, middle, fixed = by_ps[ps]
            last_ps = ps
        ts_ms = ts_us // 1000
        if ts_ms != last_ms:
            ts_prefix = ts_prefixes.get(ts_ms) or _millisecond_prefix(ts_ms)
            last_ms = ts_ms
        length = fixed + len(msg)
        append(
            join(
                (
                    length_prefixes[length] if length < longest else b"%d " % length,
                    head,
                    ts_prefix,
                    ts_tails[ts_us % 1000],
                    middle,
                    msg,
                    b"\n",
                )
            )
        )
    return frames


try:
    from logplex.codecs._cframes import frames_with_headers as _c_frames
except ImportError:  # pragma: no cover - built without a C compiler (setup.py)
    _frames_with_headers: FramesWithHeaders = _frames_with_headers_python
else:
    _frames_with_headers = _frames_with_headers_c
#: whether drain frames are formatted by the C module (``logplex serve`` warns when not)
C_FORMATTER: Final = _frames_with_headers is _frames_with_headers_c


def syslog_datagram(m: Message, drain_token: bytes) -> bytes:
    """One UDP syslog message (DESIGN 5.1): no LEN, no LF, at most 2048 bytes.

    A longer message is cut at 2048 bytes, never inside a UTF-8 sequence.
    """
    ts_us, pri, source, ps, msg = m
    key = (drain_token, pri, source, ps)
    parts = _syslog_headers.get(key)
    if parts is None:
        parts = _syslog_header(key)
    head, middle, _ = parts
    datagram = b"".join((head, format_ts(ts_us), middle, msg))
    if len(datagram) > UDP_MAX_BYTES:
        datagram = split_utf8_chunks(datagram, UDP_MAX_BYTES)[0]
    return datagram


# --- parsing ----------------------------------------------------------------------------

NILVALUE: Final = b"-"
BOM: Final = b"\xef\xbb\xbf"
SD_NAME_MAX: Final = 32
_SD_NAME_END: Final = re.compile(rb'[ =\]"]')
_STRICT_VALUE: Final = re.compile(rb'(?:[^"\\\]]|\\.)*', re.DOTALL)
_LENIENT_VALUE: Final = re.compile(rb'(?:[^"\\]|\\.)*', re.DOTALL)
_ESCAPE: Final = re.compile(rb'\\([\\"\]])')


@dataclass(frozen=True, slots=True)
class SDElement:
    """One STRUCTURED-DATA element: its SD-ID and (PARAM-NAME, PARAM-VALUE) pairs."""

    sd_id: bytes
    params: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class SyslogMessage:
    """A parsed RFC 5424 message; None stands for NILVALUE (or, leniently, not found)."""

    pri: int
    version: int
    timestamp_us: int | None
    hostname: bytes | None
    app_name: bytes | None
    procid: bytes | None
    msgid: bytes | None
    structured_data: tuple[SDElement, ...]
    msg: bytes
    bom: bool = False


def _fail(reason: str, offset: int) -> SyslogParseError:
    return SyslogParseError(f"not RFC 5424 at byte {offset}: {reason}", offset=offset)


def _parse_pri(data: bytes, strict: bool) -> tuple[int, int]:
    """PRI value and the index after ``>``."""
    if data[:1] != b"<":
        raise _fail(f"a message starts with '<PRI>', found {data[:8]!r}", 0)
    close = data.find(b">", 1, 5)
    digits = data[1:close] if close > 0 else b""
    if not digits.isdigit():
        raise _fail(f"PRI must be 1 to 3 digits between '<' and '>', found {data[:6]!r}", 1)
    if strict and len(digits) > 1 and digits[0] == 0x30:
        raise _fail(f"PRI {digits!r} has a leading zero", 1)
    pri = int(digits)
    if pri > PRI_MAX:
        raise _fail(f"PRI {pri} is outside 0..{PRI_MAX}", 1)
    return pri, close + 1


def _check_field(name: str, value: bytes, max_len: int, offset: int) -> bytes | None:
    if value == NILVALUE:
        return None
    if not value or len(value) > max_len or value.translate(None, _PRINTUSASCII):
        raise _fail(
            f"{name} {value[:60]!r} must be '-' or 1..{max_len} printable US-ASCII bytes",
            offset,
        )
    return value


def _parse_sd_name(data: bytes, position: int, what: str, strict: bool) -> tuple[bytes, int]:
    match = _SD_NAME_END.search(data, position)
    end = match.start() if match else len(data)
    name = data[position:end]
    if not name or (strict and (len(name) > SD_NAME_MAX or name.translate(None, _PRINTUSASCII))):
        raise _fail(f"{what} {name[:40]!r} must be 1..32 printable US-ASCII bytes", position)
    return name, end


def parse_structured_data(
    data: bytes, position: int, strict: bool
) -> tuple[tuple[SDElement, ...], int]:
    """SD elements starting at ``data[position] == '['`` and the index after the last."""
    value_pattern = _STRICT_VALUE if strict else _LENIENT_VALUE
    elements: list[SDElement] = []
    size = len(data)
    while position < size and data[position] == 0x5B:  # '['
        sd_id, position = _parse_sd_name(data, position + 1, "SD-ID", strict)
        params: list[tuple[bytes, bytes]] = []
        while data[position : position + 1] == b" ":
            name, position = _parse_sd_name(data, position + 1, "PARAM-NAME", strict)
            if data[position : position + 2] != b'="':
                raise _fail(f'PARAM-NAME {name!r} must be followed by ="', position)
            match = value_pattern.match(data, position + 2)
            assert match is not None  # the pattern matches the empty string
            position = match.end()
            if data[position : position + 1] != b'"':
                raise _fail(
                    f"PARAM-VALUE of {name!r} must end with an unescaped '\"' "
                    '(escape ", \\ and ] with a backslash)',
                    position,
                )
            raw = match.group()
            value = _ESCAPE.sub(rb"\1", raw) if b"\\" in raw else raw
            if strict:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    raise _fail(f"PARAM-VALUE of {name!r} is not UTF-8", match.start()) from None
            params.append((name, value))
            position += 1
        if data[position : position + 1] != b"]":
            raise _fail(f"SD-ELEMENT {sd_id!r} must end with ']'", position)
        elements.append(SDElement(sd_id, tuple(params)))
        position += 1
    return tuple(elements), position


def _finish_msg(msg: bytes, strict: bool, offset: int) -> tuple[bytes, bool]:
    if msg.endswith(b"\n"):
        msg = msg[:-1]
    if not msg.startswith(BOM):
        return msg, False
    msg = msg[3:]
    if strict:
        try:
            msg.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail("MSG after a BOM must be UTF-8", offset + 3 + exc.start) from None
    return msg, True


_HEADER_FIELDS: Final = (
    ("HOSTNAME", HOSTNAME_MAX),
    ("APP-NAME", APP_NAME_MAX),
    ("PROCID", PROCID_MAX),
    ("MSGID", MSGID_MAX),
)


def parse_strict(data: bytes) -> SyslogMessage:
    """Parse one RFC 5424 message exactly by the ABNF of section 6 (see the module doc)."""
    pri, position = _parse_pri(data, True)
    space = data.find(b" ", position, position + 4)
    version_digits = data[position:space] if space > position else b""
    if not version_digits.isdigit() or version_digits[0] == 0x30:
        raise _fail(
            "VERSION must be 1 to 3 digits, not starting with 0, followed by a space",
            position,
        )
    version = int(version_digits)
    position = space + 1
    space = data.find(b" ", position)
    if space < 0:
        raise _fail(
            "the header ends after VERSION; TIMESTAMP and five more fields follow", position
        )
    stamp = data[position:space]
    try:
        timestamp_us = None if stamp == NILVALUE else parse_ts(stamp)
    except ProtocolError as exc:
        raise _fail(f"TIMESTAMP: {exc}", position) from None
    position = space + 1
    fields: list[bytes | None] = []
    for name, max_len in _HEADER_FIELDS:
        space = data.find(b" ", position)
        if space < 0:
            raise _fail(f"the message ends inside the header, at {name}", position)
        fields.append(_check_field(name, data[position:space], max_len, position))
        position = space + 1
    first = data[position : position + 1]
    if first == b"-":
        structured_data: tuple[SDElement, ...] = ()
        position += 1
    elif first == b"[":
        structured_data, position = parse_structured_data(data, position, True)
    else:
        raise _fail(f"STRUCTURED-DATA must be '-' or '[', found {first!r}", position)
    if position == len(data):
        msg, bom = b"", False
    elif data[position] == 0x20:
        msg, bom = _finish_msg(data[position + 1 :], True, position + 1)
    else:
        raise _fail("STRUCTURED-DATA must be followed by a space and MSG, or end", position)
    hostname, app_name, procid, msgid = fields
    return SyslogMessage(
        pri, version, timestamp_us, hostname, app_name, procid, msgid, structured_data, msg, bom
    )


def _lenient_token(data: bytes, position: int) -> tuple[bytes, int]:
    """The next space-delimited token (skipping a run of spaces) and the index after it."""
    size = len(data)
    while position < size and data[position] == 0x20:
        position += 1
    space = data.find(b" ", position)
    if space < 0:
        space = size
    return data[position:space], space


def _lenient_field(token: bytes) -> bytes | None:
    return None if token in (NILVALUE, b"") else token


def parse_lenient(data: bytes) -> SyslogMessage:
    """Parse what a real sender produced; see the module doc for what is tolerated."""
    pri, position = _parse_pri(data, False)
    version_digits, after = _lenient_token(data, position)
    if not (version_digits.isdigit() and len(version_digits) <= 3 and after > position):
        msg, bom = _finish_msg(data[position:], False, position)
        return SyslogMessage(pri, 0, None, None, None, None, None, (), msg, bom)
    stamp, position = _lenient_token(data, after)
    try:
        timestamp_us = None if stamp in (NILVALUE, b"") else parse_ts(stamp.upper(), lenient=True)
    except ProtocolError:
        timestamp_us = None
    fields: list[bytes | None] = []
    for _ in _HEADER_FIELDS:
        token, position = _lenient_token(data, position)
        fields.append(_lenient_field(token))
    hostname, app_name, procid, msgid = fields
    size = len(data)
    while position < size and data[position] == 0x20:
        position += 1
    structured_data: tuple[SDElement, ...] = ()
    rest = data[position:]
    if rest == b"-" or rest.startswith(b"- "):
        position += 2
    elif rest.startswith(b"["):
        try:
            structured_data, end = parse_structured_data(data, position, False)
        except SyslogParseError:
            pass  # not structured data after all: it is the start of MSG
        else:
            if end == size or data[end] == 0x20:
                position = end + 1
            else:
                structured_data = ()
    msg, bom = _finish_msg(data[position:], False, position)
    return SyslogMessage(
        pri,
        int(version_digits),
        timestamp_us,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        msg,
        bom,
    )
