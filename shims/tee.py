"""The tee: a best-effort copy of the app's output to the shim's own stdout and stderr.

DESIGN section 6: the tee must never hold up capture and must survive a broken pipe.

- ``write(data)`` is synchronous and never blocks: chunks queue in memory up to
  ``max_backlog_bytes`` (4 MiB); beyond that, chunks are dropped and counted (the copy is a
  convenience, the shipped lines are the record).
- ``run()`` writes the backlog with blocking ``os.write`` calls in a trio worker thread, so a
  stalled terminal or log collector on the shim's stdout stalls only the tee. The shim's
  stdout keeps its file status flags: making it non-blocking would change the open file
  description the shim shares with whoever started it.
- On EPIPE (or any other write error) the tee stops for good and drops what it holds. The
  SIGPIPE the kernel raises with that EPIPE is directed at the writing thread, and SIGPIPE is
  blocked in every thread of the shim (see ``shims.supervisor``), so it stays pending there
  and is never mistaken for a signal to forward.
"""

from __future__ import annotations

import os
import signal
from collections import deque

import trio

DEFAULT_MAX_BACKLOG_BYTES = 4 * 1024 * 1024
MAX_WRITE_BYTES = 1024 * 1024
TEE_THREAD_BLOCKED = frozenset({signal.SIGTTOU, signal.SIGPIPE})


def write_all(fd: int, data: bytes) -> None:
    """Blocking write of every byte of ``data`` (runs in a worker thread).

    SIGTTOU is blocked in the writing thread first: a terminal with ``tostop`` set would
    otherwise answer a write from the shim (no longer its foreground group once the app has
    the terminal) with a SIGTTOU that the shim would take for one to forward.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, TEE_THREAD_BLOCKED)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class TeeWriter:
    """Copies chunks to one file descriptor of the shim without ever blocking the caller."""

    def __init__(self, fd: int, *, max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES) -> None:
        self.fd = fd
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog_bytes = 0
        self.dropped_bytes = 0
        self.stopped = False
        self.stop_reason: str | None = None
        self._chunks: deque[bytes] = deque()
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the tee; drop it (counted) when the backlog is full or stopped."""
        if self.stopped or self.backlog_bytes + len(data) > self.max_backlog_bytes:
            self.dropped_bytes += len(data)
            return
        self._chunks.append(data)
        self.backlog_bytes += len(data)
        self._wakeup.set()
        if self._idle.is_set():
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Return once everything queued so far is written (or the tee stopped)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Write queued chunks until cancelled or the destination fails."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._chunks:
                data = self._take(MAX_WRITE_BYTES)
                try:
                    await trio.to_thread.run_sync(write_all, self.fd, data, abandon_on_cancel=True)
                except OSError as exc:
                    self.dropped_bytes += len(data)
                    self._stop(exc)
                    return
                self.backlog_bytes -= len(data)
            self._idle.set()

    def _take(self, max_bytes: int) -> bytes:
        taken: list[bytes] = []
        size = 0
        while self._chunks and (not taken or size + len(self._chunks[0]) <= max_bytes):
            chunk = self._chunks.popleft()
            taken.append(chunk)
            size += len(chunk)
        return taken[0] if len(taken) == 1 else b"".join(taken)

    def _stop(self, exc: OSError) -> None:
        self.stopped = True
        self.stop_reason = exc.strerror or str(exc)
        self.dropped_bytes += sum(map(len, self._chunks))
        self._chunks.clear()
        self.backlog_bytes = 0
        self._idle.set()
