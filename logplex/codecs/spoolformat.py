"""The durable spool's on-disk format (DESIGN section 8, "With the spool"), sans-IO.

A spool is a directory of append-only segment files, ``<base>.seg``, where ``base`` is the
global byte position of the segment's first record (positions grow across segments, as in
Kafka's logs, so a position names one record for the life of the spool).

A segment starts with a 32-byte header::

    magic  b"LPLXSPL1"   8 bytes
    version u16 BE       FORMAT_VERSION (a reader refuses versions it does not know)
    flags   u16 BE       0
    base    u64 BE       global position of the first record
    created u64 BE       microseconds since the epoch
    crc     u32 BE       CRC-32 of the 28 bytes before it

then records, each::

    magic  b"\\xa7LPR"    4 bytes, so a reader can find the next record after damage
    length u32 BE        length of the body
    crc    u32 BE        CRC-32 of the body
    body   msgpack array, its first element the record kind

Record kinds:

- ``BATCH`` ``[1, channel, first_n, count, published_us, stream, payload]``: ``count``
  messages of ``channel`` numbered ``first_n .. first_n + count - 1`` (each channel numbers
  its messages from 0 for the life of the spool; drains keep cursors in those numbers);
  ``stream`` is None or ``[token, stream_id, seq]``, the shim stream batch it completes;
  ``payload`` is a zstd frame of the msgpack array of the messages, each
  ``[ts_us, pri, source, ps, msg]``.
- ``SNAPSHOT`` ``[2, {channel: next_n}, [[token, stream_id, seq], ...]]``: the first record
  of every segment, so the newest segment alone tells each channel's next number and each
  known shim stream's acknowledged seq, whatever older segments were deleted.

``scan_records`` walks a segment's bytes and reports every valid record, every damaged span
it had to skip (resynchronising on the next magic that starts a record with a good CRC), and
where the valid data ends, so a torn tail (a crash mid-write) can be cut.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zstandard

from logplex.codecs.errors import ProtocolError
from logplex.codecs.records import Message

SEGMENT_MAGIC: Final = b"LPLXSPL1"
FORMAT_VERSION: Final = 1
HEADER_BYTES: Final = 32
RECORD_MAGIC: Final = b"\xa7LPR"
RECORD_HEADER_BYTES: Final = 12
MAX_RECORD_BYTES: Final = 64 * 1024 * 1024
KIND_BATCH: Final = 1
KIND_SNAPSHOT: Final = 2

_HEADER: Final = struct.Struct(">8sHHQQ")
_CRC: Final = struct.Struct(">I")
_RECORD: Final = struct.Struct(">4sII")


class SpoolFormatError(ProtocolError):
    """A segment header or record body that is not in this format."""

    code = "bad_spool"


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    base: int
    created_us: int
    version: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class StreamMark:
    """A shim stream's batch ``seq`` is in the spool (token and stream id as in HELLO)."""

    token: str
    stream: str
    seq: int


@dataclass(frozen=True, slots=True)
class BatchRecord:
    channel: str
    first_n: int
    count: int
    published_us: int
    stream: StreamMark | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    next_numbers: dict[str, int]
    streams: tuple[StreamMark, ...]


@dataclass(frozen=True, slots=True)
class ScannedRecord:
    offset: int  # of the record's magic within the scanned bytes
    end: int
    body: bytes


