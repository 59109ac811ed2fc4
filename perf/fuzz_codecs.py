"""Fuzz every decoder of ``logplex.codecs`` with random and mutated inputs.

    .venv/bin/python perf/fuzz_codecs.py --seconds 600 [--seed N]

Seeds are the test vectors (``tests/codecs/vectors/*.json``) plus frames made by our own
encoders; each round picks a decoder, takes a seed or random bytes, mutates it (bit flips,
byte inserts and deletes, splices of other seeds, digit edits, truncation, duplication) and
feeds it. Incremental decoders get the input in random-sized pieces. BATCH payloads are
fuzzed at both layers: the zstd frame itself, and msgpack content re-compressed so that the
record validation sees malformed records. The run fails (exit 1, printing the input as hex)
when anything other than a ``ProtocolError`` escapes a decoder, or one call takes more than
100 ms of CPU time (``time.thread_time``: on a shared machine, wall time would count the
moments the fuzzer is not scheduled). At the end it prints one JSON line: inputs per
decoder and in total.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from logplex.codecs import (  # noqa: E402
    drain_frames,
    logplex1,
    octet,
    rfc5424,
    shimbatch,
    shimproto,
    timestamps,
)
from logplex.codecs.errors import ProtocolError  # noqa: E402
from logplex.codecs.lines import LineSplitter  # noqa: E402
from perf.results import append_results  # noqa: E402

# The vector files and their byte encoding are the codec tests' own.
sys.path.insert(0, str(ROOT / "tests" / "codecs"))
from codec_vectors import VECTORS, as_bytes  # noqa: E402

SLOW_CALL_S = 0.1


def load_seeds() -> dict[str, list[bytes]]:
    seeds: dict[str, list[bytes]] = {"syslog": [], "octet": [], "body": [], "ts": [], "shim": []}
    for case in json.loads((VECTORS / "rfc5424.json").read_text())["cases"]:
        seeds["syslog"].append(as_bytes(case["input"]))
    for case in json.loads((VECTORS / "octet.json").read_text())["cases"]:
        seeds["octet"].append(as_bytes(case["input"]))
    for case in json.loads((VECTORS / "logplex1.json").read_text())["cases"]:
        seeds["body"].append(as_bytes(case["input"]))
    for case in json.loads((VECTORS / "timestamps.json").read_text())["cases"]:
        seeds["ts"].append(case["input"].encode())
    shim = json.loads((VECTORS / "shim_frames.json").read_text())
    for frame in shim["frames"]:
        seeds["shim"].append(bytes.fromhex(frame["hex"].replace(" ", "")))
    message = (1_795_811_973_123_456, 190, b"app", b"web.1", b"hello \xc3\xa9 world")
    seeds["syslog"].append(drain_frames.syslog_frame(message, b"d.1234")[3:])
    seeds["body"].append(drain_frames.encode_https_body([message] * 3)[0])
    seeds["octet"].append(drain_frames.encode_https_body([message] * 3)[0])
    seeds["shim"].append(
        shimproto.encode_hello("t.x", "web.1", "s", "logshim/0", platform_token="t.y")
        + shimproto.encode_batch(5, [[1, 1, b"a"], [2, 2, b"b\n"], [3, 3, b""]])
        + shimproto.encode_ready(4, 8, 65536)
        + shimproto.encode_error("bad_frame", "nope")
    )
    return seeds


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        position = rng.randint(0, len(buffer))
        if choice == 0 and buffer:
            index = rng.randrange(len(buffer))
            buffer[index] ^= 1 << rng.randrange(8)
        elif choice == 1:
            buffer[position:position] = bytes([rng.randrange(256)])
        elif choice == 2 and buffer:
            del buffer[position : position + rng.randint(1, 8)]
        elif choice == 3:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            buffer[position:position] = other[start : start + rng.randint(1, 64)]
        elif choice == 4 and buffer:
            index = rng.randrange(len(buffer))
            buffer[index] = rng.choice(b'0123456789 <>[]="\\-\n\r')
        elif choice == 5:
            buffer = buffer[: rng.randint(0, len(buffer))]
        elif choice == 6 and buffer:
            start = rng.randrange(len(buffer))
            buffer[position:position] = buffer[start : start + rng.randint(1, 32)]
        else:
            buffer[position:position] = rng.choice([b"\xef\xbb\xbf", b"\xff", b"99999 ", b"0 "])
    return bytes(buffer)


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    out = []
    position = 0
    while position < len(data):
        size = rng.choice((1, 1, 2, 7, 64, 4096))
        out.append(data[position : position + size])
        position += size
    return out


def run_octet(data: bytes, rng: random.Random) -> None:
    for policy in ("strict", "resync"):
        decoder = octet.OctetFrameDecoder(rng.choice((16, 100, 8192)), policy)
        try:
            for piece in pieces(data, rng):
                decoder.feed(piece)
                decoder.frames() if rng.random() < 0.5 else decoder.next_frame()
        except ProtocolError:
            if policy == "resync":
                raise AssertionError("the resync policy raised") from None


def run_shim(data: bytes, rng: random.Random) -> None:
    decoder = shimproto.ShimFrameDecoder(rng.choice((64, 65536)))
    for piece in pieces(data, rng):
        decoder.feed(piece)
        while (event := decoder.next_event()) is not None:
            if isinstance(event, shimproto.BatchFrame):
                run_batch_payload(event.payload, rng)


def run_batch_payload(payload: bytes, rng: random.Random) -> None:
    with contextlib.suppress(ProtocolError):
        shimbatch.decode_batch_messages(
            payload,
            max_bytes=65536,
            max_records=rng.choice((2, 500)),
            ps=b"web.1",
            sources=(b"app", b"app", b"heroku"),
        )


COMPRESSOR = zstandard.ZstdCompressor(level=1)
RECORD_CONTENTS = [
    msgpack.packb([[1, 1, b"a"], [2, 3, b"b\nc"]]),
    msgpack.packb([[1, 1, b"a"]] * 5),
    msgpack.packb([]),
    msgpack.packb([[2**63, 1, b""]]),
]


def run_batch(data: bytes, rng: random.Random) -> None:
    if rng.random() < 0.5:
        content = mutate(rng.choice(RECORD_CONTENTS), rng, RECORD_CONTENTS)
        payload = COMPRESSOR.compress(content)
    else:
        payload = mutate(COMPRESSOR.compress(rng.choice(RECORD_CONTENTS)), rng, [data])
    run_batch_payload(payload, rng)
    with contextlib.suppress(ProtocolError):
        shimbatch.decode_batch_records(payload, max_bytes=65536, max_records=500)


def run_lines(data: bytes, rng: random.Random) -> None:
    limit = rng.choice((4, 5, 16, 10000))
    splitter = LineSplitter(limit)
    lines: list[bytes] = []
    for piece in pieces(data, rng):
        lines.extend(splitter.feed(piece))
        if splitter.pending > limit + 1:
            raise AssertionError(f"LineSplitter holds {splitter.pending} bytes, limit {limit}")
    lines.extend(splitter.flush())
    if any(len(line) > limit or b"\n" in line for line in lines):
        raise AssertionError("LineSplitter returned a line over the limit or with LF")


TARGETS: dict[str, tuple[str, Callable[[bytes, random.Random], Any]]] = {
    "rfc5424.parse_strict": ("syslog", lambda d, r: rfc5424.parse_strict(d)),
    "rfc5424.parse_lenient": ("syslog", lambda d, r: rfc5424.parse_lenient(d)),
    "octet.OctetFrameDecoder": ("octet", run_octet),
    "octet.octet_frames": ("octet", lambda d, r: octet.octet_frames(d, 8192)),
    "logplex1.parse_input_body": ("body", lambda d, r: logplex1.parse_input_body(d)),
    "logplex1.input_messages_from_body": (
        "body",
        lambda d, r: logplex1.input_messages_from_body(d, source=b"app"),
    ),
    "logplex1.parse_drain_body": ("body", lambda d, r: logplex1.parse_drain_body(d)),
    "logplex1.parse_input_frame": ("syslog", lambda d, r: logplex1.parse_input_frame(d)),
    "timestamps.parse_ts": ("ts", lambda d, r: timestamps.parse_ts(d, lenient=r.random() < 0.5)),
    "shimproto.ShimFrameDecoder": ("shim", run_shim),
    "shimbatch.decode_batch": ("shim", run_batch),
    "lines.LineSplitter": ("syslog", run_lines),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="no perf/RESULTS.md row")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    seeds = load_seeds()
    everything = [item for group in seeds.values() for item in group]
    counts = dict.fromkeys(TARGETS, 0)
    names = list(TARGETS)
    deadline = time.monotonic() + args.seconds
    slowest_s = 0.0
    while time.monotonic() < deadline:
        for _ in range(200):
            name = rng.choice(names)
            group, target = TARGETS[name]
            roll = rng.random()
            if roll < 0.1:
                data = rng.randbytes(rng.randint(0, 300))
            elif roll < 0.2:
                data = rng.choice(everything)
            else:
                data = mutate(rng.choice(seeds[group]), rng, everything)
            started = time.thread_time()
            try:
                target(data, rng)
            except ProtocolError:
                pass
            except Exception:
                print(f"FAIL {name}: unexpected exception (seed {seed})", file=sys.stderr)
                print(f"input hex: {data.hex()}", file=sys.stderr)
                traceback.print_exc()
                return 1
            elapsed_s = time.thread_time() - started
            slowest_s = max(slowest_s, elapsed_s)
            if elapsed_s > SLOW_CALL_S:
                print(
                    f"FAIL {name}: one call took {elapsed_s * 1000:.1f} ms (seed {seed})",
                    file=sys.stderr,
                )
                print(f"input hex: {data.hex()}", file=sys.stderr)
                return 1
            counts[name] += 1
    results = {
        "fuzz": "codecs",
        "seed": seed,
        "seconds": args.seconds,
        "inputs": sum(counts.values()),
        "slowest_call_ms": round(slowest_s * 1000, 2),
        "per_decoder": counts,
    }
    print(json.dumps(results), flush=True)
    if not args.no_record:
        append_results(f"perf/fuzz_codecs.py --seconds {args.seconds} --seed {seed}", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
