"""Hypothesis round trips for every encoder/decoder pair of the codecs."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs import logplex1, octet, rfc5424, shimbatch, shimproto
from logplex.codecs.errors import EncodeError
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import SDElement, SyslogMessage
from logplex.codecs.timestamps import MAX_TS_US, format_ts, parse_ts

PRINTUSASCII = st.sampled_from([bytes([b]) for b in range(33, 127)])


def printable(max_len: int) -> st.SearchStrategy[bytes]:
    return st.lists(PRINTUSASCII, min_size=1, max_size=max_len).map(b"".join)


def field(max_len: int) -> st.SearchStrategy[bytes]:
    # "-" alone is NILVALUE, so a field value of exactly "-" reads back as None.
    return printable(max_len).filter(lambda value: value != b"-")


TS_RUN_START_US = 1_795_811_973_999_000
timestamps_us = st.integers(min_value=0, max_value=MAX_TS_US - 1)
line_text = st.binary(max_size=300).map(lambda data: data.replace(b"\n", b" "))
messages: st.SearchStrategy[Message] = st.tuples(
    timestamps_us,
    st.integers(min_value=0, max_value=191),
    field(48),
    field(128),
    line_text,
)


@given(timestamps_us)
def test_timestamp_round_trip(ts_us: int) -> None:
    assert parse_ts(format_ts(ts_us)) == ts_us


DAY_US = 86_400_000_000


@given(
    st.integers(min_value=DAY_US, max_value=MAX_TS_US - DAY_US),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.integers(min_value=0, max_value=6),
)
def test_timestamp_with_any_offset_and_precision(ts_us: int, offset_min: int, digits: int) -> None:
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
        microseconds=ts_us
    )
    local = moment.astimezone(datetime.timezone(datetime.timedelta(minutes=offset_min)))
    text = local.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
    if digits:
        text += "." + f"{local.microsecond:06d}"[:digits]
    sign = "+" if offset_min >= 0 else "-"
    text += f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    truncated = ts_us - ts_us % (10 ** (6 - digits))
    assert parse_ts(text.encode()) == truncated


@given(messages, field(255))
def test_syslog_frame_round_trip(message: Message, token: bytes) -> None:
    frame = rfc5424.syslog_frame(message, token)
    decoder = octet.OctetFrameDecoder(20_000, "strict")
    decoder.feed(frame)
    (payload,) = decoder.frames()
    parsed = rfc5424.parse_strict(payload)
    ts_us, pri, source, ps, msg = message
    bom = msg.startswith(b"\xef\xbb\xbf")
    if bom:
        return  # a message that starts with a BOM is read as MSG-UTF8: covered elsewhere
    assert parsed == SyslogMessage(pri, 1, ts_us, token, source, ps, None, (), msg, False)


@given(messages, field(255))
def test_datagram_round_trip(message: Message, token: bytes) -> None:
    datagram = rfc5424.syslog_datagram(message, token)
    assert len(datagram) <= 2048
    parsed = rfc5424.parse_lenient(datagram)
    assert (parsed.pri, parsed.timestamp_us, parsed.hostname) == (message[1], message[0], token)
    assert message[4].startswith(parsed.msg) or parsed.bom


@given(st.lists(messages, max_size=20))
def test_https_body_round_trip(batch: list[Message]) -> None:
    body, count = logplex1.encode_https_body(batch)
    assert count == len(batch)
    frames = logplex1.parse_drain_body(body)
    assert [(f.ts_us, f.pri, f.source, f.ps, f.msg) for f in frames] == batch


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=20), st.data())
def test_octet_round_trip_under_any_chunking(payloads: list[bytes], data: Any) -> None:
    stream = b"".join(octet.encode_octet_frame(payload) for payload in payloads)
    for policy in ("strict", "resync"):
        decoder = octet.OctetFrameDecoder(300, policy)  # type: ignore[arg-type]
        got: list[bytes] = []
        position = 0
        while position < len(stream):
            size = data.draw(st.integers(min_value=1, max_value=64))
            decoder.feed(stream[position : position + size])
            got.extend(decoder.frames())
            position += size
        assert got == payloads
        assert decoder.buffered == decoder.skipped_bytes == decoder.resyncs == 0
    assert octet.octet_frames(stream, 300) == payloads


def sd_name() -> st.SearchStrategy[bytes]:
    return st.lists(
        st.sampled_from([bytes([b]) for b in range(33, 127) if b not in b'= ]"']),
        min_size=1,
        max_size=32,
    ).map(b"".join)


sd_value = st.text(max_size=20).map(lambda text: text.encode())
sd_elements = st.lists(
    st.builds(
        SDElement, sd_name(), st.lists(st.tuples(sd_name(), sd_value), max_size=3).map(tuple)
    ),
    max_size=3,
).map(tuple)


def escape(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b'"', b'\\"').replace(b"]", b"\\]")


def serialize(message: SyslogMessage) -> bytes:
    """RFC 5424 section 6 written out by the test, independently of our encoder."""

    def nil(value: bytes | None) -> bytes:
        return b"-" if value is None else value

    stamp = b"-" if message.timestamp_us is None else format_ts(message.timestamp_us)
    sd = (
        b"".join(
            b"["
            + element.sd_id
            + b"".join(b" " + k + b'="' + escape(v) + b'"' for k, v in element.params)
            + b"]"
            for element in message.structured_data
        )
        or b"-"
    )
    head = b"<%d>%d %b %b %b %b %b %b" % (
        message.pri,
        message.version,
        stamp,
        nil(message.hostname),
        nil(message.app_name),
        nil(message.procid),
        nil(message.msgid),
        sd,
    )
    if message.bom:
        return head + b" \xef\xbb\xbf" + message.msg
    return head + (b" " + message.msg if message.msg else b"")


syslog_messages = st.builds(
    SyslogMessage,
    pri=st.integers(min_value=0, max_value=191),
    version=st.integers(min_value=1, max_value=999),
    timestamp_us=st.none() | timestamps_us,
    hostname=st.none() | field(255),
    app_name=st.none() | field(48),
    procid=st.none() | field(128),
    msgid=st.none() | field(32),
    structured_data=sd_elements,
    msg=st.binary(max_size=100).filter(
        lambda m: not m.endswith(b"\n") and not m.startswith(b"\xef\xbb\xbf")
    ),
    bom=st.just(False),
) | st.builds(
    SyslogMessage,
    pri=st.integers(min_value=0, max_value=191),
    version=st.just(1),
    timestamp_us=st.none(),
    hostname=st.none(),
    app_name=st.none(),
    procid=st.none(),
    msgid=st.none(),
    structured_data=st.just(()),
    msg=st.text(max_size=50).map(str.encode).filter(lambda m: not m.endswith(b"\n")),
    bom=st.just(True),
)


@given(syslog_messages)
def test_strict_parser_reads_any_valid_message(message: SyslogMessage) -> None:
    assert rfc5424.parse_strict(serialize(message)) == message
    assert rfc5424.parse_lenient(serialize(message)) == message


compressor = zstandard.ZstdCompressor(level=1)
records_strategy = st.lists(
    st.tuples(timestamps_us, st.integers(min_value=1, max_value=3), st.binary(max_size=50)).map(
        list
    ),
    max_size=50,
)


@given(st.integers(min_value=1, max_value=2**64 - 1), records_strategy, st.data())
def test_batch_round_trip(seq: int, records: list[list[Any]], data: Any) -> None:
    frame = shimproto.encode_batch(seq, records, compressor=compressor)
    decoder = shimproto.ShimFrameDecoder(1 << 20)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame)))
    decoder.feed(frame[:cut])
    if cut < len(frame):
        assert decoder.next_event() is None
    decoder.feed(frame[cut:])
    event = decoder.next_event()
    assert isinstance(event, shimproto.BatchFrame)
    assert event.seq == seq
    limits: dict[str, Any] = {"max_bytes": 1 << 20, "max_records": 50}
    assert shimbatch.decode_batch_records(event.payload, **limits) == records
    sources = (b"out", b"err", b"notice")
    expected = [
        message
        for ts_us, kind, line in records
        for message in [(ts_us, (190, 187, 189)[kind - 1], sources[kind - 1], b"ps", line)]
    ]
    got = shimbatch.decode_batch_messages(event.payload, ps=b"ps", sources=sources, **limits)
    if not any(b"\n" in record[2] for record in records):
        assert got == expected


control_frames = st.one_of(
    st.builds(
        shimproto.Hello,
        st.just(1),
        st.text(),
        st.text(),
        st.text(),
        st.text(),
        st.none() | st.text(),
    ),
    st.builds(
        shimproto.Ready,
        st.just(1),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.integers(min_value=1, max_value=2**64 - 1),
        st.integers(min_value=65536, max_value=2**64 - 1),
    ),
    st.builds(shimproto.Ack, st.integers(min_value=0, max_value=2**64 - 1)),
    st.builds(shimproto.Ping),
    st.builds(shimproto.Pong),
    st.builds(shimproto.ErrorFrame, st.text(), st.text()),
)


def encode_event(event: shimproto.Event) -> bytes:
    if isinstance(event, shimproto.Hello):
        return shimproto.encode_hello(
            event.token, event.ps, event.stream, event.agent, event.platform_token
        )
    if isinstance(event, shimproto.Ready):
        return shimproto.encode_ready(event.acked, event.window, event.max_batch_bytes)
    if isinstance(event, shimproto.Ack):
        return shimproto.encode_ack(event.seq)
    if isinstance(event, shimproto.Ping):
        return shimproto.encode_ping()
    if isinstance(event, shimproto.Pong):
        return shimproto.encode_pong()
    assert isinstance(event, shimproto.ErrorFrame)
    return shimproto.encode_error(event.code, event.message)


@given(st.lists(control_frames, max_size=10), st.integers(min_value=1, max_value=7))
def test_control_frames_round_trip(events: list[shimproto.Event], piece: int) -> None:
    stream = b"".join(encode_event(event) for event in events)
    decoder = shimproto.ShimFrameDecoder(1 << 20)
    got = []
    for position in range(0, len(stream), piece):
        decoder.feed(stream[position : position + piece])
        while (event := decoder.next_event()) is not None:
            got.append(event)
    assert got == events
    assert decoder.buffered == 0


# Batches that repeat headers and milliseconds (where the batch encoders reuse parts) as
# well as change them, with a header field that is not valid now and then.
run_messages: st.SearchStrategy[Message] = st.tuples(
    st.integers(min_value=TS_RUN_START_US, max_value=TS_RUN_START_US + 3_000_000),
    st.sampled_from([190, 187, 0, 192]),
    st.sampled_from([b"app", b"heroku", b"a" * 48, b"a" * 49]),
    st.sampled_from([b"web.1", b"web.2", b"web 1"]),
    line_text,
)


@given(st.lists(st.one_of(messages, run_messages), max_size=40), field(255))
def test_batch_encoders_equal_the_per_message_encoders(batch: list[Message], token: bytes) -> None:
    def https_batch(batch: list[Message]) -> list[bytes]:
        return logplex1.https_frames(batch)

    def https_each(message: Message) -> bytes:
        return logplex1.https_frame(message)

    def syslog_batch(batch: list[Message]) -> list[bytes]:
        return rfc5424.syslog_frames(batch, token)

    def syslog_each(message: Message) -> bytes:
        return rfc5424.syslog_frame(message, token)

    encoders = [(https_batch, https_each), (syslog_batch, syslog_each)]
    for batch_encoder, message_encoder in encoders:
        try:
            expected = [message_encoder(message) for message in batch]
        except EncodeError:
            with pytest.raises(EncodeError):
                batch_encoder(batch)
        else:
            assert batch_encoder(batch) == expected


input_stamps = st.sampled_from(
    [
        b"2026-11-27T20:39:33.123456+00:00",
        b"2026-11-27T20:39:33.000001+00:00",
        b"2026-11-27T20:39:34.123456+00:00",
        b"2026-11-27T20:39:34.123456Z",
        b"2026-11-27T21:39:34.123456+01:00",
        b"2026-11-27T20:39:34.1234567+00:00",
        b"2026-11-27T20:39:34.12345x+00:00",
        b"1969-12-31T23:59:59.999999+00:00",
        b"-",
    ]
)
input_frames = st.builds(
    lambda *fields: b" ".join(fields),
    st.sampled_from([b"<190>1", b"<13>1", b"<192>1", b"<013>1"]),
    input_stamps,
    st.sampled_from([b"host", b"-", b"h\x7f"]),
    st.sampled_from([b"t.x", b"app", b"a" * 49]),
    st.sampled_from([b"web.1", b"web.2", b"-"]),
    st.one_of(
        st.sampled_from([b"- - hi", b"- - ", b"- -", b"- hi", b"ID x y", b'- [a b="c"] m']),
        st.binary(max_size=40).map(lambda msg: b"- - " + msg),
    ),
)


@given(st.lists(input_frames, max_size=12), st.sampled_from([b"", b"5 x", b"0 ", b"3 ab"]))
def test_input_messages_with_count_equal_the_frame_parser(frames: list[bytes], tail: bytes) -> None:
    body = b"".join(octet.encode_octet_frame(frame) for frame in frames) + tail

    def outcome(parse: Any) -> Any:
        try:
            return parse()
        except logplex1.Logplex1Error as error:
            return str(error), error.frame_number

    def reference() -> tuple[list[Message], int]:
        frames = logplex1.parse_input_body(body)
        return logplex1.input_messages(frames, b"app"), len(frames)

    def fast() -> tuple[list[Message], int]:
        return logplex1.input_messages_with_count(body, source=b"app")

    assert outcome(fast) == outcome(reference)
