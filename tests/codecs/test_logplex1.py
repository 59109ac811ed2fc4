"""application/logplex-1 bodies: input and drain layouts on the vector table, three ways."""

from __future__ import annotations

from typing import Any

import pytest
from codec_vectors import GARBAGE, as_bytes, iso_to_us, load, optional_bytes

from logplex.codecs import logplex1
from logplex.codecs.errors import EncodeError, Logplex1Error, ProtocolError
from logplex.codecs.logplex1 import (
    DrainFrame,
    InputFrame,
    encode_https_body,
    https_frame,
    input_messages,
    input_messages_from_body,
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
    assert len(logplex1._https_headers) <= 4096
    assert len(logplex1._valid_fields) <= 4096
    assert len(logplex1._pri_by_head) <= 192
