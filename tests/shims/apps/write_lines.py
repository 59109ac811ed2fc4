"""Write numbered lines: ``write_lines.py STDOUT_COUNT STDERR_COUNT [RATE_PER_S] [PAD]``.

stdout lines are ``out <n> <padding>``, stderr lines ``err <n>``; one stderr line after every
100 stdout lines while both last. RATE_PER_S paces the output (0: as fast as possible);
PAD is the padding length (default 0).
"""

from __future__ import annotations

import sys
import time


def main() -> None:
    out_count, err_count = int(sys.argv[1]), int(sys.argv[2])
    rate = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    pad = "x" * (int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    every = max(1, out_count // max(1, err_count)) if err_count else 0
    err_written = 0
    started = time.monotonic()
    out, err = sys.stdout.buffer, sys.stderr.buffer
    for n in range(out_count):
        out.write(f"out {n} {pad}\n".encode())
        if every and n % every == every - 1 and err_written < err_count:
            out.flush()
            err.write(f"err {err_written}\n".encode())
            err.flush()
            err_written += 1
        if rate and n % 100 == 99:
            out.flush()
            delay = started + (n + 1) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    out.flush()
    while err_written < err_count:
        err.write(f"err {err_written}\n".encode())
        err_written += 1
    err.flush()


if __name__ == "__main__":
    main()
