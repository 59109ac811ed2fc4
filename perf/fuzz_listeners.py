"""A fuzzer for the router's listeners: mutated valid traffic at the shim stream, syslog TCP
and HTTP listeners of a real ``logplex serve``, beside a canary that must stay unaffected.

It starts ``logplex serve`` (its own data dir, ports chosen by the kernel, the spool on, as
``perf/harness.py``'s ``RouterProcess``), creates a channel ``fuzz`` whose tokens the attack
uses and a channel ``canary`` for ``tests/canary.py``'s ``Canary`` (a real ``logshim``, a live
tail and a ``/healthcheck`` probe), then for ``--duration`` seconds runs, in threads, bounded
numbers of concurrent connections:

- ``shim`` (DESIGN 4): HELLO + BATCH streams built with ``logplex.codecs.shimproto`` and
  ``shimbatch``, sent valid or with bit flips, truncations, length-field changes, splices of
  two streams, duplicated and reordered frames, huge declared lengths, zstd frames whose
  header lies about the content size, and zstd bombs; the replies (READY, ACK, ERROR) are read.
- ``syslog`` (RFC 6587 octet counting, DESIGN 3 ingest fields): octet-counted frames with the
  same mutations on the frames and their counts, and LF-framed and garbage streams.
- ``http_logs`` (DESIGN 3 ``POST /logs``): logplex-1 bodies valid, mutated, gzip'd, gzip'd then
  mutated, gzip bombs, lying Content-Length and chunked bodies.
- ``http_api`` (DESIGN 3): JSON API bodies mutated (bit flips, truncations, splices, deep
  nesting, huge numbers, wrong Content-Type), on channels of their own (``jfuzz-N``).
- ``http_raw``: malformed request lines and headers, oversized heads, header floods, HTTP/2
  prefaces (h2c), pipelined requests.
- ``slow``: one byte every 0.5–1 s of a valid shim stream, syslog stream, HTTP head or
  HTTP body, on a few connections at a time, until the router closes it (its deadline) or
  ``--slow-cap-s`` passes.

Every input is a pure function of ``(--seed, worker, index)`` (``--replay WORKER:INDEX`` prints
its bytes), so a finding can be reproduced; which inputs run depends on timing only through
how many each worker reaches. The report (``--report FILE.json`` and a summary on stdout):
inputs per listener and mutation kind with the outcomes seen (reply, close, 5xx), router
crashes (the process exited), ``Traceback`` and ``ERROR`` lines in the router's log (with
the inputs in flight within 2 s of each), canary lines lost, probe failures, the health
probe's max and p99 latency, and the router's peak RSS (VmHWM). Exit 0 only when there was
no crash, no traceback or ERROR line, no canary line lost and no failed probe.

Usage: ``.venv/bin/python perf/fuzz_listeners.py --duration 600 --seed 1 --report fuzz.json``
(``--row`` appends a row to perf/RESULTS.md).
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import gzip
import importlib.util
import json
import os
import random
import re
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

ROOT = Path(__file__).resolve().parent.parent
# perf/drains.py would shadow the drains package for scripts run from perf/: import the package.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from logplex.codecs import shimproto  # noqa: E402
from logplex.codecs.octet import encode_octet_frame  # noqa: E402
from logplex.codecs.shimbatch import compress_records  # noqa: E402
from perf.harness import RouterProcess, percentile  # noqa: E402
from perf.results import append_results  # noqa: E402


def load_canary() -> Any:
    """``tests/canary.py``'s ``Canary`` class, imported by path (tests is not a package)."""
    spec = importlib.util.spec_from_file_location("logplex_canary", ROOT / "tests" / "canary.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Canary


# -- the inputs: seeds and mutations ---------------------------------------------------------

# A zstandard compressor must not be used from two threads at once (it crashed the process):
# one per worker thread.
_PER_THREAD = threading.local()


def compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_PER_THREAD, "zstd"):
        _PER_THREAD.zstd = zstandard.ZstdCompressor(level=1)
    return _PER_THREAD.zstd  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Target:
    """What an input is built against: the fuzz channel's tokens, the admin key."""

    token: str
    auth_key: str
    http_host: str


@dataclass(frozen=True, slots=True)
class FuzzInput:
    """One connection's worth of bytes, and how to send it."""

    listener: str  # shim | syslog | http_logs | http_api | http_raw
    kind: str  # the mutation
    data: bytes
    slow: bool = False  # one byte every 0.5-1 s
    slow_from: int = 0  # with ``slow``: the bytes before this offset go at once (an HTTP head)
    half_close: bool = False  # shut down the write side after sending (syslog)


