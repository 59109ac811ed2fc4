"""Shim stream protocol v1 (DESIGN 4): byte-exact frames, the decoder three ways, batches."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zstandard
from codec_vectors import GARBAGE, load

from logplex.codecs import errors, shimbatch, shimproto
from logplex.codecs.errors import EncodeError, ProtocolError
from logplex.codecs.records import PRI_SHIM_NOTICE, PRI_STDERR, PRI_STDOUT
from logplex.codecs.shimproto import ShimFrameDecoder

VECTORS = load("shim_frames.json")
FRAMES = VECTORS["frames"]
PAYLOADS = VECTORS["payloads"]
MAX_FRAME_BYTES = VECTORS["max_frame_bytes"]


def raw(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text.replace(" ", ""))


def expected_event(spec: dict[str, Any]) -> shimproto.Event:
    fields = {key: value for key, value in spec.items() if key != "type"}
    if spec["type"] == "BatchFrame":
        fields["payload"] = raw(fields["payload"])
    event: shimproto.Event = getattr(shimproto, spec["type"])(**fields)
    return event


def take_all(decoder: ShimFrameDecoder) -> list[shimproto.Event]:
    events = []
    while (event := decoder.next_event()) is not None:
        events.append(event)
    return events


def feed_bytewise(decoder: ShimFrameDecoder, data: bytes) -> list[shimproto.Event]:
    events = []
    for index in range(len(data)):
        decoder.feed(data[index : index + 1])
        events.extend(take_all(decoder))
    return events


@pytest.mark.parametrize("frame", FRAMES, ids=[frame["name"] for frame in FRAMES])
@pytest.mark.parametrize("way", ["whole", "bytewise", "garbage"])
def test_frame_vectors(frame: dict[str, Any], way: str) -> None:
    data = raw(frame["hex"])
    decoder = ShimFrameDecoder(MAX_FRAME_BYTES)
    if "error" in frame:
        error_class = getattr(errors, frame["error"])
        if way == "bytewise":
            with pytest.raises(error_class) as err:
                feed_bytewise(decoder, data)
        else:
            decoder.feed(data if way == "whole" else data + GARBAGE)
            with pytest.raises(error_class) as err:
                take_all(decoder)
        assert err.value.offset == 0
        return
    if way == "bytewise":
        assert feed_bytewise(decoder, data) == [expected_event(frame["event"])]
    elif way == "whole":
        decoder.feed(data)
        assert take_all(decoder) == [expected_event(frame["event"])]
        assert decoder.buffered == 0
    else:
        decoder.feed(data + GARBAGE)
        assert decoder.next_event() == expected_event(frame["event"])
        # b"\x00gar" read as a length: far over the limit, refused before any allocation.
        with pytest.raises(errors.FrameTooLarge) as err:
            decoder.next_event()
        assert err.value.offset == len(data)
        assert err.value.code == "too_large"


@pytest.mark.parametrize("frame", [f for f in FRAMES if "encode" in f], ids=lambda f: f["name"])
def test_encoders_are_byte_exact(frame: dict[str, Any]) -> None:
    kind, *arguments = frame["encode"]
    assert getattr(shimproto, f"encode_{kind}")(*arguments) == raw(frame["hex"])


def test_batch_vector_records() -> None:
    batch = next(frame for frame in FRAMES if "records" in frame)
    payload = expected_event(batch["event"]).payload  # type: ignore[union-attr]
    records = shimbatch.decode_batch_records(payload, max_bytes=65536, max_records=10)
    assert records == [[ts, kind, raw(data)] for ts, kind, data in batch["records"]]


@pytest.mark.parametrize("payload", PAYLOADS, ids=[p["name"] for p in PAYLOADS])
def test_payload_vectors(payload: dict[str, Any]) -> None:
    data = raw(payload["hex"])
    limits = {"max_bytes": VECTORS["max_bytes"], "max_records": VECTORS["max_records"]}
    if "error" in payload:
        error_class = getattr(errors, payload["error"])
        with pytest.raises(error_class):
            shimbatch.decode_batch_records(data, **limits)
        with pytest.raises(error_class):
            shimbatch.decode_batch_messages(
                data, ps=b"web.1", sources=(b"app", b"app", b"heroku"), **limits
            )
    else:
        assert shimbatch.decode_batch_records(data, **limits) == payload["records"]


def test_error_codes_map_to_the_error_frame_codes() -> None:
    assert errors.ShimFrameError("x").code == "bad_frame"
    assert errors.FrameTooLarge("x").code == "too_large"
    assert errors.DecompressedTooLarge("x").code == "too_large"
    assert errors.TooManyRecords("x").code == "too_large"
    assert errors.UnsupportedVersion("x").code == "unsupported_version"


COMPRESSOR = zstandard.ZstdCompressor(level=1)
LIMITS: dict[str, Any] = {"max_bytes": 1 << 20, "max_records": 1000}


def batch_payload(records: list[list[Any]]) -> bytes:
    frame = shimproto.encode_batch(9, records, compressor=COMPRESSOR)
    decoder = ShimFrameDecoder(1 << 20)
    decoder.feed(frame)
    event = decoder.next_event()
    assert event == shimproto.BatchFrame(9, frame[13:])
    return event.payload


def test_batch_messages_map_kinds_to_pri_and_source() -> None:
    payload = batch_payload([[5, 1, b"out"], [6, 2, b"err"], [7, 3, b"notice"]])
    messages = shimbatch.decode_batch_messages(
        payload, ps=b"web.1", sources=(b"app", b"app", b"heroku"), **LIMITS
    )
    assert messages == [
        (5, PRI_STDOUT, b"app", b"web.1", b"out"),
        (6, PRI_STDERR, b"app", b"web.1", b"err"),
        (7, PRI_SHIM_NOTICE, b"heroku", b"web.1", b"notice"),
    ]


def test_batch_messages_of_one_kind() -> None:
    payload = batch_payload([[5, 3, b"a"], [6, 3, b"b"]])
    messages = shimbatch.decode_batch_messages(
        payload, ps=b"p", sources=(b"s1", b"s2", b"s3"), **LIMITS
    )
    assert messages == [
        (5, PRI_SHIM_NOTICE, b"s3", b"p", b"a"),
        (6, PRI_SHIM_NOTICE, b"s3", b"p", b"b"),
    ]


def test_batch_data_with_lf_becomes_one_message_per_line() -> None:
    payload = batch_payload([[5, 1, b"a\nb\n"], [6, 2, b"c"], [7, 1, b"\n"]])
    messages = shimbatch.decode_batch_messages(
        payload, ps=b"p", sources=(b"app", b"app", b"app"), **LIMITS
    )
    assert [m[4] for m in messages] == [b"a", b"b", b"c", b""]
    assert [m[0] for m in messages] == [5, 5, 6, 7]


def test_empty_batch() -> None:
    assert (
        shimbatch.decode_batch_messages(
            batch_payload([]), ps=b"p", sources=(b"a", b"a", b"a"), **LIMITS
        )
        == []
    )


@pytest.mark.parametrize(
    ("records", "reason"),
    [
        ([[1, 1, b"a"], [2, 1]], "record 1 is not an array"),
        ([[1, 1, b"a"], 7], "not one msgpack|record 1"),
        ([[1, 0, b"a"]], "kind must be"),
        ([[1, [1], b"a"]], "kind must be"),
        ([[1, {}, b"a"]], "kind must be"),
        ([[1.5, 1, b"a"]], "ts_us"),
        ([[True, 1, b"a"]], "ts_us"),
        ([[253_402_300_800_000_000, 1, b"a"]], "ts_us"),
        ([[1, 1, 5]], "data must be msgpack bin"),
        ([b"abc"], "record 0 is not an array"),
    ],
)
def test_batch_records_are_validated(records: list[Any], reason: str) -> None:
    payload = COMPRESSOR.compress(msgpack.packb(records))
    with pytest.raises(errors.ShimFrameError, match=reason):
        shimbatch.decode_batch_records(payload, **LIMITS)


def test_batch_kind_equal_to_one_is_read_as_one() -> None:
    # A float 1.0 or msgpack true equals 1: it maps to the same PRI and source, harmlessly.
    payload = COMPRESSOR.compress(msgpack.packb([[1, 1.0, b"a"], [2, True, b"b"]]))
    messages = shimbatch.decode_batch_messages(
        payload, ps=b"p", sources=(b"a", b"b", b"c"), **LIMITS
    )
    assert [(m[1], m[2]) for m in messages] == [(PRI_STDOUT, b"a"), (PRI_STDOUT, b"a")]


def test_too_many_records_is_too_large() -> None:
    payload = COMPRESSOR.compress(msgpack.packb([[1, 1, b"a"]] * 11))
    with pytest.raises(errors.TooManyRecords, match="more than 10") as err:
        shimbatch.decode_batch_records(payload, max_bytes=1000, max_records=10)
    assert err.value.code == "too_large"


def test_decompression_bomb_is_refused_before_allocation() -> None:
    # 50 MB of zeros compress to a few KB; the declared size alone is refused.
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * 50_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(errors.DecompressedTooLarge, match="50000000 bytes"):
        shimbatch.decode_batch_records(bomb, max_bytes=65536, max_records=10)


def test_content_size_lie_is_caught_by_zstd() -> None:
    honest = zstandard.ZstdCompressor(level=1).compress(msgpack.packb([[1, 1, b"x" * 100]]))
    # Rewrite the declared content size (single-segment frame, 1-byte field) to a lower value.
    header = bytearray(honest)
    assert header[4] & 0x20
    assert header[4] & 0xC0 == 0
    header[5] = 10
    with pytest.raises(errors.ShimFrameError, match="not one valid zstd frame"):
        shimbatch.decode_batch_records(bytes(header), max_bytes=65536, max_records=10)


def test_hello_with_platform_token_round_trips() -> None:
    decoder = ShimFrameDecoder(4096)
    decoder.feed(shimproto.encode_hello("t.a", "web.1", "s", "logshim/1", platform_token="t.b"))
    assert decoder.next_event() == shimproto.Hello(1, "t.a", "web.1", "s", "logshim/1", "t.b")


@pytest.mark.parametrize(
    ("kind", "body", "error"),
    [
        (
            shimproto.HELLO,
            {"v": 1, "token": "t", "ps": "p", "stream": "s", "agent": "a", "platform_token": 5},
            "platform_token",
        ),
        (
            shimproto.HELLO,
            {"v": "1", "token": "t", "ps": "p", "stream": "s", "agent": "a"},
            "'v' must be int",
        ),
        (
            shimproto.READY,
            {"v": 1, "acked": 0, "window": 0, "max_batch_bytes": 65536},
            "'window' is 0",
        ),
        (
            shimproto.READY,
            {"v": 1, "acked": 0, "window": 1, "max_batch_bytes": 1024},
            "'max_batch_bytes' is 1024",
        ),
        (shimproto.READY, {"v": 3, "acked": 0, "window": 1, "max_batch_bytes": 65536}, "version 3"),
        (shimproto.ACK, {"seq": None}, "'seq' must be int"),
        (shimproto.ERROR, {"code": "bad_frame"}, "lacks the key 'message'"),
        (shimproto.PONG, [], "must be a msgpack map"),
        (shimproto.PING, {b"bin key": 1}, "keys must be msgpack str"),
    ],
)
def test_body_validation(kind: int, body: Any, error: str) -> None:
    encoded = msgpack.packb(body)
    decoder = ShimFrameDecoder(4096)
    decoder.feed(len(encoded + b"k").to_bytes(4, "big") + bytes([kind]) + encoded)
    with pytest.raises(ProtocolError, match=error):
        decoder.next_event()


def test_extra_keys_are_ignored() -> None:
    encoded = msgpack.packb({"seq": 3, "future": [1, 2]})
    decoder = ShimFrameDecoder(4096)
    decoder.feed(len(encoded + b"k").to_bytes(4, "big") + bytes([shimproto.ACK]) + encoded)
    assert decoder.next_event() == shimproto.Ack(3)


def test_decoder_compacts_its_buffer_and_keeps_offsets() -> None:
    decoder = ShimFrameDecoder(1 << 20)
    big = shimproto.encode_error("bad_frame", "x" * 70_000)
    decoder.feed(big + big + b"\x00\x00\x00\x00\x05")
    assert decoder.next_event() == shimproto.ErrorFrame("bad_frame", "x" * 70_000)
    assert decoder.next_event() == shimproto.ErrorFrame("bad_frame", "x" * 70_000)
    with pytest.raises(errors.ShimFrameError) as err:
        decoder.next_event()
    assert err.value.offset == 2 * len(big)


def test_decoder_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="positive"):
        ShimFrameDecoder(0)


def test_encoders_refuse_what_the_protocol_cannot_carry(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EncodeError, match="below the protocol minimum"):
        shimproto.encode_ready(0, 1, 1024)
    with pytest.raises(EncodeError, match="seq 0"):
        shimproto.encode_batch_payload(0, b"x")
    with pytest.raises(EncodeError, match="seq"):
        shimproto.encode_batch_payload(2**64, b"x")
    # The u32 length bound, with a small stand-in so the test needs no 4 GiB buffers.
    monkeypatch.setattr(shimproto, "MAX_FRAME_LENGTH", 16)
    with pytest.raises(EncodeError, match="does not fit a u32 length"):
        shimproto.encode_error("bad_frame", "x" * 20)
    with pytest.raises(EncodeError, match="does not fit a u32 length"):
        shimproto.encode_batch_payload(1, b"x" * 20)


def test_encode_batch_without_a_compressor() -> None:
    frame = shimproto.encode_batch(1, [[1, 1, b"a"]], level=3)
    assert shimbatch.decode_batch_records(frame[13:], **LIMITS) == [[1, 1, b"a"]]


def test_the_frame_bound_can_be_raised_between_frames() -> None:
    decoder = ShimFrameDecoder(max_frame_bytes=10)
    decoder.feed(shimproto.encode_ping() + shimproto.encode_batch(1, [[1, 1, b"x" * 100]]))
    assert isinstance(decoder.next_event(), shimproto.Ping)
    with pytest.raises(errors.FrameTooLarge):
        decoder.next_event()
    decoder = ShimFrameDecoder(max_frame_bytes=10)
    decoder.feed(shimproto.encode_batch(1, [[1, 1, b"x" * 100]]))
    decoder.max_frame_bytes = 1000
    assert decoder.max_frame_bytes == 1000
    assert isinstance(decoder.next_event(), shimproto.BatchFrame)
    with pytest.raises(ValueError, match="positive"):
        decoder.max_frame_bytes = 0
