"""The ``logshim`` console script: block signals, parse options, spawn the app, then supervise.

DESIGN section 6 (start-up). The first statement of ``main()`` blocks every signal the shim
handles, before anything else is imported: importing trio takes ~80 ms and PID 1 silently
discards signals it has no handler for, so a SIGTERM in that window would otherwise be lost.
Blocked, it stays pending and reaches the app once the supervisor's receiver is installed.

The imports are inside the functions, in the order the work needs them, for start-up time:
only cheap modules come before the app is spawned (``shims.signals``, ``shims.options``,
``shims.spawn``, ``shims.console``: os, signal, fcntl, argparse, ctypes); the syslog codec
(for ``--ps``), trio, zstandard and msgpack come after, while the app is already starting.
None of these modules imports ``shims.entry``, so the deferred imports form no cycle.

Start-up problems never keep the app from running: they are written to stderr here, and the
ones that concern shipped lines follow ``Starting process …`` as notices.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``logshim [OPTIONS] -- COMMAND [ARGS...]``; return the shim's exit status."""
    from shims.signals import block_handled_signals

    handled_signals = block_handled_signals()
    try:
        return _run(sys.argv[1:] if argv is None else argv, handled_signals)
    except BaseException:
        # Whatever happens, never leave the caller (tests call main() in-process) with a
        # blocked mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled_signals)
        raise


def _run(argv: list[str], handled_signals: frozenset[int]) -> int:
    import os
    import time

    from shims.console import warn
    from shims.options import app_environment, check_ps, parse_options
    from shims.spawn import (
        SpawnError,
        become_subreaper,
        hand_terminal_to,
        open_capture_pipe,
        spawn_app,
    )

    options = parse_options(argv, os.environ)
    for warning in options.warnings:
        warn(warning)
    become_subreaper()
    stdout_read, stdout_write = open_capture_pipe()
    stderr_read, stderr_write = open_capture_pipe()
    spawned_at_us = time.time_ns() // 1000  # the time of "Starting process …"
    try:
        pid = spawn_app(
            options.command,
            stdout_fd=stdout_write,
            stderr_fd=stderr_write,
            environ=app_environment(os.environ),
        )
    except SpawnError as exc:
        warn(exc.message)
        return 0 if exc.exit_code in options.success_codes else exc.exit_code
    finally:
        os.close(stdout_write)
        os.close(stderr_write)
    hand_terminal_to(pid)
    # Keep the app's output flowing while the rest of the shim is imported. Half the buffer:
    # the other half is headroom for what arrives before the router connection is up.
    from shims.early import StartupPipeReader

    early = StartupPipeReader(
        [stdout_read, stderr_read],
        max_bytes=options.buffer_bytes // 2,
        drop_when_full=options.router is not None and not options.block,
    )
    early.start()
    ps_warning = check_ps(options)
    if ps_warning is not None:
        warn(ps_warning)

    from shims.supervisor import supervise

    return supervise(
        options,
        pid=pid,
        stdout_fd=stdout_read,
        stderr_fd=stderr_read,
        handled_signals=handled_signals,
        early=early,
        spawned_at_us=spawned_at_us,
    )


if __name__ == "__main__":
    sys.exit(main())
