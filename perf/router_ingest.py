"""Router ingest throughput and history memory (DESIGN section 9; targets in perf/RESULTS.md).

Three measurements, each printed as part of one JSON line and appended to perf/RESULTS.md:

- ``shim``: lines/s into one channel (history + one recording drain) through the shim stream
  listener. A separate client process pre-builds zstd BATCH frames (1000 lines of 100 bytes
  each), then sends them within the advertised window and reads the ACKs; the rate is lines
  acknowledged per second of wall time, first byte to last ACK. Target >= 1,000,000 lines/s.
- ``syslog``: lines/s through the syslog TCP listener. A separate process pre-builds
  octet-counted RFC 5424 frames (100-byte messages) and writes them in 256 KiB chunks; the
  rate is lines published per second, first line to last. Target >= 500,000 lines/s.
- ``syslog_sd_offset``: the same with logger's layout from a host at +01:00 (a
  structured-data element, three fraction digits), which the C scanner also takes.
- ``syslog_rsyslogd``: the same client and frames into Debian's rsyslogd (imptcp, one byte
  per message to omfile), side by side: ``syslog_cpu_ratio_to_rsyslogd`` is the router's
  CPU per line over rsyslogd's. ``--python-scanner`` runs the syslog case through the
  pure-Python cut (a machine without a C compiler) for comparison.
- ``rss``: in a fresh process, RSS growth after filling 1,000 channels' histories with 1,500
  lines of 100 bytes each and one compaction sweep (what the router runs about once a
  second), against the raw bytes held. Target <= 2x. The growth before the sweep (lines
  still held as the published tuples) is reported too.

The router runs in this process on one core (trio is single-threaded); clients run in their
own processes. ``lines_per_router_cpu_s`` divides by the router process's CPU time, which
stays meaningful when other work shares the machine (``load_average_1m`` is recorded).

Usage: ``.venv/bin/python perf/router_ingest.py [--quick]``; ``--profile-syslog`` prints
where the syslog read path spends its time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
# perf/drains.py would shadow the drains package for scripts run from perf/: import the package.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from drains import DrainContext, DrainStatus  # noqa: E402
from logplex.codecs.octet import encode_octet_frame  # noqa: E402
from logplex.codecs.records import Batch  # noqa: E402
from logplex.codecs.syslog_reader import read_decoder, scan_common_python  # noqa: E402
from logplex.config.records import ChannelConfig, DrainConfig  # noqa: E402
from logplex.fanout.router import Router  # noqa: E402
from logplex.ingest.shim import ShimListener  # noqa: E402
from logplex.ingest.syslog import SyslogListener  # noqa: E402
from logplex.serve.wiring import tune_gc  # noqa: E402
from perf.harness import ShimSender, shim_batch_frames  # noqa: E402
from perf.results import append_results  # noqa: E402
from perf.workload import LINE_BYTES, line  # noqa: E402

TOKEN = "t.7d0f6f8e-3c4b-4a51-9d6e-2b1a0c9e8f7a"
LINES_PER_BATCH = 1000


# -- in-router consumer -------------------------------------------------------------------


class CountingDrain:
    """A recording drain that keeps counts, not messages (the hot path is what we measure)."""

    def __init__(self, context: DrainContext) -> None:
        self.context = context
        self.batches = 0
        self.messages = 0

    def push_batch(self, batch: Batch) -> None:
        self.batches += 1
        self.messages += len(batch.messages)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def wait_flushed(self) -> None:
        return

    def status(self) -> DrainStatus:
        return DrainStatus("up", self.messages, 0, 0, None, None)


def make_router() -> tuple[Router, list[CountingDrain]]:
    drains: list[CountingDrain] = []

    def factory(context: DrainContext) -> CountingDrain:
        drain = CountingDrain(context)
        drains.append(drain)
        return drain

    router = Router(history_lines=1500, drain_factory=factory)
    router.apply_channel(
        ChannelConfig(
            "bench",
            {"app": TOKEN},
            (DrainConfig(1, "d.00000000-0000-4000-8000-000000000001", "syslog://127.0.0.1:9"),),
        )
    )
    return router, drains


# -- clients (separate processes) ---------------------------------------------------------


def shim_client(port: int, batches: int) -> None:
    """Send ``batches`` pre-built BATCH frames within the window; print the JSON result."""
    frames = shim_batch_frames(batches, LINES_PER_BATCH)
    sender = ShimSender(port, TOKEN, "perf-stream", "perf/1")
    started = time.perf_counter()
    sender.send(frames)
    elapsed = time.perf_counter() - started
    sender.close()
    lines = batches * LINES_PER_BATCH
    print(json.dumps({"lines": lines, "seconds": elapsed, "lines_per_s": lines / elapsed}))


# Frame layouts of the syslog cases: what log-shuttle and UTC containers send, and what
# logger sends from a host in another zone (a structured-data element, three fraction digits).
SYSLOG_SHAPES = {  # name: (layout, fraction modulus)
    "common": (b"<190>1 2026-11-27T20:39:33.%06d+00:00 host %s web.%d - - %s", 1_000_000),
    "sd_offset": (
        b"<13>1 2026-11-27T21:39:33.%03d+01:00 host %s web.%d - "
        b'[timeQuality tzKnown="1" isSynced="0"] %s',
        1000,
    ),
}


def syslog_client(port: int, lines: int, shape: str = "common") -> None:
    """Write ``lines`` pre-built octet-counted frames as fast as the socket takes them."""
    distinct = 10_000
    layout, modulus = SYSLOG_SHAPES[shape]
    frames = [
        encode_octet_frame(layout % (n % modulus, TOKEN.encode(), n % 8, line(n)))
        for n in range(distinct)
    ]
    block = b"".join(frames)
    chunk = 256 * 1024
    data = block * (lines // distinct)
    sock = socket.create_connection(("127.0.0.1", port))
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        sock.sendall(view[start : start + chunk])
    sock.close()


# -- router side ----------------------------------------------------------------------------


async def bench_shim(batches: int) -> dict[str, Any]:
    router, drains = make_router()
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(ShimListener(router).serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        cpu_before = time.process_time()
        result = await trio.run_process(
            [sys.executable, __file__, "--shim-client", str(port), str(batches)],
            capture_stdout=True,
        )
        cpu = time.process_time() - cpu_before
        nursery.cancel_scope.cancel()
    measured: dict[str, Any] = json.loads(result.stdout)
    assert drains[0].messages == measured["lines"], (drains[0].messages, measured)
    assert len(router.history("bench")) == 1500
    measured["router_cpu_s"] = round(cpu, 3)
    measured["lines_per_router_cpu_s"] = round(measured["lines"] / cpu)
    measured["lines_per_s"] = round(measured["lines_per_s"])
    measured["seconds"] = round(measured["seconds"], 3)
    return measured


async def bench_syslog(lines: int, shape: str = "common") -> dict[str, Any]:
    router, drains = make_router()
    first_at: list[float] = []
    done = trio.Event()
    publish = router.publish

    def timed_publish(channel: str, messages: list[Any]) -> None:
        if not first_at:
            first_at.append(time.perf_counter())
        publish(channel, messages)
        if drains[0].messages >= lines:
            done.set()

    router.publish = timed_publish  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(SyslogListener(router).serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        cpu_before = time.process_time()
        nursery.start_soon(
            trio.run_process,
            [sys.executable, __file__, "--syslog-client", str(port), str(lines), shape],
        )
        with trio.fail_after(600):
            await done.wait()
        elapsed = time.perf_counter() - first_at[0]
        cpu = time.process_time() - cpu_before
        nursery.cancel_scope.cancel()
    return {
        "lines": drains[0].messages,
        "seconds": round(elapsed, 3),
        "lines_per_s": round(drains[0].messages / elapsed),
        "router_cpu_s": round(cpu, 3),
        "lines_per_router_cpu_s": round(drains[0].messages / cpu),
    }


RSYSLOG_CONF = """
global(workDirectory="{work}")
module(load="imptcp")
template(name="one_byte_per_message" type="string" string="x")
ruleset(name="bench" queue.type="FixedArray" queue.size="100000" queue.dequeueBatchSize="4096") {{
  action(type="omfile" file="{work}/out" template="one_byte_per_message" ioBufferSize="1m")
}}
input(type="imptcp" address="127.0.0.1" port="{port}" ruleset="bench"
      SupportOctetCountedFraming="on")
