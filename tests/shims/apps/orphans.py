"""Leave N orphans behind: each double-forked, living LINGER seconds; then live HOLD seconds.

Usage: orphans.py N LINGER HOLD. Prints the orphans' pids (one line) once they exist.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> None:
    count, linger_s, hold_s = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    read_fd, write_fd = os.pipe()
    for _ in range(count):
        child = os.fork()
        if child == 0:
            grandchild = os.fork()
            if grandchild == 0:
                os.write(write_fd, f"{os.getpid()} ".encode())
                time.sleep(linger_s)
                os._exit(0)
            os._exit(0)
        os.waitpid(child, 0)
    os.close(write_fd)
    pids = b""
    while chunk := os.read(read_fd, 65536):
        pids += chunk
        if len(pids.split()) == count:
            break
    print(pids.decode().strip(), flush=True)
    time.sleep(hold_s)


if __name__ == "__main__":
    main()
