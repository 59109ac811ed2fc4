"""Batch encoders ``logplex1.https_frames`` and ``rfc5424.syslog_frames`` (DESIGN 5.1, 5.2).

Expected bytes are written from the spec. Each table batch is chosen to cross the places
where the encoders reuse parts: repeated and changing (PRI, source, ps), the same
millisecond, the next millisecond, the next second. Every encoded stream is also fed three
ways (whole, byte by byte, with trailing garbage) through the RFC 6587 decoder and read back
by the receivers' parsers.
"""

from __future__ import annotations

import pytest
from codec_vectors import GARBAGE, events_three_ways

from logplex.codecs import logplex1, rfc5424
from logplex.codecs.errors import EncodeError, OctetFramingError
from logplex.codecs.octet import OctetFrameDecoder
from logplex.codecs.records import Message

TS_US = 1_795_811_973_123_456  # 2026-11-27T20:39:33.123456+00:00
TOKEN = b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"
SYSLOG_MIDDLE = b" d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc app web.1 - - "

# (name, batch, https frames, syslog frames)
TABLE: list[tuple[str, list[Message], list[bytes], list[bytes]]] = [
    ("empty batch", [], [], []),
    (
        "DESIGN example alone",
        [(TS_US, 190, b"app", b"web.1", b"hello")],
        [b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"],
        [b"99 <190>1 2026-11-27T20:39:33.123456+00:00" + SYSLOG_MIDDLE + b"hello\n"],
    ),
    (
        "one header, same millisecond, next millisecond, next second",
        [
            (TS_US, 190, b"app", b"web.1", b"a"),
            (TS_US + 1, 190, b"app", b"web.1", b"bb"),
            (TS_US + 544, 190, b"app", b"web.1", b"c"),
            (TS_US + 1_000_000, 190, b"app", b"web.1", b""),
        ],
        [
            b"59 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - a\n",
            b"60 <190>1 2026-11-27T20:39:33.123457+00:00 host app web.1 - bb\n",
            b"59 <190>1 2026-11-27T20:39:33.124000+00:00 host app web.1 - c\n",
            b"58 <190>1 2026-11-27T20:39:34.123456+00:00 host app web.1 - \n",
        ],
        [
            b"95 <190>1 2026-11-27T20:39:33.123456+00:00" + SYSLOG_MIDDLE + b"a\n",
            b"96 <190>1 2026-11-27T20:39:33.123457+00:00" + SYSLOG_MIDDLE + b"bb\n",
            b"95 <190>1 2026-11-27T20:39:33.124000+00:00" + SYSLOG_MIDDLE + b"c\n",
            b"94 <190>1 2026-11-27T20:39:34.123456+00:00" + SYSLOG_MIDDLE + b"\n",
        ],
    ),
    (
        "PRI, ps and source change in turn within one millisecond, then come back",
        [
            (TS_US, 190, b"app", b"web.1", b"x"),
            (TS_US, 187, b"app", b"web.1", b"x"),
            (TS_US, 187, b"app", b"web.22", b"x"),
            (TS_US, 187, b"heroku", b"web.22", b"x"),
            (TS_US + 2, 190, b"app", b"web.1", b"x"),
        ],
        [
            b"59 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - x\n",
            b"59 <187>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - x\n",
            b"60 <187>1 2026-11-27T20:39:33.123456+00:00 host app web.22 - x\n",
            b"63 <187>1 2026-11-27T20:39:33.123456+00:00 host heroku web.22 - x\n",
            b"59 <190>1 2026-11-27T20:39:33.123458+00:00 host app web.1 - x\n",
        ],
        [
            b"95 <190>1 2026-11-27T20:39:33.123456+00:00" + SYSLOG_MIDDLE + b"x\n",
            b"95 <187>1 2026-11-27T20:39:33.123456+00:00" + SYSLOG_MIDDLE + b"x\n",
            b"96 <187>1 2026-11-27T20:39:33.123456+00:00 " + TOKEN + b" app web.22 - - x\n",
            b"99 <187>1 2026-11-27T20:39:33.123456+00:00 " + TOKEN + b" heroku web.22 - - x\n",
            b"95 <190>1 2026-11-27T20:39:33.123458+00:00" + SYSLOG_MIDDLE + b"x\n",
        ],
    ),
    (
        "timestamps going back, the epoch, a one-digit PRI",
        [
            (TS_US + 5000, 0, b"a", b"b", b"z"),
            (0, 0, b"a", b"b", b"z"),
            (TS_US + 5000, 0, b"a", b"b", "é".encode()),
        ],
        [
            b"51 <0>1 2026-11-27T20:39:33.128456+00:00 host a b - z\n",
            b"51 <0>1 1970-01-01T00:00:00.000000+00:00 host a b - z\n",
            b"52 <0>1 2026-11-27T20:39:33.128456+00:00 host a b - \xc3\xa9\n",
        ],
        [
            b"87 <0>1 2026-11-27T20:39:33.128456+00:00 " + TOKEN + b" a b - - z\n",
            b"87 <0>1 1970-01-01T00:00:00.000000+00:00 " + TOKEN + b" a b - - z\n",
            b"88 <0>1 2026-11-27T20:39:33.128456+00:00 " + TOKEN + b" a b - - \xc3\xa9\n",
        ],
    ),
]
IDS = [name for name, *_ in TABLE]


@pytest.mark.parametrize(("name", "batch", "https", "syslog"), TABLE, ids=IDS)
def test_https_frames_table(
    name: str, batch: list[Message], https: list[bytes], syslog: list[bytes]
) -> None:
    assert logplex1.https_frames(batch) == https
    assert [logplex1.https_frame(message) for message in batch] == https


@pytest.mark.parametrize(("name", "batch", "https", "syslog"), TABLE, ids=IDS)
def test_syslog_frames_table(
    name: str, batch: list[Message], https: list[bytes], syslog: list[bytes]
) -> None:
    assert rfc5424.syslog_frames(batch, TOKEN) == syslog
    assert [rfc5424.syslog_frame(message, TOKEN) for message in batch] == syslog


def payloads_three_ways(stream: bytes) -> list[bytes]:
    """The frames' payloads of ``stream``, the same whichever way it is fed."""

    def make() -> OctetFrameDecoder:
        return OctetFrameDecoder(20_000, "strict")

    whole, bytewise, garbage_decoder = events_three_ways(
        make, OctetFrameDecoder.feed, OctetFrameDecoder.frames, stream
    )
    assert bytewise == whole
    if whole:  # the frames before the garbage come out first, then the error
        assert garbage_decoder.frames() == whole
    with pytest.raises(OctetFramingError) as error:
        garbage_decoder.frames()
    assert error.value.offset == len(stream)
    assert garbage_decoder.buffered == len(GARBAGE)
    return whole


@pytest.mark.parametrize(("name", "batch", "https", "syslog"), TABLE, ids=IDS)
def test_batch_frames_read_back_three_ways(
    name: str, batch: list[Message], https: list[bytes], syslog: list[bytes]
) -> None:
    body = b"".join(logplex1.https_frames(batch))
    assert len(payloads_three_ways(body)) == len(batch)
    read = logplex1.parse_drain_body(body)
    assert [(f.ts_us, f.pri, f.source, f.ps, f.msg) for f in read] == batch
    stream = b"".join(rfc5424.syslog_frames(batch, TOKEN))
    parsed = [rfc5424.parse_strict(payload) for payload in payloads_three_ways(stream)]
    assert [(p.timestamp_us, p.pri, p.app_name, p.procid, p.msg) for p in parsed] == batch
    assert all(p.hostname == TOKEN for p in parsed)


def test_https_frames_other_host() -> None:
    assert logplex1.https_frames([(TS_US, 190, b"app", b"web.1", b"x")], host=b"myhost") == [
        b"61 <190>1 2026-11-27T20:39:33.123456+00:00 myhost app web.1 - x\n"
    ]


def test_frames_longer_than_the_length_table() -> None:
    # 20,000 bytes of MSG: past the precomputed length prefixes, LEN is formatted.
    message: Message = (TS_US, 190, b"app", b"web.1", b"m" * 20_000)
    (https,) = logplex1.https_frames([message])
    assert https.startswith(b"20058 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - ")
    assert len(https) == len(b"20058 ") + 20_058
    (syslog,) = rfc5424.syslog_frames([message], TOKEN)
    assert syslog.startswith(b"20094 <190>1 ")
    assert len(syslog) == len(b"20094 ") + 20_094
    assert syslog == rfc5424.syslog_frame(message, TOKEN)


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ((TS_US, 999, b"app", b"web.1", b"x"), "PRI"),
        ((TS_US, 190, b"app", b"web 1", b"x"), "PROCID"),
        ((TS_US, 190, b"a" * 49, b"web.1", b"x"), "APP-NAME"),
        ((TS_US, 190, b"", b"web.1", b"x"), "APP-NAME"),
    ],
)
def test_batch_encoders_refuse_a_bad_header_first_or_after_a_run(bad: Message, field: str) -> None:
    good: Message = (TS_US, 190, b"app", b"web.1", b"x")
    for batch in ([bad], [good, good, bad], [good, bad, good]):
        with pytest.raises(EncodeError, match=field):
            logplex1.https_frames(batch)
        with pytest.raises(EncodeError, match=field):
            rfc5424.syslog_frames(batch, TOKEN)


def test_syslog_frames_refuse_a_bad_drain_token() -> None:
    with pytest.raises(EncodeError, match="HOSTNAME"):
        rfc5424.syslog_frames([(TS_US, 190, b"app", b"web.1", b"x")], b"d x")
