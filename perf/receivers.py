"""Counting drain receivers for the end-to-end benchmarks, each in its own process.

- ``--syslog``: a TCP receiver of octet-counted syslog frames (our ``syslog://`` drain, or
  rsyslog's omfwd). Every frame ends with LF (DESIGN 5.1; rsyslog's
  ``RSYSLOG_SyslogProtocol23Format`` too) and no message holds a raw LF, so it counts frames by
  counting LFs per read (C speed, about 1 GB/s) instead of walking the octet counts in Python:
  it must stay faster than what it measures. Plain ``selectors``, 1 MiB reads.
- ``--https``: ``logplex sink``'s server (``drains.sink``: TLS, h11 heads, Content-Length
  bodies, Frame-Id de-duplication) with a counting ``accept``: it checks the Logplex headers
  and the line count as ``--blackhole`` does, counts ``Logplex-Msg-Count`` and notes the
  receipt time; with ``--latency`` it also takes each line's ``lat=<time.time_ns()>`` stamp
  and keeps receipt minus write, in ns. It keeps the receipt time of the last
  ``POST_TIMES_KEPT`` posts, duplicates included (a new owner's first posts in the cluster
  mode repeat Frame-Ids), for ``posts_since``.

Both count the notices among the frames (PRI 172: router, L10/L11; PRI 189: shim lifecycle
and L12/L13) and add up the N of each ``Error L10``..``L13`` they see. They print
``listening NAME=127.0.0.1:PORT`` first, then answer each ``report`` line on stdin with one
JSON line (``final`` adds the latency percentiles; ``posts_since NS``, HTTPS only, lists the
receipt times of the posts received at or after ``NS``) and exit when stdin closes.
``Receiver`` is the parent's handle on one of them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import selectors
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# perf/drains.py would shadow the drains package for scripts run from perf/: import the package.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from perf.harness import child_env, percentile  # noqa: E402

ROUTER_NOTICE = b" <172>1 "
SHIM_NOTICE = b" <189>1 "
LOSS = re.compile(rb"Error L1([0-3]) \([^)]*\)(?: -> This tail session dropped|:) (\d+) messages")
STAMP = re.compile(rb"lat=(\d{19})")
POST_TIMES_KEPT = 100_000


class Counts:
    """What a receiver got: frames (notices included), notices, loss counts, receipt times."""

    def __init__(self) -> None:
        self.frames = 0
        self.notices = 0
        self.losses = {"l10": 0, "l11": 0, "l12": 0, "l13": 0}
        self.first_ns = 0
        self.last_ns = 0
        self.bytes = 0
        self.connections = 0
        self.latencies_ns: list[int] = []
        self.duplicates = 0
        self.post_times_ns: collections.deque[int] = collections.deque(maxlen=POST_TIMES_KEPT)

    def add(self, frames: int, now_ns: int) -> None:
        self.frames += frames
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns

    def add_notices(self, region: bytes | bytearray) -> None:
        """Count the notice frames in ``region`` (whole frames) and add up their losses."""
        found = region.count(ROUTER_NOTICE) + region.count(SHIM_NOTICE)
        if found:
            self.notices += found
            for match in LOSS.finditer(region):
                self.losses[f"l1{match.group(1).decode()}"] += int(match.group(2))

    def report(self, final: bool) -> dict[str, Any]:
        result: dict[str, Any] = {
            "frames": self.frames,
            "app_frames": self.frames - self.notices,
            "notices": self.notices,
            **self.losses,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "bytes": self.bytes,
            "connections": self.connections,
            "duplicates": self.duplicates,
        }
        if final and self.latencies_ns:
            ordered = sorted(self.latencies_ns)
            result["latency_samples"] = len(ordered)
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
                result[f"latency_{name}_ms"] = round(percentile(ordered, fraction) / 1e6, 2)
        return result


# -- the syslog receiver (child) ------------------------------------------------------------


def scan_syslog(counts: Counts, buffer: bytearray, size: int, carry: bytes) -> bytes:
    """Count the whole frames in ``carry`` + ``buffer[:size]``; the unfinished rest."""
    counts.bytes += size
    last = buffer.rfind(b"\n", 0, size)
    if last < 0:
        return carry + bytes(buffer[:size])
    first = buffer.find(b"\n", 0, size)
    straddling = carry + bytes(buffer[: first + 1])  # the frame begun in an earlier read
    counts.add(1 + buffer.count(b"\n", first + 1, last + 1), time.time_ns())
    counts.add_notices(straddling)
    if buffer.count(ROUTER_NOTICE, first + 1, last + 1) or buffer.count(
        SHIM_NOTICE, first + 1, last + 1
    ):
        counts.add_notices(bytes(buffer[first + 1 : last + 1]))
    return bytes(buffer[last + 1 : size])


def answer(counts: Counts, commands: bytes) -> None:
    for command in commands.splitlines():
        words = command.split()
        if not words:
            continue
        if words[0] == b"posts_since" and len(words) == 2:
            since_ns = int(words[1])
            reply: Any = [t for t in counts.post_times_ns if t >= since_ns]
        else:
            reply = counts.report(final=words[0] == b"final")
        sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def serve_syslog(port: int) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    sys.stdout.write(f"listening syslog=127.0.0.1:{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)
    counts = Counts()
    carries: dict[socket.socket, bytes] = {}
    buffer = bytearray(1 << 20)
    pending = b""
    while True:
        for key, _ in selector.select():
            source = key.fileobj
            if source is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                carries[conn] = b""
                counts.connections += 1
            elif source == 0:
                data = os.read(0, 4096)
                if not data:
                    return
                pending += data
                whole, _, pending = pending.rpartition(b"\n")
                answer(counts, whole)
            else:
                assert isinstance(source, socket.socket)
                try:
                    size = source.recv_into(buffer)
                except BlockingIOError:
                    continue
                except OSError:
                    size = 0
                if not size:
                    selector.unregister(source)
                    source.close()
                    del carries[source]
                    continue
                carries[source] = scan_syslog(counts, buffer, size, carries[source])


# -- the HTTPS receiver (child) -------------------------------------------------------------


def serve_https(port: int, cert_file: str, key_file: str, latency: bool) -> None:
    import trio

    from drains.receiver import check_headers, check_line_count
    from drains.sink import Sink, serve_sink

    counts = Counts()

    class CountingSink(Sink):
        def accept(self, headers: dict[str, str], body: bytes | bytearray) -> None:
            checked = check_headers(headers, len(body))
            check_line_count(body, checked.msg_count)
            now_ns = time.time_ns()
            self.stats.requests += 1
            counts.post_times_ns.append(now_ns)
            if self.window.check_and_add(checked.frame_id):
                self.stats.duplicates += 1
                counts.duplicates += 1
                return
            counts.bytes += len(body)
            counts.add(checked.msg_count, now_ns)
            counts.add_notices(body)
            if latency:
                counts.latencies_ns.extend(now_ns - int(s) for s in STAMP.findall(body))

    async def run() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        sink = CountingSink(None, blackhole=True)
        async with trio.open_nursery() as nursery:
            host, bound = await nursery.start(serve_sink, sink, "127.0.0.1", port, context)
            sys.stdout.write(f"listening http={host}:{bound}\n")
            sys.stdout.flush()
            stdin = trio.lowlevel.FdStream(os.dup(0))
            pending = b""
            while data := await stdin.receive_some(4096):
                pending += data
                whole, _, pending = pending.rpartition(b"\n")
                counts.connections = sink.stats.requests  # (posts, for the HTTPS receiver)
                answer(counts, whole)
            nursery.cancel_scope.cancel()

    trio.run(run)


# -- the parent's handle ----------------------------------------------------------------------


class Receiver:
    """One counting receiver process; ``port`` is where it listens."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().decode().strip()
        if not first.startswith("listening "):
            self.stop()
            raise SystemExit(f"receiver {argv} did not start: {first!r}")
        self.port = int(first.rsplit(":", 1)[1])
        self.started_ns = time.time_ns()

    @classmethod
    def syslog(cls, port: int = 0) -> Receiver:
        return cls(["--syslog", "--port", str(port)])

    @classmethod
    def https(
        cls, cert_file: str, key_file: str, *, port: int = 0, latency: bool = False
    ) -> Receiver:
        argv = ["--https", "--port", str(port), "--cert", cert_file, "--key", key_file]
        return cls([*argv, "--latency"] if latency else argv)

    def report(self, final: bool = False) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"final\n" if final else b"report\n")
        self.process.stdin.flush()
        row = self.process.stdout.readline()
        if not row:
            raise SystemExit("the receiver exited")
        result: dict[str, Any] = json.loads(row)
        return result

    def posts_since(self, since_ns: int) -> list[int]:
        """Receipt times (``time.time_ns``) of the posts received at or after ``since_ns``."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"posts_since %d\n" % since_ns)
        self.process.stdin.flush()
        row = self.process.stdout.readline()
        if not row:
            raise SystemExit("the receiver exited")
        times: list[int] = json.loads(row)
        return times

    def wait_for(
        self, app_frames: int, *, idle_s: float = 10, first_timeout_s: float = 120
    ) -> dict[str, Any]:
        """Poll until ``app_frames`` arrived, or nothing more came for ``idle_s`` (after a
        first frame, which may take up to ``first_timeout_s``); the final report."""
        seen = -1
        changed_at = time.monotonic()
        while True:
            counts = self.report()
            now = time.monotonic()
            if counts["app_frames"] >= app_frames:
                break
            if counts["frames"] != seen:
                seen, changed_at = counts["frames"], now
            elif now - changed_at > (idle_s if seen else first_timeout_s):
                break
            time.sleep(0.05)
        return self.report(final=True)

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--syslog", action="store_true", help="count octet-counted syslog frames")
    kind.add_argument("--https", action="store_true", help="count logplex-1 posts over TLS")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--cert", help="certificate chain (PEM) of --https")
    parser.add_argument("--key", help="private key (PEM) of --https")
    parser.add_argument("--latency", action="store_true", help="keep receipt - lat= stamps")
    args = parser.parse_args()
    if args.syslog:
        serve_syslog(args.port)
    else:
        serve_https(args.port, args.cert, args.key, args.latency)


if __name__ == "__main__":
    main()
