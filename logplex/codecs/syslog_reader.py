"""Reading octet-counted syslog frames into channel batches (RFC 6587 3.4.1, RFC 5424).

Logplex's raw TCP input: each frame is ``LEN <PRI>1 TS HOST t.TOKEN PS MSGID SD MSG``
(DESIGN 3, "Ingest fields"). The token in APP-NAME picks the channel and source; PRI,
TIMESTAMP (the receive time ``now_us`` when it is NIL or unreadable), PROCID (the ps) and MSG
are kept, HOSTNAME, MSGID and STRUCTURED-DATA are dropped, and a MSG holding LF becomes one
message per line. Frames of one read are grouped by channel in arrival order
(``ChannelRuns``) and handed back as lists, with counts of what was skipped (``ReadOutcome``).
Nothing here does I/O or reads a clock: the listener (``logplex.ingest.syslog``) owns the
socket, the time and the metrics.

Entry points:

- ``frames_to_batches(frames, lookup_token, now_us)``: the reference reader, one frame at a
  time through the input-layout parser with the lenient RFC 5424 parser as fallback;
- ``read_decoder(decoder, lookup_token, now_us, data)``: what the listener calls per read,
  with the result of ``decoder.feed(data)``, ``decoder.frames()``, ``frames_to_batches``.

Speed: ``read_decoder`` reads the whole frames at the start of a read in one pass and leaves
only the rest to the decoder. ``read_common_frames`` takes the frames of the common shape
(any RFC 5424 header whose fields split at spaces, see ``_syslogscan.c`` beside this module)
through the C scanner, validating each distinct header part once and zipping the records in
C; ``read_batches`` sends the frames it does not take, one at a time, through a frame loop
that reuses the PRI, second and route of earlier frames. Without the C module a regex cut
(``scan_common_python``) takes reads made only of ``- -``/``+00:00`` frames. All give exactly
what ``frames_to_batches`` gives (hypothesis properties in tests/codecs/test_syslog_reader.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from operator import add, getitem, itemgetter, sub
from typing import Final, Protocol, cast

from logplex.codecs.errors import EncodeError, Logplex1Error, ProtocolError
from logplex.codecs.lines import split_embedded_lines
from logplex.codecs.logplex1 import InputFrame, parse_input_frame
from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.octet import _counts as _octet_counts  # the b"1"..b"10240" table
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import BOM, PROCID_MAX, check_header_field, parse_lenient

NIL_PS: Final = b"-"


class TokenRoute(Protocol):
    """What a token lookup gives: the channel it writes into and the source it writes as."""

    @property
    def channel(self) -> str: ...
    @property
    def source(self) -> bytes: ...


TokenLookup = Callable[[str], TokenRoute | None]
# Never appended to: every reader starts a run (ChannelRuns.start) before its first record.
_NO_RECORDS: Final[list[Message]] = []


class ChannelRuns:
    """Records grouped into one batch per run of a channel, in arrival order.

    Readers call ``start(channel)`` only when the channel changes and append records to the
    list it returns, so grouping costs nothing per record: a read of one channel is one
    batch, and a read mixing channels is one batch per run, never reordered.
    """

    __slots__ = ("batches",)

    def __init__(self, batches: list[tuple[str, list[Message]]]) -> None:
        self.batches = batches

    def start(self, channel: str) -> Callable[[Message], None]:
        """Begin a run of ``channel``; returns the ``append`` of its batch."""
        current: list[Message] = []
        self.batches.append((channel, current))
        return current.append


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
    lookup_token: TokenLookup,
    now_us: int,
) -> ReadOutcome:
    """Parse frames and group consecutive ones of the same channel into one batch each."""
    outcome = ReadOutcome([])
    runs = ChannelRuns(outcome.batches)
    channel: str | None = None
    append = _NO_RECORDS.append  # replaced by the first run's before any record
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
                channel = info.channel
                append = runs.start(channel)
        if source is None:
            outcome.unknown_tokens += 1
            continue
        append((ts_us, pri, source, ps or NIL_PS, msg))
        if 0x0A in msg:  # LF; the int test is ~10x cheaper than a bytes one in CPython 3.11
            has_lf = True
    if has_lf:
        outcome.batches = [(name, split_embedded_lines(batch)) for name, batch in runs.batches]
    return outcome


# "<PRI>1 YYYY-MM-DDTHH:MM:SS." of a frame read by the input-layout parser, with its PRI and
# second: a frame that starts with the same bytes and goes on with six fraction digits and
# "+00:00 " has that PRI and that second. The placeholder never starts a frame.
_NO_PREFIX: Final = (b"\xff", 0, 0)
# routes.get(key, _NOT_ROUTED): a header key not seen yet in this read
_NOT_ROUTED: Final = ("", b"", b"")
_NIL_MSGID_AND_SD: Final = b" - - "
_UTC_AND_SPACE: Final = b"+00:00 "
_LF: Final = 0x0A  # the int test is ~10x cheaper than a bytes one in CPython 3.11
Route = tuple[str, bytes, bytes]  # (channel, source, ps)


def _fast_keys(frame: bytes, parsed: InputFrame) -> tuple[tuple[bytes, int, int], bytes | None]:
    """What a frame the input-layout parser accepted lets later frames skip.

    The prefix ``<PRI>1 YYYY-MM-DDTHH:MM:SS.`` (with PRI and the second in microseconds)
    when its TIMESTAMP has six fraction digits and ``+00:00``; and the header key
    ``HOSTNAME SP APP-NAME SP PROCID`` when MSGID and STRUCTURED-DATA are both ``-``
    (the fields were just validated, and a key of three space-free fields followed by
    `` - - `` splits the same way in every frame).
    """
    parts = frame.split(b" ", 7)
    head, stamp = parts[0], parts[1]
    prefix = _NO_PREFIX
    if len(stamp) == 32 and stamp[19] == 0x2E and stamp.endswith(b"+00:00"):
        fraction = stamp[20:26]
        # The parser accepted this stamp, so these are digits; checked all the same, since
        # int() of anything else would raise out of a reader that must never raise.
        if fraction.isdigit():  # pragma: no branch
            prefix = (b"%b %b" % (head, stamp[:20]), parsed.pri, parsed.ts_us - int(fraction, 10))
    key = None
    if len(parts) == 8 and parts[5] == b"-" and parts[6] == b"-":
        key = b" ".join(parts[2:5])
    return prefix, key


# The header of a frame in the common shape, from the "<" after MSG-LEN SP: <PRI>1 and the
# second of the TIMESTAMP, its six fraction digits and +00:00, then HOSTNAME APP-NAME PROCID,
# then MSGID and STRUCTURED-DATA both "-". The leading "<" lets the regex engine skip to
# candidates at C speed. ``split`` hands out the groups and, between two headers, the MSG of
# the first followed by the MSG-LEN SP of the next: the counts then prove or refute the cut.
# The groups only delimit (``[^ ]`` is the cheapest class to run): every distinct prefix and
# key is validated by ``parse_input_frame`` before any frame that carries it is used.
_COMMON_HEADER: Final = re.compile(
    rb"(<[0-9]{1,3}>1 [^ ]{19}\.)([0-9]{6})\+00:00 ([^ ]+ [^ ]+ [^ ]+) - - "
)
_GROUPS: Final = 4  # pieces per header in _COMMON_HEADER.split: 3 groups, then what follows
# Header bytes besides the prefix and key groups: six fraction digits, "+00:00 ", " - - ".
_FIXED_BYTES: Final = 6 + 7 + 5
_KEY_PROBE_HEAD: Final = b"<0>1 1970-01-01T00:00:00.000000+00:00 "
_STAMP_PROBE_TAIL: Final = b" h - - - - "
_ZEROED_FRACTION_AND_UTC: Final = b"000000+00:00"
_NIL_MSGID_AND_SD_KEY: Final = b" - -"


_count_space_table: dict[bytes, int] = {}


def _counts_with_space() -> dict[bytes, int]:
    """b"1 ".."10240 " -> int, built on first use from the octet module's table."""
    if not _count_space_table:
        _count_space_table.update((count + b" ", n) for count, n in _octet_counts().items())
    return _count_space_table


