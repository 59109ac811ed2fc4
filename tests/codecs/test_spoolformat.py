"""The spool's segment format: headers, records, batch and snapshot bodies, damage scans."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest
import zstandard

from logplex.codecs.spoolformat import (
    HEADER_BYTES,
    MAX_RECORD_BYTES,
    RECORD_MAGIC,
    BatchRecord,
    DamagedSpan,
    ScannedRecord,
    SnapshotRecord,
    SpoolFormatError,
    StreamMark,
    TornTail,
    decode_body,
    decode_messages,
    encode_batch_body,
    encode_segment_header,
    encode_snapshot_body,
    frame_record,
    pack_messages,
    parse_segment_header,
    scan_records,
)

MESSAGES = [
    (1_700_000_000_000_001, 134, b"app", b"web.1", b"hello"),
    (1_700_000_000_000_002, 131, b"app", b"web.1", b"\xff not utf-8"),
]


def test_segment_header_round_trip() -> None:
    header = parse_segment_header(encode_segment_header(4096, 123))
    assert (header.base, header.created_us, header.version) == (4096, 123, 1)
    assert len(encode_segment_header(0, 0)) == HEADER_BYTES


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"LPLXSPL1", "is 8 bytes"),
        (b"X" * 32, "bad magic"),
        (encode_segment_header(1, 2)[:-1] + b"\0", "checksum"),
    ],
)
def test_bad_segment_headers_are_refused(data: bytes, complaint: str) -> None:
    with pytest.raises(SpoolFormatError, match=complaint):
        parse_segment_header(data)


def test_a_future_version_is_refused_by_name() -> None:
    head = struct.pack(">8sHHQQ", b"LPLXSPL1", 2, 0, 0, 0)
    with pytest.raises(SpoolFormatError, match="version 2 is not supported"):
        parse_segment_header(head + struct.pack(">I", zlib.crc32(head)))


def test_batch_body_round_trip() -> None:
    packed = pack_messages(MESSAGES)
    assert packed == msgpack.packb(MESSAGES)
    payload = zstandard.ZstdCompressor().compress(packed)
    body = encode_batch_body("ch", 10, 2, 99, StreamMark("t.x", "s-1", 7), payload)
    record = decode_body(body)
    assert isinstance(record, BatchRecord)
    assert (record.channel, record.first_n, record.count, record.published_us) == ("ch", 10, 2, 99)
    assert record.stream == StreamMark("t.x", "s-1", 7)
    decoded = decode_messages(record.payload, 2, zstandard.ZstdDecompressor(), 1 << 20)
    assert decoded == MESSAGES


def test_batch_without_stream() -> None:
    payload = zstandard.ZstdCompressor().compress(pack_messages(MESSAGES[:1]))
    body = encode_batch_body("ch", 0, 1, 1, None, payload)
    record = decode_body(body)
    assert isinstance(record, BatchRecord)
    assert record.stream is None


def test_snapshot_round_trip() -> None:
    body = encode_snapshot_body({"a": 3, "b": 0}, [StreamMark("t.1", "s", 4)])
    record = decode_body(body)
    assert record == SnapshotRecord({"a": 3, "b": 0}, (StreamMark("t.1", "s", 4),))


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([]), "non-empty array"),
        (msgpack.packb({"a": 1}), "non-empty array"),
        (msgpack.packb([9, 1]), "unknown record kind 9"),
        (msgpack.packb([1, "ch", 0, 1, 0, None]), "unknown record kind 1 with 6"),
        (msgpack.packb([1, 5, 0, 1, 0, None, b""]), "wrong types"),
        (msgpack.packb([1, "ch", -1, 1, 0, None, b""]), "wrong types"),
        (msgpack.packb([1, "ch", 0, True, 0, None, b""]), "wrong types"),
        (msgpack.packb([1, "ch", 0, 1, 0.5, None, b""]), "wrong types"),
        (msgpack.packb([1, "ch", 0, 1, 0, None, "text"]), "wrong types"),
        (msgpack.packb([1, "ch", 0, 1, 0, ["t", "s"], b""]), "stream mark"),
        (msgpack.packb([1, "ch", 0, 1, 0, "t", b""]), "stream mark"),
        (msgpack.packb([1, "ch", 0, 1, 0, [1, "s", 1], b""]), "stream mark"),
        (msgpack.packb([1, "ch", 0, 1, 0, ["t", 2, 1], b""]), "stream mark"),
        (msgpack.packb([1, "ch", 0, 1, 0, ["t", "s", -1], b""]), "stream mark"),
        (msgpack.packb([2, [], []]), "wrong types"),
        (msgpack.packb([2, {1: 2}, []]), "not msgpack"),
        (msgpack.packb([2, {"a": -2}, []]), "wrong types"),
        (msgpack.packb([2, {"a": 1}, {}]), "wrong types"),
        (msgpack.packb([2, {"a": 1}, [["t"]]]), "stream mark"),
    ],
)
def test_bad_bodies_are_refused(body: bytes, complaint: str) -> None:
    with pytest.raises(SpoolFormatError, match=complaint):
        decode_body(body)


def compressed(value: object) -> bytes:
    return zstandard.ZstdCompressor().compress(msgpack.packb(value))


@pytest.mark.parametrize(
    ("payload", "count", "complaint"),
    [
        (b"not zstd", 1, "does not decompress"),
        (compressed(b"x" * 2000), 1, "larger than"),
        (zstandard.ZstdCompressor().compress(b"\xc1"), 1, "not msgpack"),
        (compressed([[1, 2, b"a", b"b", b"c"]]), 2, "does not hold 2"),
        (compressed({"a": 1}), 1, "does not hold 1"),
        (compressed([[1, 2, b"a", b"b"]]), 1, "is not"),
        (compressed([[1, 2, b"a", b"b", "c"]]), 1, "is not"),
        (compressed([[1, 2, b"a", "b", b"c"]]), 1, "is not"),
        (compressed([[1, 2, "a", b"b", b"c"]]), 1, "is not"),
        (compressed([[1, "2", b"a", b"b", b"c"]]), 1, "is not"),
        (compressed([["1", 2, b"a", b"b", b"c"]]), 1, "is not"),
        (compressed([5]), 1, "is not"),
    ],
)
def test_bad_payloads_are_refused(payload: bytes, count: int, complaint: str) -> None:
    with pytest.raises(SpoolFormatError, match=complaint):
        decode_messages(payload, count, zstandard.ZstdDecompressor(), 1000)


def test_a_frame_without_a_declared_size_is_still_bounded() -> None:
    stream = zstandard.ZstdCompressor().compressobj()
    payload = stream.compress(msgpack.packb([b"x" * 5000])) + stream.flush()
    with pytest.raises(SpoolFormatError):
        decode_messages(payload, 1, zstandard.ZstdDecompressor(), 1000)


def segment(*bodies: bytes) -> bytes:
    return encode_segment_header(0, 0) + b"".join(frame_record(b) for b in bodies)


def test_scan_reports_every_record() -> None:
    data = segment(b"one", b"two")
    events = list(scan_records(data))
    assert [e.body for e in events if isinstance(e, ScannedRecord)] == [b"one", b"two"]
    assert events[-1].end == len(data)


def test_scan_of_an_empty_segment_reports_nothing() -> None:
    assert list(scan_records(segment())) == []


@pytest.mark.parametrize("cut", [1, 5, 11, 12, 14])
def test_a_torn_tail_is_reported_where_valid_data_ends(cut: int) -> None:
    whole = segment(b"one", b"second")
    data = whole[: len(whole) - cut]
    events = list(scan_records(data))
    assert isinstance(events[0], ScannedRecord)
    assert events[0].body == b"one"
    assert events[-1] == TornTail(events[0].end, len(data))


def test_a_damaged_record_in_the_middle_is_skipped() -> None:
    data = bytearray(segment(b"one", b"two-damaged", b"three"))
    second = HEADER_BYTES + len(frame_record(b"one"))
    data[second + 14] ^= 0xFF  # inside the second body: its CRC no longer matches
    events = list(scan_records(bytes(data)))
    assert [type(e) for e in events] == [ScannedRecord, DamagedSpan, ScannedRecord]
    assert events[1] == DamagedSpan(second, second + len(frame_record(b"two-damaged")))
    assert events[2].body == b"three"  # type: ignore[union-attr]


def test_a_magic_inside_damage_that_starts_no_valid_record_is_passed_over() -> None:
    good = frame_record(b"last")
    junk = b"\x00" * 3 + RECORD_MAGIC + b"\xff\xff\xff\xff" + b"\x00" * 8 + RECORD_MAGIC
    data = encode_segment_header(0, 0) + junk + good
    events = list(scan_records(data))
    assert events[0] == DamagedSpan(HEADER_BYTES, HEADER_BYTES + len(junk))
    assert events[1].body == b"last"  # type: ignore[union-attr]


def test_an_oversized_length_is_damage_not_an_allocation() -> None:
    bogus = struct.pack(">4sII", RECORD_MAGIC, MAX_RECORD_BYTES + 1, 0)
    data = encode_segment_header(0, 0) + bogus + b"x" * 20
    assert list(scan_records(data)) == [TornTail(HEADER_BYTES, len(data))]
