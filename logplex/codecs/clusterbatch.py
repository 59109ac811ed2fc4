"""The cluster mode's messages on NATS (DESIGN section 10), sans-IO.

Every JetStream message of a partition stream holds one channel's batch of one publish::

    [1, channel, count, published_us, payload]

``payload`` is a zstd frame of the msgpack array of the messages, each
``[ts_us, pri, source, ps, msg]`` (the spool's payload, ``spoolformat.pack_messages``), so
ingest compresses once and the owner decompresses once per batch.

An owner passes batches on, without re-encoding them, inside an envelope::

    [kind, stream_seq, batch, prev_seq]

- ``TAIL`` (2): a batch as delivered, on the partition's core tail subject; ``prev_seq`` is
  the stream sequence of the partition's previous tail envelope from the same owner (0: not
  known, as after a takeover), so a subscriber sees a gap — core NATS dropped something, or
  its own connection was down — and catches up from the owner's history;
- ``HISTORY`` (3): a channel's history as one batch, the owner's reply to a history request,
  ``stream_seq`` being the last stream sequence the history includes (a tail that started
  before the request drops the live batches at or below it: no line twice at the seam).

Decoders are bounded (the message size, the decompressed size) and raise only
``ClusterFormatError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgpack
import zstandard

from logplex.codecs.errors import ProtocolError
from logplex.codecs.records import Message
from logplex.codecs.spoolformat import SpoolFormatError, decode_messages, pack_messages

KIND_BATCH: Final = 1
KIND_TAIL: Final = 2
KIND_HISTORY: Final = 3
ENVELOPE_KINDS: Final = (KIND_TAIL, KIND_HISTORY)
MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024  # what one NATS message may carry here
MAX_DECOMPRESSED_BYTES: Final = 64 * 1024 * 1024


class ClusterFormatError(ProtocolError):
    """Bytes on a cluster subject that are not in this format."""

    code = "bad_cluster_message"


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    channel: str
    published_us: int
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: int
    stream_seq: int
    batch: bytes  # an encoded batch (``decode_batch`` reads it)
    prev_seq: int = 0


def encode_batch(
    channel: str,
    messages: list[Message],
    published_us: int,
    compressor: zstandard.ZstdCompressor,
) -> bytes:
    """One JetStream message of ``channel``'s ``messages``."""
    payload = compressor.compress(pack_messages(messages))
    data: bytes = msgpack.packb([KIND_BATCH, channel, len(messages), published_us, payload])
    return data


def _natural(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _unpack(data: bytes, what: str) -> list[object]:
    if len(data) > MAX_MESSAGE_BYTES:
        raise ClusterFormatError(f"{what} of {len(data)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        fields = msgpack.unpackb(data, max_bin_len=MAX_MESSAGE_BYTES)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ClusterFormatError(f"{what} is not msgpack: {exc}") from None
    if not isinstance(fields, list):
        raise ClusterFormatError(f"{what} is not an array")
    return fields


def decode_batch(
    data: bytes,
    decompressor: zstandard.ZstdDecompressor,
    max_bytes: int = MAX_DECOMPRESSED_BYTES,
) -> PartitionBatch:
    """The channel batch a JetStream message holds, every field checked."""
    fields = _unpack(data, "a partition message")
    if len(fields) != 5 or fields[0] != KIND_BATCH:
        raise ClusterFormatError("a partition message is not [1, channel, count, us, payload]")
    _, channel, count, published_us, payload = fields
    if not (
        isinstance(channel, str)
        and _natural(count)
        and _natural(published_us)
        and isinstance(payload, bytes)
    ):
        raise ClusterFormatError("partition message fields have the wrong types")
    assert isinstance(count, int)
    assert isinstance(published_us, int)
    try:
        messages = decode_messages(payload, count, decompressor, max_bytes)
    except SpoolFormatError as exc:
        raise ClusterFormatError(str(exc)) from None
    return PartitionBatch(channel, published_us, messages)


def encode_envelope(kind: int, stream_seq: int, batch: bytes, prev_seq: int = 0) -> bytes:
    if kind not in ENVELOPE_KINDS:
        raise ValueError(f"unknown envelope kind {kind}")
    data: bytes = msgpack.packb([kind, stream_seq, batch, prev_seq])
    return data


def decode_envelope(data: bytes) -> Envelope:
    fields = _unpack(data, "an envelope")
    if len(fields) != 4 or fields[0] not in ENVELOPE_KINDS:
        raise ClusterFormatError("an envelope is not [kind, seq, batch, prev]")
    kind, stream_seq, batch, prev_seq = fields
    if not (_natural(stream_seq) and isinstance(batch, bytes) and _natural(prev_seq)):
        raise ClusterFormatError("envelope fields have the wrong types")
    assert isinstance(kind, int)
    assert isinstance(stream_seq, int)
    assert isinstance(prev_seq, int)
    return Envelope(kind, stream_seq, batch, prev_seq)
