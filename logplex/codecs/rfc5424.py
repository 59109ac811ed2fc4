r"""RFC 5424 syslog messages: two parsers, and the syslog-drain encoder's names (DESIGN 5.1).

Encoding (DESIGN 5.1) is ``logplex.codecs.drain_frames``, which formats both drain layouts:
``syslog_frame``, ``syslog_frames`` and ``syslog_datagram`` are importable from here too,
with the RFC 5424 field limits and ``check_header_field``.

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
from dataclasses import dataclass
from typing import Final

# The encoder lives in drain_frames, which the HTTPS layout shares; it is also this
# format's public face, so these names stay importable from here.
from logplex.codecs.drain_frames import (
    APP_NAME_MAX,
    C_FORMATTER,
    HOSTNAME_MAX,
    MSGID_MAX,
    PRI_MAX,
    PROCID_MAX,
    UDP_MAX_BYTES,
    check_header_field,
    syslog_datagram,
    syslog_frame,
    syslog_frames,
)
from logplex.codecs.errors import ProtocolError, SyslogParseError
from logplex.codecs.timestamps import parse_ts

__all__ = [
    "APP_NAME_MAX",
    "C_FORMATTER",
    "HOSTNAME_MAX",
    "MSGID_MAX",
    "PRI_MAX",
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

# --- parsing ----------------------------------------------------------------------------

_PRINTUSASCII: Final = bytes(range(33, 127))
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
