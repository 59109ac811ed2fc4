"""application/logplex-1 bodies: input and drain layouts on the vector table, three ways."""

from __future__ import annotations

from typing import Any

import pytest
from codec_vectors import GARBAGE, as_bytes, iso_to_us, load, optional_bytes

from logplex.codecs import drain_frames, logplex1
from logplex.codecs.errors import EncodeError, Logplex1Error, ProtocolError
from logplex.codecs.logplex1 import (
    DrainFrame,
    InputFrame,
    encode_https_body,
    https_frame,
    input_messages,
    input_messages_from_body,
    input_messages_with_count,
    parse_drain_body,
    parse_input_body,
    parse_input_frame,
)
from logplex.codecs.octet import encode_octet_frame
from logplex.codecs.records import Message

CASES = load("logplex1.json")["cases"]


def expected_input(spec: dict[str, Any]) -> InputFrame:
    return InputFrame(
        pri=spec["pri"],
        ts_us=iso_to_us(spec["timestamp"]) or 0,
        hostname=optional_bytes(spec["hostname"]),
        app_name=optional_bytes(spec["app_name"]),
        procid=optional_bytes(spec["procid"]),
        msgid=optional_bytes(spec["msgid"]),
        msg=as_bytes(spec["msg"]),
    )


def expected_drain(spec: dict[str, Any]) -> DrainFrame:
    return DrainFrame(
        pri=spec["pri"],
        ts_us=iso_to_us(spec["timestamp"]) or 0,
        hostname=as_bytes(spec["hostname"]),
        source=as_bytes(spec["source"]),
        ps=as_bytes(spec["ps"]),
        msg=as_bytes(spec["msg"]),
    )


LAYOUTS = {
    "input_layout": (parse_input_body, expected_input),
    "drain": (parse_drain_body, expected_drain),
}


def frame_ends(body: bytes) -> list[int]:
    """Offsets where each frame of a well-formed body ends (read from the counts)."""
    ends = []
    position = 0
    while position < len(body):
        space = body.index(b" ", position)
        position = space + 1 + int(body[position:space])
        ends.append(position)
    return ends


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_vector_whole(case: dict[str, Any], layout: str) -> None:
    spec = case[layout]
    if spec is None:
        return
    parse, expected = LAYOUTS[layout]
    body = as_bytes(case["input"])
    if "error_frame" in spec:
        with pytest.raises(Logplex1Error) as err:
            parse(body)
        assert err.value.frame_number == spec["error_frame"]
        assert f"frame {spec['error_frame']}:" in str(err.value)
        return
    frames = parse(body)
    assert len(frames) == spec["count"]
    if spec["count"]:
        assert set(frames) == {expected(spec["frame"])}


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_vector_every_prefix_and_trailing_garbage(case: dict[str, Any], layout: str) -> None:
    # A body arrives whole, so "one byte at a time" means: every prefix is a body of its own.
    # Cut at a frame boundary it holds the frames before the cut; cut anywhere else the
    # error names the frame that was cut. With garbage after it, the error names the next.
    spec = case[layout]
    if spec is None or "error_frame" in spec:
        return
    parse = LAYOUTS[layout][0]
    body = as_bytes(case["input"])
    ends = frame_ends(body)
    whole = parse(body)
    for cut in range(len(body)):
        complete = sum(1 for end in ends if end <= cut)
        if cut in ends or cut == 0:
            assert parse(body[:cut]) == whole[:complete]
        else:
            with pytest.raises(Logplex1Error) as err:
                parse(body[:cut])
            assert err.value.frame_number == complete + 1
    with pytest.raises(Logplex1Error) as err:
        parse(body + GARBAGE)
    assert err.value.frame_number == len(whole) + 1


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_fast_path_matches_frames(case: dict[str, Any]) -> None:
    body = as_bytes(case["input"])
    try:
        frames = parse_input_body(body)
    except Logplex1Error as error:
        frames, frame_number = [], error.frame_number
    else:
        frame_number = 0
    if frame_number:
        with pytest.raises(Logplex1Error) as fast_error:
            input_messages_from_body(body, source=b"app")
        assert fast_error.value.frame_number == frame_number
        return
    messages = input_messages(frames, b"app")
    assert input_messages_from_body(body, source=b"app") == messages
    if "messages" in case:
        assert messages == [
            (iso_to_us(ts), pri, as_bytes(source), as_bytes(ps), as_bytes(msg))
            for ts, pri, source, ps, msg in case["messages"]
        ]
    assert not any(b"\n" in message[4] for message in messages)