def _clean_msg(msg: bytes) -> bytes:
    """MSG as the input-layout parser leaves it: one trailing LF and a leading BOM off."""
    if msg[-1:] == b"\n":
        msg = msg[:-1]
    if msg[:3] == BOM:
        msg = msg[3:]
    return msg


ScanResult = tuple[int, list[bytes], list[int], list[bytes], list[bytes], int]
Scanner = Callable[[bytes, int, int], ScanResult]
# ScanResult flags: some MSG holds an LF; some MSG may start with a BOM
_HAS_LF: Final = 1
_HAS_BOM: Final = 2
_NOTHING_SCANNED: Final[ScanResult] = (0, [], [], [], [], 0)


def scan_common_python(data: bytes, max_frame_bytes: int, start: int = 0) -> ScanResult:
    """The frames of ``data`` in the common shape, cut with one regex ``split``.

    What ``logplex.codecs._syslogscan.scan_common`` gives, in pure Python: ``(end, stamps,
    fractions, keys, msgs, flags)`` for the whole frames at the start of ``data`` (see
    ``read_common_frames``), for the narrower shape of a ``+00:00`` TIMESTAMP with six
    fraction digits. Unlike the C scanner it takes the frames of a read all or none (and
    then leaves a frame cut at the end of the read): the split finds header-like text
    anywhere, so the counts must prove every cut, and one refuted cut refutes the read.
    """
    if start:
        rest = data[start:]
        end, stamps, fractions, keys, msgs, flags = scan_common_python(rest, max_frame_bytes)
        return start + end, stamps, fractions, keys, msgs, flags
    parts = _COMMON_HEADER.split(data)
    if len(parts) == 1:
        return _NOTHING_SCANNED
    pieces = parts[0::_GROUPS]
    prefixes = parts[1::_GROUPS]
    fraction_digits = parts[2::_GROUPS]
    keys = parts[3::_GROUPS]
    first = pieces[0]
    digits = len(first) - 1
    if not 1 <= digits <= 5:
        return _NOTHING_SCANNED
    # "MSG-LEN SP" ends every piece but the last: one lookup checks the digits and the space
    count_slice = slice(-digits - 1, None)
    msg_slice = slice(0, -digits - 1)
    slice_all = cast("Callable[[bytes, slice], bytes]", getitem)
    between = pieces[1:-1]  # MSG of one frame, then MSG-LEN SP of the next
    counts = [first, *map(slice_all, between, repeat(count_slice))]
    msgs = [*map(slice_all, between, repeat(msg_slice)), pieces[-1]]
    declared = list(map(_counts_with_space().get, counts))
    if None in declared:
        return _NOTHING_SCANNED
    lengths = cast("list[int]", declared)
    if max(lengths) > max_frame_bytes:
        return _NOTHING_SCANNED
    prefix_bytes = set(map(len, set(prefixes)))
    key_bytes = set(map(len, set(keys)))
    # MSG-LEN - len(MSG) - len(prefix) - len(key) is _FIXED_BYTES wherever the cut is right
    if len(prefix_bytes) == 1 and len(key_bytes) == 1:  # one header length: no per-frame len
        fixed_bytes = _FIXED_BYTES + prefix_bytes.pop() + key_bytes.pop()
        spare = list(map(sub, lengths, map(len, msgs)))
    else:
        fixed_bytes = _FIXED_BYTES
        spare = list(
            map(
                sub,
                map(sub, map(sub, lengths, map(len, prefixes)), map(len, keys)),
                map(len, msgs),
            )
        )
    last = spare.pop()
    if spare.count(fixed_bytes) != len(spare):
        return _NOTHING_SCANNED
    taken = len(data)
    if last != fixed_bytes:
        # The last piece also holds what follows the last frame, or that frame is cut.
        tail = msgs[-1]
        msg_bytes = len(tail) + last - fixed_bytes
        if msg_bytes < 0 or (msg_bytes > len(tail) and len(msgs) == 1):
            return _NOTHING_SCANNED
        if msg_bytes > len(tail):  # still arriving: leave it, with its header, for later
            taken -= len(counts[-1]) + len(prefixes[-1]) + len(keys[-1]) + len(tail)
            taken -= _FIXED_BYTES
            for column in (prefixes, fraction_digits, keys, msgs):
                column.pop()
        else:
            taken -= len(tail) - msg_bytes
            msgs[-1] = tail[:msg_bytes]
    blob = b"".join(msgs)
    flags = (_HAS_LF if _LF in blob else 0) | (_HAS_BOM if BOM[0] in blob else 0)
    stamp_of = {prefix: prefix + _ZEROED_FRACTION_AND_UTC for prefix in set(prefixes)}
    stamps = list(map(stamp_of.__getitem__, prefixes))
    key_of = {key: key + _NIL_MSGID_AND_SD_KEY for key in set(keys)}
    full_keys = list(map(key_of.__getitem__, keys))
    return taken, stamps, list(map(int, fraction_digits)), full_keys, msgs, flags


