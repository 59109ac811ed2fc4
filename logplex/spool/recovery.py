"""Reading a spool directory: segments, their records, damage, and what a restart rebuilds.

``scan_directory`` is synchronous (run it in a thread): it lists ``*.seg`` files in base
order, checks each header, walks every record with ``logplex.codecs.spoolformat.scan_records``
(every record's CRC is checked) and returns, per channel, the index entries of its batches,
the next message number of every channel, the acknowledged seq of every shim stream, and what
it found damaged. With ``repair`` (the router's start-up) a torn tail is cut off its file;
without (``logplex spool check``) nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from logplex.codecs.spoolformat import (
    HEADER_BYTES,
    BatchRecord,
    DamagedSpan,
    ScannedRecord,
    SpoolFormatError,
    StreamMark,
    TornTail,
    decode_body,
    parse_segment_header,
    scan_records,
)

SEGMENT_SUFFIX: Final = ".seg"


def segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


@dataclass(slots=True)
class FoundSegment:
    path: Path
    base: int
    size: int  # bytes of valid data (header included), after a cut
    created_us: int
    records: int = 0


@dataclass(frozen=True, slots=True)
class FoundBatch:
    """A batch record as found on disk (its payload stays on disk)."""

    channel: str
    first_n: int
    count: int
    published_us: int
    segment: int  # index into ``ScanResult.segments``
    offset: int
    length: int


@dataclass(slots=True)
class ScanResult:
    segments: list[FoundSegment] = field(default_factory=list)
    batches: dict[str, list[FoundBatch]] = field(default_factory=dict)
    next_numbers: dict[str, int] = field(default_factory=dict)
    streams: dict[tuple[str, str], int] = field(default_factory=dict)
    records: int = 0
    damaged_spans: int = 0
    damaged_bytes: int = 0
    torn_bytes: int = 0
    cut_segments: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # files skipped, with the reason
    problems: list[str] = field(default_factory=list)  # human-readable, one per finding

    @property
    def clean(self) -> bool:
        return not (self.damaged_spans or self.torn_bytes or self.unreadable)


def _note_stream(result: ScanResult, mark: StreamMark) -> None:
    key = (mark.token, mark.stream)
    if mark.seq > result.streams.get(key, 0):
        result.streams[key] = mark.seq


def _segment_files(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        if path.suffix != SEGMENT_SUFFIX or not path.is_file():
            continue
        try:
            found.append((int(path.stem), path))
        except ValueError:
            continue
    return sorted(found)


def scan_directory(directory: Path, *, repair: bool) -> ScanResult:
    """Everything a spool directory holds; see the module docstring."""
    result = ScanResult()
    files = _segment_files(directory)
    for base, path in files:
        data = path.read_bytes()
        try:
            header = parse_segment_header(data)
        except SpoolFormatError as exc:
            result.unreadable.append(f"{path.name}: {exc.message}")
            result.problems.append(f"{path.name}: unreadable, skipped ({exc.message})")
            continue
        if header.base != base:
            reason = f"its header says base {header.base}, its name {base}"
            result.unreadable.append(f"{path.name}: {reason}")
            result.problems.append(f"{path.name}: unreadable, skipped ({reason})")
            continue
        segment = FoundSegment(path, base, len(data), header.created_us)
        index = len(result.segments)
        result.segments.append(segment)
        for event in scan_records(data, HEADER_BYTES):
            if isinstance(event, ScannedRecord):
                _take_record(result, segment, index, event)
            elif isinstance(event, DamagedSpan):
                result.damaged_spans += 1
                result.damaged_bytes += event.end - event.offset
                result.problems.append(
                    f"{path.name}: {event.end - event.offset} damaged bytes at offset "
                    f"{event.offset} skipped"
                )
            else:
                assert isinstance(event, TornTail)
                result.torn_bytes += event.end - event.offset
                segment.size = event.offset
                result.problems.append(
                    f"{path.name}: torn tail of {event.end - event.offset} bytes at offset "
                    f"{event.offset}" + (" cut" if repair else "")
                )
                if repair:
                    result.cut_segments.append(path.name)
                    with path.open("r+b") as file:
                        file.truncate(event.offset)
                        os.fsync(file.fileno())
    return result


def _take_record(
    result: ScanResult, segment: FoundSegment, index: int, event: ScannedRecord
) -> None:
    try:
        record = decode_body(event.body)
    except SpoolFormatError as exc:
        # A good CRC over a body this version cannot read: written by a newer or broken
        # writer. Counted like damage; the rest of the segment is still read.
        result.damaged_spans += 1
        result.damaged_bytes += event.end - event.offset
        result.problems.append(
            f"{segment.path.name}: unreadable record at offset {event.offset} ({exc.message})"
        )
        return
    result.records += 1
    segment.records += 1
    if isinstance(record, BatchRecord):
        end_n = record.first_n + record.count
        if end_n <= result.next_numbers.get(record.channel, 0) and record.count:
            # Numbers already seen: never expected, but never let it break the order.
            result.problems.append(
                f"{segment.path.name}: batch of {record.channel!r} at offset {event.offset} "
                "repeats message numbers; skipped"
            )
            return
        result.batches.setdefault(record.channel, []).append(
            FoundBatch(
                record.channel,
                record.first_n,
                record.count,
                record.published_us,
                index,
                event.offset,
                event.end - event.offset,
            )
        )
        result.next_numbers[record.channel] = max(end_n, result.next_numbers.get(record.channel, 0))
        if record.stream is not None:
            _note_stream(result, record.stream)
        return
    for channel, next_n in record.next_numbers.items():
        if next_n > result.next_numbers.get(channel, 0):
            result.next_numbers[channel] = next_n
    for mark in record.streams:
        _note_stream(result, mark)
