"""RFC 6587 octet counting: the vector table fed three ways, plus the decoder's contract."""

from __future__ import annotations

from typing import Any

import pytest
from codec_vectors import GARBAGE, as_bytes, load

from logplex.codecs.errors import OctetFramingError, ProtocolError
from logplex.codecs.octet import OctetFrameDecoder, encode_octet_frame, octet_frames

CASES = load("octet.json")["cases"]


def drain(decoder: OctetFrameDecoder) -> tuple[list[bytes], int | None]:
    """Every frame the decoder gives, and the offset of the error that stopped it."""
    frames: list[bytes] = []
    try:
        while batch := decoder.frames():
            frames.extend(batch)
        frames.extend(decoder.frames())
    except OctetFramingError as exc:
        return frames, exc.offset
    return frames, None


def expected_frames(case: dict[str, Any], policy: str) -> list[bytes]:
    return [as_bytes(frame) for frame in case.get("frames", case.get(f"frames_{policy}", []))]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_strict_vectors(case: dict[str, Any], way: str) -> None:
    data = as_bytes(case["input"])
    decoder = OctetFrameDecoder(case["max_frame_bytes"], "strict")
    frames: list[bytes] = []
    error_offset = None
    chunks = [data] if way == "whole" else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        decoder.feed(chunk)
        got, error_offset = drain(decoder)
        frames.extend(got)
        if error_offset is not None:
            break
    assert frames == expected_frames(case, "strict")
    assert error_offset == case["strict"]["error_offset"]
    if error_offset is None:
        assert decoder.buffered == case["strict"]["buffered"]
    else:
        # The error is sticky: asking again raises again, at the same offset.
        with pytest.raises(OctetFramingError) as again:
            decoder.frames()
        assert again.value.offset == error_offset


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
@pytest.mark.parametrize("way", ["whole", "bytewise"])
def test_resync_vectors(case: dict[str, Any], way: str) -> None:
    data = as_bytes(case["input"])
    decoder = OctetFrameDecoder(case["max_frame_bytes"], "resync")
    frames: list[bytes] = []
    chunks = [data] if way == "whole" else [data[i : i + 1] for i in range(len(data))]
    for chunk in chunks:
        decoder.feed(chunk)
        if way == "bytewise" and len(frames) % 2:
            frame = decoder.next_frame()
            frames.extend([frame] if frame is not None else [])
        else:
            frames.extend(decoder.frames())
    frames.extend(decoder.frames())
    assert frames == expected_frames(case, "resync")
    assert decoder.skipped_bytes == case["resync"]["skipped"]
    assert decoder.resyncs == case["resync"]["resyncs"]
    assert decoder.buffered == case["resync"]["buffered"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_trailing_garbage(case: dict[str, Any]) -> None:
    data = as_bytes(case["input"])
    if case["strict"]["buffered"] or case["strict"]["error_offset"] is not None:
        return  # the garbage would land inside a frame or after an error already seen
    strict = OctetFrameDecoder(case["max_frame_bytes"], "strict")
    strict.feed(data + GARBAGE)
    frames, error_offset = drain(strict)
    assert frames == expected_frames(case, "strict")
    assert error_offset == len(data)
    resync = OctetFrameDecoder(case["max_frame_bytes"], "resync")
    resync.feed(data + GARBAGE)
    assert resync.frames() == expected_frames(case, "resync")
    assert resync.skipped_bytes + resync.buffered == len(GARBAGE)
    assert resync.resyncs == 0


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_one_shot_body(case: dict[str, Any]) -> None:
    data = as_bytes(case["input"])
    if case["complete"]:
        assert octet_frames(data, case["max_frame_bytes"]) == expected_frames(case, "strict")
    else:
        with pytest.raises(OctetFramingError):
            octet_frames(data, case["max_frame_bytes"])


def test_one_shot_body_reports_a_cut_frame() -> None:
    with pytest.raises(OctetFramingError, match="ends inside a frame that starts at byte 7") as err:
        octet_frames(b"5 <1>ab9 <1>", 100)
    assert err.value.offset == 7


def test_one_shot_body_reports_garbage_after_good_frames() -> None:
    with pytest.raises(OctetFramingError, match="at byte 7") as err:
        octet_frames(b"5 <1>abxx", 100)
    assert err.value.offset == 7


def test_encode_octet_frame() -> None:
    assert encode_octet_frame(b"<1>ab") == b"5 <1>ab"
    assert encode_octet_frame("é".encode()) == b"2 \xc3\xa9"
    with pytest.raises(ValueError, match="cannot be empty"):
        encode_octet_frame(b"")


def test_error_messages_say_what_is_wrong() -> None:
    reasons = {
        b"05 x": "leading zero",
        b"101 x": "exceeds the limit of 100 bytes",
        b"1234 x": "more than 3 digits",
        b"x": "expected MSG-LEN SP",
    }
    for data, reason in reasons.items():
        decoder = OctetFrameDecoder(100)
        decoder.feed(data)
        with pytest.raises(OctetFramingError, match=reason) as err:
            decoder.frames()
        assert err.value.code == "bad_frame"
        assert isinstance(err.value, ProtocolError)


def test_constructor_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="positive"):
        OctetFrameDecoder(0)
    with pytest.raises(ValueError, match="policy"):
        OctetFrameDecoder(10, "lenient")  # type: ignore[arg-type]


