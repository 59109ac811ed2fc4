"""Drain throughput (DESIGN section 9; targets in perf/RESULTS.md).

Messages per second from ``push_batch`` to the receiver, the drains running in this process
on one core (trio is single-threaded), receivers in their own processes:

- ``https_1``: one HTTPS drain to ``python -m drains.sink --blackhole`` (what ``logplex
  sink --blackhole`` runs) over TLS with a trustme certificate. Target >= 500,000/s.
- ``syslog_1``: one syslog TCP drain to a process that reads and discards.
  Target >= 500,000/s.
- ``https_10`` / ``https_100``: 10 and 100 HTTPS drains on one "channel": every batch is
  pushed to all of them (as ``router.publish`` does), total delivered messages/s. Target:
  10 drains >= 50 % of the 1-drain total.

The producer pushes batches of 1000 messages of about 100 bytes (timestamps 1 µs apart,
eight alternating ps), cycling through 16 distinct batches as a router formats batches
ingest has just built (``--cold-input``: a million distinct messages built up front), and
sleeps briefly whenever a drain holds more than ``HIGH_WATER`` messages, so nothing is
dropped; the clock runs from the first push until every drain reports everything flushed.
Besides the wall-clock rate, each case reports the drain process's CPU time per delivered
message (``*_cpu_us_per_msg``): on a machine shared with other work the wall rate mostly
measures scheduling, while 2 µs of CPU per message is what 500,000/s on one core needs.
``*_receiver_cpu_us_per_msg`` is the receiver process's CPU (user plus system, from
``/proc/PID/stat`` before and after the case) per message: the sink for the HTTPS cases,
the discarding reader for syslog. A receiver slower than the drain caps the wall rate.
Prints one JSON line and appends a row to perf/RESULTS.md.
Usage: ``.venv/bin/python perf/drains.py [--quick] [--cold-input] [--profile NAME]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trustme

ROOT = Path(__file__).resolve().parent.parent
# This script shares its name with the package it measures: import the package, not itself.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from drains import Drain, DrainContext, DrainSettings, open_drain  # noqa: E402
from logplex.codecs.records import Batch, Message  # noqa: E402
from perf.results import append_results  # noqa: E402
from perf.workload import line  # noqa: E402

T0_US = 1_795_000_000_000_000
BATCH_MESSAGES = 1000
HIGH_WATER = 20_000


POOL_BATCHES = 16  # distinct batches of the default (warm) input, pushed in turn


def make_batches(total: int, *, cold: bool = False) -> list[list[Message]]:
    """The input: ``total`` messages in batches of ``BATCH_MESSAGES``.

    By default the batches cycle through a pool of ``POOL_BATCHES`` distinct ones (16,000
    messages, a few MB): in a router a drain formats a batch right after ingest built it,
    while it is still in the CPU caches. With ``cold`` every message is distinct (about
    350 MB for a million), so formatting also pays for reading each one from memory.
    Every push wraps the list in a new ``Batch``, so nothing formatted is reused.
    """
    distinct = total if cold else min(total, POOL_BATCHES * BATCH_MESSAGES)
    pool: list[list[Message]] = []
    for start in range(0, distinct, BATCH_MESSAGES):
        pool.append(
            [
                (T0_US + n, 190, b"app", b"web.%d" % (n % 8), line(n))
                for n in range(start, min(distinct, start + BATCH_MESSAGES))
            ]
        )
    batches = len(range(0, total, BATCH_MESSAGES))
    return [pool[n % len(pool)] for n in range(batches)]


def quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "0"
    env.pop("PYTHONUNBUFFERED")
    return env


class Receiver:
    """A receiver subprocess that printed ``listening http=HOST:PORT`` (or a port)."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=quiet_env(), cwd=ROOT
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().decode().strip()
        if not first:
            raise SystemExit(f"receiver failed: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
        self.port = int(first.rsplit(":", 1)[-1].rsplit("=", 1)[-1])

    def stop(self) -> str:
        self.process.terminate()
        _, err = self.process.communicate(timeout=10)
        return err.decode().strip()


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_discard(port_file: None = None) -> None:
    """Child mode: accept TCP connections and read everything, as fast as possible."""
    del port_file
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    sys.stdout.write(f"listening syslog=127.0.0.1:{listener.getsockname()[1]}\n")
    sys.stdout.flush()
    import selectors

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffer = bytearray(1 << 20)
    while True:
        for key, _ in selector.select():
            sock = key.fileobj
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            assert isinstance(sock, socket.socket)
            try:
                if not sock.recv_into(buffer):
                    selector.unregister(sock)
                    sock.close()
            except BlockingIOError:
                pass


async def drive(drains: list[Drain], batches: list[list[Message]]) -> float:
    """Push every batch to every drain; seconds from the first push until all flushed."""
    async with trio.open_nursery() as nursery:
        for drain in drains:
            await nursery.start(drain.run)
        started = time.perf_counter()
        for messages in batches:
            batch = Batch(messages)
            for drain in drains:
                drain.push_batch(batch)
            while any(d.status().buffered > HIGH_WATER for d in drains):
                await trio.sleep(0.002)  # a real producer waits for input; never spin
        for drain in drains:
            await drain.wait_flushed()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    for drain in drains:
        status = drain.status()
        if status.dropped or status.delivered != sum(len(b) for b in batches):
            raise SystemExit(f"lost messages: {status}")
    return elapsed


def open_drains(url: str, count: int, ca_file: str | None) -> list[Drain]:
    settings = DrainSettings(buffer_messages=HIGH_WATER + 2 * BATCH_MESSAGES, ca_file=ca_file)
    return [
        open_drain(
            DrainContext(
                channel="bench",
                drain_id=n,
                token=f"d.00000000-0000-4000-8000-{n:012d}",
                url=url,
                settings=settings,
            )
        )
        for n in range(count)
    ]


def measure(
    url: str, drains: int, total: int, ca_file: str | None, profile: bool, cold: bool = False
) -> tuple[float, float]:
    """(delivered messages per second of wall time, drain-process CPU µs per delivered message)."""
    batches = make_batches(total, cold=cold)
    # The pre-built input (up to a million tuples) would otherwise be rescanned by every
    # full garbage collection, a cost of this harness that no router pays: freeze it.
    gc.collect()
    gc.freeze()
    targets = open_drains(url, drains, ca_file)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    cpu_started = time.process_time()
    elapsed = trio.run(drive, targets, batches)
    cpu_s = time.process_time() - cpu_started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    del batches
    gc.unfreeze()
    gc.collect()
    delivered = total * drains
    return delivered / elapsed, cpu_s / delivered * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, no RESULTS.md row")
    parser.add_argument("--profile", help="cProfile one case to stderr: https_1, syslog_1, ...")
    parser.add_argument(
        "--cold-input",
        action="store_true",
        help="a million distinct messages built up front (see make_batches)",
    )
    parser.add_argument("--tcp-discard", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tcp_discard:
        tcp_discard()
        return
    total = 200_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca_file, cert_file, key_file = (f"{tmp}/{n}.pem" for n in ("ca", "cert", "key"))
        ca.cert_pem.write_to_path(ca_file)
        cert.cert_chain_pems[0].write_to_path(cert_file)
        cert.private_key_pem.write_to_path(key_file)
        sink = Receiver(
            [
                *(sys.executable, "-m", "drains.sink", "--listen", "127.0.0.1:0", "--blackhole"),
                *("--tls-cert", cert_file, "--tls-key", key_file),
            ]
        )
        discard = Receiver([sys.executable, __file__, "--tcp-discard"])
        https_url = f"https://localhost:{sink.port}/drain"
        syslog_url = f"syslog://127.0.0.1:{discard.port}"
        cases = {
            "https_1": (https_url, 1, total),
            "syslog_1": (syslog_url, 1, total),
            "https_10": (https_url, 10, total // 4),
            "https_100": (https_url, 100, total // 20),
        }
        results: dict[str, Any] = {}
        try:
            for name, (url, drains, messages) in cases.items():
                receiver = sink if url == https_url else discard
                receiver_cpu_s = process_cpu_s(receiver.process.pid)
                rate, cpu_us = measure(
                    url, drains, messages, ca_file, args.profile == name, args.cold_input
                )
                receiver_cpu_s = process_cpu_s(receiver.process.pid) - receiver_cpu_s
                results[f"{name}_msgs_per_s"] = round(rate)
                results[f"{name}_cpu_us_per_msg"] = round(cpu_us, 2)
                receiver_us = receiver_cpu_s / (messages * drains) * 1e6
                results[f"{name}_receiver_cpu_us_per_msg"] = round(receiver_us, 2)
        finally:
            results["sink"] = sink.stop()
            discard.stop()
    ratio = results["https_10_msgs_per_s"] / results["https_1_msgs_per_s"]
    results["ratio_10_to_1"] = round(ratio, 2)
    # The same ratio in CPU terms (messages per CPU second), which contention does not skew.
    cpu_ratio = results["https_1_cpu_us_per_msg"] / results["https_10_cpu_us_per_msg"]
    results["cpu_ratio_10_to_1"] = round(cpu_ratio, 2)
    results["targets_met"] = {
        "https_1>=500k": results["https_1_msgs_per_s"] >= 500_000,
        "syslog_1>=500k": results["syslog_1_msgs_per_s"] >= 500_000,
        "https_10>=50%_of_1": results["ratio_10_to_1"] >= 0.5,
        "https_1<=2us_cpu": results["https_1_cpu_us_per_msg"] <= 2.0,
        "syslog_1<=2us_cpu": results["syslog_1_cpu_us_per_msg"] <= 2.0,
        "https_10>=50%_of_1_cpu": results["cpu_ratio_10_to_1"] >= 0.5,
    }
    print(json.dumps(results))
    if not args.quick:
        append_results(" ".join(["perf/drains.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