def test_input_frame_nilvalues_and_ps() -> None:
    frame = parse_input_frame(b"<13>1 2026-11-27T20:39:33Z - - - - - hi")
    assert frame == InputFrame(13, 1_795_811_973_000_000, None, None, None, None, b"hi")
    assert frame.ps == b"-"
    assert parse_input_frame(b"<13>1 2026-11-27T20:39:33Z h t.x web.2 - -").ps == b"web.2"


def test_input_frame_bom_is_removed() -> None:
    frame = parse_input_frame(b"<13>1 2026-11-27T20:39:33Z h a p - - \xef\xbb\xbfhi")
    assert frame.msg == b"hi"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"<13>1 2026-11-27T20:39:33Z h a p - [x]y", "followed by a space"),
        (b"<13>1 2026-11-27T20:39:33Z h a p ID x y", "must be '-' or '\\['"),
        (b"<13>1 2026-11-27T20:39:33Z h a p - [x a=1]", "PARAM-NAME"),
        (b"<013>1 2026-11-27T20:39:33Z h a p - - x", "no leading zeros"),
        (b"<13>1 2026-11-27T20:39:33.5 h a p - - x", "timestamp"),
    ],
)
def test_input_frame_errors_say_why(frame: bytes, reason: str) -> None:
    with pytest.raises(Logplex1Error, match=reason) as err:
        parse_input_frame(frame, 4)
    assert err.value.frame_number == 4
    assert str(err.value).startswith("frame 4: ")
    assert isinstance(err.value, ProtocolError)


def test_drain_frame_errors_say_why() -> None:
    with pytest.raises(Logplex1Error, match=r"frame 1: .*must not contain LF"):
        parse_drain_body(encode_octet_frame(b"<190>1 2026-11-27T20:39:33Z h a p - x\ny\n"))
    with pytest.raises(Logplex1Error, match=r"DESIGN 5.2"):
        parse_drain_body(b"10 <190>1 - -")


TS_US = 1_795_811_973_123_456


def test_https_frame_and_body_round_trip_through_the_receiver_parser() -> None:
    messages: list[Message] = [
        (TS_US, 190, b"app", b"web.1", b"hello"),
        (TS_US + 1, 187, b"app", b"web.2", "héllo wörld".encode()),
        (TS_US + 2, 172, b"heroku", b"logplex", b""),
    ]
    body, count = encode_https_body(messages)
    assert count == 3
    assert body == b"".join(https_frame(message) for message in messages)
    assert [
        (frame.ts_us, frame.pri, frame.source, frame.ps, frame.msg)
        for frame in parse_drain_body(body)
    ] == messages
    assert all(frame.hostname == b"host" for frame in parse_drain_body(body))


def test_https_frame_other_host() -> None:
    assert https_frame((TS_US, 190, b"app", b"web.1", b"x"), host=b"myhost") == (
        b"61 <190>1 2026-11-27T20:39:33.123456+00:00 myhost app web.1 - x\n"
    )


def test_https_encoder_refuses_invalid_fields() -> None:
    with pytest.raises(EncodeError, match="PROCID"):
        encode_https_body([(TS_US, 190, b"app", b"web 1", b"x")])
    with pytest.raises(EncodeError, match="PRI"):
        https_frame((TS_US, 999, b"app", b"web.1", b"x"))


def test_caches_stay_bounded() -> None:
    for index in range(5000):
        https_frame((TS_US, 190, b"app", b"web.%d" % index, b"x"))
        parse_input_frame(b"<%d>1 2026-11-27T20:39:33Z h a web.%d - - x" % (index % 192, index))
    assert len(drain_frames._https_headers) <= 4096
    assert len(logplex1._valid_fields) <= 4096
    assert len(logplex1._pri_by_head) <= 192


def reference_messages(body: bytes) -> tuple[list[Message], int] | tuple[str, int]:
    """What ``input_messages_with_count`` must give: parse_input_body, then input_messages;
    or the error text and frame number that parse_input_body raised."""
    try:
        frames = parse_input_body(body)
    except Logplex1Error as error:
        return str(error), error.frame_number
    return input_messages(frames, b"app"), len(frames)


def with_count(body: bytes) -> tuple[list[Message], int] | tuple[str, int]:
    try:
        return input_messages_with_count(body, source=b"app")
    except Logplex1Error as error:
        return str(error), error.frame_number


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_messages_with_count_match_the_reference_on_every_prefix(case: dict[str, Any]) -> None:
    # Every prefix of the vector body, and the body followed by garbage: framing errors,
    # cut frames and content errors must come out exactly as parse_input_body reports them.
    body = as_bytes(case["input"])
    for cut in range(len(body) + 1):
        assert with_count(body[:cut]) == reference_messages(body[:cut])
    assert with_count(body + GARBAGE) == reference_messages(body + GARBAGE)


