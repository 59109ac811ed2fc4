"""Byte-exact examples of DESIGN sections 5.1, 5.2, 5.3 and 5.5, written from the spec."""

from __future__ import annotations

import pytest

from logplex.codecs import logplex1, notices, rfc5424
from logplex.codecs.errors import EncodeError
from logplex.codecs.records import Message

TS_US = 1_795_811_973_123_456  # 2026-11-27T20:39:33.123456+00:00
HELLO: Message = (TS_US, 190, b"app", b"web.1", b"hello")
DRAIN_TOKEN = b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"


def test_syslog_frame_design_example() -> None:
    assert rfc5424.syslog_frame(HELLO, DRAIN_TOKEN) == (
        b"99 <190>1 2026-11-27T20:39:33.123456+00:00 "
        b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc app web.1 - - hello\n"
    )


def test_https_frame_design_example() -> None:
    assert logplex1.https_frame(HELLO) == (
        b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"
    )


def test_https_body_counts_messages() -> None:
    body, count = logplex1.encode_https_body([HELLO, HELLO])
    assert count == 2
    assert body == logplex1.https_frame(HELLO) * 2


def test_tail_line_design_example() -> None:
    assert notices.tail_line(HELLO) == b"2026-11-27T20:39:33.123456+00:00 app[web.1]: hello\n"


def test_datagram_has_no_length_and_no_lf() -> None:
    assert rfc5424.syslog_datagram(HELLO, b"d.x") == (
        b"<190>1 2026-11-27T20:39:33.123456+00:00 d.x app web.1 - - hello"
    )


@pytest.mark.parametrize(
    ("source", "ps"),
    [(b"", b"web.1"), (b"a" * 49, b"web.1"), (b"app", b"web 1"), (b"app", b"w\xc3\xa9b")],
)
def test_encoders_refuse_invalid_header_fields(source: bytes, ps: bytes) -> None:
    bad: Message = (TS_US, 190, source, ps, b"x")
    with pytest.raises(EncodeError):
        rfc5424.syslog_frame(bad, DRAIN_TOKEN)
    with pytest.raises(EncodeError):
        logplex1.https_frame(bad)