def _c_scanner() -> Scanner | None:
    try:
        from logplex.codecs._syslogscan import scan_common
    except ImportError:  # built without a C compiler (setup.py): the regex cut serves
        return None
    return scan_common


C_SCANNER: Final = _c_scanner()
SCANNER: Final[Scanner] = C_SCANNER or scan_common_python


# What the input-layout parser says of a stamp or key is a pure function of its bytes: the
# answers are remembered across reads and connections, the least recently used dropped past
# _CHECKED_LIMIT (a sender with a new key per frame fills it).
_CHECKED_LIMIT: Final = 4096


@functools.lru_cache(maxsize=_CHECKED_LIMIT)
def _check_stamp(stamp: bytes) -> tuple[int, int] | None:
    """(PRI, TIMESTAMP in µs) of a stamp ``<PRI>1 TIMESTAMP`` with a zeroed fraction."""
    try:
        probe = parse_input_frame(stamp + _STAMP_PROBE_TAIL)
    except Logplex1Error:
        return None
    return probe.pri, probe.ts_us


@functools.lru_cache(maxsize=_CHECKED_LIMIT)
def _check_key(key: bytes) -> tuple[bytes | None, bytes] | None:
    """(token, ps) of a key ``HOST APP PROCID MSGID SD``, None when the parser refuses it
    or ends its STRUCTURED-DATA elsewhere than the scanner did."""
    try:
        probe = parse_input_frame(_KEY_PROBE_HEAD + key + b" ")
    except Logplex1Error:
        return None
    return None if probe.msg else (probe.app_name, probe.ps)


