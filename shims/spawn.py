"""Everything the shim does before the app exists: subreaper, pipes, spawn.

This module runs before trio is imported (DESIGN section 6, start-up), so it imports only
modules that cost nothing: ``os``, ``fcntl``, ``shims.signals`` and, for ``prctl``, ``ctypes``.

The order matters and is kept by ``shims.entry``:

1. ``shims.signals.block_handled_signals()`` is the first thing ``main()`` does. A signal
   that arrives while Python imports the rest stays pending instead of being lost (PID 1
   discards signals it has no handler for) and is delivered to the receiver once it is
   installed, that is once the app exists, so the app gets it.
2. ``become_subreaper()`` before the spawn: orphans are re-parented to the nearest subreaper
   *at the time they are orphaned*, which can be a millisecond after the app starts.
3. ``open_capture_pipe()`` twice, then ``spawn_app()``: ``os.posix_spawn`` from the main thread
   with an empty signal mask and default dispositions for every catchable signal (SIGPIPE and
   SIGXFSZ included, which Python itself ignores and exec would otherwise pass on), in a new
   process group whose id is the app's pid, with the shim's environment minus the shim's own
   secrets (``shims.options.app_environment``)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Mapping

from shims.signals import catchable_signals

EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126

# Linux fcntl and prctl constants (not all exposed by the stdlib on every Python version).
F_SETPIPE_SZ = 1031
PR_SET_CHILD_SUBREAPER = 36
CAPTURE_PIPE_BYTES = 1024 * 1024


class SpawnError(Exception):
    """The app could not be started; ``exit_code`` is what the shim exits with (127 or 126)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


def become_subreaper() -> bool:
    """Make this process a child subreaper unless it is PID 1 (which reaps orphans anyway).

    Returns True when the shim is now responsible for orphaned descendants. Fails soft: on a
    kernel without the prctl the shim still runs, it just cannot reap orphans it never gets.
    """
    if os.getpid() == 1:
        return True
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


def open_capture_pipe() -> tuple[int, int]:
    """A close-on-exec pipe ``(read_fd, write_fd)`` for one of the app's output streams.

    Both ends are kept above fd 2 (when the shim was started with a closed stdio fd, the
    kernel would hand out 0–2, and a ``dup2`` onto the same number keeps close-on-exec).
    The pipe is enlarged to 1 MiB so a burst from the app does not block it while the shim
    is busy elsewhere; a kernel limit below that is accepted as it is.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    read_fd, write_fd = _above_stdio(read_fd), _above_stdio(write_fd)
    with contextlib.suppress(OSError):
        fcntl.fcntl(read_fd, F_SETPIPE_SZ, CAPTURE_PIPE_BYTES)
    return read_fd, write_fd


def _above_stdio(fd: int) -> int:
    if fd > 2:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.close(fd)
    return moved


def spawn_app(
    command: list[str],
    *,
    stdout_fd: int,
    stderr_fd: int,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Start the app; return its pid (which is also its process group id).

    The app gets ``environ`` (default: the shim's environment), the shim's stdin, the two
    pipe write ends as stdout and stderr, an empty signal mask and default dispositions.
    ``posix_spawnp`` runs in the calling thread, which must be the main thread (a worker
    thread's mask would leak).
    Raises ``SpawnError`` with exit code 127 (not found) or 126 (found, cannot execute).
    """
    file_actions = [
        (os.POSIX_SPAWN_DUP2, stdout_fd, 1),
        (os.POSIX_SPAWN_DUP2, stderr_fd, 2),
    ]
    try:
        return os.posix_spawnp(
            command[0],
            command,
            os.environ if environ is None else environ,
            file_actions=file_actions,
            setpgroup=0,
            setsigmask=(),
            setsigdef=catchable_signals(),
        )
    except OSError as exc:
        raise spawn_error(command[0], exc) from None


def spawn_error(program: str, exc: OSError) -> SpawnError:
    """Map a failed spawn to the exit code and the one-line message of DESIGN section 6."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.ENOENT:
        where = "" if "/" in program else " in PATH"
        return SpawnError(
            EXIT_NOT_FOUND,
            f"logshim: cannot run {program!r}: command not found{where} ({reason}); "
            "check the command after '--' and the image's PATH",
        )
    return SpawnError(
        EXIT_NOT_EXECUTABLE,
        f"logshim: cannot run {program!r}: {reason}; "
        "check that it is an executable file (chmod +x) with a valid interpreter line",
    )


def hand_terminal_to(pgid: int) -> None:
    """Give the app's process group the controlling terminal, when the shim had it.

    Interactive use (``docker run -it``): the app runs in its own group, and without this a
    read from the terminal would stop it with SIGTTIN. Only done when the shim's own group is
    the terminal's foreground group, so a shim started in the background steals nothing.
    SIGTTOU is still blocked here, so the call cannot stop the shim.
    """
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
            os.tcsetpgrp(0, pgid)
    except OSError:
        pass
