"""The shim stream protocol, version 1 (DESIGN section 4): frame kinds, encoders, decoder.

Every frame is ``u32 BE length`` + ``u8 kind`` + body; the length counts the kind byte and
the body, so it is at least 1. Bodies are msgpack maps with str keys, except BATCH: ``u64 BE
seq`` then one zstd frame whose content is a msgpack array of records ``[ts_us, kind, data]``.

Encoders return whole frames. ``ShimFrameDecoder`` is incremental (feed bytes, take events),
linear under any split of the input, and never allocates from an untrusted length before
checking it against ``max_frame_bytes`` (a bound on the length field, i.e. kind + body).
Each body is validated on the spot: shape, key presence and value types; unknown keys are
ignored (forward compatibility), a ``v`` other than 1 is ``UnsupportedVersion``.

A BATCH event keeps its zstd payload compressed: the router decides when to decode it, and
with which limits, with ``logplex.codecs.shimbatch`` (BATCH bodies). Which frame may come
when, and the seq rule, are ``logplex.codecs.shimsession``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

import msgpack
import zstandard

from logplex.codecs.errors import (
    EncodeError,
    FrameTooLarge,
    ShimFrameError,
    UnsupportedVersion,
)
from logplex.codecs.shimbatch import compress_records

__all__ = [
    "ACK",
    "BATCH",
    "ERROR",
    "HELLO",
    "MIN_MAX_BATCH_BYTES",
    "PING",
    "PONG",
    "PROTOCOL_VERSION",
    "READY",
    "Ack",
    "BatchFrame",
    "ErrorFrame",
    "Event",
    "Hello",
    "Ping",
    "Pong",
    "Ready",
    "ShimFrameDecoder",
    "encode_ack",
    "encode_batch",
    "encode_batch_payload",
    "encode_error",
    "encode_hello",
    "encode_ping",
    "encode_pong",
    "encode_ready",
]

HELLO: Final = 1
READY: Final = 2
BATCH: Final = 3
ACK: Final = 4
PING: Final = 5
PONG: Final = 6
ERROR: Final = 7

PROTOCOL_VERSION: Final = 1
MIN_MAX_BATCH_BYTES: Final = 65536
MAX_SEQ: Final = 2**64 - 1
MAX_FRAME_LENGTH: Final = 2**32 - 1

_HEADER: Final = struct.Struct(">IB")
_BATCH_HEADER: Final = struct.Struct(">IBQ")


@dataclass(frozen=True, slots=True)
class Hello:
    v: int
    token: str
    ps: str
    stream: str
    agent: str
    platform_token: str | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    v: int
    acked: int
    window: int
    max_batch_bytes: int


@dataclass(frozen=True, slots=True)
class BatchFrame:
    seq: int
    payload: bytes  # the zstd frame, still compressed


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    code: str
    message: str


Event = Hello | Ready | BatchFrame | Ack | Ping | Pong | ErrorFrame


# --- encoders ---------------------------------------------------------------------------


def _frame(kind: int, body: bytes) -> bytes:
    if len(body) >= MAX_FRAME_LENGTH:
        raise EncodeError(f"frame body of {len(body)} bytes does not fit a u32 length")
    return _HEADER.pack(len(body) + 1, kind) + body


def _map_frame(kind: int, body: dict[str, Any]) -> bytes:
    return _frame(kind, msgpack.packb(body))


def encode_hello(
    token: str, ps: str, stream: str, agent: str, platform_token: str | None = None
) -> bytes:
    body: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "token": token,
        "ps": ps,
        "stream": stream,
        "agent": agent,
    }
    if platform_token is not None:
        body["platform_token"] = platform_token
    return _map_frame(HELLO, body)


def encode_ready(acked: int, window: int, max_batch_bytes: int) -> bytes:
    if max_batch_bytes < MIN_MAX_BATCH_BYTES:
        raise EncodeError(
            f"max_batch_bytes {max_batch_bytes} is below the protocol minimum {MIN_MAX_BATCH_BYTES}"
        )
    body = {"v": PROTOCOL_VERSION, "acked": acked, "window": window}
    body["max_batch_bytes"] = max_batch_bytes
    return _map_frame(READY, body)


def encode_batch_payload(seq: int, compressed: bytes) -> bytes:
    """A BATCH frame around an already compressed body (resending keeps the same bytes)."""
    if not 1 <= seq <= MAX_SEQ:
        raise EncodeError(f"batch seq {seq} is outside 1..2**64-1")
    if len(compressed) + 9 > MAX_FRAME_LENGTH:
        raise EncodeError(f"batch payload of {len(compressed)} bytes does not fit a u32 length")
    return _BATCH_HEADER.pack(len(compressed) + 9, BATCH, seq) + compressed


def encode_batch(
    seq: int,
    records: list[list[Any]],
    *,
    compressor: zstandard.ZstdCompressor | None = None,
    level: int = 1,
) -> bytes:
    """A BATCH frame; pass a reusable ``compressor`` on hot paths (creating one costs)."""
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=level)
    return encode_batch_payload(seq, compress_records(records, compressor))


def encode_ack(seq: int) -> bytes:
    return _map_frame(ACK, {"seq": seq})


def encode_ping() -> bytes:
    return _map_frame(PING, {})


def encode_pong() -> bytes:
    return _map_frame(PONG, {})


def encode_error(code: str, message: str) -> bytes:
    return _map_frame(ERROR, {"code": code, "message": message})


# --- frame decoder ----------------------------------------------------------------------

_KIND_NAMES: Final = {
    HELLO: "HELLO",
    READY: "READY",
    BATCH: "BATCH",
    ACK: "ACK",
    PING: "PING",
    PONG: "PONG",
    ERROR: "ERROR",
}
_COMPACT_AFTER_BYTES: Final = 65536


def _unpack_map(kind: int, body: bytes, offset: int) -> dict[str, Any]:
    name = _KIND_NAMES[kind]
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ShimFrameError(
            f"{name} body is not one msgpack value ({exc})", offset=offset
        ) from None
    if type(value) is not dict:
        raise ShimFrameError(
            f"{name} body must be a msgpack map, got {type(value).__name__}", offset=offset
        )
    if not all(type(key) is str for key in value):
        raise ShimFrameError(f"{name} body keys must be msgpack str", offset=offset)
    return value


def _field(body: dict[str, Any], kind: int, key: str, expected: type, offset: int) -> Any:
    if key not in body:
        raise ShimFrameError(f"{_KIND_NAMES[kind]} body lacks the key {key!r}", offset=offset)
    value = body[key]
    if type(value) is not expected:
        raise ShimFrameError(
            f"{_KIND_NAMES[kind]} field {key!r} must be {expected.__name__}, "
            f"got {type(value).__name__}",
            offset=offset,
        )
    return value


def _count(body: dict[str, Any], kind: int, key: str, minimum: int, offset: int) -> int:
    value: int = _field(body, kind, key, int, offset)
    if not minimum <= value <= MAX_SEQ:
        raise ShimFrameError(
            f"{_KIND_NAMES[kind]} field {key!r} is {value}, outside {minimum}..2**64-1",
            offset=offset,
        )
    return value


def _version(body: dict[str, Any], kind: int, offset: int) -> int:
    version: int = _field(body, kind, "v", int, offset)
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"{_KIND_NAMES[kind]} speaks protocol version {version}; this end speaks only "
            f"version {PROTOCOL_VERSION}",
            offset=offset,
        )
    return version


def _decode_body(kind: int, body: bytes, offset: int) -> Event:
    if kind == BATCH:
        if len(body) <= 8:
            raise ShimFrameError(
                f"BATCH body of {len(body)} bytes is shorter than a seq and a zstd frame",
                offset=offset,
            )
        seq = int.from_bytes(body[:8], "big")
        if seq == 0:
            raise ShimFrameError("BATCH seq 0 is invalid; seqs start at 1", offset=offset)
        return BatchFrame(seq, body[8:])
    if kind not in _KIND_NAMES:
        raise ShimFrameError(f"unknown frame kind {kind}; version 1 has kinds 1..7", offset=offset)
    fields = _unpack_map(kind, body, offset)
    if kind == HELLO:
        version = _version(fields, kind, offset)
        platform_token = fields.get("platform_token")
        if platform_token is not None and type(platform_token) is not str:
            raise ShimFrameError("HELLO field 'platform_token' must be str", offset=offset)
        return Hello(
            version,
            _field(fields, kind, "token", str, offset),
            _field(fields, kind, "ps", str, offset),
            _field(fields, kind, "stream", str, offset),
            _field(fields, kind, "agent", str, offset),
            platform_token,
        )
    if kind == READY:
        version = _version(fields, kind, offset)
        acked = _count(fields, kind, "acked", 0, offset)
        window = _count(fields, kind, "window", 1, offset)
        max_batch_bytes = _count(fields, kind, "max_batch_bytes", MIN_MAX_BATCH_BYTES, offset)
        return Ready(version, acked, window, max_batch_bytes)
    if kind == ACK:
        return Ack(_count(fields, kind, "seq", 0, offset))
    if kind == PING:
        return Ping()
    if kind == PONG:
        return Pong()
    return ErrorFrame(
        _field(fields, kind, "code", str, offset), _field(fields, kind, "message", str, offset)
    )


class ShimFrameDecoder:
    """Incremental decoder of shim stream frames: ``feed(data)``, then ``next_event()``.

    ``max_frame_bytes`` bounds the length field (kind + body); a longer frame raises
    ``FrameTooLarge`` as soon as its 4-byte length is seen, before its body is buffered.
    After an error the decoder is unusable: the connection must be closed.
    """

    __slots__ = ("_buffer", "_consumed", "_max_frame_bytes", "_start")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {max_frame_bytes}")
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._start = 0  # index in _buffer of the next frame
        self._consumed = 0  # absolute stream offset of _buffer[0]

    @property
    def max_frame_bytes(self) -> int:
        """The bound on the next frame's length field; a session may raise it (HELLO-sized
        before authentication, batch-sized after)."""
        return self._max_frame_bytes

    @max_frame_bytes.setter
    def max_frame_bytes(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"max_frame_bytes must be positive, got {value}")
        self._max_frame_bytes = value

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events."""
        return len(self._buffer) - self._start

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_event(self) -> Event | None:
        """The next complete frame's event, or None until more bytes arrive."""
        buffer = self._buffer
        start = self._start
        if len(buffer) - start < 5:
            return None
        length, kind = _HEADER.unpack_from(buffer, start)
        offset = self._consumed + start
        if length < 1:
            raise ShimFrameError(
                "frame length 0: a frame holds at least its kind byte", offset=offset
            )
        if length > self._max_frame_bytes:
            raise FrameTooLarge(
                f"{_KIND_NAMES.get(kind, f'kind {kind}')} frame of {length} bytes exceeds the "
                f"limit of {self._max_frame_bytes}",
                offset=offset,
            )
        end = start + 4 + length
        if len(buffer) < end:
            return None
        body = bytes(buffer[start + 5 : end])
        self._start = end
        if end >= _COMPACT_AFTER_BYTES and end * 2 >= len(buffer):
            del buffer[:end]
            self._consumed += end
            self._start = 0
        return _decode_body(kind, body, offset)