def read_common_frames(
    data: bytes,
    max_frame_bytes: int,
    lookup_token: TokenLookup,
    scan: Scanner = SCANNER,
    start: int = 0,
) -> tuple[ReadOutcome, int] | None:
    """``read_batches`` for the frames from ``start`` that have the common shape.

    The common shape: ``MSG-LEN SP <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`` (see
    logplex/codecs/_syslogscan.c; ``scan_common_python`` takes only ``+00:00`` six-digit timestamps
    and ``-`` MSGID and SD). ``scan`` cuts those frames by their counts, so a header-like
    text inside a MSG never starts a frame, and gives each frame's stamp (``<PRI>1
    TIMESTAMP`` with the fraction digits zeroed), fraction in microseconds, key (``HOST APP
    PROCID MSGID SD``) and MSG. Each distinct stamp and key is then validated once by
    ``parse_input_frame``, which also gives the stamp's PRI and second (its zone applied)
    and must end the key's STRUCTURED-DATA where the scanner did; each token is looked up
    once;
    the records are zipped in C when the read is one known channel, and grouped by channel
    runs otherwise. Returns the outcome and the offset just past the frames taken (an
    empty outcome and ``start`` when the first frame is not in the shape), or None when a
    stamp or key is invalid (the frame-by-frame reader then takes the rest of the read).
    """
    taken, stamps, fractions, keys, msgs, flags = scan(data, max_frame_bytes, start)
    if not msgs:
        return ReadOutcome([]), start
    seconds: dict[bytes, tuple[int, int]] = {}
    for stamp in set(stamps):
        pri_second = _check_stamp(stamp)
        if pri_second is None:
            return None
        seconds[stamp] = pri_second
    routes: dict[bytes, Route | None] = {}
    channels: set[str | None] = set()
    for key in set(keys):
        token_ps = _check_key(key)
        if token_ps is None:
            return None
        token, ps = token_ps
        info = lookup_token(token.decode("ascii", "replace")) if token else None
        route = None if info is None else (info.channel, info.source, ps)
        routes[key] = route
        channels.add(None if route is None else route[0])
    if flags:
        msgs = [_clean_msg(msg) for msg in msgs]
    if len(seconds) == 1:
        pri, second_us = seconds[stamps[0]]
        timestamps = list(map(second_us.__add__, fractions))
        pris: Iterable[int] = repeat(pri)
    else:
        pri_seconds = list(map(seconds.__getitem__, stamps))
        timestamps = list(map(add, map(itemgetter(1), pri_seconds), fractions))
        pris = map(itemgetter(0), pri_seconds)
    outcome = ReadOutcome([])
    if len(channels) == 1 and None not in channels:
        if len(routes) == 1:
            channel, source, ps = cast("Route", routes[keys[0]])
            records = list(zip(timestamps, pris, repeat(source), repeat(ps), msgs, strict=False))
        else:
            channel = cast("str", channels.pop())
            route_of = list(map(routes.__getitem__, keys))
            sources = map(itemgetter(1), cast("list[Route]", route_of))
            ps_of = map(itemgetter(2), cast("list[Route]", route_of))
            records = list(zip(timestamps, pris, sources, ps_of, msgs, strict=False))
        outcome.batches.append((channel, records))
    else:
        _group_by_channel(outcome, zip(timestamps, pris, keys, msgs, strict=False), routes)
    if flags & _HAS_LF:
        outcome.batches = [(name, split_embedded_lines(batch)) for name, batch in outcome.batches]
    return outcome, taken


