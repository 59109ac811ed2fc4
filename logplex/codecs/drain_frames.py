"""The frames drains send: one formatter for the syslog layout (DESIGN 5.1) and the
logplex-1 layout of HTTPS drains (DESIGN 5.2).

Both layouts are an RFC 5424 message with fixed header parts around a timestamp:

- syslog (TCP/TLS): ``LEN SP <PRI>1 SP TS SP d.TOKEN SP SOURCE SP PS SP - SP - SP MSG LF``
  (RFC 6587 section 3.4.1 octet counting; LEN counts every byte after its space, the LF
  included); UDP sends the same message without ``LEN SP`` and LF, cut to 2048 bytes
  (RFC 5426), never inside a UTF-8 sequence;
- logplex-1 (HTTPS): Heroku's layout without a STRUCTURED-DATA field,
  ``LEN SP <PRI>1 SP TS SP host SP SOURCE SP PS SP - SP MSG LF``.

The drain token (syslog) or ``host`` (HTTPS) goes in HOSTNAME, the source in APP-NAME, the
ps in PROCID. Header fields must be PRINTUSASCII (33..126) of 1..N bytes (RFC 5424 section
6: HOSTNAME 255, APP-NAME 48, PROCID 128, MSGID 32) and PRI 0..191; anything else raises
``EncodeError``. The header parts of each distinct (first field, PRI, source, ps) are
validated and formatted once and cached, so per message what is left is a timestamp and one
join; ``frames_with_headers`` formats a whole batch, through ``logplex.codecs._cframes``
when it is built (same frames, same errors, about five times faster), else in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from logplex.codecs.errors import EncodeError
from logplex.codecs.lines import split_utf8_chunks
from logplex.codecs.records import Message
from logplex.codecs.timestamps import MICROS_UTC, format_ts, millisecond_prefix

__all__ = [
    "APP_NAME_MAX",
    "C_FORMATTER",
    "HOSTNAME_MAX",
    "LENGTH_PREFIXES",
    "MSGID_MAX",
    "PRI_MAX",
    "PROCID_MAX",
    "TS_BYTES",
    "UDP_MAX_BYTES",
    "check_header_field",
    "check_pri",
    "encode_https_body",
    "frames_with_headers",
    "https_frame",
    "https_frames",
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
TS_BYTES: Final = 32  # 2026-11-27T20:39:33.123456+00:00
_HEADER_CACHE_LIMIT: Final = 4096

_PRINTUSASCII: Final = bytes(range(33, 127))

# b"N " for every length a frame of a 10240-byte message can reach with the longest header
# fields: one list index per frame instead of formatting an int.
LENGTH_PREFIXES: Final = [b"%d " % n for n in range(10240 + 1024)]


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


# (first field, PRI, source, ps) -> (b"<PRI>1 ", the part between timestamp and MSG, the
# frame's byte count without MSG: everything after ``LEN SP``, timestamp and LF included)
HeaderKey = tuple[bytes, int, bytes, bytes]
HeaderParts = tuple[bytes, bytes, int]
MakeHeader = Callable[[HeaderKey], HeaderParts]

_syslog_headers: dict[HeaderKey, HeaderParts] = {}
_https_headers: dict[HeaderKey, HeaderParts] = {}


def _header_parts(
    key: HeaderKey, headers: dict[HeaderKey, HeaderParts], hostname_field: str, nil_fields: bytes
) -> HeaderParts:
    """Check a header's fields once, then remember its parts (bounded) for later frames."""
    hostname, pri, source, ps = key
    check_pri(pri)
    check_header_field(hostname_field, hostname, HOSTNAME_MAX)
    check_header_field("APP-NAME (source)", source, APP_NAME_MAX)
    check_header_field("PROCID (ps)", ps, PROCID_MAX)
    head = b"<%d>1 " % pri
    middle = b" %b %b %b %b" % (hostname, source, ps, nil_fields)
    parts = (head, middle, len(head) + TS_BYTES + len(middle) + 1)
    if len(headers) >= _HEADER_CACHE_LIMIT:
        headers.clear()
    headers[key] = parts
    return parts


def _syslog_header(key: HeaderKey) -> HeaderParts:
    """5.1: the drain token in HOSTNAME, MSGID and STRUCTURED-DATA both NIL."""
    return _header_parts(key, _syslog_headers, "HOSTNAME (drain token)", b"- - ")


def _https_header(key: HeaderKey) -> HeaderParts:
    """5.2: Heroku's layout, with no STRUCTURED-DATA field."""
    return _header_parts(key, _https_headers, "HOSTNAME", b"- ")


