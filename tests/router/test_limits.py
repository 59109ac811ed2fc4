"""Limits on what a tenant can create or hold: history bytes, sessions per channel, clients
per session URL, channels per API key and tokens per channel (docs/operations.md, "Guards:
limits"). Unit tests: the ring and the registry as plain objects, the API in-process on a
loopback port (``running_api``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from logplex.codecs.records import Message
from logplex.fanout.history import HistoryRing


def sized(count: int, *, start: int, size: int | list[int], single: bool = False) -> list[Message]:
    """``count`` messages numbered from ``start`` whose text is ``size`` bytes long (one size
    or one per message); ``single`` makes every text identical (one shared column value)."""
    sizes = size if isinstance(size, list) else [size] * count
    out: list[Message] = []
    for n, length in zip(range(start, start + count), sizes, strict=True):
        text = b"x" * length if single else (b"%d:" % n).ljust(max(length, 0), b".")[:length]
        out.append((1_000_000 + n, 190, b"app", b"web.1", text))
    return out


def expected_history(everything: list[Message], max_lines: int, max_bytes: int) -> list[Message]:
    """The model: the longest run of newest messages within both bounds."""
    kept: list[Message] = []
    total = 0
    for message in reversed(everything[-max_lines:] if max_lines else []):
        if total + len(message[4]) > max_bytes:
            break
        total += len(message[4])
        kept.append(message)
    return kept[::-1]


# -- history bytes -------------------------------------------------------------------------


def test_history_keeps_at_most_max_bytes_of_text_dropping_the_oldest() -> None:
    ring = HistoryRing(1500, max_bytes=10_000)
    everything = sized(100, start=0, size=1000)  # 100 kB of text under a 10 kB bound
    ring.extend(everything)
    assert ring.messages() == everything[-10:]
    assert ring.text_bytes == 10_000
    assert ring.take_evicted_for_bytes() == 90
    assert ring.take_evicted_for_bytes() == 0  # taken


def test_history_line_bound_still_applies_with_small_lines() -> None:
    ring = HistoryRing(50, max_bytes=1 << 20)
    everything = sized(200, start=0, size=10)
    ring.extend(everything)
    assert ring.messages() == everything[-50:]
    assert ring.take_evicted_for_bytes() == 0  # the line bound did it


def test_a_message_larger_than_the_byte_bound_is_not_kept() -> None:
    ring = HistoryRing(100, max_bytes=2048)
    small = sized(3, start=0, size=100)
    ring.extend(small)
    ring.extend(sized(1, start=3, size=4096))
    assert ring.messages() == []
    assert ring.text_bytes == 0
    after = sized(2, start=4, size=100)
    ring.extend(after)
    assert ring.messages() == after


@given(
    max_lines=st.integers(min_value=1, max_value=200),
    max_bytes=st.integers(min_value=0, max_value=3000),
    single=st.booleans(),
    steps=st.lists(
        st.one_of(
            st.lists(st.integers(min_value=0, max_value=300), min_size=0, max_size=90),
            st.just("compact"),
        ),
        max_size=30,
    ),
)
def test_history_with_both_bounds_matches_a_plain_list_model(
    max_lines: int, max_bytes: int, single: bool, steps: list[list[int] | str]
) -> None:
    ring = HistoryRing(max_lines, max_bytes=max_bytes)
    everything: list[Message] = []
    for step in steps:
        if step == "compact":
            ring.compact()
        else:
            assert isinstance(step, list)
            sizes = [step[0]] * len(step) if single and step else step
            batch = sized(len(step), start=len(everything), size=sizes, single=single)
            everything.extend(batch)
            ring.extend(batch)
        expected = expected_history(everything, max_lines, max_bytes)
        assert ring.messages() == expected
        assert len(ring) == len(expected)
        assert ring.text_bytes == sum(len(m[4]) for m in expected)
