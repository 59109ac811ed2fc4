"""Line splitting for the shim (DESIGN 5.6 and 6): table cases and a reference model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs.lines import LineSplitter, split_embedded_lines, split_utf8_chunks

EURO = "€".encode()  # 3 bytes
SMILE = "😀".encode()  # 4 bytes


@pytest.mark.parametrize(
    ("line", "max_bytes", "chunks"),
    [
        (b"", 4, [b""]),
        (b"abcd", 4, [b"abcd"]),
        (b"abcdefghij", 4, [b"abcd", b"efgh", b"ij"]),
        (b"abc" + "é".encode(), 4, [b"abc", "é".encode()]),
        (b"ab" + EURO, 4, [b"ab", EURO]),  # the cut at 4 would split the euro sign
        (b"abc" + SMILE, 4, [b"abc", SMILE]),
        (SMILE + SMILE, 5, [SMILE, SMILE]),
        (b"a" + EURO + EURO, 4, [b"a" + EURO, EURO]),
        (b"abc\x80\x80\x80", 4, [b"abc\x80", b"\x80\x80"]),  # stray continuations: cut as is
        (b"ab\xff\x80\x80", 4, [b"ab\xff\x80", b"\x80"]),  # invalid lead byte: cut as is
        (b"a\x80\x80\x80\x80x", 4, [b"a\x80\x80\x80", b"\x80x"]),  # no lead byte in reach
        (b"a\xe2\x82z", 3, [b"a\xe2\x82", b"z"]),  # a sequence cut short by z: nothing to keep
    ],
)
def test_split_utf8_chunks(line: bytes, max_bytes: int, chunks: list[bytes]) -> None:
    if max_bytes < 4 and len(line) > max_bytes:
        with pytest.raises(ValueError, match="at least 4"):
            split_utf8_chunks(line, max_bytes)
        return
    assert split_utf8_chunks(line, max_bytes) == chunks


@pytest.mark.parametrize(
    ("pieces", "lines", "tail"),
    [
        ([b"a\nb\n"], [b"a", b"b"], []),
        ([b"a\r\nb\r\r\n"], [b"a", b"b\r"], []),  # one trailing CR stripped, not two
        ([b"a\r", b"\nb"], [b"a"], [b"b"]),  # CR and LF in different reads
        ([b"\n\n"], [b"", b""], []),
        ([b"no newline\r"], [b"no n", b"ewli"], [b"ne"]),
        ([b"tail\r"], [], [b"tail"]),
        ([b"x", b"y", b"z\n"], [b"xyz"], []),
        ([b"", b"a"], [], [b"a"]),
        ([b"m\rd\n"], [b"m\rd"], []),
        ([b"0123456789\n"], [b"0123", b"4567", b"89"], []),
        ([b"0123\r\n"], [b"0123"], []),
        ([b"01234\r", b"\n"], [b"0123", b"4"], []),
        ([b"0123\r", b"\n"], [b"0123"], []),
    ],
)
def test_line_splitter(pieces: list[bytes], lines: list[bytes], tail: list[bytes]) -> None:
    splitter = LineSplitter(4)
    got: list[bytes] = []
    for piece in pieces:
        got.extend(splitter.feed(piece))
    assert got == lines
    assert splitter.flush() == tail
    assert splitter.pending == 0
    assert splitter.flush() == []


def test_long_partial_line_is_released_as_it_grows() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcde") == []  # 5 bytes: the cut could still depend on a CR
    assert splitter.feed(b"f") == [b"abcd"]
    assert splitter.pending == 2
    assert splitter.feed(b"\r\n") == [b"ef"]


def test_a_cr_alone_at_the_end_of_a_long_partial_line_is_held_back() -> None:
    # Released eagerly, b"efgh" then b"\r" + b"\n" would add an empty line that the whole
    # line b"abcdefgh\r\n" does not have.
    splitter = LineSplitter(4)
    assert splitter.feed(b"abcdefgh\r") == [b"abcd"]
    assert splitter.pending == 5
    assert splitter.feed(b"\n") == [b"efgh"]
    assert splitter.flush() == []


def test_long_partial_after_a_complete_line_is_released_too() -> None:
    splitter = LineSplitter(4)
    assert splitter.feed(b"a\nxxxxxx") == [b"a", b"xxxx"]
    assert splitter.pending == 2
    assert splitter.flush() == [b"xx"]


def test_partial_line_never_holds_more_than_the_limit_plus_one() -> None:
    splitter = LineSplitter(10)
    released: list[bytes] = []
    for _ in range(1000):
        released.extend(splitter.feed(b"\xe2\x82\xac"))
        assert splitter.pending <= 11
    released.extend(splitter.flush())
    assert b"".join(released) == EURO * 1000
    assert all(len(chunk) <= 10 and len(chunk) % 3 == 0 for chunk in released)


def test_minimum_limit() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        LineSplitter(3)


def reference_lines(data: bytes, max_bytes: int) -> list[bytes]:
    """The rules of DESIGN 6 written the slow, obvious way."""
    *lines, tail = data.split(b"\n")
    if tail:
        lines.append(tail)
    out: list[bytes] = []
    for line in lines:
        stripped = line[:-1] if line.endswith(b"\r") else line
        out.extend(split_utf8_chunks(stripped, max_bytes))
    return out


ALPHABET = [b"a", b"\r", b"\n", "é".encode(), EURO, SMILE, b"\x80", b"\xff", b"\xf0\x9f"]


@given(
    parts=st.lists(st.sampled_from(ALPHABET), max_size=120),
    cuts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=40),
    max_bytes=st.integers(min_value=4, max_value=13),
)
def test_any_split_of_the_input_gives_the_reference_lines(
    parts: list[bytes], cuts: list[int], max_bytes: int
) -> None:
    data = b"".join(parts)
    splitter = LineSplitter(max_bytes)
    got: list[bytes] = []
    position = 0
    index = 0
    while position < len(data):
        size = cuts[index % len(cuts)]
        got.extend(splitter.feed(data[position : position + size]))
        assert splitter.pending <= max_bytes + 1
        position += size
        index += 1
    got.extend(splitter.flush())
    assert got == reference_lines(data, max_bytes)
    assert b"".join(got).replace(b"\r", b"") == data.replace(b"\n", b"").replace(b"\r", b"")


def test_split_embedded_lines() -> None:
    messages = [
        (1, 190, b"app", b"web.1", b"plain"),
        (2, 187, b"app", b"web.1", b"a\nb\n"),
        (3, 190, b"app", b"web.2", b"\n"),
        (4, 190, b"app", b"web.2", b"x\n\ny"),
    ]
    assert split_embedded_lines(messages) == [
        (1, 190, b"app", b"web.1", b"plain"),
        (2, 187, b"app", b"web.1", b"a"),
        (2, 187, b"app", b"web.1", b"b"),
        (3, 190, b"app", b"web.2", b""),
        (4, 190, b"app", b"web.2", b"x"),
        (4, 190, b"app", b"web.2", b""),
        (4, 190, b"app", b"web.2", b"y"),
    ]
