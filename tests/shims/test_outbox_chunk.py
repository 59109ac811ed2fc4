"""``_Chunk.cost`` (the cost of a run of lines, from cumulative lengths) against the sum.

Whatever order the outbox asks in, the cost of lines ``start..end`` is their bytes plus
``RECORD_OVERHEAD_BYTES`` per line.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shims.outbox import RECORD_OVERHEAD_BYTES, _Chunk

OVERHEAD = 16  # per record: msgpack array(1) + uint64(9) + kind(1) + bin header(<=5)


def test_overhead_is_the_msgpack_record_bound() -> None:
    assert RECORD_OVERHEAD_BYTES == OVERHEAD


def expected_cost(lines: list[bytes], start: int, end: int) -> int:
    return sum(len(line) for line in lines[start:end]) + OVERHEAD * (end - start)


@pytest.mark.parametrize(
    ("lines", "ranges", "costs"),
    [
        ([], [(0, 0)], [0]),
        ([b"abc"], [(0, 1), (0, 0), (1, 1)], [3 + OVERHEAD, 0, 0]),
        (
            [b"a", b"bb", b"ccc"],
            [(0, 3), (1, 3), (0, 2), (2, 3), (0, 3)],
            [6 + 3 * OVERHEAD, 5 + 2 * OVERHEAD, 3 + 2 * OVERHEAD, 3 + OVERHEAD, 6 + 3 * OVERHEAD],
        ),
        ([b"", b"", b"x"], [(1, 2), (0, 3)], [OVERHEAD, 1 + 3 * OVERHEAD]),
    ],
)
def test_cost_table(lines: list[bytes], ranges: list[tuple[int, int]], costs: list[int]) -> None:
    chunk = _Chunk(1, 1, lines)
    assert [chunk.cost(start, end) for start, end in ranges] == costs


@given(
    st.lists(st.binary(max_size=30), max_size=20),
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), max_size=10),
)
def test_cost_equals_the_sum_in_any_order(
    lines: list[bytes], ranges: list[tuple[int, int]]
) -> None:
    chunk = _Chunk(1, 1, lines)
    for a, b in ranges:
        start, end = sorted((min(a, len(lines)), min(b, len(lines))))
        assert chunk.cost(start, end) == expected_cost(lines, start, end)
    assert chunk.cost(0, len(lines)) == expected_cost(lines, 0, len(lines))
