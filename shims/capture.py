"""Capture: the app's stdout and stderr pipes → timestamped lines (DESIGN section 6).

One ``PipeReader`` per stream. Each read takes up to 1 MiB (the pipe itself was enlarged to
1 MiB at spawn), stamps it with ONE wall-clock timestamp (``time.time_ns() // 1000``: the
capture time of every line it completes), copies it to the tee, splits it with the codec's
``LineSplitter`` (C-level ``split``; no per-line Python work for lines under the limit) and
hands the list of lines to its ``LineConsumer`` (the shipper) in one synchronous call. No
await per line.

- A partial line (no LF yet) is flushed once it has waited ``PARTIAL_LINE_WAIT_S`` (1 s), and
  at EOF.
- After a small read (under 64 KiB) the reader pauses 5 ms, so an app that flushes every
  few KiB is read in a few large chunks instead of thousands of small ones.
- What ``shims.early.StartupPipeReader`` read during start-up is taken over by
  ``take_early``.
- The read end stays open until EOF, so the app never gets EPIPE or SIGPIPE because of us;
  after the app exits, the supervisor lets the readers run until EOF or 1 s (a grandchild may
  hold the write end) and then calls ``read_remaining()`` for whatever is already in the
  pipe.
- With ``--block`` the reader waits for room in the consumer *before* reading, so a full buffer
  stops the reading and the app blocks on its own write (only then).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from logplex.codecs.lines import LineSplitter
from shims.tee import TeeWriter

READ_BYTES = 1024 * 1024
# Per read the shim pays a fixed cost (a loop turn, a timestamp, a tee write): an app that
# flushes every 8 KiB would cost a read per 80 lines. After a read under 64 KiB (output is
# trickling in) the reader waits 5 ms, so it takes a few ms of output at once; a fast app
# fills the pipe between reads, its reads are large and nobody waits.
COALESCE_BELOW_BYTES = 64 * 1024
COALESCE_WAIT_S = 0.005
PARTIAL_LINE_WAIT_S = 1.0
MAX_REMAINING_READS = 64


class LineConsumer(Protocol):
    """Takes the captured lines (the shipper, into its outbox); ``push_lines`` never blocks."""

    def push_lines(self, ts_us: int, kind: int, lines: list[bytes], now_s: float) -> None: ...


class PipeReader:
    """Reads one of the app's output pipes until EOF."""

    def __init__(
        self,
        fd: int,
        kind: int,
        *,
        consumer: LineConsumer | None,
        tee: TeeWriter | None,
        max_line_bytes: int,
        wait_for_room: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.fd = fd
        self.kind = kind
        self.consumer = consumer
        self.tee = tee
        self.wait_for_room = wait_for_room
        self.splitter = LineSplitter(max_line_bytes)
        self.eof = False
        self.finished = trio.Event()
        self.bytes_read = 0
        self.lines_read = 0
        self._last_ts_us = 0
        self._partial_since_s: float | None = None
        os.set_blocking(fd, False)

    async def run(self) -> None:
        """Read until EOF (then flush the partial line and close the read end)."""
        while not self.eof:
            if self.wait_for_room is not None:
                await self.wait_for_room()
            if self._partial_since_s is None:
                await trio.lowlevel.wait_readable(self.fd)
            else:
                deadline = self._partial_since_s + PARTIAL_LINE_WAIT_S
                with trio.move_on_at(deadline):
                    await trio.lowlevel.wait_readable(self.fd)
                if trio.current_time() >= deadline:
                    self._flush_partial()
                    continue
            if 0 < self._read_once() < COALESCE_BELOW_BYTES:
                # A small read: let the pipe gather a few ms of output before the next one.
                await trio.sleep(COALESCE_WAIT_S)

    def _read_once(self) -> int:
        """One non-blocking read; the bytes read (0: the pipe is empty right now, or EOF)."""
        try:
            data = os.read(self.fd, READ_BYTES)
        except BlockingIOError:
            return 0
        if not data:
            self._at_eof()
            return 0
        self._consume(time.time_ns() // 1000, data)
        return len(data)

    def take_early(self, chunks: list[tuple[int, bytes]], *, eof: bool) -> None:
        """Process what ``StartupPipeReader`` read before trio was running, with its timestamps."""
        for ts_us, data in chunks:
            self._consume(ts_us, data)
        if eof:
            self._at_eof()

    def _consume(self, ts_us: int, data: bytes) -> None:
        self._last_ts_us = ts_us
        self.bytes_read += len(data)
        if self.tee is not None:
            self.tee.write(data)
        lines = self.splitter.feed(data)
        if lines:
            self._emit(ts_us, lines)
        if self.splitter.pending:
            if self._partial_since_s is None:
                self._partial_since_s = trio.current_time()
        else:
            self._partial_since_s = None

    def read_remaining(self) -> None:
        """After the read deadline: take what is already in the pipe, then flush and stop."""
        if not self.eof:
            for _ in range(MAX_REMAINING_READS):
                if self.eof or not self._read_once():
                    break
        self._flush_partial()

    def _at_eof(self) -> None:
        self.eof = True
        self._flush_partial()
        os.close(self.fd)
        self.finished.set()

    def _flush_partial(self) -> None:
        self._partial_since_s = None
        lines = self.splitter.flush()
        if lines:
            self._emit(self._last_ts_us or time.time_ns() // 1000, lines)

    def _emit(self, ts_us: int, lines: list[bytes]) -> None:
        self.lines_read += len(lines)
        if self.consumer is not None:
            self.consumer.push_lines(ts_us, self.kind, lines, trio.current_time())
