"""The one reaper, and the exit code made from the app's wait status (DESIGN section 6).

``Reaper.reap()`` is the only ``waitpid`` caller of the shim, used by both the trio supervisor
(``shims.supervisor``, which runs it on every SIGCHLD, when the app's pidfd becomes readable,
and every second) and the plain fallback (``shims.fallback``). trio's process API is never
used: its own waitpid would race this one and misreport exit codes. It reaps every child: the
app, recognised by its pid, and orphans re-parented to the shim (PID 1, or a subreaper; see
``shims.spawn.become_subreaper``).

This module imports neither trio nor anything heavy: the fallback must work without trio.
"""

from __future__ import annotations

import os

# After the app exits, its pipes are read until EOF or this long (a grandchild may hold them).
READ_AFTER_EXIT_S = 1.0


class Reaper:
    """Reaps every exited child; remembers the app's wait status once it is among them."""

    def __init__(self, app_pid: int) -> None:
        self.app_pid = app_pid
        self.app_wait_status: int | None = None
        self.orphans_reaped = 0

    def reap(self) -> bool:
        """Reap every child that has exited, without blocking; True if the app was one."""
        app_reaped = False
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return app_reaped
            if pid == 0:
                return app_reaped
            if pid == self.app_pid:
                self.app_wait_status = wait_status
                app_reaped = True
            else:
                self.orphans_reaped += 1


def status_code(wait_status: int) -> int:
    """The app's exit code as a shell reports it: the exit status, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def final_exit_code(code: int, success_codes: frozenset[int]) -> int:
    """``-e CODE`` maps that final code to 0."""
    return 0 if code in success_codes else code
