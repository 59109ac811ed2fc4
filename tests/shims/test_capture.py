"""Capture and tee over real pipes: partial-line timing (virtual time), EOF, EPIPE, and the
read of what remains in a pipe held open."""

from __future__ import annotations

import os
import time
from pathlib import Path

import trio
import trio.testing

from logplex.codecs.records import KIND_STDERR, KIND_STDOUT
from shims.capture import PARTIAL_LINE_WAIT_S, PipeReader
from shims.early import BLOCK_AT_START_S, StartupPipeReader
from shims.tee import TeeWriter


class RecordingConsumer:
    def __init__(self) -> None:
        self.pushed: list[tuple[int, int, list[bytes], float]] = []

    def push_lines(self, ts_us: int, kind: int, lines: list[bytes], now_s: float) -> None:
        self.pushed.append((ts_us, kind, lines, now_s))

    def lines(self) -> list[bytes]:
        return [line for _, _, lines, _ in self.pushed for line in lines]


async def test_partial_line_waits_one_second_then_is_flushed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    read_fd, write_fd = os.pipe()
    consumer = RecordingConsumer()
    reader = PipeReader(read_fd, KIND_STDERR, consumer=consumer, tee=None, max_line_bytes=10000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.run)
        os.write(write_fd, b"one\ntw")
        await trio.sleep(0.5)
        assert consumer.lines() == [b"one"]
        started = trio.current_time()
        await trio.sleep(PARTIAL_LINE_WAIT_S)
        assert consumer.lines() == [b"one", b"tw"]
        flushed_at = consumer.pushed[-1][3]
        assert flushed_at - started <= PARTIAL_LINE_WAIT_S
        os.write(write_fd, b"o\nlast")
        os.close(write_fd)
        await reader.finished.wait()
    assert consumer.lines() == [b"one", b"tw", b"o", b"last"]
    assert {kind for _, kind, _, _ in consumer.pushed} == {KIND_STDERR}
    assert reader.eof


async def test_one_timestamp_per_read() -> None:
    read_fd, write_fd = os.pipe()
    consumer = RecordingConsumer()
    reader = PipeReader(read_fd, KIND_STDOUT, consumer=consumer, tee=None, max_line_bytes=10000)
    os.write(write_fd, b"a\nb\nc\n")
    os.close(write_fd)
    await reader.run()
    assert len(consumer.pushed) == 1
    ts_us, kind, lines, _ = consumer.pushed[0]
    assert (kind, lines) == (KIND_STDOUT, [b"a", b"b", b"c"])
    assert ts_us > 1_700_000_000_000_000  # microseconds since the epoch


async def test_read_remaining_takes_what_is_in_the_pipe_while_a_writer_holds_it_open() -> None:
    read_fd, write_fd = os.pipe()
    consumer = RecordingConsumer()
    reader = PipeReader(read_fd, KIND_STDOUT, consumer=consumer, tee=None, max_line_bytes=10000)
    os.write(write_fd, b"x\n" * 1000 + b"tail")
    reader.read_remaining()  # a grandchild still holds write_fd: no EOF, no waiting
    assert consumer.lines() == [b"x"] * 1000 + [b"tail"]
    assert not reader.eof
    os.close(write_fd)
    os.close(read_fd)


async def test_tee_copies_and_stops_for_good_on_a_broken_pipe() -> None:
    read_fd, write_fd = os.pipe()
    tee = TeeWriter(write_fd)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tee.run)
        tee.write(b"hello ")
        tee.write(b"world\n")
        await tee.wait_idle()
        assert os.read(read_fd, 100) == b"hello world\n"
        os.close(read_fd)
        tee.write(b"into the void\n")
        await tee.wait_idle()
        assert tee.stopped
        assert tee.stop_reason == "Broken pipe"
        tee.write(b"more\n")  # a stopped tee drops, silently and without blocking
        assert tee.dropped_bytes == len(b"into the void\nmore\n")
        nursery.cancel_scope.cancel()
    os.close(write_fd)


async def test_tee_backlog_is_bounded() -> None:
    read_fd, write_fd = os.pipe()
    tee = TeeWriter(write_fd, max_backlog_bytes=10)
    tee.write(b"12345")
    tee.write(b"67890")
    tee.write(b"x")  # nobody is writing yet: over the bound, dropped
    assert (tee.backlog_bytes, tee.dropped_bytes) == (10, 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tee.run)
        await tee.wait_idle()
        nursery.cancel_scope.cancel()
    assert os.read(read_fd, 100) == b"1234567890"
    os.close(read_fd)
    os.close(write_fd)