@dataclass(frozen=True, slots=True)
class DamagedSpan:
    """Bytes skipped between two valid records (a damaged record, or several)."""

    offset: int
    end: int


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes after the last valid record that do not hold a whole valid record."""

    offset: int
    end: int


ScanEvent = ScannedRecord | DamagedSpan | TornTail


def encode_segment_header(base: int, created_us: int) -> bytes:
    head = _HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, base, created_us)
    return head + _CRC.pack(zlib.crc32(head))


def parse_segment_header(data: bytes) -> SegmentHeader:
    """The header of a segment file, or ``SpoolFormatError`` saying what is wrong."""
    if len(data) < HEADER_BYTES:
        raise SpoolFormatError(f"segment header is {len(data)} bytes, not {HEADER_BYTES}")
    head = data[: _HEADER.size]
    magic, version, _flags, base, created_us = _HEADER.unpack(head)
    if magic != SEGMENT_MAGIC:
        raise SpoolFormatError("not a spool segment (bad magic)")
    (crc,) = _CRC.unpack_from(data, _HEADER.size)
    if crc != zlib.crc32(head):
        raise SpoolFormatError("segment header checksum mismatch")
    if version != FORMAT_VERSION:
        raise SpoolFormatError(
            f"segment format version {version} is not supported (this router reads "
            f"version {FORMAT_VERSION})"
        )
    return SegmentHeader(base=base, created_us=created_us, version=version)


def frame_record(body: bytes) -> bytes:
    """The record bytes of ``body`` (magic, length, CRC, body)."""
    return _RECORD.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def pack_messages(messages: list[Message]) -> bytes:
    """The msgpack array of ``messages`` (compressed into a batch payload by the writer)."""
    packed: bytes = msgpack.packb(messages)
    return packed


def encode_batch_body(
    channel: str,
    first_n: int,
    count: int,
    published_us: int,
    stream: StreamMark | None,
    payload: bytes,
) -> bytes:
    """The body of a batch record; ``payload`` is the zstd frame of ``pack_messages``."""
    mark = None if stream is None else [stream.token, stream.stream, stream.seq]
    body: bytes = msgpack.packb([KIND_BATCH, channel, first_n, count, published_us, mark, payload])
    return body


def encode_snapshot_body(next_numbers: dict[str, int], streams: list[StreamMark]) -> bytes:
    body: bytes = msgpack.packb(
        [KIND_SNAPSHOT, next_numbers, [[s.token, s.stream, s.seq] for s in streams]]
    )
    return body


def _stream_mark(value: Any) -> StreamMark:
    if (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and isinstance(value[1], str)
        and _natural(value[2])
    ):
        return StreamMark(value[0], value[1], value[2])
    raise SpoolFormatError("a stream mark is not [token, stream, seq]")


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_body(body: bytes) -> BatchRecord | SnapshotRecord:
    """The record a body holds (the payload of a batch stays compressed)."""
    try:
        fields = msgpack.unpackb(body)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SpoolFormatError(f"record body is not msgpack: {exc}") from None
    if not isinstance(fields, list) or not fields:
        raise SpoolFormatError("record body is not a non-empty array")
    kind = fields[0]
    if kind == KIND_BATCH and len(fields) == 7:
        _, channel, first_n, count, published_us, mark, payload = fields
        if not (
            isinstance(channel, str)
            and _natural(first_n)
            and _natural(count)
            and _natural(published_us)
            and isinstance(payload, bytes)
        ):
            raise SpoolFormatError("batch record fields have the wrong types")
        stream = None if mark is None else _stream_mark(mark)
        return BatchRecord(channel, first_n, count, published_us, stream, payload)
    if kind == KIND_SNAPSHOT and len(fields) == 3:
        _, numbers, streams = fields
        if not (
            isinstance(numbers, dict)
            and all(isinstance(k, str) and _natural(v) for k, v in numbers.items())
            and isinstance(streams, list)
        ):
            raise SpoolFormatError("snapshot record fields have the wrong types")
        return SnapshotRecord(dict(numbers), tuple(_stream_mark(s) for s in streams))
    raise SpoolFormatError(f"unknown record kind {kind!r} with {len(fields)} fields")


def decode_messages(
    payload: bytes, count: int, decompressor: zstandard.ZstdDecompressor, max_bytes: int
) -> list[Message]:
    """The ``count`` messages of a batch payload, checked field by field."""
    try:
        raw = decompressor.decompress(payload, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise SpoolFormatError(f"batch payload does not decompress: {exc}") from None
    if len(raw) > max_bytes:  # a frame that declares its size may still exceed the bound
        raise SpoolFormatError(f"batch payload is larger than {max_bytes} bytes")
    try:
        items = msgpack.unpackb(raw, use_list=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise SpoolFormatError(f"batch payload is not msgpack: {exc}") from None
    if not isinstance(items, tuple) or len(items) != count:
        raise SpoolFormatError(f"batch payload does not hold {count} messages")
    for item in items:
        if not (
            isinstance(item, tuple)
            and len(item) == 5
            and isinstance(item[0], int)
            and isinstance(item[1], int)
            and isinstance(item[2], bytes)
            and isinstance(item[3], bytes)
            and isinstance(item[4], bytes)
        ):
            raise SpoolFormatError("a message in a batch payload is not [ts, pri, src, ps, msg]")
    return list(items)


def _record_at(data: bytes | memoryview, offset: int) -> int | None:
    """The end of a valid record starting at ``offset``, or None."""
    if len(data) - offset < RECORD_HEADER_BYTES:
        return None
    magic, length, crc = _RECORD.unpack_from(data, offset)
    end: int = offset + RECORD_HEADER_BYTES + length
    if magic != RECORD_MAGIC or length > MAX_RECORD_BYTES or end > len(data):
        return None
    if zlib.crc32(data[offset + RECORD_HEADER_BYTES : end]) != crc:
        return None
    return end


def scan_records(data: bytes, start: int = HEADER_BYTES) -> Iterator[ScanEvent]:
    """Every valid record of ``data`` from ``start``, the damaged spans between them, and a
    final ``TornTail`` when bytes after the last valid record are not a whole record."""
    offset = start
    size = len(data)
    while offset < size:
        end = _record_at(data, offset)
        if end is not None:
            yield ScannedRecord(offset, end, data[offset + RECORD_HEADER_BYTES : end])
            offset = end
            continue
        resume = data.find(RECORD_MAGIC, offset + 1)
        while resume != -1 and _record_at(data, resume) is None:
            resume = data.find(RECORD_MAGIC, resume + 1)
        if resume == -1:
            yield TornTail(offset, size)
            return
        yield DamagedSpan(offset, resume)
        offset = resume