def _frame(
    m: Message, first_field: bytes, headers: dict[HeaderKey, HeaderParts], make: MakeHeader
) -> bytes:
    ts_us, pri, source, ps, msg = m
    key = (first_field, pri, source, ps)
    head, middle, fixed = headers.get(key) or make(key)
    return b"".join(
        (str(fixed + len(msg)).encode(), b" ", head, format_ts(ts_us), middle, msg, b"\n")
    )


def syslog_frame(m: Message, drain_token: bytes) -> bytes:
    """One octet-counted syslog-drain frame (DESIGN 5.1), ``LEN SP ... MSG LF``."""
    return _frame(m, drain_token, _syslog_headers, _syslog_header)


def syslog_frames(messages: list[Message], drain_token: bytes) -> list[bytes]:
    """``[syslog_frame(m, drain_token) for m in messages]``, for a whole batch at once.

    A drain buffer keeps one frame per message (it cuts writes and counts acknowledged
    frames by frame), so this returns the list.
    """
    return frames_with_headers(messages, drain_token, _syslog_headers, _syslog_header)


def syslog_datagram(m: Message, drain_token: bytes) -> bytes:
    """One UDP syslog message (DESIGN 5.1): no LEN, no LF, at most 2048 bytes.

    A longer message is cut at 2048 bytes, never inside a UTF-8 sequence.
    """
    ts_us, pri, source, ps, msg = m
    key = (drain_token, pri, source, ps)
    head, middle, _ = _syslog_headers.get(key) or _syslog_header(key)
    datagram = b"".join((head, format_ts(ts_us), middle, msg))
    if len(datagram) > UDP_MAX_BYTES:
        datagram = split_utf8_chunks(datagram, UDP_MAX_BYTES)[0]
    return datagram


def https_frame(m: Message, host: bytes = b"host") -> bytes:
    """One HTTPS-drain frame (DESIGN 5.2), ``LEN SP <PRI>1 ... MSG LF``."""
    return _frame(m, host, _https_headers, _https_header)


def https_frames(messages: list[Message], host: bytes = b"host") -> list[bytes]:
    """``[https_frame(m, host) for m in messages]``, for a whole batch at once.

    A drain buffer keeps one frame per message (it cuts posts and counts losses by frame),
    so this returns the list, not the joined body.
    """
    return frames_with_headers(messages, host, _https_headers, _https_header)


def encode_https_body(messages: list[Message], host: bytes = b"host") -> tuple[bytes, int]:
    """The logplex-1 body of ``messages`` and its message count (``Logplex-Msg-Count``)."""
    return b"".join(https_frames(messages, host)), len(messages)


# --- the batch formatter ------------------------------------------------------------------


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
        make_header: MakeHeader,
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
    [list[Message], bytes, dict[HeaderKey, HeaderParts], MakeHeader], list[bytes]
]


def frames_with_headers_c(
    messages: list[Message],
    first_field: bytes,
    headers: dict[HeaderKey, HeaderParts],
    make_header: MakeHeader,
) -> list[bytes]:
    """``frames_with_headers_python`` through ``logplex.codecs._cframes`` (same frames, same
    errors, about five times faster); a batch it finds unusual goes the Python way."""

    def parts_of(pri: int, source: bytes, ps: bytes) -> HeaderParts:
        key = (first_field, pri, source, ps)
        return headers.get(key) or make_header(key)

    frames = _c_frames(messages, parts_of, millisecond_prefix)
    if frames is None:
        return frames_with_headers_python(messages, first_field, headers, make_header)
    return frames


def frames_with_headers_python(
    messages: list[Message],
    first_field: bytes,
    headers: dict[HeaderKey, HeaderParts],
    make_header: MakeHeader,
) -> list[bytes]:
    """Octet-counted frames ``LEN SP head TS middle MSG LF`` of a batch, for both drain
    layouts (``first_field`` is the syslog drain token or the HTTPS ``host``).

    The header parts are looked up only when (PRI, source, ps) differs from the previous
    message's and the timestamp prefix only when the millisecond does: in a router batch both
    mostly repeat, and what is left per message is one join of seven parts. When the ps
    alternates (several dynos of one app interleaved), the parts are found by ps alone in a
    dict of this batch's (PRI, source): a bytes key whose hash is cached, where the shared
    cache's 4-tuple key would be built, hashed and compared per message.
    """
    length_prefixes = LENGTH_PREFIXES
    longest = len(length_prefixes)
    ts_tails = MICROS_UTC
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
            ts_prefix = millisecond_prefix(ts_ms)
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
    frames_with_headers: FramesWithHeaders = frames_with_headers_python
else:
    frames_with_headers = frames_with_headers_c
#: whether drain frames are formatted by the C module (``logplex serve`` warns when not)
C_FORMATTER: Final = frames_with_headers is frames_with_headers_c
