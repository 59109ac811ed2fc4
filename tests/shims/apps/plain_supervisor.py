"""Run ``shims.fallback.supervise_plainly`` around a command, as the shim does after an
internal error: ``plain_supervisor.py [-e CODE] -- COMMAND...``. Exits with its result."""

from __future__ import annotations

import os
import sys

from shims.fallback import supervise_plainly
from shims.signals import block_handled_signals
from shims.spawn import open_capture_pipe, spawn_app


def main() -> None:
    separator = sys.argv.index("--")
    success = frozenset(int(c) for c in sys.argv[1:separator] if c != "-e")
    handled = block_handled_signals()
    out_read, out_write = open_capture_pipe()
    err_read, err_write = open_capture_pipe()
    pid = spawn_app(sys.argv[separator + 1 :], stdout_fd=out_write, stderr_fd=err_write)
    os.close(out_write)
    os.close(err_write)
    code = supervise_plainly(
        pid,
        pipes={out_read: 1, err_read: 2},
        handled_signals=handled,
        wait_status=None,
        tee=True,
        success_codes=success,
    )
    sys.exit(code)


if __name__ == "__main__":
    main()
