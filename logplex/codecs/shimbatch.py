"""BATCH bodies of the shim stream protocol v1 (DESIGN section 4): compression and validation.

A BATCH body is ``u64 BE seq`` then one zstd frame whose content is a msgpack array of records
``[ts_us, kind, data]``; the frame layer (``logplex.codecs.shimproto``) keeps the zstd frame
compressed, and this module turns it into records or straight into message tuples, within the
limits the router chose (``max_bytes`` of content, ``max_records``).

Decompression is bounded by reading the frame's declared content size first: a frame that
does not declare it, or declares more than ``max_bytes``, is refused before anything is
allocated (``max_output_size`` alone does not bound a frame that declares its size). Record
validation is done column-wise with C-level passes (``map``, ``zip``, ``set``,
``min``/``max``), not per record in Python: the router decodes per batch, never per line.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Final

import msgpack
import zstandard

from logplex.codecs.errors import DecompressedTooLarge, ShimFrameError, TooManyRecords
from logplex.codecs.lines import split_embedded_lines
from logplex.codecs.records import PRI_BY_KIND, Message
from logplex.codecs.timestamps import MAX_TS_US

__all__ = [
    "compress_records",
    "decode_batch_messages",
    "decode_batch_messages_and_bytes",
    "decode_batch_records",
]

_KINDS: Final = frozenset(PRI_BY_KIND)


def compress_records(records: list[list[Any]], compressor: zstandard.ZstdCompressor) -> bytes:
    """The zstd frame (with its content size) of the msgpack array of ``records``."""
    return compressor.compress(msgpack.packb(records))


# One decompressor for the process: creating one per batch costs more than decoding a small
# batch. zstandard objects must not be used from two threads at once; the codecs are used
# from one thread (trio's), and a caller that decodes from worker threads passes its own.
_DECOMPRESSOR: Final = zstandard.ZstdDecompressor()


def _decompress_bounded(
    payload: bytes, max_bytes: int, decompressor: zstandard.ZstdDecompressor
) -> bytes:
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError:
        raise ShimFrameError(
            f"BATCH payload does not start with a zstd frame header ({payload[:8].hex()})"
        ) from None
    if declared < 0:
        raise ShimFrameError(
            "BATCH zstd frame does not declare its content size; compress with "
            "write_content_size=True (zstandard's default for one-shot compress)"
        )
    if declared > max_bytes:
        raise DecompressedTooLarge(
            f"BATCH declares {declared} bytes of content, over the limit of {max_bytes} "
            "(max_batch_bytes)"
        )
    try:
        content: bytes = decompressor.decompress(payload, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise ShimFrameError(f"BATCH payload is not one valid zstd frame ({exc})") from None
    return content


def _first_bad_record(records: tuple[Any, ...]) -> str:
    """Why the first invalid record is invalid (only called once validation failed)."""
    for index, record in enumerate(records):
        where = f"record {index}"
        if type(record) is not tuple or len(record) != 3:
            return f"{where} is not an array [ts_us, kind, data]"
        ts_us, kind, data = record
        if type(ts_us) is not int or not 0 <= ts_us < MAX_TS_US:
            return f"{where}: ts_us must be an int of microseconds in years 1970..9999"
        if not isinstance(kind, int | float) or kind not in _KINDS:
            return f"{where}: kind must be 1 (stdout), 2 (stderr) or 3 (notice), got {kind!r}"
        if type(data) is not bytes:
            return f"{where}: data must be msgpack bin, got {type(data).__name__}"
    # Unreachable: these per-record checks accept exactly what the column checks accept
    # (msgpack yields no other tuple-like, bytes-like or numeric types here).
    raise AssertionError("validation failed but every record is valid")  # pragma: no cover


def _validated_columns(
    payload: bytes,
    max_bytes: int,
    max_records: int,
    decompressor: zstandard.ZstdDecompressor,
) -> tuple[tuple[Any, ...], tuple[int, ...], tuple[int, ...], tuple[bytes, ...], set[int], bytes]:
    """The records, their three columns (ts_us, kind, data), the set of kinds, all data joined.

    The checks are C-level passes over columns, in an order where each one's assumptions
    hold: the msgpack limits refuse str, map and ext content outright; ``zip(strict=True)``
    yields exactly three columns only when every record is iterable with three elements (a
    bin record yields ints, caught by the data check; a scalar record raises TypeError);
    ``b"".join`` refuses any data item that is not bytes, and its result serves the LF check
    of the caller too. ``kind`` is checked by value: 1, 2 or 3 (a float 1.0 or msgpack true
    equals 1 and maps to the same PRI and source, so accepting it changes nothing); the set
    of kinds is built once and serves the caller's one-kind fast path too.
    """
    content = _decompress_bounded(payload, max_bytes, decompressor)
    try:
        records = msgpack.unpackb(
            content,
            use_list=False,
            max_array_len=max(max_records, 3),
            max_map_len=0,
            max_str_len=0,
            max_ext_len=0,
            max_bin_len=max_bytes,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        if "max_array_len" in str(exc):
            raise TooManyRecords(
                f"BATCH holds more than {max_records} records (max_records)"
            ) from None
        raise ShimFrameError(f"BATCH content is not one msgpack array ({exc})") from None
    if type(records) is not tuple:
        raise ShimFrameError(
            f"BATCH content must be a msgpack array of records, got {type(records).__name__}"
        )
    if len(records) > max_records:
        raise TooManyRecords(
            f"BATCH holds {len(records)} records, more than {max_records} (max_records)"
        )
    if not records:
        return records, (), (), (), set(), b""
    try:
        # Unpacking into three names raises ValueError unless there are exactly three.
        ts_column, kind_column, data_column = zip(*records, strict=True)
        joined = b"".join(data_column)
        kinds = set(kind_column)
        valid = (
            set(map(type, ts_column)) == {int}
            and min(ts_column) >= 0
            and max(ts_column) < MAX_TS_US
            and kinds <= _KINDS
        )
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ShimFrameError(f"BATCH {_first_bad_record(records)}")
    return records, ts_column, kind_column, data_column, kinds, joined


def decode_batch_records(
    payload: bytes,
    *,
    max_bytes: int,
    max_records: int,
    decompressor: zstandard.ZstdDecompressor = _DECOMPRESSOR,
) -> list[list[Any]]:
    """The validated records ``[ts_us, kind, data]`` of a BATCH payload (a zstd frame).

    Raises ``DecompressedTooLarge`` when the content would exceed ``max_bytes``,
    ``TooManyRecords`` beyond ``max_records``, ``ShimFrameError`` for anything malformed.
    """
    records = _validated_columns(payload, max_bytes, max_records, decompressor)[0]
    return [list(record) for record in records]


def decode_batch_messages(
    payload: bytes,
    *,
    max_bytes: int,
    max_records: int,
    ps: bytes,
    sources: tuple[bytes, bytes, bytes],
    decompressor: zstandard.ZstdDecompressor = _DECOMPRESSOR,
) -> list[Message]:
    """The router's fast path: a BATCH payload straight to message tuples.

    ``sources`` gives the source for kinds 1, 2 and 3 (stdout, stderr, shim notice); the PRI
    comes from ``records.PRI_BY_KIND``. Data containing LF (a shim that did not split
    lines) becomes one message per line, so no message holds a raw LF.
    """
    return decode_batch_messages_and_bytes(
        payload,
        max_bytes=max_bytes,
        max_records=max_records,
        ps=ps,
        sources=sources,
        decompressor=decompressor,
    )[0]


def decode_batch_messages_and_bytes(
    payload: bytes,
    *,
    max_bytes: int,
    max_records: int,
    ps: bytes,
    sources: tuple[bytes, bytes, bytes],
    decompressor: zstandard.ZstdDecompressor = _DECOMPRESSOR,
) -> tuple[list[Message], int]:
    """``decode_batch_messages`` and the total bytes of the message texts it returns.

    The total comes from the joined data the validation built anyway (less one byte per LF
    that a split removes), so the caller's byte count costs no pass over the messages.
    """
    records, ts_column, kind_column, data_column, kinds, joined = _validated_columns(
        payload, max_bytes, max_records, decompressor
    )
    # Validation is done. One kind (the usual batch): zip the columns the validation built
    # with constants, all in C. Mixed kinds: a comprehension with dict lookups is cheaper
    # than zipping the columns through map() lookups.
    if len(kinds) == 1:
        kind = int(kind_column[0])
        messages = list(
            zip(
                ts_column,
                repeat(PRI_BY_KIND[kind]),
                repeat(sources[kind - 1]),
                repeat(ps),
                data_column,
            )
        )
    else:
        pri_by_kind = PRI_BY_KIND
        source_by_kind = dict(zip((1, 2, 3), sources, strict=True))
        messages = [
            (ts_us, pri_by_kind[kind], source_by_kind[kind], ps, data)
            for ts_us, kind, data in records
        ]
    # 0x0A, not b"\n": see split_embedded_lines.
    if 0x0A in joined:
        return split_embedded_lines(messages), len(joined) - joined.count(0x0A)
    return messages, len(joined)
