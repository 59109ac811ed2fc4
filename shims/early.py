"""Reading the app's pipes while the shim is still importing (DESIGN section 6, start-up).

The app is spawned before trio is imported, and importing trio and the shipper takes 80 ms on
a quiet machine and several hundred on a busy one. A 1 MiB pipe holds about 10 ms of a fast
app's output: without this, such an app would block on its first writes until the shim is
ready. ``StartupPipeReader`` reads both pipes from a plain thread during that window, keeps the
chunks in memory (each with the time it was read, which becomes its lines' timestamp) and
hands them to the pipe readers when the supervisor takes over.

Past ``max_bytes`` the thread stops reading and the app blocks on its pipe, as it would have
without this thread: lines written at start-up (often the ones that explain a failed start)
are kept rather than dropped. When lines are shipped and the app must not block (no
``--block``), that lasts at most ``BLOCK_AT_START_S``; a shim still not running after that
(a machine under heavy load) resumes reading and drops the oldest complete lines, counted
for the first L12. A drop always ends at an LF, so what is kept starts on a line boundary.
Lines are counted by their LFs (a C-level ``count``): splitting them here, as the readers
do, held the GIL long enough to slow the very imports this thread is waiting for, so a line
over ``--max-line-bytes`` dropped here counts once, where the readers would have cut it into
several messages. With the tee only, or ``--block``, the app stays blocked until the shim
runs.

The thread starts while every handled signal is still blocked, so it inherits a full mask
and never runs a signal handler. This module imports neither trio nor anything heavy.
"""

from __future__ import annotations

import os
import select
import threading
import time

READ_BYTES = 1024 * 1024
BLOCK_AT_START_S = 1.0


class StartupPipeReader:
    """A thread that reads the app's pipes until ``stop()``."""

    def __init__(
        self,
        fds: list[int],
        *,
        max_bytes: int,
        drop_when_full: bool = False,
    ) -> None:
        self.fds = fds
        self.max_bytes = max_bytes
        self.drop_when_full = drop_when_full
        self.buffered_bytes = 0
        self.dropped_lines = 0
        self.dropped_since_us = 0
        self.dropping = False
        self.chunks: dict[int, list[tuple[int, bytes]]] = {fd: [] for fd in fds}
        self.eof: set[int] = set()
        self.stopped = False
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._run, name="logshim-startup-reader", daemon=True
        )

    def start(self) -> None:
        for fd in self.fds:
            os.set_blocking(fd, False)
        self._thread.start()

    def stop(self) -> None:
        """End the thread; afterwards ``chunks`` and ``eof`` are the shim's to use."""
        if self.stopped:
            return
        self.stopped = True
        os.write(self._wake_write, b"x")
        self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        reading = set(self.fds)  # registered for reading: open and not paused
        for fd in reading:
            poller.register(fd, select.POLLIN)
        paused_until: float | None = None
        while True:
            timeout_ms = None
            if paused_until is not None:
                timeout_ms = max(0, int((paused_until - time.monotonic()) * 1000) + 1)
            events = poller.poll(timeout_ms)
            if paused_until is not None and time.monotonic() >= paused_until:
                # Full for BLOCK_AT_START_S: the shim is slow to start, stop holding the app.
                paused_until = None
                self.dropping = True
                while self.buffered_bytes >= self.max_bytes and self._drop_oldest_lines():
                    pass
                reading = set(self.fds) - self.eof
                for fd in reading:
                    poller.register(fd, select.POLLIN)
            for fd, _events in events:
                if fd == self._wake_read:
                    return
                if fd not in reading:
                    continue
                try:
                    data = os.read(fd, READ_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    self.eof.add(fd)
                    reading.discard(fd)
                    poller.unregister(fd)
                    continue
                self.chunks[fd].append((time.time_ns() // 1000, data))
                self.buffered_bytes += len(data)
                while self.buffered_bytes > self.max_bytes and self.dropping:
                    if not self._drop_oldest_lines():
                        break
                if self.buffered_bytes >= self.max_bytes and paused_until is None:
                    # Full: the app blocks on its pipe, for a while if it may drop later.
                    for full_fd in reading:
                        poller.unregister(full_fd)
                    reading.clear()
                    if self.drop_when_full and not self.dropping:
                        paused_until = time.monotonic() + BLOCK_AT_START_S

    def _drop_oldest_lines(self) -> bool:
        """Drop the fewest oldest complete lines that bring ``buffered_bytes`` back under
        ``max_bytes``, from the stream whose output is oldest; False if no stream holds a
        complete line."""
        excess = self.buffered_bytes - self.max_bytes
        for fd in sorted(self.fds, key=self._front_ts):
            queue = self.chunks[fd]
            skipped = 0  # bytes of chunks without LF: the start of a line that ends later
            for index, (ts_us, data) in enumerate(queue):
                cut = data.find(b"\n", max(0, excess - skipped - 1))
                if cut < 0:
                    cut = data.rfind(b"\n")
                if cut < 0:
                    skipped += len(data)
                    continue
                # The chunks before this one hold no LF (they start the line that ends here).
                lines = data.count(b"\n", 0, cut + 1)
                rest = data[cut + 1 :]
                oldest_us = queue[0][0]
                del queue[:index]
                if rest:
                    queue[0] = (ts_us, rest)
                else:
                    del queue[0]
                self.buffered_bytes -= skipped + cut + 1
                if not self.dropped_lines:
                    self.dropped_since_us = oldest_us
                self.dropped_lines += lines
                return True
        return False

    def _front_ts(self, fd: int) -> int:
        queue = self.chunks[fd]
        return queue[0][0] if queue else 2**63