TOKEN = b"t.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"


def input_frame(ts: bytes, msg: bytes, *, pri: bytes = b"<190>1", ps: bytes = b"web.1") -> bytes:
    return encode_octet_frame(b"%s %s host %s %s - - %s" % (pri, ts, TOKEN, ps, msg))


# (name, frames, expected messages or (error text fragment, frame number))
FAST_PATH_TABLE: list[tuple[str, list[bytes], Any]] = [
    (
        "one second: the first frame is parsed fully, the rest take the fast path",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            input_frame(b"2026-11-27T20:39:33.123457+00:00", b"b\n"),
            input_frame(b"2026-11-27T20:39:33.999999+00:00", b"\xef\xbb\xbfc"),
            input_frame(b"2026-11-27T20:39:33.000000+00:00", b"d\ne", ps=b"web.2"),
            input_frame(b"2026-11-27T20:39:33.000000+00:00", b"f\ng", ps=b"web.2"),
        ],
        [
            (TS_US, 190, b"app", b"web.1", b"a"),
            (TS_US + 1, 190, b"app", b"web.1", b"b"),
            (TS_US + 876_543, 190, b"app", b"web.1", b"c"),
            (TS_US - 123_456, 190, b"app", b"web.2", b"d"),
            (TS_US - 123_456, 190, b"app", b"web.2", b"e"),
            (TS_US - 123_456, 190, b"app", b"web.2", b"f"),
            (TS_US - 123_456, 190, b"app", b"web.2", b"g"),
        ],
    ),
    (
        "the next second, Z, an offset, fewer and more fraction digits",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            input_frame(b"2026-11-27T20:39:34.123456+00:00", b"b"),
            input_frame(b"2026-11-27T20:39:34.123456Z", b"c"),
            input_frame(b"2026-11-27T21:39:34.123456+01:00", b"d"),
            input_frame(b"2026-11-27T20:39:34.1234+00:00", b"e"),
            input_frame(b"2026-11-27T20:39:34.1234567+00:00", b"f"),
            input_frame(b"2026-11-27T20:39:34.12345x+00:00", b"g", pri=b"<13>1"),
        ],
        ("frame 7: timestamp", 7),
    ),
    (
        "a content error after fast frames is reported after the framing of the whole body",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"b", ps=b"web\x7f1"),
            b"5 x",
        ],
        ("frame 3: ", 3),
    ),
    (
        "a content error in a frame of the cached second",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"b", pri=b"<192>1"),
        ],
        ("frame 2: header", 2),
    ),
    (
        "before 1970 is refused even after a valid frame",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            input_frame(b"1969-12-31T23:59:59.999999+00:00", b"b"),
        ],
        ("frame 2: timestamp", 2),
    ),
    (
        "the drain layout and an empty message leave the fast path",
        [
            input_frame(b"2026-11-27T20:39:33.123456+00:00", b"a"),
            encode_octet_frame(b"<190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hi"),
            encode_octet_frame(b"<190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - -"),
        ],
        [
            (TS_US, 190, b"app", b"web.1", b"a"),
            (TS_US, 190, b"app", b"web.1", b"hi"),
            (TS_US, 190, b"app", b"web.1", b""),
        ],
    ),
]


@pytest.mark.parametrize(
    ("name", "frames", "expected"), FAST_PATH_TABLE, ids=[row[0] for row in FAST_PATH_TABLE]
)
def test_messages_with_count_fast_path_table(name: str, frames: list[bytes], expected: Any) -> None:
    body = b"".join(frames)
    got = with_count(body)
    assert got == reference_messages(body)
    if isinstance(expected, tuple):
        text, number = expected
        assert isinstance(got[0], str)
        assert got[0].startswith(text)
        assert got[1] == number
    else:
        assert got == (expected, len(frames))


def test_messages_with_count_beyond_the_count_table() -> None:
    # A limit above 10240 takes counts the shared table does not hold.
    big = input_frame(b"2026-11-27T20:39:33.123456+00:00", b"m" * 12_000)
    messages, count = input_messages_with_count(big, source=b"app", max_frame_bytes=20_000)
    assert (messages, count) == ([(TS_US, 190, b"app", b"web.1", b"m" * 12_000)], 1)
    with pytest.raises(Logplex1Error, match="exceeds the limit") as error:
        input_messages_with_count(big, source=b"app")
    assert error.value.frame_number == 1
