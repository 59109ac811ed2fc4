"""The tee: a best-effort copy of the app's output to the shim's own stdout and stderr.

DESIGN section 6: the tee must never hold up capture and must survive a broken pipe.

- ``write(data)`` is synchronous and never blocks for long: chunks queue in memory up to
  ``max_backlog_bytes`` (4 MiB); beyond that they are dropped and counted (the copy is a
  convenience, the shipped lines are the record).
- Regular files and character devices that are not terminals (``/dev/null``) never block
  for long, so they are written at once. Pipes, sockets and terminals can stall; they are
  written by ``run()`` from the event loop, a page at a time and only while ``poll`` says
  the descriptor accepts more, so a stalled reader stalls only the tee. The descriptor keeps
  its blocking flag: making it non-blocking would change the open file description the shim
  shares with whoever started it. (A worker thread would also do, but handing every chunk
  to a thread costs GIL hand-offs that showed up as milliseconds per read under load.)
- On EPIPE (or any other write error) the tee stops for good and drops what it holds. The
  SIGPIPE the kernel raises with that EPIPE stays pending (SIGPIPE is blocked in the shim)
  and is recognised as the shim's own by ``shims.supervisor``; SIGTTOU is blocked too, so a
  terminal with ``tostop`` lets the write through instead of signalling the shim.
"""

from __future__ import annotations

import os
import select
import stat
from collections import deque

import trio

DEFAULT_MAX_BACKLOG_BYTES = 4 * 1024 * 1024
PAGE_BYTES = 4096  # PIPE_BUF: a write this size into a pipe that polls writable never blocks
TTY_PIECE_BYTES = 256  # a terminal polls writable with at least this much room (WAKEUP_CHARS)


def writes_never_block(fd: int) -> bool:
    """True for regular files and non-terminal character devices such as ``/dev/null``."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(fd))


class TeeWriter:
    """Copies chunks to one file descriptor of the shim without blocking the caller."""

    def __init__(self, fd: int, *, max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES) -> None:
        self.fd = fd
        self.max_backlog_bytes = max_backlog_bytes
        self.backlog_bytes = 0
        self.dropped_bytes = 0
        self.stopped = False
        self.stop_reason: str | None = None
        self._chunks: deque[memoryview] = deque()
        self._piece_bytes = PAGE_BYTES
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._idle.set()
        self._poll = select.poll()
        try:
            self.direct = writes_never_block(fd)
            if not self.direct:
                self._poll.register(fd, select.POLLOUT)
                if os.isatty(fd):
                    self._piece_bytes = TTY_PIECE_BYTES
        except OSError as exc:  # the shim was started with this fd closed
            self.direct = True
            self._stop(exc)

    def write(self, data: bytes) -> None:
        """Copy ``data``; drop it (counted) when the backlog is full or the tee stopped."""
        if self.stopped or self.backlog_bytes + len(data) > self.max_backlog_bytes:
            self.dropped_bytes += len(data)
            return
        if self.direct:
            self._write_all(data)
            return
        self._chunks.append(memoryview(data))
        self.backlog_bytes += len(data)
        self._wakeup.set()
        if self._idle.is_set():
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Return once everything queued so far is written (or the tee stopped)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Write queued chunks as the descriptor accepts them, until cancelled or it fails."""
        while not self.stopped:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._chunks and not self.stopped:
                await trio.lowlevel.wait_writable(self.fd)
                self._write_while_writable()
            self._idle.set()

    def _write_while_writable(self) -> None:
        try:
            while self._chunks and self._poll.poll(0):
                chunk = self._chunks[0]
                written = os.write(self.fd, chunk[: self._piece_bytes])
                self.backlog_bytes -= written
                if written == len(chunk):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = chunk[written:]
        except OSError as exc:
            self._stop(exc)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.dropped_bytes += len(view)
            self._stop(exc)

    def _stop(self, exc: OSError) -> None:
        self.stopped = True
        self.stop_reason = exc.strerror or str(exc)
        self.dropped_bytes += self.backlog_bytes
        self._chunks.clear()
        self.backlog_bytes = 0
        self._wakeup.set()
        self._idle.set()