def test_next_frame_hands_out_one_at_a_time() -> None:
    decoder = OctetFrameDecoder(100)
    decoder.feed(b"1 a1 b1 c")
    assert decoder.next_frame() == b"a"
    assert decoder.buffered == 2  # the payloads of b and c, decoded and queued
    assert decoder.next_frame() == b"b"
    decoder.feed(b"1 d")
    assert decoder.frames() == [b"c", b"d"]
    assert decoder.next_frame() is None


def test_waiting_for_a_long_frame_does_no_work_per_byte() -> None:
    # Once the header is read, feeding the body byte by byte must not re-read the buffer:
    # frames() returns at once until the frame is complete.
    decoder = OctetFrameDecoder(100_000)
    decoder.feed(b"50000 ")
    assert decoder.frames() == []
    for _ in range(49_999):
        decoder.feed(b"x")
        assert decoder.frames() == []
    decoder.feed(b"y")
    assert decoder.frames() == [b"x" * 49_999 + b"y"]


def test_resync_keeps_only_a_short_tail_while_no_frame_is_in_sight() -> None:
    decoder = OctetFrameDecoder(8192, "resync")
    for _ in range(1000):
        decoder.feed(b"garbage ")
        assert decoder.frames() == []
        assert decoder.buffered <= 5
    decoder.feed(b"3 <1>")
    assert decoder.frames() == [b"<1>"]
    assert decoder.skipped_bytes == 8000
    assert decoder.resyncs == 1


def test_resync_look_behind_works_across_feeds() -> None:
    # "12345 <" must not be read as count 2345 even when it arrives split.
    decoder = OctetFrameDecoder(8192, "resync")
    decoder.feed(b"xxxxxxxx1")
    assert decoder.frames() == []
    decoder.feed(b"2345 <1>")
    assert decoder.frames() == []
    assert decoder.resyncs == 0


def test_complete_bytes_and_consume_hand_whole_frames_to_a_reader() -> None:
    decoder = OctetFrameDecoder(100, "resync")
    decoder.feed(b"1 a2 bc3 d")
    data = decoder.complete_bytes()
    assert data == b"1 a2 bc3 d"
    decoder.consume(3)  # the reader took "1 a"
    assert decoder.frames() == [b"bc"]
    decoder.consume(0)
    assert decoder.complete_bytes() == b""  # "3 d" is still arriving: nothing to re-read
    decoder.feed(b"ef")
    assert decoder.complete_bytes() == b"3 def"
    with pytest.raises(ValueError, match="consume only whole frames"):
        decoder.consume(6)
    decoder.consume(5)
    assert decoder.buffered == 0
    assert decoder.max_frame_bytes == 100


def test_complete_bytes_is_empty_while_not_at_a_frame_start() -> None:
    decoder = OctetFrameDecoder(100, "resync")
    decoder.feed(b"garbage")
    assert decoder.frames() == []
    assert decoder.complete_bytes() == b""  # resyncing
    decoder.feed(b" 1 <")
    assert decoder.next_frame() == b"<"
    decoder.feed(b"1 x1 y")
    assert decoder.next_frame() == b"x"
    assert decoder.complete_bytes() == b""  # "y" waits in the queue of next_frame
    assert decoder.frames() == [b"y"]


def test_advance_counts_frames_read_before_feeding() -> None:
    decoder = OctetFrameDecoder(100)
    assert decoder.is_empty
    decoder.advance(10)  # ten bytes of whole frames read by the caller
    decoder.feed(b"1 a")
    assert not decoder.is_empty
    with pytest.raises(ValueError, match="only for frames read while the decoder is empty"):
        decoder.advance(1)
    assert decoder.frames() == [b"a"]
    decoder.feed(b"x")
    with pytest.raises(OctetFramingError, match="at byte 13"):
        decoder.frames()


def test_take_back_returns_the_held_bytes_without_moving_the_offset() -> None:
    decoder = OctetFrameDecoder(100)
    decoder.feed(b"3 a")
    assert decoder.take_back() == b"3 a"
    assert decoder.is_empty
    decoder.advance(3)  # the caller read "3 a" and "b" with its next chunk: no frame
    decoder.feed(b"b")
    with pytest.raises(OctetFramingError, match="at byte 3"):
        decoder.frames()
    waiting = OctetFrameDecoder(100)
    waiting.feed(b"5 ab")
    assert waiting.frames() == []
    assert waiting.take_back() == b""  # a frame still arriving stays where it is
    waiting.feed(b"cde")
    assert waiting.frames() == [b"abcde"]


def test_take_back_incomplete_hands_back_a_frame_still_arriving() -> None:
    decoder = OctetFrameDecoder(100)
    decoder.feed(b"2 ab5 cd")
    assert decoder.frames() == [b"ab"]
    assert decoder.take_back(incomplete=True) == b"5 cd"  # at a frame start: handed back
    assert decoder.is_empty
    decoder.advance(5)  # the caller read "5 cde" with its next chunk, then fed the rest
    decoder.feed(b"1 x")
    assert decoder.frames() == [b"x"]
    decoder.feed(b"x")
    with pytest.raises(OctetFramingError, match="at byte 12"):  # offsets still exact
        decoder.frames()
    resyncing = OctetFrameDecoder(100, "resync")
    resyncing.feed(b"garbage 5 ab")
    assert resyncing.frames() == []
    assert resyncing.take_back(incomplete=True) == b""  # not at a frame start: kept
    ready = OctetFrameDecoder(100)
    ready.feed(b"1 a1 b")
    assert ready.next_frame() == b"a"
    assert ready.take_back(incomplete=True) == b""  # "b" waits in the queue of next_frame
    assert OctetFrameDecoder(100).take_back(incomplete=True) == b""