def bit_flips(rng: random.Random, data: bytes, flips: int | None = None) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    for _ in range(flips or rng.randint(1, 8)):
        position = rng.randrange(len(out))
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncated(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def spliced(rng: random.Random, first: bytes, second: bytes) -> bytes:
    return first[: rng.randrange(len(first) + 1)] + second[rng.randrange(len(second) + 1) :]


def shuffled_frames(rng: random.Random, frames: list[bytes]) -> bytes:
    """Frames duplicated and reordered (a resend storm, a confused client)."""
    out = list(frames)
    for _ in range(rng.randint(1, 4)):
        out.insert(rng.randrange(len(out) + 1), rng.choice(frames))
    head, tail = out[:1], out[1:]  # keep the HELLO first half the time
    rng.shuffle(tail if rng.random() < 0.5 else out)
    return b"".join(head + tail if rng.random() < 0.5 else out)


def text_line(rng: random.Random, n: int) -> bytes:
    return b"fuzz line %d %s" % (n, rng.randbytes(rng.randint(0, 60)).hex().encode())


# -- shim ---------------------------------------------------------------------------------


def shim_records(rng: random.Random, count: int) -> list[list[Any]]:
    now_us = 1_796_000_000_000_000
    return [[now_us + n, rng.choice((1, 2)), text_line(rng, n)] for n in range(count)]


def shim_frames(rng: random.Random, target: Target) -> list[bytes]:
    """A valid stream: HELLO, then 1-5 BATCH frames with seqs from 1."""
    hello = shimproto.encode_hello(
        target.token, f"web.{rng.randint(1, 4)}", str(uuid.UUID(int=rng.getrandbits(128))), "fuzz/1"
    )
    batches = [
        shimproto.encode_batch_payload(
            seq, compress_records(shim_records(rng, rng.randint(1, 50)), compressor())
        )
        for seq in range(1, rng.randint(2, 6))
    ]
    return [hello, *batches]


def lying_zstd(rng: random.Random, records: list[list[Any]]) -> bytes:
    """A zstd frame whose header declares a content size other than the real one."""
    frame = bytearray(compress_records(records, compressor()))
    descriptor = frame[4]
    size_flag, single_segment = descriptor >> 6, (descriptor >> 5) & 1
    field_bytes = (1, 2, 4, 8)[size_flag] if size_flag or single_segment else 0
    offset = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
    if field_bytes == 0:
        return bytes(frame)
    lie = rng.choice((0, 1, 2**31, 2**32 - 1, 1 << 40, rng.getrandbits(8 * field_bytes)))
    lie &= (1 << (8 * field_bytes)) - 1
    if field_bytes == 2:
        lie = max(lie - 256, 0)
    frame[offset : offset + field_bytes] = lie.to_bytes(field_bytes, "little")
    return bytes(frame)


_BOMBS: dict[str, bytes] = {}


def zstd_bomb() -> bytes:
    """64 MiB of zeros in about 2 KB (honest content size)."""
    if "zstd" not in _BOMBS:
        _BOMBS["zstd"] = compressor().compress(b"\x92\x01" + b"\x00" * (64 << 20))
    return _BOMBS["zstd"]


def gzip_bomb() -> bytes:
    """16 MiB of logplex-1-looking text in about 16 KB of gzip."""
    if "gzip" not in _BOMBS:
        _BOMBS["gzip"] = gzip.compress(b"1 x" * (16 << 20 // 3), compresslevel=9)
    return _BOMBS["gzip"]


SHIM_KINDS = (
    "valid",
    "bitflip",
    "truncate",
    "length_field",
    "huge_length",
    "splice",
    "dup_reorder",
    "zstd_lying_size",
    "zstd_bomb",
    "bad_kind",
    "garbage",
)


def shim_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    frames = shim_frames(rng, target)
    stream = b"".join(frames)
    if kind == "valid":
        data = stream
    elif kind == "bitflip":
        data = bit_flips(rng, stream)
    elif kind == "truncate":
        data = truncated(rng, stream)
    elif kind in ("length_field", "huge_length"):
        index = rng.randrange(len(frames))
        frame = bytearray(frames[index])
        (length,) = struct.unpack_from(">I", frame)
        if kind == "huge_length":
            new = rng.choice((2**32 - 1, 2**31, 1 << 24, 16 << 20))
        else:
            new = rng.choice((0, 1, length - 1, length + 1, length * 2, rng.getrandbits(16)))
        struct.pack_into(">I", frame, 0, new & 0xFFFFFFFF)
        frames[index] = bytes(frame)
        data = b"".join(frames)
    elif kind == "splice":
        data = spliced(rng, stream, b"".join(shim_frames(rng, target)))
    elif kind == "dup_reorder":
        data = shuffled_frames(rng, frames)
    elif kind == "zstd_lying_size":
        payload = lying_zstd(rng, shim_records(rng, rng.randint(1, 50)))
        data = frames[0] + shimproto.encode_batch_payload(1, payload)
    elif kind == "zstd_bomb":
        data = frames[0] + shimproto.encode_batch_payload(1, zstd_bomb())
    elif kind == "bad_kind":
        body = rng.randbytes(rng.randint(0, 40))
        data = (
            frames[0] + struct.pack(">IB", len(body) + 1, rng.choice((0, 2, 4, 8, 99, 255))) + body
        )
    else:  # garbage
        data = rng.randbytes(rng.randint(1, 4096))
    # half the time the client ends its side (the router reads EOF), else it waits for replies
    return FuzzInput("shim", kind, data, half_close=rng.random() < 0.5)


# -- syslog -------------------------------------------------------------------------------


def syslog_frame(rng: random.Random, token: str, n: int) -> bytes:
    head = b"<%d>1 2026-12-03T17:00:%02d.%06d+00:00 host %s web.%d - - " % (
        rng.randint(0, 191),
        rng.randint(0, 59),
        rng.randint(0, 999_999),
        token.encode(),
        rng.randint(1, 4),
    )
    return encode_octet_frame(head + text_line(rng, n))


SYSLOG_KINDS = (
    "valid",
    "bitflip",
    "truncate",
    "length_field",
    "huge_length",
    "splice",
    "dup_reorder",
    "lf_framed",
    "garbage",
)


def syslog_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    frames = [syslog_frame(rng, target.token, n) for n in range(rng.randint(1, 40))]
    stream = b"".join(frames)
    if kind == "valid":
        data = stream
    elif kind == "bitflip":
        data = bit_flips(rng, stream)
    elif kind == "truncate":
        data = truncated(rng, stream)
    elif kind in ("length_field", "huge_length"):
        index = rng.randrange(len(frames))
        count, rest = frames[index].split(b" ", 1)
        if kind == "huge_length":
            new = rng.choice((b"99999999999999999999", b"4294967296", b"10485760", b"9" * 400))
        else:
            new = rng.choice(
                (
                    b"0",
                    b"-1",
                    b"0" + count,
                    b"%d" % (int(count) + 1),
                    b"%d" % (int(count) - 1),
                    b"x",
                )
            )
        frames[index] = new + b" " + rest
        data = b"".join(frames)
    elif kind == "splice":
        other = b"".join(syslog_frame(rng, target.token, n) for n in range(rng.randint(1, 10)))
        data = spliced(rng, stream, other)
    elif kind == "dup_reorder":
        frames += [rng.choice(frames) for _ in range(rng.randint(1, 5))]
        rng.shuffle(frames)
        data = b"".join(frames)
    elif kind == "lf_framed":
        data = b"".join(frame.split(b" ", 1)[1] + b"\n" for frame in frames)
    else:
        data = rng.randbytes(rng.randint(1, 4096))
    return FuzzInput("syslog", kind, data, half_close=True)


# -- HTTP ---------------------------------------------------------------------------------


def http_request(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes, *, length: bool = True
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers)]
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def logs_body(rng: random.Random, target: Target) -> bytes:
    return b"".join(syslog_frame(rng, target.token, n) for n in range(rng.randint(1, 60)))


LOGS_KINDS = (
    "valid",
    "valid_gzip",
    "bitflip",
    "truncate",
    "gzip_bitflip",
    "gzip_truncate",
    "gzip_bomb",
    "length_lies",
    "chunked",
    "wrong_type",
    "bad_auth",
)


def logs_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    body = logs_body(rng, target)
    auth = base64.b64encode(f"token:{target.token}".encode()).decode()
    headers = [
        ("Host", target.http_host),
        ("Content-Type", "application/logplex-1"),
        ("Authorization", f"Basic {auth}"),
        ("Connection", "close"),
    ]
    length = True
    if kind == "bitflip":
        body = bit_flips(rng, body)
    elif kind == "truncate":
        body = truncated(rng, body)
    elif kind.startswith("gzip"):
        headers.append(("Content-Encoding", "gzip"))
        if kind == "gzip_bomb":
            body = gzip_bomb()
        else:
            body = gzip.compress(body, compresslevel=1)
            body = bit_flips(rng, body) if kind == "gzip_bitflip" else truncated(rng, body)
    elif kind == "valid_gzip":
        headers.append(("Content-Encoding", "gzip"))
        body = gzip.compress(body, compresslevel=1)
    elif kind == "length_lies":
        length = False
        declared = rng.choice((0, len(body) - 1, len(body) + 1, len(body) * 3, 2**63, -1))
        headers.append(("Content-Length", str(declared)))
        headers.append(("Logplex-Msg-Count", str(rng.choice((0, 1, 10**30, -5)))))
    elif kind == "chunked":
        length = False
        headers.append(("Transfer-Encoding", "chunked"))
        chunks = b""
        for start in range(0, len(body), 500):
            piece = body[start : start + 500]
            size = len(piece) if rng.random() < 0.8 else rng.choice((0, len(piece) + 7, 1 << 40))
            chunks += b"%x\r\n%s\r\n" % (size, piece)
        body = chunks + (b"0\r\n\r\n" if rng.random() < 0.8 else b"")
    elif kind == "wrong_type":
        headers[1] = ("Content-Type", rng.choice(("text/plain", "application/json", "", "x/y")))
    elif kind == "bad_auth":
        headers[2] = ("Authorization", rng.choice(("Basic !!!", "Basic " + "A" * 5000, "Bearer x")))
    return FuzzInput("http_logs", kind, http_request("POST", "/logs", headers, body, length=length))


def api_request(rng: random.Random, target: Target) -> tuple[str, str, bytes]:
    channel = f"jfuzz-{rng.randint(1, 8)}"
    choices: list[tuple[str, str, Any]] = [
        ("PUT", f"/v3/channels/{channel}", {"tokens": ["app", "web"]}),
        ("POST", f"/v3/channels/{channel}/tokens", {"name": f"t{rng.randint(1, 4)}"}),
        ("POST", f"/v3/channels/{channel}/drains", {"url": "syslog://127.0.0.1:9"}),
        ("PUT", f"/v3/channels/{channel}/drains/1", {"url": "https://127.0.0.1:9/x"}),
        ("POST", "/v3/sessions", {"channel_id": "fuzz", "num": "10", "ps": "web"}),
        ("GET", f"/v3/channels/fuzz/logs?num={rng.choice(('5', '-1', 'x', '9' * 50))}", None),
        ("GET", f"/sessions/{uuid.UUID(int=rng.getrandbits(128))}", None),
        ("GET", "/v3/channels", None),
    ]
    method, path, body = rng.choice(choices)
    return method, path, b"" if body is None else json.dumps(body).encode()


API_KINDS = (
    "valid",
    "bitflip",
    "truncate",
    "splice",
    "deep_nesting",
    "huge_number",
    "wrong_type",
    "bad_auth",
    "length_lies",
)


def api_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    method, path, body = api_request(rng, target)
    if method == "GET" and kind not in ("valid", "bad_auth", "length_lies"):
        method, body = "POST", body or b"{}"
    content_type = "application/json"
    authorization = f"Bearer {target.auth_key}"
    length = True
    extra: list[tuple[str, str]] = []
    if kind == "bitflip":
        body = bit_flips(rng, body)
    elif kind == "truncate":
        body = truncated(rng, body)
    elif kind == "splice":
        body = spliced(rng, body, api_request(rng, target)[2])
    elif kind == "deep_nesting":
        depth = rng.choice((1000, 100_000))
        opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        body = opener * depth + b"1" + closer * depth
    elif kind == "huge_number":
        body = body.replace(b'"10"', b"9" * rng.choice((400, 5000, 100_000)))
        body = body.replace(b'"app"', b"1e999")
    elif kind == "wrong_type":
        content_type = rng.choice(("text/plain", "multipart/form-data; boundary=x", "", "app/xml"))
    elif kind == "bad_auth":
        authorization = rng.choice(("Bearer wrong", "Basic Og==", "Basic " + "=" * 3000, ""))
    elif kind == "length_lies":
        length = False
        extra.append(("Content-Length", str(rng.choice((len(body) + 5, 2**40, -3, 0)))))
    headers = [("Host", target.http_host), ("Connection", "close")]
    if content_type:
        headers.append(("Content-Type", content_type))
    if authorization:
        headers.append(("Authorization", authorization))
    return FuzzInput(
        "http_api", kind, http_request(method, path, headers + extra, body, length=length)
    )


RAW_KINDS = (
    "bitflip_head",
    "truncate_head",
    "splice_heads",
    "bad_request_line",
    "oversized_head",
    "header_flood",
    "h2c_preface",
    "h2c_upgrade",
    "pipelined",
    "garbage",
)

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream)
        + payload
    )


