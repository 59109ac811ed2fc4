"""The BATCH fast path (``decode_batch_messages_and_bytes``) against the record-by-record path.

The reference is ``decode_batch_records`` (validation record by record is what it returns)
followed by the DESIGN section 3 and 4 rules written out per record: kind 1/2/3 gives PRI
190/187/189 and the source of that kind, data holding LF becomes one message per line (one
trailing LF ends the text), and the byte count is the sum of the message texts' lengths.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs import errors, shimbatch
from logplex.codecs.records import Message

COMPRESSOR = zstandard.ZstdCompressor(level=1)
LIMITS: dict[str, Any] = {"max_bytes": 1 << 16, "max_records": 64}
SOURCES = (b"app", b"err-source", b"heroku")
PS = b"web.1"
PRI_OF_KIND = {1: 190, 2: 187, 3: 189}


def reference(payload: bytes) -> tuple[list[Message], int]:
    """Messages and their bytes, one record at a time, from the spec's rules."""
    messages: list[Message] = []
    for ts_us, kind, data in shimbatch.decode_batch_records(payload, **LIMITS):
        lines = data.split(b"\n")
        if len(lines) > 1 and not lines[-1]:
            lines.pop()
        for line in lines:
            messages.append((ts_us, PRI_OF_KIND[kind], SOURCES[int(kind) - 1], PS, line))
    return messages, sum(len(message[4]) for message in messages)


def fast(payload: bytes) -> tuple[list[Message], int]:
    return shimbatch.decode_batch_messages_and_bytes(payload, ps=PS, sources=SOURCES, **LIMITS)


def compressed(records: Any) -> bytes:
    return COMPRESSOR.compress(msgpack.packb(records))


@pytest.mark.parametrize(
    ("records", "messages", "message_bytes"),
    [
        ([], [], 0),
        ([[5, 1, b"out"]], [(5, 190, b"app", PS, b"out")], 3),
        (
            [[5, 2, b"e1"], [6, 2, b"e22"]],
            [(5, 187, b"err-source", PS, b"e1"), (6, 187, b"err-source", PS, b"e22")],
            5,
        ),
        ([[7, 3, b"notice"]], [(7, 189, b"heroku", PS, b"notice")], 6),
        (
            [[5, 1, b"a"], [6, 3, b"n"], [7, 2, b"e"]],
            [
                (5, 190, b"app", PS, b"a"),
                (6, 189, b"heroku", PS, b"n"),
                (7, 187, b"err-source", PS, b"e"),
            ],
            3,
        ),
        # LF: one message per line, LFs not counted, one trailing LF makes no extra message.
        (
            [[5, 1, b"a\nbb\n"], [6, 1, b"\n"], [7, 1, b""]],
            [
                (5, 190, b"app", PS, b"a"),
                (5, 190, b"app", PS, b"bb"),
                (6, 190, b"app", PS, b""),
                (7, 190, b"app", PS, b""),
            ],
            3,
        ),
        (
            [[5, 2, b"x\n\ny"], [6, 1, b"z"]],
            [
                (5, 187, b"err-source", PS, b"x"),
                (5, 187, b"err-source", PS, b""),
                (5, 187, b"err-source", PS, b"y"),
                (6, 190, b"app", PS, b"z"),
            ],
            3,
        ),
        # true and 1.0 equal kind 1 (see test_shimproto): the one-kind path reads them as 1.
        (
            [[5, True, b"a"], [6, 1.0, b"b"]],
            [(5, 190, b"app", PS, b"a"), (6, 190, b"app", PS, b"b")],
            2,
        ),
    ],
)
def test_fast_path_table(
    records: list[list[Any]], messages: list[Message], message_bytes: int
) -> None:
    payload = compressed(records)
    assert fast(payload) == (messages, message_bytes)
    assert shimbatch.decode_batch_messages(payload, ps=PS, sources=SOURCES, **LIMITS) == messages
    assert all(type(message[1]) is int for message in fast(payload)[0])


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([[1, 1, b"a"], [2, 1]], errors.ShimFrameError),  # two columns
        ([[1, 1, b"a", b"b"]], errors.ShimFrameError),  # four columns
        ([[1, 4, b"a"]], errors.ShimFrameError),
        ([[1, 1, b"a"], [2, 0, b"b"]], errors.ShimFrameError),  # mixed kinds, one invalid
        ([[-1, 1, b"a"]], errors.ShimFrameError),
        ([[None, 1, b"a"]], errors.ShimFrameError),
        ([[1, 1, None]], errors.ShimFrameError),
        ([[1, 1, b"a"]] * 65, errors.TooManyRecords),
    ],
)
def test_fast_path_refuses_what_the_record_path_refuses(
    records: list[Any], error: type[Exception]
) -> None:
    payload = compressed(records)
    with pytest.raises(error):
        shimbatch.decode_batch_records(payload, **LIMITS)
    with pytest.raises(error):
        fast(payload)


timestamps = st.integers(min_value=0, max_value=253_402_300_799_999_999) | st.sampled_from(
    [-1, 253_402_300_800_000_000, 1.5, True, None, b"1"]
)
kinds = st.sampled_from([1, 2, 3]) | st.sampled_from([0, 4, 1.0, True, None, b"\x01", -1])
datas = st.binary(max_size=40) | st.sampled_from([b"\n", b"a\n", b"\nb", b"a\n\nb\n", 7, None])
valid_records = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2**60),
        st.sampled_from([1, 2, 3]),
        st.binary(max_size=40),
    ).map(list),
    max_size=40,
)
any_records = st.lists(
    st.tuples(timestamps, kinds, datas).map(list)
    | st.lists(st.integers(0, 3), max_size=4)
    | st.integers(0, 3),
    max_size=40,
)


def agrees(payload: bytes) -> None:
    try:
        expected = reference(payload)
    except errors.ProtocolError as exc:
        with pytest.raises(type(exc)):
            fast(payload)
        return
    assert fast(payload) == expected


@given(valid_records)
def test_fast_path_equals_record_path_on_valid_batches(records: list[list[Any]]) -> None:
    agrees(compressed(records))


@given(
    any_records
    | st.lists(valid_records, max_size=2)
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.binary()
)
def test_fast_path_equals_record_path_on_any_batch(records: Any) -> None:
    agrees(compressed(records))


@given(st.binary(max_size=200))
def test_fast_path_equals_record_path_on_any_bytes(payload: bytes) -> None:
    agrees(payload)
