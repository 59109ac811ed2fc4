"""The spool in one process: append, group commit, cursors, restart, budget, damage."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drains import Taken
from drains._notices import l10_message
from logplex.codecs.drain_frames import https_frames
from logplex.codecs.records import Message
from logplex.codecs.spoolformat import StreamMark
from logplex.spool.cursors import SpoolQueue, read_journal
from logplex.spool.log import Spool
from logplex.spool.recovery import scan_directory


def lines(start: int, count: int, *, size: int = 0) -> list[Message]:
    return [
        (1_700_000_000_000_000 + n, 134, b"app", b"web.1", b"line %d %s" % (n, pad(size)))
        for n in range(start, start + count)
    ]


def pad(size: int) -> bytes:
    """Bytes that do not compress, so sizes on disk are what a test means."""
    return os.urandom(size // 2).hex().encode()


def open_spool(path: Path, **kwargs: int) -> Spool:
    settings = {"max_bytes": 64 << 20, "sync_ms": 50, "history_lines": 100, **kwargs}
    spool = Spool(path, **settings)
    spool.open()
    return spool


def queue(spool: Spool, token: str = "d.1", channel: str = "ch") -> SpoolQueue:
    return spool.queue_for(channel, token, https_frames, "t", l10_message)


def texts(taken: Taken) -> list[bytes]:
    return [frame.rsplit(b" - ", 1)[1].rstrip(b"\n") for frame in taken.frames]


def numbers(taken: Taken) -> list[int]:
    return [int(t.split()[1]) for t in texts(taken) if t.startswith(b"line ")]


async def test_a_batch_is_durable_after_its_commit_and_only_then_takeable(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    drain = queue(spool)
    ticket = spool.append("ch", lines(0, 3))
    assert not spool.is_durable(ticket)
    assert drain.take(100, 1 << 20) is None  # not durable: drains never see it yet
    await spool.commit()
    assert spool.is_durable(ticket)
    taken = drain.take(100, 1 << 20)
    assert taken is not None
    assert numbers(taken) == [0, 1, 2]
    assert taken.extent == (0, 3)
    assert taken.frame_id
    assert len(taken.frame_id) == 32


async def test_restart_resumes_cursors_history_streams_and_counters(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    drain = queue(spool)
    spool.append("ch", lines(0, 5), StreamMark("t.a", "stream-1", 3))
    spool.append("ch", lines(5, 5))
    await spool.commit()
    first = drain.take(5, 1 << 20)
    assert first is not None
    assert numbers(first) == [0, 1, 2, 3, 4]
    drain.note_delivered(5)
    drain.settle(first, delivered=True)
    second = drain.take(100, 1 << 20)  # in flight when the process dies
    assert second is not None
    assert numbers(second) == [5, 6, 7, 8, 9]
    # No close(): as after a SIGKILL, only what was written survives.
    again = open_spool(tmp_path)
    assert again.acked_seq("t.a", "stream-1") == 3
    assert [m[4] for m in again.recent_messages("ch", 3)] == [b"line 7 ", b"line 8 ", b"line 9 "]
    resumed = queue(again)
    assert resumed.restored_delivered == 5
    replayed = resumed.take(1000, 1 << 20)
    assert replayed is not None
    assert numbers(replayed) == [5, 6, 7, 8, 9]
    assert replayed.frame_id == second.frame_id
    assert replayed.frames == second.frames
    resumed.settle(replayed, delivered=True)
    assert resumed.take(1000, 1 << 20) is None
    # New lines continue the numbering.
    again.append("ch", lines(10, 1))
    await again.commit()
    nxt = resumed.take(10, 1 << 20)
    assert nxt is not None
    assert nxt.extent == (10, 11)


async def test_a_new_drain_starts_at_the_channel_end(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append("ch", lines(0, 4))
    await spool.commit()
    late = queue(spool, "d.late")
    assert late.take(10, 1 << 20) is None
    spool.append("ch", lines(4, 1))
    await spool.commit()
    taken = late.take(10, 1 << 20)
    assert taken is not None
    assert numbers(taken) == [4]


async def test_a_drain_behind_the_cache_reads_from_disk(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, cache_bytes=2000)
    drain = queue(spool)
    for start in range(0, 200, 10):
        spool.append("ch", lines(start, 10, size=50))
        await spool.commit()
    taken = drain.take(1000, 1 << 30)
    assert taken is not None
    assert numbers(taken) == list(range(200))


async def test_the_budget_drops_the_oldest_and_the_drain_is_told_exactly(
    tmp_path: Path,
) -> None:
    spool = open_spool(tmp_path, max_bytes=1 << 20, segment_bytes=64 * 1024, history_lines=0)
    drain = queue(spool)
    sent = 0
    written = 0
    while written < 3 << 20:
        spool.append("ch", lines(sent, 100, size=200))
        sent += 100
        await spool.commit()
        written += spool.channels["ch"].refs[-1].length
        spool.enforce_retention()
    assert spool.total_bytes() <= (1 << 20) + 64 * 1024 + 100 * 300
    received: list[int] = []
    told = 0
    while (taken := drain.take(1000, 1 << 30)) is not None:
        received += numbers(taken)
        told += taken.notice_count
        drain.settle(taken, delivered=True)
    assert told > 0
    assert told + len(received) == sent
    assert received == list(range(sent - len(received), sent))
    assert drain.dropped_total == told


async def test_unneeded_segments_are_deleted_once_every_drain_passed_them(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, segment_bytes=16 * 1024, history_lines=0)
    drain = queue(spool)
    for start in range(0, 2000, 100):
        spool.append("ch", lines(start, 100, size=100))
        await spool.commit()
    spool.enforce_retention()
    assert len(spool.segments) > 5  # the drain needs them all
    while (taken := drain.take(1000, 1 << 30)) is not None:
        drain.settle(taken, delivered=True)
    spool.enforce_retention()
    assert len(spool.segments) <= 2
    assert drain.dropped_total == 0


async def test_a_torn_tail_is_cut_and_damage_in_the_middle_is_skipped(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append("ch", lines(0, 2))
    spool.append("ch", lines(2, 2))
    await spool.commit()
    spool.append("ch", lines(4, 2))
    await spool.commit()
    active = spool.segments[-1]
    _, middle_ref, _ = spool.channels["ch"].refs
    data = bytearray(active.path.read_bytes())
    data[middle_ref.offset + 20] ^= 0xFF
    active.path.write_bytes(bytes(data) + b"\xa7LPR\x00\x00\x10")  # and a torn record after
    found = scan_directory(tmp_path, repair=False)
    assert (found.damaged_spans, found.torn_bytes) == (1, 7)
    again = open_spool(tmp_path)
    assert again.recovered is not None
    assert again.recovered.cut_segments == [active.path.name]
    assert active.path.stat().st_size == len(data)
    resumed = queue(again, "d.new")
    assert resumed.take(10, 1 << 20) is None  # a new drain: at the end
    assert [m[4] for m in again.recent_messages("ch", 10)] == [
        b"line 0 ",
        b"line 1 ",
        b"line 4 ",
        b"line 5 ",
    ]


async def test_a_write_error_falls_back_to_memory_and_recovers(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    drain = queue(spool)
    os.close(spool._write_fd)  # the next write fails (EBADF), as a full disk would
    spool._write_fd = os.open(os.devnull, os.O_RDONLY)
    ticket = spool.append("ch", lines(0, 3))
    await spool.commit()
    assert spool.memory_only
    assert spool.status().mode == "memory"
    assert spool.is_durable(ticket)  # released: kept in memory, delivered from there
    spool.append("ch", lines(3, 2))  # memory mode: takeable at once
    taken = drain.take(100, 1 << 20)
    assert taken is not None
    assert numbers(taken) == [0, 1, 2, 3, 4]
    await spool._try_leave_memory_mode()
    assert not spool.memory_only
    assert spool.last_error is None
    spool.append("ch", lines(5, 1))
    await spool.commit()
    assert spool.segments[-1].size > 100


async def test_the_journal_keeps_the_last_state_and_compacts(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    drain = queue(spool)
    for start in range(0, 50, 5):
        spool.append("ch", lines(start, 5))
        await spool.commit()
        taken = drain.take(5, 1 << 20)
        assert taken is not None
        drain.settle(taken, delivered=True)
    spool.forget_drain("d.gone")
    states, damaged = read_journal(tmp_path / "cursors.jnl")
    assert damaged == 0
    assert states["d.1"].next_n == 50
    assert not states["d.1"].open
    await spool.close()
    assert (tmp_path / "cursors.jnl").stat().st_size < 200


@pytest.mark.parametrize("history", [0, 3])
async def test_history_keeps_segments_it_needs(tmp_path: Path, history: int) -> None:
    spool = open_spool(tmp_path, segment_bytes=8 * 1024, history_lines=history)
    for start in range(0, 400, 20):
        spool.append("ch", lines(start, 20, size=100))
        await spool.commit()
    spool.enforce_retention()
    again = open_spool(tmp_path, history_lines=history)
    got = [int(m[4].split()[1]) for m in again.recent_messages("ch", history)]
    assert got == list(range(400 - history, 400))


async def test_takes_keep_to_the_message_and_byte_caps(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    drain = queue(spool)
    spool.append("ch", lines(0, 5, size=100))
    spool.append("ch", lines(5, 5, size=100))
    await spool.commit()
    three = drain.take(3, 1 << 20)
    assert three is not None
    assert numbers(three) == [0, 1, 2]
    one = drain.take(100, 10)  # smaller than a frame: still one, never stuck
    assert one is not None
    assert numbers(one) == [3]
    frame_bytes = len(one.frames[0])
    across = drain.take(100, 3 * frame_bytes + 5)  # crosses from one batch into the next
    assert across is not None
    assert numbers(across) == [4, 5, 6]
    assert across.byte_count == sum(map(len, across.frames))
    rest = drain.take(100, 1 << 20)
    assert rest is not None
    assert numbers(rest) == [7, 8, 9]
    assert [t.extent for t in (three, one, across, rest)] == [(0, 3), (3, 4), (4, 7), (7, 10)]


async def test_a_deleted_channel_never_comes_back_as_history(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append("ch", lines(0, 3))
    await spool.commit()
    spool.forget_channel("ch")
    assert spool.recent_messages("ch", 10) == []
    spool.append("ch", lines(100, 1))  # a new channel of the same name
    await spool.commit()
    again = open_spool(tmp_path)
    assert [m[4] for m in again.recent_messages("ch", 10)] == [b"line 100 "]
    again.forget_unknown_drains([])  # the cut-off is not a drain: it stays
    assert [m[4] for m in open_spool(tmp_path).recent_messages("ch", 10)] == [b"line 100 "]
