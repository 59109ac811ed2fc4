"""Fuzz the C frame scanner (logplex/_syslogscan.c) under AddressSanitizer and UBSan.

Builds a sanitized copy of the extension into a temporary directory, re-runs itself with
the sanitizer runtimes preloaded, and feeds the scanner mutated octet-counted frames (the
common shape, its near misses, other zones and fraction widths, garbage, cuts anywhere)
for ``--seconds``. Every input is also read through ``read_batches`` with the sanitized
scanner and compared with the frame-by-frame reader: the results must be equal. Any
out-of-bounds read, undefined behaviour or difference stops the run with the input.

Needs gcc and the Python headers. Prints one JSON line and appends a row to perf/RESULTS.md.
Usage: ``.venv/bin/python perf/fuzz_syslogscan.py [--seconds 60] [--seed N] [--no-record]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

SANITIZERS = ("address", "undefined")
TOKEN = b"t.aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
STAMPS = [
    b"2026-11-27T20:39:33.123456+00:00",
    b"2026-11-27T21:39:33.5+01:00",
    b"2026-11-27T20:39:33Z",
    b"2026-11-27T20:39:33.123456789-02:30",
    b"2026-11-27T20:39:33.+00:00",
    b"1970-01-01T00:00:00.5+00:01",
    b"-",
]
MESSAGES = [b"hello", b"", b"two\nlines", b"\xef\xbb\xbfbom", b"x - - y", b"<190>1 fake header"]
ALPHABET = b' 0123456789<>.-+:TZ\n\xef[]"\\='


def build(directory: str) -> str:
    """Compile the scanner with the sanitizers; returns the path of the shared object."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    target = os.path.join(directory, f"_syslogscan{suffix}")
    flags = [f"-fsanitize={','.join(SANITIZERS)}", "-fno-sanitize-recover=all", "-g", "-O1"]
    include = sysconfig.get_paths()["include"]
    source = str(ROOT / "logplex" / "_syslogscan.c")
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-Wall",
            "-Wextra",
            *flags,
            f"-I{include}",
            source,
            "-o",
            target,
        ],
        check=True,
    )
    return target


def runtime_libraries() -> str:
    paths = [
        subprocess.run(
            ["gcc", f"-print-file-name=lib{name}.so"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for name in ("asan", "ubsan")
    ]
    return ":".join(paths)


MSGID_AND_SD = [
    b"- -",
    b"- -",
    b"ID47 -",
    b'- [a@1 b="c"]',
    b'ID [a@1 b="\\] \\" \\\\"][t@2]',
    b'- [timeQuality tzKnown="1" isSynced="0"]',
    b'- [a@1 b="]"]',
    b"- [a@1 b=c]",
    b"-",  # Heroku's drain layout: MSG right after MSGID
    b"ID",
]


def frame(rng: random.Random) -> bytes:
    header = b"<%d>1 %s host %s web.%d %s " % (
        rng.choice([190, 13, 0, 191, 999]),
        rng.choice(STAMPS),
        rng.choice([TOKEN, b"t.unknown"]),
        rng.randrange(3),
        rng.choice(MSGID_AND_SD),
    )
    payload = bytearray(header + rng.choice(MESSAGES))
    for _ in range(rng.choice([0, 0, 1, 2, 4])):
        at = rng.randrange(len(payload) + 1)
        roll = rng.random()
        if roll < 0.4 and payload:
            payload[min(at, len(payload) - 1)] = rng.choice(ALPHABET)
        elif roll < 0.7:
            payload[at:at] = bytes([rng.choice(ALPHABET)])
        elif payload:
            del payload[min(at, len(payload) - 1)]
    count = len(payload) + rng.choice([0, 0, 0, 0, 1, -1])
    return b"%d %b" % (count, bytes(payload))


def fuzz(shared_object: str, seconds: float, seed: int) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_syslogscan", shared_object)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from logplex.ingest_syslog import _read_frame_by_frame, read_batches
    from logplex.model import TokenInfo

    tokens = {TOKEN.decode(): TokenInfo("a", b"app")}
    rng = random.Random(seed)
    inputs = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        data = b"".join(frame(rng) for _ in range(rng.randrange(8)))
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        limit = rng.choice([1, 64, 10240, 99999])
        end = module.scan_common(data, limit)[0]
        if not 0 <= end <= len(data):
            raise SystemExit(f"end {end} out of range for {data!r}")
        fast = read_batches(data, limit, tokens.get, 0, module.scan_common)
        slow = _read_frame_by_frame(data, limit, tokens.get, 0)
        if fast != slow:
            raise SystemExit(f"readers differ on {data!r} (limit {limit}):\n{fast}\n{slow}")
        inputs += 1
    return {"inputs": inputs, "seconds": seconds, "seed": seed, "sanitizers": list(SANITIZERS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="no RESULTS.md row")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    if args.child:
        print(json.dumps(fuzz(args.child, args.seconds, seed)))
        return
    with tempfile.TemporaryDirectory() as directory:
        shared_object = build(directory)
        env = {
            **os.environ,
            "LD_PRELOAD": runtime_libraries(),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }
        argv = [sys.executable, __file__, "--child", shared_object, "--seconds", str(args.seconds)]
        child = subprocess.run(
            [*argv, "--seed", str(seed)], env=env, capture_output=True, text=True, check=False
        )
    if child.returncode != 0:
        sys.stderr.write(child.stdout + child.stderr)
        raise SystemExit(f"the fuzzer failed (seed {seed}, exit code {child.returncode})")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    if not args.no_record:
        from perf.results import append_results

        append_results(f"perf/fuzz_syslogscan.py --seconds {args.seconds} --seed {seed}", result)


if __name__ == "__main__":
    main()
