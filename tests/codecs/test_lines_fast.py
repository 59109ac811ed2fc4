"""The long-line test of ``LineSplitter.feed`` (``rfind`` steps) against ``max(map(len))``.

A line is longer than the limit exactly when the longest of the complete lines is; the
``rfind`` walk must agree with that on any data, and ``feed`` must split as the plain rule
(every line cut by ``split_utf8_chunks``) does.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs.lines import (
    _FIND_LONG_LINES_FROM_BYTES,
    LineSplitter,
    _has_line_over,
    split_utf8_chunks,
)

BIG = _FIND_LONG_LINES_FROM_BYTES  # the rfind walk
SMALL = 10  # the len pass


def has_line_over(data: bytes, limit: int) -> bool:
    lines = data.split(b"\n")
    partial = lines.pop()
    return _has_line_over(data, len(data) - len(partial) - 1, limit, lines)


@pytest.mark.parametrize("limit", [SMALL, BIG, 10000])
@pytest.mark.parametrize(
    ("lengths", "partial", "over"),
    [
        ([0], 0, False),
        ([1, 1, 1], 0, False),
        (["limit"], 0, False),  # exactly the limit is not over it
        (["limit+1"], 0, True),
        (["limit", "limit", "limit"], 0, False),
        (["limit", "limit+1", "limit"], 0, True),
        ([3, 3, "limit+1"], 0, True),  # the last complete line
        (["limit+1", 3], 0, True),  # the first line
        ([3, 3], "limit+5", False),  # a long partial line is not a complete line
        (["limit", 0, 0, "limit"], "limit+1", False),
    ],
)
def test_long_line_table(
    limit: int, lengths: list[int | str], partial: int | str, over: bool
) -> None:
    def size(spec: int | str) -> int:
        # "limit" or "limit+N": relative to the limit under test.
        if isinstance(spec, int):
            return spec
        return limit + int(spec.removeprefix("limit") or 0)

    data = b"".join(b"x" * size(n) + b"\n" for n in lengths) + b"y" * size(partial)
    assert has_line_over(data, limit) is over


line_lengths = st.lists(
    st.integers(min_value=0, max_value=BIG + 2)
    | st.sampled_from([BIG - 1, BIG, BIG + 1, SMALL, SMALL + 1]),
    min_size=1,
    max_size=30,
)


@given(line_lengths, st.integers(min_value=0, max_value=BIG + 2), st.sampled_from([SMALL, BIG]))
def test_long_line_test_equals_the_longest_line(
    lengths: list[int], partial: int, limit: int
) -> None:
    data = b"".join(b"x" * n + b"\n" for n in lengths) + b"y" * partial
    assert has_line_over(data, limit) is (max(lengths) > limit)


@given(
    st.lists(st.binary(max_size=BIG + 40) | st.just(b"\n") | st.just(b"\r\n"), max_size=12),
    st.sampled_from([SMALL, BIG]),
)
def test_feed_equals_the_plain_rule(pieces: list[bytes], limit: int) -> None:
    data = b"".join(pieces)
    splitter = LineSplitter(limit)
    got = splitter.feed(data) + splitter.flush()
    text = data.replace(b"\r\n", b"\n")
    lines = text.split(b"\n")
    held = lines.pop()
    expected = [chunk for line in lines for chunk in split_utf8_chunks(line, limit)]
    if held:  # flush() ships a held partial line, less one trailing CR (even if that empties it)
        expected += split_utf8_chunks(held.removesuffix(b"\r"), limit)
    assert got == expected