def _group_by_channel(
    outcome: ReadOutcome,
    frames: Iterable[tuple[int, int, bytes, bytes]],
    routes: dict[bytes, Route | None],
) -> None:
    """Append the records of ``frames`` (ts, pri, key, msg) to ``outcome`` as one batch per
    run of a channel; frames of an unknown token are counted and skipped."""
    runs = ChannelRuns(outcome.batches)
    channel: str | None = None
    append = _NO_RECORDS.append  # replaced by the first run's before any record
    for ts_us, pri, key, msg in frames:
        route = routes[key]
        if route is None:
            outcome.unknown_tokens += 1
            continue
        if route[0] != channel:
            channel = route[0]
            append = runs.start(channel)
        append((ts_us, pri, route[1], route[2], msg))


def read_batches(
    data: bytes,
    max_frame_bytes: int,
    lookup_token: TokenLookup,
    now_us: int,
    scan: Scanner = SCANNER,
) -> tuple[ReadOutcome, int]:
    """Cut and parse the whole octet-counted frames at the start of ``data`` in one pass.

    Returns what ``frames_to_batches`` returns for those frames, and how many bytes they
    took. It stops before anything that is not a complete frame of at most
    ``max_frame_bytes`` with a count of the b"1".."10240" table (garbage, a frame still
    arriving, a longer count): ``OctetFrameDecoder`` goes on from there with its policy.

    ``scan`` takes the frames of the common shape (``read_common_frames``); a frame it
    does not take goes alone through the frame loop (``_read_frame_by_frame``, the parsers
    of ``frames_to_batches`` plus the PRI, second and route of earlier frames), and the
    scanner goes on after it. When the validation refuses what the scanner cut, the frame
    loop reads the rest of the read.
    """
    common = read_common_frames(data, max_frame_bytes, lookup_token, scan)
    if common is None:
        return _read_frame_by_frame(data, max_frame_bytes, lookup_token, now_us)
    outcome, position = common
    size = len(data)
    while position < size:
        # A frame the scanner does not take goes through the frame loop on its own, then
        # the scanner goes on: one odd frame does not slow the rest of the read.
        odd, after = _read_frame_by_frame(
            data, max_frame_bytes, lookup_token, now_us, start=position, max_frames=1
        )
        if after == position:  # garbage, a long count or a frame still arriving
            break
        merge_outcomes(outcome, odd)
        common = read_common_frames(data, max_frame_bytes, lookup_token, scan, after)
        if common is None:  # refused by the validation: the frame loop reads the rest
            rest, position = _read_frame_by_frame(
                data, max_frame_bytes, lookup_token, now_us, start=after
            )
            merge_outcomes(outcome, rest)
            break
        more, position = common
        merge_outcomes(outcome, more)
    return outcome, position


