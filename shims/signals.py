"""The shim's signal sets and the signalfd it reads some of them from (DESIGN section 6).

Shared by the trio supervisor (``shims.supervisor``), its plain fallback (``shims.fallback``)
and the start-up code (``shims.spawn``, ``shims.entry``), so it stays cheap to import: ``os``,
``signal`` and ``struct`` only, ``ctypes`` when a signalfd is opened.

- ``catchable_signals()``: every signal a process can catch; the shim handles all of them.
- ``block_handled_signals()``: the first thing the shim does, so that a signal arriving while
  Python imports the rest stays pending instead of being lost (PID 1 discards signals it has
  no handler for).
- ``GRACE_SIGNALS``: the signals that start the grace period (SIGTERM, SIGINT).
- ``SIGNALFD_SIGNALS``: the signals the supervisor reads from a signalfd rather than from a
  handler, and keeps blocked in every thread: SIGPIPE (the sender's pid tells the shim's own
  broken pipe from a SIGPIPE someone sent), SIGTTOU (blocked, a terminal with ``tostop`` lets
  the tee write through) and the fault signals (a real fault in the shim then kills it at
  once instead of looping on the faulting instruction).
- ``open_signalfd`` / ``read_signalfd``: signalfd(2) through ctypes (the stdlib has no binding).
"""

from __future__ import annotations

import os
import signal
import struct

GRACE_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
FAULT_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGTRAP, signal.SIGSYS}
)
SIGNALFD_SIGNALS = FAULT_SIGNALS | {signal.SIGPIPE, signal.SIGTTOU}

SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC
SIGNALFD_SIGINFO_BYTES = 128
_SIGINFO_HEAD = struct.Struct("=IiiI")  # ssi_signo, ssi_errno, ssi_code, ssi_pid


def catchable_signals() -> frozenset[int]:
    """Every signal a process can catch: 1–31 without SIGKILL/SIGSTOP, plus SIGRTMIN..SIGRTMAX.

    ``signal.valid_signals()`` comes from glibc's ``sigfillset``, which already leaves out
    the two real-time signals glibc keeps for itself (32 and 33).
    """
    return frozenset(
        int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
    )


def block_handled_signals() -> frozenset[int]:
    """Block every catchable signal in the calling (main) thread; return the blocked set.

    Called before any thread exists, so every later thread inherits the mask until the
    supervisor unblocks what its receiver handles.
    """
    handled = catchable_signals()
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    return handled


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15; ``SIG40`` for a signal without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def open_signalfd(signals: frozenset[int]) -> int:
    """A non-blocking signalfd that reads ``signals`` (which must stay blocked in every thread)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mask = (ctypes.c_ulong * 16)()  # sigset_t: 1024 bits
    bits = ctypes.sizeof(ctypes.c_ulong) * 8
    for signum in signals:
        index = int(signum) - 1
        mask[index // bits] |= 1 << (index % bits)
    fd = int(libc.signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC))
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"signalfd: {os.strerror(errno)}")
    return fd


def read_signalfd(fd: int) -> list[tuple[int, int]]:
    """Every ``(signo, sender_pid)`` waiting in a signalfd."""
    found: list[tuple[int, int]] = []
    while True:
        try:
            data = os.read(fd, SIGNALFD_SIGINFO_BYTES * 16)
        except BlockingIOError:
            return found
        for offset in range(0, len(data), SIGNALFD_SIGINFO_BYTES):
            signo, _errno, _code, pid = _SIGINFO_HEAD.unpack_from(data, offset)
            found.append((signo, pid))
