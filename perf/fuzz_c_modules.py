"""Fuzz the two C modules under AddressSanitizer and UBSan, against their Python twins.

Builds sanitized copies of ``logplex/codecs/_syslogscan.c`` and ``logplex/codecs/_cframes.c`` into
a temporary directory, re-runs itself with the sanitizer runtimes preloaded, and for
``--seconds`` alternates between:

- the syslog frame scanner, fed mutated octet-counted frames (the common shape, its near
  misses, other zones and fraction widths, structured data, garbage, cuts anywhere): each
  input is read through ``read_batches`` with the sanitized scanner and compared with the
  frame-by-frame reader;
- the drain frame formatter, fed random batches (valid records, invalid header fields,
  timestamps at and past the edges, records of the wrong shape): for both drain layouts
  its frames, or the error it raises, are compared with the Python twin's.

Any out-of-bounds access, undefined behaviour or difference stops the run with the input.
Needs gcc and the Python headers. Prints one JSON line and appends a row to perf/RESULTS.md.
Usage: ``.venv/bin/python perf/fuzz_c_modules.py [--seconds 60] [--seed N] [--no-record]``.
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


MODULES = {  # name in the child: source
    "_syslogscan": ROOT / "logplex" / "codecs" / "_syslogscan.c",
    "_cframes": ROOT / "logplex" / "codecs" / "_cframes.c",
}


def build(directory: str) -> None:
    """Compile both modules with the sanitizers into ``directory``."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    flags = [f"-fsanitize={','.join(SANITIZERS)}", "-fno-sanitize-recover=all", "-g", "-O1"]
    include = sysconfig.get_paths()["include"]
    for name, source in MODULES.items():
        target = os.path.join(directory, f"{name}{suffix}")
        compile_command = ["gcc", "-shared", "-fPIC", "-Wall", "-Wextra", *flags]
        compile_command += [f"-I{include}", str(source), "-o", target]
        subprocess.run(compile_command, check=True)


def load(directory: str, name: str) -> Any:
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    spec = importlib.util.spec_from_file_location(name, os.path.join(directory, f"{name}{suffix}"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


SOURCES = [b"app", b"heroku", b"a" * 48]
PS = [b"web.1", b"web.2", b"worker.10", b"-", b"p" * 128]
INVALID_FIELDS = [b"", b"a" * 49, b"a b", b"web 1", b"w\x01b", b"p" * 129]
TIMESTAMPS = [0, 1, 999, 1_795_811_973_123_456, 253_402_300_799_999_999]
TIMESTAMPS_ODD = [-1, 253_402_300_800_000_000, 1 << 62, 1 << 70]


def record(rng: random.Random) -> Any:
    roll = rng.random()
    ts = rng.choice(TIMESTAMPS) + rng.randrange(3000)
    if roll < 0.02:
        ts = rng.choice(TIMESTAMPS_ODD)
    pri = rng.choice([190, 13, 0, 191]) if roll > 0.03 else rng.choice([192, -1, True])
    msg = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    source, ps = rng.choice(SOURCES), rng.choice(PS)
    if rng.random() < 0.01:
        source = rng.choice(INVALID_FIELDS)
    if rng.random() < 0.01:
        ps = rng.choice(INVALID_FIELDS)
    built: Any = (ts, pri, source, ps, msg)
    if roll > 0.995:
        built = list(built)
    elif roll > 0.99:
        built = (ts, pri, bytearray(built[2]), built[3], msg)
    return built


def fuzz_scanner(module: Any, rng: random.Random) -> None:
    from logplex.codecs.syslog_reader import _read_frame_by_frame, read_batches
    from logplex.config.records import TokenInfo

    tokens = {TOKEN.decode(): TokenInfo("a", b"app")}
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


def fuzz_formatter(rng: random.Random) -> None:
    from logplex.codecs import drain_frames

    batch = [record(rng) for _ in range(rng.randrange(12))]
    layouts = [
        (b"host", drain_frames._https_headers, drain_frames._https_header),
        (b"d.x", drain_frames._syslog_headers, drain_frames._syslog_header),
    ]
    for first_field, headers, make_header in layouts:
        outcomes = []
        for encode in (drain_frames.frames_with_headers_c, drain_frames.frames_with_headers_python):
            try:
                outcomes.append(encode(batch, first_field, headers, make_header))
            except Exception as exc:  # the same error from both is the expected outcome
                outcomes.append((type(exc), str(exc)))
        if outcomes[0] != outcomes[1]:
            raise SystemExit(f"formatters differ on {batch!r}:\n{outcomes[0]}\n{outcomes[1]}")


def fuzz(directory: str, seconds: float, seed: int) -> dict[str, Any]:
    from logplex.codecs import drain_frames

    scanner = load(directory, "_syslogscan")
    drain_frames._c_frames = load(directory, "_cframes").frames_with_headers  # type: ignore[attr-defined]
    rng = random.Random(seed)
    inputs = {"scanner": 0, "formatter": 0}
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if rng.random() < 0.5:
            fuzz_scanner(scanner, rng)
            inputs["scanner"] += 1
        else:
            fuzz_formatter(rng)
            inputs["formatter"] += 1
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
        build(directory)
        env = {
            **os.environ,
            "LD_PRELOAD": runtime_libraries(),
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }
        argv = [sys.executable, __file__, "--child", directory, "--seconds", str(args.seconds)]
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

        append_results(f"perf/fuzz_c_modules.py --seconds {args.seconds} --seed {seed}", result)


if __name__ == "__main__":
    main()