def _read_frame_by_frame(
    data: bytes,
    max_frame_bytes: int,
    lookup_token: TokenLookup,
    now_us: int,
    *,
    start: int = 0,
    max_frames: int = -1,
) -> tuple[ReadOutcome, int]:
    """``read_batches`` one frame at a time (see there), from offset ``start`` and for at
    most ``max_frames`` frames (-1: no limit); returns the offset where it stopped."""
    counts = _octet_counts()
    find = data.find
    startswith = data.startswith
    size = len(data)
    window = len(str(max_frame_bytes)) + 1
    outcome = ReadOutcome([])
    batches = outcome.batches
    routes: dict[bytes, Route | None] = {}
    sources: dict[bytes | None, TokenRoute | None] = {}
    prefix, pri, second_us = _NO_PREFIX
    prefix_bytes = len(prefix)
    runs = ChannelRuns(batches)
    channel: str | None = None
    append = _NO_RECORDS.append  # replaced by the first run's before any record
    has_lf = False
    position = start
    while position < size and max_frames:
        max_frames -= 1
        space = find(b" ", position, position + window)
        length = counts.get(data[position:space]) if space > position else None
        if length is None or length > max_frame_bytes:
            break
        start = space + 1
        end = start + length
        if end > size:
            break
        position = end
        if startswith(prefix, start):
            tail = start + prefix_bytes  # the fraction digits
            key_end = find(_NIL_MSGID_AND_SD, tail + 13, end)
            # key_end > 0 also proves every byte looked at below lies inside the frame.
            if key_end > 0 and startswith(_UTC_AND_SPACE, tail + 6):
                fraction = data[tail : tail + 6]
                route = routes.get(data[tail + 13 : key_end], _NOT_ROUTED)
                if route is not _NOT_ROUTED and fraction.isdigit():
                    if route is None:
                        outcome.unknown_tokens += 1
                        continue
                    msg = data[key_end + 5 : end]
                    if _LF in msg:
                        if msg[-1] == _LF:
                            msg = msg[:-1]
                        has_lf = has_lf or _LF in msg
                    if startswith(BOM, key_end + 5, end):
                        msg = msg[3:]
                    if route[0] != channel:
                        channel = route[0]
                        append = runs.start(channel)
                    append((second_us + int(fraction, 10), pri, route[1], route[2], msg))
                    continue
        # Any other frame: the parsers of frames_to_batches, and what this one teaches.
        frame = data[start:end]
        key = None
        try:
            parsed = parse_input_frame(frame)
        except Logplex1Error:
            try:
                frame_pri, ts_us, token, ps, msg = _parse_frame_leniently(frame, now_us)
            except ProtocolError:
                outcome.malformed += 1
                continue
        else:
            frame_pri, ts_us, token, ps, msg = (
                parsed.pri,
                parsed.ts_us,
                parsed.app_name,
                parsed.ps,
                parsed.msg,
            )
            new_prefix, key = _fast_keys(frame, parsed)
            if new_prefix is not _NO_PREFIX:
                prefix, pri, second_us = new_prefix
                prefix_bytes = len(prefix)
        if token not in sources:
            sources[token] = lookup_token(token.decode("ascii", "replace")) if token else None
        info = sources[token]
        if key is not None:
            routes[key] = None if info is None else (info.channel, info.source, ps)
        if info is None:
            outcome.unknown_tokens += 1
            continue
        if info.channel != channel:
            channel = info.channel
            append = runs.start(channel)
        append((ts_us, frame_pri, info.source, ps or NIL_PS, msg))
        if _LF in msg:
            has_lf = True
    if has_lf:
        outcome.batches = [(name, split_embedded_lines(messages)) for name, messages in batches]
    return outcome, position


