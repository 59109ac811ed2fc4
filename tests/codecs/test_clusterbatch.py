"""The cluster messages on NATS: round trips and every refusal (logplex.codecs.clusterbatch)."""

from __future__ import annotations

import os

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs import clusterbatch
from logplex.codecs.clusterbatch import (
    KIND_HISTORY,
    KIND_TAIL,
    ClusterFormatError,
    decode_batch,
    decode_envelope,
    encode_batch,
    encode_envelope,
)

COMPRESSOR = zstandard.ZstdCompressor()
DECOMPRESSOR = zstandard.ZstdDecompressor()

messages_strategy = st.lists(
    st.tuples(
        st.integers(0, 2**62),
        st.integers(0, 191),
        st.binary(max_size=8),
        st.binary(max_size=8),
        st.binary(max_size=64),
    ),
    max_size=20,
)


@given(channel=st.text(max_size=20), messages=messages_strategy, us=st.integers(0, 2**62))
def test_a_batch_round_trips(channel: str, messages: list, us: int) -> None:
    decoded = decode_batch(encode_batch(channel, messages, us, COMPRESSOR), DECOMPRESSOR)
    assert decoded.channel == channel
    assert decoded.published_us == us
    assert decoded.messages == messages


def test_the_layout_is_the_documented_array() -> None:
    message = (1, 190, b"app", b"web.1", b"hello")
    fields = msgpack.unpackb(encode_batch("ch", [message], 7, COMPRESSOR))
    assert fields[:4] == [1, "ch", 1, 7]
    assert msgpack.unpackb(DECOMPRESSOR.decompress(fields[4])) == [list(message)]


def _raw(fields: object) -> bytes:
    data: bytes = msgpack.packb(fields)
    return data


PAYLOAD = zstandard.ZstdCompressor().compress(msgpack.packb([[1, 190, b"a", b"b", b"c"]]))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\xc1", "not msgpack"),
        (_raw({"a": 1}), "not an array"),
        (_raw([1, "ch", 1, 0]), r"is not \[1, channel"),
        (_raw([2, "ch", 1, 0, PAYLOAD]), r"is not \[1, channel"),
        (_raw([1, 5, 1, 0, PAYLOAD]), "wrong types"),
        (_raw([1, "ch", -1, 0, PAYLOAD]), "wrong types"),
        (_raw([1, "ch", True, 0, PAYLOAD]), "wrong types"),
        (_raw([1, "ch", 1, -3, PAYLOAD]), "wrong types"),
        (_raw([1, "ch", 1, 0, "text"]), "wrong types"),
        (_raw([1, "ch", 2, 0, PAYLOAD]), "does not hold 2 messages"),
        (_raw([1, "ch", 1, 0, b"not zstd"]), "does not decompress"),
    ],
)
def test_a_bad_batch_is_refused_with_a_reason(data: bytes, says: str) -> None:
    with pytest.raises(ClusterFormatError, match=says):
        decode_batch(data, DECOMPRESSOR)


def test_sizes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    big = encode_batch("ch", [(1, 190, b"a", b"b", os.urandom(5000))], 0, COMPRESSOR)
    with pytest.raises(ClusterFormatError, match="larger than 100 bytes"):
        decode_batch(big, DECOMPRESSOR, max_bytes=100)
    monkeypatch.setattr(clusterbatch, "MAX_MESSAGE_BYTES", 50)
    with pytest.raises(ClusterFormatError, match="over 50"):
        decode_batch(big, DECOMPRESSOR)


@pytest.mark.parametrize("kind", [KIND_TAIL, KIND_HISTORY])
def test_an_envelope_round_trips(kind: int) -> None:
    batch = encode_batch("ch", [], 0, COMPRESSOR)
    envelope = decode_envelope(encode_envelope(kind, 42, batch, 41))
    assert (envelope.kind, envelope.stream_seq, envelope.batch) == (kind, 42, batch)
    assert envelope.prev_seq == 41
    assert decode_envelope(encode_envelope(kind, 42, batch)).prev_seq == 0


def test_an_unknown_envelope_kind_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="unknown envelope kind 1"):
        encode_envelope(1, 0, b"")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (_raw([2, 1, b""]), "not \\[kind, seq, batch, prev\\]"),
        (_raw([9, 1, b"", 0]), "not \\[kind, seq, batch, prev\\]"),
        (_raw([2, -1, b"", 0]), "wrong types"),
        (_raw([2, 1, "x", 0]), "wrong types"),
        (_raw([2, 1, b"", -1]), "wrong types"),
        (_raw("x"), "not an array"),
    ],
)
def test_a_bad_envelope_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(ClusterFormatError, match=says):
        decode_envelope(data)
