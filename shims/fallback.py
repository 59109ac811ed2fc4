"""The last line of defence: plain supervision after an internal error of the shim.

The shim runs as PID 1 of customer containers; if the trio supervisor ever fails with an
unexpected exception, exiting would orphan the app (and, once nobody reads its pipes, block
it or break them). Instead ``supervise_plainly`` takes over with no trio and no network:

- every handled signal stays blocked and is read from one signalfd: SIGCHLD reaps, every
  other signal is forwarded to the app's process group (or the app, if it left the group),
  except a SIGPIPE the shim raised itself;
- the app's pipes are still read, and copied to the shim's stdout/stderr when the tee is on;
- after the app exits, the pipes are read until EOF or 1 s, and the shim exits with the
  app's code (128+N for signal N, ``-e`` applied).

Nothing is shipped any more; that is the price of staying alive. The reaping and the exit
code are ``shims.reaper``'s, the signalfd is ``shims.signals``'s: the same code the trio
supervisor uses, so the two cannot disagree.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

from shims.reaper import READ_AFTER_EXIT_S, Reaper, final_exit_code, status_code
from shims.signals import open_signalfd, read_signalfd

READ_BYTES = 1024 * 1024
PAGE_BYTES = 4096


def supervise_plainly(
    pid: int,
    *,
    pipes: dict[int, int],
    handled_signals: frozenset[int],
    wait_status: int | None,
    tee: bool,
    success_codes: frozenset[int],
) -> int:
    """Supervise ``pid`` until it exits; ``pipes`` maps each open read end to 1 or 2."""
    signal.pthread_sigmask(signal.SIG_BLOCK, handled_signals)
    signal_fd = open_signalfd(handled_signals)
    own_pid = os.getpid()
    poller = select.poll()
    poller.register(signal_fd, select.POLLIN)
    for fd in pipes:
        os.set_blocking(fd, False)
        poller.register(fd, select.POLLIN)
    reaper = Reaper(pid)
    exited_at = None if wait_status is None else time.monotonic()
    while wait_status is None or (
        pipes and time.monotonic() - (exited_at or 0.0) < READ_AFTER_EXIT_S
    ):
        for fd, _events in poller.poll(100):
            if fd != signal_fd:
                _copy(fd, pipes, poller, tee)
                continue
            for signo, sender_pid in read_signalfd(signal_fd):
                if signo == signal.SIGPIPE and sender_pid == own_pid:
                    continue  # our own write hit a broken pipe
                if signo != signal.SIGCHLD and wait_status is None:
                    _forward(pid, signo)
        if reaper.reap() and wait_status is None:
            wait_status = reaper.app_wait_status
            exited_at = time.monotonic()
    os.close(signal_fd)
    return final_exit_code(status_code(wait_status), success_codes)


def _forward(pid: int, signo: int) -> None:
    try:
        os.killpg(pid, signo)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signo)


def _copy(fd: int, pipes: dict[int, int], poller: select.poll, tee: bool) -> None:
    try:
        data = os.read(fd, READ_BYTES)
    except BlockingIOError:
        return
    if not data:
        poller.unregister(fd)
        del pipes[fd]
        os.close(fd)
        return
    if tee:
        _write_without_blocking(pipes[fd], data)


def _write_without_blocking(fd: int, data: bytes) -> None:
    """Copy to the shim's own fd page by page while it accepts; drop the rest."""
    view = memoryview(data)
    check = select.poll()
    check.register(fd, select.POLLOUT)
    try:
        while view and check.poll(0):
            view = view[os.write(fd, view[:PAGE_BYTES]) :]
    except OSError:
        return
