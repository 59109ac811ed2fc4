"""Leave N orphans behind, let them exit together, then live on.

Usage: orphans.py N LINGER HOLD. Each orphan is double-forked (its parent exits at once, so
it is re-parented) and waits on a pipe; once all N exist and LINGER seconds have passed, the
app closes the pipe and they all exit, becoming zombies of whoever adopted them. The app then
lives HOLD more seconds. It prints the orphans' pids (one line) once they all exist.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    count, linger_s, hold_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    release_read, release_write = os.pipe()
    report_read, report_write = os.pipe()
    for _ in range(count):
        child = os.fork()
        if child == 0:
            if os.fork() == 0:
                os.close(release_write)
                os.close(report_read)
                os.write(report_write, f"{os.getpid()} ".encode())
                os.close(report_write)
                os.read(release_read, 1)  # EOF once the app lets go
                os._exit(0)
            os._exit(0)
        os.waitpid(child, 0)
    os.close(report_write)
    os.close(release_read)
    pids = b""
    while chunk := os.read(report_read, 65536):
        pids += chunk
    print(pids.decode().strip(), flush=True)
    time.sleep(linger_s)
    os.close(release_write)
    time.sleep(hold_s)


if __name__ == "__main__":
    main()