def merge_outcomes(first: ReadOutcome, second: ReadOutcome) -> ReadOutcome:
    """``second`` appended to ``first`` in place, as if one read (a channel's batch goes on
    across them); returns ``first``. Both are a read's own, not yet published: no copies."""
    if second.batches:
        batches = first.batches
        if batches and batches[-1][0] == second.batches[0][0]:
            batches[-1][1].extend(second.batches[0][1])
            batches.extend(second.batches[1:])
        else:
            batches.extend(second.batches)
    first.unknown_tokens += second.unknown_tokens
    first.malformed += second.malformed
    return first


_TAKE_BACK_BYTES: Final = 4096


def read_decoder(
    decoder: OctetFrameDecoder,
    lookup_token: TokenLookup,
    now_us: int,
    data: bytes = b"",
    scan: Scanner = SCANNER,
) -> ReadOutcome:
    """Feed ``data`` to ``decoder`` and read every complete frame buffered into batches.

    The whole frames at the start go through ``read_batches`` in one pass; whatever it
    leaves (garbage, a long count, a frame still arriving) goes through the decoder with
    its policy and ``frames_to_batches``: the result is that of ``decoder.feed(data)``,
    ``decoder.frames()`` then ``frames_to_batches``. When the decoder is at a frame start, what
    it holds is taken back and read in front of ``data``, and only what is left is fed (one
    copy of the read instead of three). A frame still arriving is taken back only in front
    of a read of at least ``_TAKE_BACK_BYTES``: a sender trickling a long frame byte by byte
    must not cost a copy of it per byte.
    """
    max_frame_bytes = decoder.max_frame_bytes
    # the start of a frame cut by the previous read, mostly
    held = decoder.take_back(incomplete=len(data) >= _TAKE_BACK_BYTES)
    if held:
        data = held + data
    if decoder.is_empty:
        outcome, taken = read_batches(data, max_frame_bytes, lookup_token, now_us, scan)
        decoder.advance(taken)
        decoder.feed(data[taken:] if taken else data)
    else:
        decoder.feed(data)
        outcome, taken = read_batches(
            decoder.complete_bytes(), max_frame_bytes, lookup_token, now_us, scan
        )
        decoder.consume(taken)
    frames = decoder.frames()
    if frames:
        outcome = merge_outcomes(outcome, frames_to_batches(frames, lookup_token, now_us))
    return outcome
