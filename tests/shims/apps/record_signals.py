"""Record every catchable signal received, one number per line, into the file argv[1].

Writes ``ready <pid>`` first, once every handler is installed. Runs until it receives the
signal number given as argv[2] (default: never), then exits 0 after recording it. With
``--spawn-child`` it first starts a copy of itself (without the flag) writing to argv[1] +
".child", in the same process group, so group forwarding can be checked on a grandchild.
With ``--leave-group`` it first moves to its parent's process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def main() -> None:
    path = sys.argv[1]
    stop_on = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    child = None
    if "--leave-group" in sys.argv:
        # A group leader cannot setsid(); join the parent's group instead, which leaves the
        # group the shim created for us empty.
        os.setpgid(0, os.getpgid(os.getppid()))
    if "--spawn-child" in sys.argv:
        child = subprocess.Popen([sys.executable, __file__, path + ".child", "-"])
    # One unbuffered O_APPEND descriptor written with os.write: a handler may run while the
    # main code is inside a write (the test signals as soon as it reads "ready"), and a
    # buffered file object refuses such a reentrant call.
    out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stopping = []

    def record(signum: int, _frame: object) -> None:
        os.write(out, b"%d\n" % signum)
        if signum == stop_on:
            stopping.append(signum)

    for signum in signal.valid_signals():
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, record)
    os.write(out, b"ready %d\n" % os.getpid())
    while not stopping:
        time.sleep(0.01)
    if child is not None:
        child.kill()
        child.wait()


if __name__ == "__main__":
    main()
