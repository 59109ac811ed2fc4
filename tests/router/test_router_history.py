"""The history ring: last N messages, oldest first, in every batch-size pattern."""

from __future__ import annotations

import pytest
from dataplane_helpers import make_messages
from hypothesis import given
from hypothesis import strategies as st

from logplex.fanout.history import COMPACT_MIN_LINES, HistoryRing


def fill(
    ring: HistoryRing, batch_sizes: list[int], compact_every: int = 0
) -> list[tuple[int, int, bytes, bytes, bytes]]:
    everything = []
    start = 0
    for index, size in enumerate(batch_sizes, 1):
        batch = make_messages(size, start=start, ps=b"web.%d" % (start % 3))
        everything.extend(batch)
        ring.extend(batch)
        start += size
        if compact_every and index % compact_every == 0:
            ring.compact()
            assert ring.fresh_lines == 0
    return everything


@pytest.mark.parametrize(
    ("max_lines", "batch_sizes"),
    [
        (10, [3, 3, 3]),  # under the limit, all pending
        (10, [4, 4, 4]),  # over the limit in the pending list only
        (1500, [1] * 2000),  # line by line: pending compacted into blocks, blocks dropped
        (1500, [100] * 30),  # big batches: blocks trimmed with a skip
        (1500, [5000]),  # one batch larger than the ring
        (100, [COMPACT_MIN_LINES, 1, COMPACT_MIN_LINES + 1, 7]),  # mixed
        (1, [5, 1, 70]),
    ],
)
@pytest.mark.parametrize("compact_every", [0, 1, 3])
def test_ring_keeps_the_newest_lines_in_order(
    max_lines: int, batch_sizes: list[int], compact_every: int
) -> None:
    ring = HistoryRing(max_lines)
    everything = fill(ring, batch_sizes, compact_every)
    assert ring.messages() == everything[-max_lines:]
    assert len(ring) == min(max_lines, len(everything))
    ring.compact()
    assert ring.messages() == everything[-max_lines:]


@given(
    max_lines=st.integers(min_value=1, max_value=300),
    steps=st.lists(
        st.one_of(st.integers(min_value=0, max_value=200), st.just("compact")), max_size=40
    ),
)
def test_ring_matches_a_plain_list_model(max_lines: int, steps: list[int | str]) -> None:
    ring = HistoryRing(max_lines)
    everything: list[tuple[int, int, bytes, bytes, bytes]] = []
    for step in steps:
        if step == "compact":
            ring.compact()
        else:
            assert isinstance(step, int)
            batch = make_messages(step, start=len(everything), ps=b"web.%d" % (step % 3))
            everything.extend(batch)
            ring.extend(batch)
        assert ring.messages() == everything[-max_lines:]
        assert len(ring) == len(everything[-max_lines:])


def test_columns_with_differing_sources_and_ps_round_trip() -> None:
    ring = HistoryRing(500)
    batch = [
        (1_000_000 + n, 187 if n % 2 else 190, b"app" if n % 3 else b"heroku", b"web.%d" % n, b"")
        for n in range(200)
    ]
    ring.extend(batch)
    ring.compact()
    assert ring.messages() == batch


def test_compaction_makes_blocks_of_many_lines_from_line_by_line_writes() -> None:
    ring = HistoryRing(1500)
    everything = fill(ring, [1] * 1000, compact_every=10)
    assert ring.messages() == everything
    segments = list(ring._segments)
    assert all(len(s) >= COMPACT_MIN_LINES for s in segments[:-1])


def test_last_n_and_clear() -> None:
    ring = HistoryRing(50)
    everything = fill(ring, [70, 3])
    assert ring.messages(last=5) == everything[-5:]
    assert ring.messages(last=0) == []
    ring.clear()
    assert ring.messages() == []
    assert len(ring) == 0


def test_zero_history_keeps_nothing_and_negative_is_refused() -> None:
    ring = HistoryRing(0)
    fill(ring, [100])
    assert ring.messages() == []
    with pytest.raises(ValueError, match="0 or more"):
        HistoryRing(-1)