def test_startup_reader_reads_until_stopped_and_records_eof() -> None:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    early = StartupPipeReader([out_read, err_read], max_bytes=1 << 20)
    early.start()
    os.write(out_write, b"first\n")
    os.write(err_write, b"oops\n")
    os.close(err_write)
    deadline = time.monotonic() + 10
    while (len(early.chunks[out_read]) < 1 or err_read not in early.eof) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.01)
    early.stop()
    assert [data for _, data in early.chunks[out_read]] == [b"first\n"]
    assert [data for _, data in early.chunks[err_read]] == [b"oops\n"]
    assert early.eof == {err_read}
    for fd in (out_read, out_write, err_read):
        os.close(fd)


def test_startup_reader_stops_reading_at_its_bound() -> None:
    read_fd, write_fd = os.pipe()
    early = StartupPipeReader([read_fd], max_bytes=10)
    os.write(write_fd, b"0123456789")
    early.start()
    deadline = time.monotonic() + 10
    while early.buffered_bytes < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.write(write_fd, b"left in the pipe")
    time.sleep(0.05)
    early.stop()
    assert early.buffered_bytes == 10
    assert os.read(read_fd, 100) == b"left in the pipe"
    os.close(read_fd)
    os.close(write_fd)


async def test_reader_takes_over_early_chunks_with_their_timestamps() -> None:
    read_fd, write_fd = os.pipe()
    consumer = RecordingConsumer()
    reader = PipeReader(read_fd, KIND_STDOUT, consumer=consumer, tee=None, max_line_bytes=10000)
    reader.take_early([(111, b"a\nb"), (222, b"c\n")], eof=False)
    assert [(ts, lines) for ts, _, lines, _ in consumer.pushed] == [(111, [b"a"]), (222, [b"bc"])]
    os.write(write_fd, b"d\n")
    os.close(write_fd)
    await reader.run()
    assert consumer.lines() == [b"a", b"bc", b"d"]


def test_tee_writes_files_at_once(tmp_path: Path) -> None:
    path = tmp_path / "tee.out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    tee = TeeWriter(fd)
    assert tee.direct
    tee.write(b"straight ")
    tee.write(b"to the file\n")
    assert path.read_bytes() == b"straight to the file\n"
    assert tee.backlog_bytes == 0
    os.close(fd)


async def test_tee_to_a_stalled_pipe_never_blocks_and_drops_beyond_its_bound() -> None:
    read_fd, write_fd = os.pipe()
    tee = TeeWriter(write_fd, max_backlog_bytes=256 * 1024)
    assert not tee.direct
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tee.run)
        for _ in range(100):  # 400 KiB into a 64 KiB pipe nobody reads
            tee.write(b"x" * 4096)
        await trio.sleep(0.2)  # the tee writes what the pipe takes, then waits
        assert tee.dropped_bytes > 0
        assert not tee.stopped
        drained = b""
        while len(drained) < 100 * 4096 - tee.dropped_bytes:
            drained += os.read(read_fd, 1 << 20)
            await trio.sleep(0.01)
        await tee.wait_idle()
        nursery.cancel_scope.cancel()
    assert drained == b"x" * (100 * 4096 - tee.dropped_bytes)
    os.close(read_fd)
    os.close(write_fd)


def test_startup_reader_drops_the_fewest_oldest_lines_and_counts_them() -> None:
    read_fd, write_fd = os.pipe()
    early = StartupPipeReader([read_fd], max_bytes=100, drop_when_full=True)
    early.start()
    # 3 lines of 30 bytes and a partial line.
    os.write(write_fd, (b"a" * 29 + b"\n") * 3 + b"partial")
    deadline = time.monotonic() + 10
    while early.buffered_bytes < 97 and time.monotonic() < deadline:
        time.sleep(0.01)
    first_read_us = early.chunks[read_fd][0][0]
    # 15 more bytes: 12 over the bound. The app is held for BLOCK_AT_START_S, then the
    # first whole line (30 bytes) goes.
    os.write(write_fd, b" end\n" + b"b" * 9 + b"\n")
    time.sleep(BLOCK_AT_START_S / 2)
    assert early.dropped_lines == 0  # still holding the app, not dropping
    while not early.dropped_lines and time.monotonic() < deadline:
        time.sleep(0.01)
    early.stop()
    kept = b"".join(data for _, data in early.chunks[read_fd])
    assert kept == (b"a" * 29 + b"\n") * 2 + b"partial end\n" + b"b" * 9 + b"\n"
    assert early.dropped_lines == 1  # one whole line (counted by its LF)
    assert early.dropped_since_us == first_read_us
    os.close(read_fd)
    os.close(write_fd)