def raw_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    head = http_request(
        "GET", "/healthcheck", [("Host", target.http_host), ("Connection", "close")], b""
    )
    if kind == "bitflip_head":
        data = bit_flips(rng, head)
    elif kind == "truncate_head":
        data = truncated(rng, head)
    elif kind == "splice_heads":
        data = spliced(rng, head, api_input(rng, target, "valid").data)
    elif kind == "bad_request_line":
        data = rng.choice(
            (
                b"GET\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
                b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
                b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n",
                b"GET / HTTP/1.0\r\n\r\n",
                b"POST /logs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                b"0\r\n\r\n",
            )
        )
    elif kind == "oversized_head":
        data = (
            head[:-2] + b"X-Big: " + b"b" * rng.choice((20_000, 200_000, 2_000_000)) + b"\r\n\r\n"
        )
    elif kind == "header_flood":
        data = (
            head[:-2]
            + b"".join(b"X-%d: y\r\n" % n for n in range(rng.choice((200, 20_000))))
            + b"\r\n"
        )
    elif kind == "h2c_preface":
        settings = h2_frame(4, 0, 0, b"")
        streams = b""
        for stream in range(1, 2 * rng.randint(10, 2000), 2):
            streams += h2_frame(1, 0x5, stream, b"\x82\x84\x86\x41\x01x")  # HEADERS GET / http
            streams += h2_frame(3, 0, stream, struct.pack(">I", 8))  # RST_STREAM CANCEL
        data = H2_PREFACE + settings + streams
    elif kind == "h2c_upgrade":
        data = http_request(
            "GET",
            "/healthcheck",
            [
                ("Host", target.http_host),
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("Upgrade", "h2c"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
            b"",
        )
    elif kind == "pipelined":
        one = http_request("GET", "/healthcheck", [("Host", target.http_host)], b"")
        data = one * rng.randint(2, 200)
    else:
        data = rng.randbytes(rng.randint(1, 8192))
    return FuzzInput("http_raw", kind, data)


SLOW_KINDS = ("shim_hello", "shim_batch", "syslog_stream", "http_head", "http_body", "logs_body")


def slow_input(rng: random.Random, target: Target, kind: str) -> FuzzInput:
    """A valid input sent one byte every 0.5-1 s: from its first byte (a shim HELLO, a
    syslog frame, an HTTP head) or after its start went at once (a BATCH after the HELLO,
    an HTTP body after the head)."""
    if kind in ("shim_hello", "shim_batch"):
        frames = shim_frames(rng, target)
        start = len(frames[0]) if kind == "shim_batch" else 0
        return FuzzInput("shim", f"slow_{kind}", b"".join(frames), slow=True, slow_from=start)
    if kind == "syslog_stream":
        data = syslog_input(rng, target, "valid").data
        return FuzzInput("syslog", "slow_syslog", data, slow=True)
    if kind == "logs_body":
        data = logs_input(rng, target, "valid").data
        head = data.index(b"\r\n\r\n") + 4
        return FuzzInput("http_logs", "slow_logs_body", data, slow=True, slow_from=head)
    body = json.dumps({"channel_id": "fuzz", "num": "1"}).encode()
    request = http_request(
        "POST",
        "/v3/sessions",
        [
            ("Host", target.http_host),
            ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {target.auth_key}"),
        ],
        body,
    )
    if kind == "http_body":
        head = request.index(b"\r\n\r\n") + 4
        return FuzzInput("http_api", "slow_api_body", request, slow=True, slow_from=head)
    return FuzzInput("http_raw", "slow_http_head", request, slow=True)


BUILDERS: dict[str, tuple[tuple[str, ...], Callable[[random.Random, Target, str], FuzzInput]]] = {
    "shim": (SHIM_KINDS, shim_input),
    "syslog": (SYSLOG_KINDS, syslog_input),
    "http_logs": (LOGS_KINDS, logs_input),
    "http_api": (API_KINDS, api_input),
    "http_raw": (RAW_KINDS, raw_input),
    "slow": (SLOW_KINDS, slow_input),
}


def make_input(seed: int, worker: str, index: int, target: Target) -> FuzzInput:
    """Input ``index`` of ``worker`` (``shim-0``, ``slow-1``, …): a pure function of its args."""
    family = worker.rsplit("-", 1)[0]
    kinds, build = BUILDERS[family]
    rng = random.Random(f"{seed}/{worker}/{index}")
    return build(rng, target, rng.choice(kinds))


# -- sending ------------------------------------------------------------------------------


@dataclass(slots=True)
class Tally:
    """Counts per (listener, kind, outcome), shared by the workers under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)
    bytes_sent: collections.Counter[str] = field(default_factory=collections.Counter)
    in_flight: dict[tuple[str, int], tuple[float, str, str]] = field(default_factory=dict)
    recent: collections.deque[tuple[float, float, str, int, str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )
    slow_closed_after_s: dict[str, list[float]] = field(default_factory=dict)

    def begin(self, worker: str, index: int, item: FuzzInput) -> float:
        started = time.time()
        with self.lock:
            self.in_flight[(worker, index)] = (started, item.listener, item.kind)
        return started

    def end(self, worker: str, index: int, item: FuzzInput, started: float, outcome: str) -> None:
        with self.lock:
            self.in_flight.pop((worker, index), None)
            self.counts[(item.listener, item.kind, outcome)] += 1
            self.bytes_sent[item.listener] += len(item.data)
            self.recent.append((started, time.time(), worker, index, item.listener, item.kind))


def classify_http(reply: bytes) -> str:
    match = re.match(rb"HTTP/1\.[01] (\d)\d\d", reply)
    if match:
        return f"http_{match.group(1).decode()}xx"
    return "closed_no_reply" if not reply else "other_reply"


def classify_shim(reply: bytes) -> str:
    decoder = shimproto.ShimFrameDecoder(max_frame_bytes=1 << 20)
    decoder.feed(reply)
    kinds = []
    with contextlib.suppress(Exception):
        while (event := decoder.next_event()) is not None:
            if isinstance(event, shimproto.ErrorFrame):
                return f"error_{event.code}"
            kinds.append(type(event).__name__.lower())
    if "ack" in kinds:
        return "acked"
    return kinds[-1] if kinds else "closed_no_reply"


SOURCE_ADDRESSES = 250


def source_address(item: FuzzInput, index: int) -> str:
    """The loopback address an input comes from. The canary runs from 127.0.0.1 and keeps
    its own per-address budgets; the attack spreads over 127.0.0.2-251, so the mutated
    credentials of some inputs do not get every other input answered 429 by the router's
    failed-authentication limit, and it hides no parser; inputs that are all wrong
    credentials come from 127.0.1.x, where that limit does block them."""
    block = 1 if item.kind == "bad_auth" else 0
    return f"127.0.{block}.{2 + index % SOURCE_ADDRESSES}"


def send_and_read(
    address: tuple[str, int],
    item: FuzzInput,
    read_s: float,
    slow_cap_s: float,
    rng: random.Random,
    stop: threading.Event,
    source: str = "127.0.0.2",
) -> tuple[str, float]:
    """Send ``item`` from ``source``, read the reply until the router closes or ``read_s``
    passes; the outcome and, for a slow input, the seconds until the router closed (0 when
    it did not)."""
    reply = b""
    closed_after = 0.0
    try:
        sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
    except OSError as error:
        return f"connect_failed_{type(error).__name__}", 0.0
    started = time.monotonic()
    try:
        sock.settimeout(10)
        if item.slow:
            if item.slow_from:
                sock.sendall(item.data[: item.slow_from])
            for position in range(item.slow_from, len(item.data)):
                if stop.is_set() or time.monotonic() - started > slow_cap_s:
                    break
                sock.sendall(item.data[position : position + 1])
                sock.settimeout(rng.uniform(0.5, 1.0))
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    closed_after = time.monotonic() - started
                    break
                reply += chunk
        else:
            sock.sendall(item.data)
        if item.half_close:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + read_s
        while len(reply) < 1 << 20 and not closed_after:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            reply += chunk
    except (ConnectionResetError, BrokenPipeError):
        if item.slow and not closed_after:
            closed_after = time.monotonic() - started
        return ("reset" if not reply else "reset_after_reply"), closed_after
    except OSError as error:
        return f"os_error_{type(error).__name__}", closed_after
    finally:
        sock.close()
    if item.listener == "shim":
        outcome = classify_shim(reply)
    elif item.listener == "syslog":
        outcome = "closed_by_router" if closed_after else "sent"
    else:
        outcome = classify_http(reply)
    if item.slow:
        outcome = (
            f"{outcome}{'_closed_by_router' if closed_after and item.listener != 'syslog' else ''}"
        )
    return outcome, closed_after


def worker_loop(
    worker: str,
    seed: int,
    target: Target,
    addresses: dict[str, tuple[str, int]],
    tally: Tally,
    stop: threading.Event,
    read_s: float,
    slow_cap_s: float,
) -> None:
    index = 0
    while not stop.is_set():
        item = make_input(seed, worker, index, target)
        address = addresses["http" if item.listener.startswith("http") else item.listener]
        started = tally.begin(worker, index, item)
        rng = random.Random(f"{seed}/{worker}/{index}/timing")
        source = source_address(item, index)
        outcome, closed_after = send_and_read(address, item, read_s, slow_cap_s, rng, stop, source)
        tally.end(worker, index, item, started, outcome)
        if item.slow and closed_after:
            with tally.lock:
                tally.slow_closed_after_s.setdefault(item.kind, []).append(round(closed_after, 1))
        index += 1


# -- the router's side ----------------------------------------------------------------------

PROBLEM = re.compile(r"Traceback|^\S+ (ERROR|CRITICAL) ", re.MULTILINE)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00) ")


def log_problems(text: str) -> list[dict[str, Any]]:
    """Each ``Traceback`` or ERROR/CRITICAL line of the router's log, with its time (the
    time of the nearest timestamped line above it) and a few lines of context."""
    lines = text.splitlines()
    problems = []
    last_stamp = None
    for number, row in enumerate(lines):
        stamp = STAMP.match(row)
        if stamp:
            last_stamp = stamp.group(1)
        if PROBLEM.search(row):
            problems.append(
                {
                    "line": number + 1,
                    "at": last_stamp,
                    "text": "\n".join(lines[number : number + 12])[:3000],
                }
            )
    return problems


def inputs_near(tally: Tally, at: str | None, window_s: float = 2.0) -> list[dict[str, Any]]:
    if at is None:
        return []
    moment = time.mktime(time.strptime(at[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    moment += float("0" + at[19:23])
    with tally.lock:
        near = [
            {"worker": w, "index": i, "listener": listener, "kind": kind}
            for started, ended, w, i, listener, kind in tally.recent
            if started - window_s <= moment <= ended + window_s
        ]
        near += [
            {"worker": w, "index": i, "listener": listener, "kind": kind, "in_flight": True}
            for (w, i), (started, listener, kind) in tally.in_flight.items()
            if started - window_s <= moment
        ]
    return near[:40]


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    return 0


# -- the run ------------------------------------------------------------------------------

WORKERS = {"shim": 3, "syslog": 2, "http_logs": 2, "http_api": 2, "http_raw": 2, "slow": 6}


def run(args: argparse.Namespace) -> dict[str, Any]:
    canary_class = load_canary()
    workers = {name: args.workers_scale * count for name, count in WORKERS.items()}
    with tempfile.TemporaryDirectory(prefix="fuzz-listeners-") as tmp:
        router = RouterProcess(Path(tmp) / "data", list(args.router_flag))
        report: dict[str, Any] = {
            "seed": args.seed,
            "duration_s": args.duration,
            "router_flags": list(args.router_flag),
            "workers": workers,
            "load_1m_before": round(os.getloadavg()[0], 2),
        }
        canary = None
        try:
            router.wait_healthy()
            token = router.create_channel("fuzz")
            canary_token = router.create_channel("canary")
            http_host, http_port = router.http.rsplit(":", 1)
            shim_host, shim_port = router.shim.rsplit(":", 1)
            addresses = {
                "http": (http_host, int(http_port)),
                "shim": (shim_host, int(shim_port)),
                "syslog": ("127.0.0.1", router.syslog_port),
            }
            target = Target(token, router.auth_key, router.http)
            zstd_bomb(), gzip_bomb()  # built once, before the clock starts
            tally = Tally()
            stop = threading.Event()
            canary = canary_class(
                f"http://{router.http}",
                router.shim,
                canary_token,
                "canary",
                auth_key=router.auth_key,
                max_probe_s=args.max_probe_s,
            )
            canary.start()
            canary.wait_for_lines(20)
            threads = [
                threading.Thread(
                    target=worker_loop,
                    args=(
                        f"{name}-{n}",
                        args.seed,
                        target,
                        addresses,
                        tally,
                        stop,
                        args.read_s,
                        args.slow_cap_s,
                    ),
                    daemon=True,
                )
                for name, count in workers.items()
                for n in range(count)
            ]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            peak_rss_sampled = 0
            crashed = None
            while time.monotonic() - started < args.duration:
                time.sleep(0.5)
                peak_rss_sampled = max(peak_rss_sampled, rss_bytes(router.pid))
                if router.process.poll() is not None:
                    crashed = router.process.returncode
                    break
            stop.set()
            for thread in threads:
                thread.join(args.slow_cap_s + args.read_s + 15)
            report["fuzz_seconds"] = round(time.monotonic() - started, 1)
            canary_error = None
            printed = 0
            if crashed is None:
                try:
                    canary.stop()
                except AssertionError as error:
                    canary_error = str(error)
                printed = sum(1 for row in canary._shim_stdout if row.startswith(b"canary "))
            else:
                canary._stop.set()
                canary._kill_shim()
            expected = {f"canary {n}" for n in range(printed)}
            lost = len(expected - set(canary.tail_lines))
            latencies = sorted(int(s * 1e6) for s in canary.probe_latencies_s)
            report["router_peak_rss_bytes"] = (
                router.peak_rss() if crashed is None else peak_rss_sampled
            )
            if crashed is None:
                router.stop()
                report["router_exit_code"] = router.process.returncode
            log_text = router.log_path.read_text(errors="replace")
        finally:
            if canary is not None:  # an interrupted run leaves no shim behind
                canary._stop.set()
                canary._kill_shim()
            if router.process.poll() is None:
                router.kill()
        problems = log_problems(log_text)
        for problem in problems:
            problem["inputs_near"] = inputs_near(tally, problem["at"])
        by_listener: dict[str, dict[str, dict[str, int]]] = {}
        for (listener, kind, outcome), count in sorted(tally.counts.items()):
            by_listener.setdefault(listener, {}).setdefault(kind, {})[outcome] = count
        report.update(
            {
                "inputs_total": sum(tally.counts.values()),
                "inputs_per_listener": {
                    name: sum(sum(kinds.values()) for kinds in per.values())
                    for name, per in by_listener.items()
                },
                "bytes_per_listener": dict(tally.bytes_sent),
                "inputs": by_listener,
                "http_5xx": sum(c for (_, _, o), c in tally.counts.items() if o == "http_5xx"),
                "slow_closed_by_router": {
                    kind: {
                        "closed": len(times),
                        "after_s_min": min(times),
                        "after_s_max": max(times),
                    }
                    for kind, times in sorted(tally.slow_closed_after_s.items())
                },
                "router_crashes": 0 if crashed is None else 1,
                "router_crash_exit_code": crashed,
                "router_tracebacks": sum(
                    1 for p in problems if "Traceback" in p["text"].splitlines()[0]
                ),
                "router_error_lines": sum(
                    1 for p in problems if "Traceback" not in p["text"].splitlines()[0]
                ),
                "router_problems": problems[:20],
                "canary_printed": printed,
                "canary_tail_lines": len(canary.tail_lines),
                "canary_lines_lost": lost,
                "canary_check": canary_error or "ok",
                "probe_count": len(latencies),
                "probe_failures": len(canary.probe_failures),
                "probe_latency_max_s": round(latencies[-1] / 1e6, 3) if latencies else None,
                "probe_latency_p99_s": round(percentile(latencies, 0.99) / 1e6, 3)
                if latencies
                else None,
                "load_1m_after": round(os.getloadavg()[0], 2),
            }
        )
    report["passed"] = {
        "no_crash": report["router_crashes"] == 0,
        "no_traceback_or_error": report["router_tracebacks"] + report["router_error_lines"] == 0,
        "no_canary_line_lost": report["canary_lines_lost"] == 0 and printed > 0,
        "no_probe_failure": report["probe_failures"] == 0,
    }
    report["pass"] = all(report["passed"].values())
    return report


def summary(report: dict[str, Any]) -> str:
    rows = [
        f"fuzzed {report.get('fuzz_seconds')} s, seed {report['seed']}: "
        f"{report['inputs_total']} inputs",
    ]
    for listener, kinds in report["inputs"].items():
        rows.append(f"  {listener}: {report['inputs_per_listener'][listener]}")
        for kind, outcomes in kinds.items():
            shown = ", ".join(f"{o} {c}" for o, c in sorted(outcomes.items(), key=lambda x: -x[1]))
            rows.append(f"    {kind:<18} {shown}")
    rows += [
        f"HTTP 5xx answers: {report['http_5xx']}",
        f"slow connections the router closed: {report['slow_closed_by_router']}",
        f"router crashes: {report['router_crashes']}  tracebacks: {report['router_tracebacks']}  "
        f"ERROR lines: {report['router_error_lines']}",
        f"canary: {report['canary_printed']} printed, {report['canary_lines_lost']} lost; "
        f"check: {report['canary_check']}",
        f"health probe: {report['probe_count']} probes, {report['probe_failures']} failed, "
        f"max {report['probe_latency_max_s']} s, p99 {report['probe_latency_p99_s']} s",
        f"router peak RSS: {report['router_peak_rss_bytes'] / 2**20:.1f} MiB",
        f"load {report['load_1m_before']} -> {report['load_1m_after']}",
        "PASS" if report["pass"] else f"FAIL: {[k for k, v in report['passed'].items() if not v]}",
    ]
    for problem in report["router_problems"][:5]:
        rows.append(f"--- router log line {problem['line']} at {problem['at']}:\n{problem['text']}")
        rows.append(f"    inputs near: {problem['inputs_near'][:8]}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--duration", type=float, default=60, help="seconds of fuzzing (60)")
    parser.add_argument("--seed", type=int, default=1, help="the seed of every input (1)")
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    parser.add_argument("--read-s", type=float, default=2.0, help="read a reply this long (2)")
    parser.add_argument(
        "--slow-cap-s", type=float, default=30.0, help="end a slow send after this long (30)"
    )
    parser.add_argument(
        "--max-probe-s", type=float, default=5.0, help="slowest acceptable /healthcheck (5)"
    )
    parser.add_argument(
        "--workers-scale", type=int, default=1, help="multiply the concurrent connections (1)"
    )
    parser.add_argument(
        "--router-flag", action="append", default=[], metavar="FLAG", help="another serve flag"
    )
    parser.add_argument(
        "--replay",
        metavar="WORKER:INDEX",
        help="print one input's listener, kind and bytes (repr) instead of fuzzing",
    )
    parser.add_argument("--row", action="store_true", help="append a row to perf/RESULTS.md")
    args = parser.parse_args()
    if args.replay:
        worker, index = args.replay.rsplit(":", 1)
        placeholder = Target("t.00000000-0000-4000-8000-000000000000", "KEY", "127.0.0.1:PORT")
        item = make_input(args.seed, worker, int(index), placeholder)
        print(f"{item.listener} {item.kind} slow={item.slow} {len(item.data)} bytes")
        print(repr(item.data[:4000]))
        print("(the token, key and host are placeholders: the run used its router's)")
        return
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up
    report = run(args)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1))
    print(summary(report))
    if args.row:
        short = {k: v for k, v in report.items() if k not in ("inputs", "router_problems")}
        append_results(" ".join(["perf/fuzz_listeners.py", *sys.argv[1:]]), short)
    sys.exit(0 if report["pass"] else 1)


if __name__ == "__main__":
    main()
