"""RFC 5424: strict and lenient parsers on the vector table, the syslog-drain encoders."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from codec_vectors import GARBAGE, as_bytes, iso_to_us, load, optional_bytes

from logplex.codecs import drain_frames, rfc5424
from logplex.codecs.errors import EncodeError, ProtocolError, SyslogParseError
from logplex.codecs.records import Message
from logplex.codecs.rfc5424 import SDElement, SyslogMessage, parse_lenient, parse_strict

CASES = load("rfc5424.json")["cases"]
PARSERS = {"strict": parse_strict, "lenient": parse_lenient}


def expected_message(spec: dict[str, Any]) -> SyslogMessage:
    return SyslogMessage(
        pri=spec["pri"],
        version=spec["version"],
        timestamp_us=iso_to_us(spec["timestamp"]),
        hostname=optional_bytes(spec["hostname"]),
        app_name=optional_bytes(spec["app_name"]),
        procid=optional_bytes(spec["procid"]),
        msgid=optional_bytes(spec["msgid"]),
        structured_data=tuple(
            SDElement(as_bytes(sd_id), tuple((as_bytes(k), as_bytes(v)) for k, v in params))
            for sd_id, params in spec["sd"]
        ),
        msg=as_bytes(spec["msg"]),
        bom=spec["bom"],
    )


def expectation(case: dict[str, Any], mode: str) -> dict[str, Any]:
    spec: dict[str, Any] = case[mode]
    return case["strict"] if spec == "same" else spec


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_vector_whole(case: dict[str, Any], mode: str) -> None:
    data = as_bytes(case["input"])
    spec = expectation(case, mode)
    if spec.get("error"):
        with pytest.raises(SyslogParseError):
            PARSERS[mode](data)
    else:
        assert PARSERS[mode](data) == expected_message(spec)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_vector_every_prefix_parses_or_raises_protocol_error(
    case: dict[str, Any], mode: str
) -> None:
    # One byte at a time, for a one-shot parser: every prefix is a complete input of its own
    # and must either parse or raise the codec's error, nothing else.
    data = as_bytes(case["input"])
    for end in range(len(data)):
        with contextlib.suppress(ProtocolError):
            PARSERS[mode](data[:end])


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_vector_trailing_garbage_lands_in_msg_or_is_refused(case: dict[str, Any]) -> None:
    data = as_bytes(case["input"])
    spec = expectation(case, "strict")
    try:
        parsed = parse_strict(data + GARBAGE)
    except SyslogParseError:
        return
    expected = expected_message(spec)
    assert parsed.pri == expected.pri
    assert (parsed.hostname, parsed.app_name, parsed.procid, parsed.msgid) == (
        expected.hostname,
        expected.app_name,
        expected.procid,
        expected.msgid,
    )
    assert parsed.structured_data == expected.structured_data
    assert parsed.msg.endswith(GARBAGE)
    with pytest.raises(ProtocolError):
        parse_lenient(GARBAGE)


def test_error_names_the_offset() -> None:
    with pytest.raises(SyslogParseError, match="at byte 16: STRUCTURED-DATA") as err:
        parse_strict(b"<13>1 - - - - - x")
    assert err.value.offset == 16
    assert err.value.code == "bad_frame"


TS_US = 1_795_811_973_123_456
HELLO: Message = (TS_US, 190, b"app", b"web.1", b"hello")


def test_syslog_frame_is_octet_counted_with_lf() -> None:
    frame = rfc5424.syslog_frame(HELLO, b"d.x")
    length, _, rest = frame.partition(b" ")
    assert int(length) == len(rest)
    assert rest.endswith(b"\n")
    assert parse_strict(rest) == SyslogMessage(
        190, 1, TS_US, b"d.x", b"app", b"web.1", None, (), b"hello", False
    )


def test_datagram_is_cut_to_2048_bytes_without_splitting_utf8() -> None:
    long_message: Message = (TS_US, 190, b"app", b"web.1", "é".encode() * 2000)
    datagram = rfc5424.syslog_datagram(long_message, b"d.x")
    assert len(datagram) in (2047, 2048)
    datagram.decode("utf-8")  # the cut falls between characters
    head = b"<190>1 2026-11-27T20:39:33.123456+00:00 d.x app web.1 - - "
    assert datagram.startswith(head)
    assert len(datagram) == 2048 - ((2048 - len(head)) % 2)


@pytest.mark.parametrize(
    ("name", "value", "max_len", "reason"),
    [
        ("HOSTNAME", b"", 255, "must not be empty"),
        ("HOSTNAME", b"h" * 256, 255, "at most 255"),
        ("APP-NAME", b"a b", 48, "printable US-ASCII"),
        ("PROCID", b"web\x7f", 128, "printable US-ASCII"),
        ("MSGID", "é".encode(), 32, "printable US-ASCII"),
    ],
)
def test_check_header_field_refuses(name: str, value: bytes, max_len: int, reason: str) -> None:
    with pytest.raises(EncodeError, match=reason):
        rfc5424.check_header_field(name, value, max_len)


def test_check_header_field_accepts_the_printable_range() -> None:
    rfc5424.check_header_field("HOSTNAME", bytes(range(33, 127)), 255)
    rfc5424.check_header_field("MSGID", b"m" * 32, 32)


@pytest.mark.parametrize("pri", [-1, 192, True])
def test_encoders_refuse_a_bad_pri(pri: int) -> None:
    with pytest.raises(EncodeError, match="PRI"):
        rfc5424.syslog_frame((TS_US, pri, b"app", b"web.1", b"x"), b"d.x")


def test_encoder_refuses_a_bad_drain_token() -> None:
    with pytest.raises(EncodeError, match="HOSTNAME"):
        rfc5424.syslog_datagram(HELLO, b"d x")


def test_header_cache_stays_bounded() -> None:
    for index in range(5000):
        rfc5424.syslog_frame((TS_US, 190, b"app", b"web.%d" % index, b"x"), b"d.x")
    assert len(drain_frames._syslog_headers) <= 4096
