"""The app the chaos suite runs under ``logshim``: numbered lines at a steady rate.

``chaos_emitter.py SHIM RATE PAD_CHARS STOP_FILE COUNT_FILE`` writes lines
``s{SHIM} n{COUNTER:07d} {PAD}`` to stdout at RATE lines per second until STOP_FILE exists,
then writes how many it wrote to COUNT_FILE (atomically) and exits 0. PAD is derived from
the line's id (``pad_for``), so a receiver can check every line's bytes, and it is hex of a
hash so that it does not compress away (the disk-budget case needs spool bytes).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time


def pad_for(shim: int, counter: int, pad_chars: int) -> str:
    seed = hashlib.sha256(f"{shim}:{counter}".encode()).hexdigest()
    return (seed * (pad_chars // len(seed) + 1))[:pad_chars]


def line_for(shim: int, counter: int, pad_chars: int) -> str:
    return f"s{shim} n{counter:07d} {pad_for(shim, counter, pad_chars)}"


def main(argv: list[str]) -> int:
    shim, rate, pad_chars = int(argv[0]), float(argv[1]), int(argv[2])
    stop_file, count_file = argv[3], argv[4]
    written = 0
    started = time.monotonic()
    out = sys.stdout
    while not os.path.exists(stop_file):
        due = int((time.monotonic() - started) * rate)
        if due > written:
            out.write("".join(line_for(shim, n, pad_chars) + "\n" for n in range(written, due)))
            out.flush()
            written = due
        time.sleep(0.01)
    out.flush()
    with open(count_file + ".tmp", "w") as handle:
        handle.write(str(written))
    os.replace(count_file + ".tmp", count_file)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