"""


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_rsyslog(lines: int) -> dict[str, Any]:
    """rsyslog receiving the same frames through imptcp, side by side with the router.

    The same client process writes the same octet-counted frames to rsyslogd's imptcp
    (Debian's rsyslog, a C relay; imptcp is its faster plain-TCP input, 1.3x imtcp here),
    which parses each one and writes one byte per message through a FixedArray queue to
    omfile: the cheapest output, so the figure is its ingest.
    The rate is messages written per second of wall time; CPU is rsyslogd's, all threads.
    """
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(rsyslogd):
        return {"skipped": "rsyslogd is not installed (Debian: apt-get install rsyslog)"}
    with tempfile.TemporaryDirectory() as work:
        with socket.socket() as probe:  # a free port for imptcp (it cannot report port 0)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        conf = Path(work) / "rsyslog.conf"
        conf.write_text(RSYSLOG_CONF.format(work=work, port=port))
        out = Path(work) / "out"
        server = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(conf), "-i", f"{work}/rsyslogd.pid"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("rsyslogd did not start") from None
                    time.sleep(0.05)
            cpu_before = process_cpu_s(server.pid)
            started = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--syslog-client", str(port), str(lines), "common"],
                check=True,
            )
            while not out.exists() or out.stat().st_size < lines:
                if time.perf_counter() - started > 600:
                    raise SystemExit("rsyslogd did not write every message within 600 s")
                time.sleep(0.005)
            elapsed = time.perf_counter() - started
            cpu = process_cpu_s(server.pid) - cpu_before
        finally:
            server.terminate()
            server.wait(timeout=10)
    return {
        "lines": lines,
        "seconds": round(elapsed, 3),
        "lines_per_s": round(lines / elapsed),
        "rsyslogd_cpu_s": round(cpu, 3),
        "lines_per_rsyslogd_cpu_s": round(lines / cpu),
    }


def calibration_ns_per_iteration() -> float:
    """CPU ns per iteration of a trivial Python loop: how fast this machine is right now.

    On a shared machine the same code runs several times slower when the cores are busy
    (or stolen); this number lets rows taken at different times be compared.
    """
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.process_time() - started)
    return round(best * 1000, 1)  # seconds per 1e6 iterations -> ns per iteration


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_rss(channels: int, lines_per_channel: int, batch: int) -> None:
    """In a fresh process: fill the histories and print RSS growth against raw bytes."""
    router = Router(history_lines=lines_per_channel)
    tokens = {}
    for c in range(channels):
        name = f"ch{c}"
        router.apply_channel(ChannelConfig(name, {"app": f"t.{c:08d}"}))
        tokens[name] = c
    source, ps = b"app", b"web.1"
    before = rss_bytes()
    for c in range(channels):
        name = f"ch{c}"
        for start in range(0, lines_per_channel, batch):
            router.publish(
                name,
                [
                    (1_795_000_000_000_000 + n, 190, source, ps, line(c * lines_per_channel + n))
                    for n in range(start, min(start + batch, lines_per_channel))
                ],
            )
    before_compaction = rss_bytes()
    trio.run(router.compact_histories)  # what Router.run does about once a second
    after = rss_bytes()
    raw = channels * lines_per_channel * LINE_BYTES
    assert sum(len(router.history(f"ch{c}")) for c in range(0, channels, 100)) == (
        lines_per_channel * len(range(0, channels, 100))
    )
    print(
        json.dumps(
            {
                "channels": channels,
                "lines_per_channel": lines_per_channel,
                "publish_batch": batch,
                "raw_bytes": raw,
                "rss_growth_bytes": after - before,
                "rss_growth_before_compaction_bytes": before_compaction - before,
                "ratio": round((after - before) / raw, 3),
            }
        )
    )


def run_rss(batch: int) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(batch)],
        capture_output=True,
        check=True,
        env={**os.environ, "PYTHONUNBUFFERED": "0"},
    )
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


def profile_syslog(lines: int) -> None:
    """Where a syslog read's time goes: framing, parsing, grouping, publishing (cProfile)."""
    import cProfile
    import pstats

    from logplex.codecs.octet import OctetFrameDecoder

    router, _ = make_router()
    data = b"".join(
        encode_octet_frame(
            b"<190>1 2026-11-27T20:39:33.%06d+00:00 host %s web.%d - - %s"
            % (n % 1_000_000, TOKEN.encode(), n % 8, line(n))
        )
        for n in range(lines)
    )

    def run() -> None:
        decoder = OctetFrameDecoder(10240, policy="resync")
        for start in range(0, len(data), 256 * 1024):
            decoder.feed(data[start : start + 256 * 1024])
            outcome = read_decoder(decoder, router.lookup_token, 0)
            for channel, messages in outcome.batches:
                router.publish(channel, messages)

    profiler = cProfile.Profile()
    profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, no RESULTS.md row")
    parser.add_argument("--shim-client", nargs=2, type=int, metavar=("PORT", "BATCHES"))
    parser.add_argument("--syslog-client", nargs=3, metavar=("PORT", "LINES", "SHAPE"))
    parser.add_argument("--rss-child", type=int, metavar="BATCH")
    parser.add_argument(
        "--profile-syslog", action="store_true", help="profile the syslog read path in-process"
    )
    parser.add_argument(
        "--default-gc", action="store_true", help="keep CPython's GC thresholds (for comparison)"
    )
    parser.add_argument(
        "--python-scanner",
        action="store_true",
        help="syslog through the pure-Python cut, as on a machine without a C compiler",
    )
    args = parser.parse_args()
    if args.profile_syslog:
        profile_syslog(200_000)
        return
    if args.shim_client:
        shim_client(*args.shim_client)
        return
    if args.syslog_client:
        port, lines, shape = args.syslog_client
        syslog_client(int(port), int(lines), shape)
        return
    if args.rss_child:
        bench_rss(1000, 1500, args.rss_child)
        return
    shim_batches = 500 if args.quick else 5000
    syslog_lines = 500_000 if args.quick else 3_000_000
    if not args.default_gc:
        tune_gc()  # as `logplex serve` does at start-up
    if args.python_scanner:
        # the listener calls read_decoder with its default scanner: swap that default
        read_decoder.__defaults__ = (b"", scan_common_python)
    results: dict[str, Any] = {
        "gc_thresholds": list(gc.get_threshold()),
        "calibration_loop_ns_per_iteration": calibration_ns_per_iteration(),
        "shim": trio.run(bench_shim, shim_batches),
        "syslog": trio.run(bench_syslog, syslog_lines),
        "syslog_rsyslogd": bench_rsyslog(syslog_lines),
        "syslog_sd_offset": trio.run(bench_syslog, syslog_lines, "sd_offset"),
        "rss": run_rss(100),
        "rss_line_by_line": run_rss(1),
    }
    if "lines_per_rsyslogd_cpu_s" in results["syslog_rsyslogd"]:
        # CPU per line, router over rsyslogd: how far the router is from a C relay
        results["syslog_cpu_ratio_to_rsyslogd"] = round(
            results["syslog_rsyslogd"]["lines_per_rsyslogd_cpu_s"]
            / results["syslog"]["lines_per_router_cpu_s"],
            2,
        )
    results["load_average_1m"] = os.getloadavg()[0]
    results["targets_met"] = {
        "shim_1M_lines_per_s": results["shim"]["lines_per_s"] >= 1_000_000,
        "syslog_500k_lines_per_s": results["syslog"]["lines_per_s"] >= 500_000,
        "rss_at_most_2x": results["rss"]["ratio"] <= 2.0,
    }
    print(json.dumps(results))
    if not args.quick:
        append_results(" ".join(["perf/router_ingest.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
