"""The durable spool's speed targets, end to end (DESIGN 8, 9; targets in perf/RESULTS.md).

Every case runs ``logplex serve`` as users do (its own process and data dir, configured
through the API; ``perf/harness.py``), the spool on unless ``--router-flag=--no-spool``:

- ``throughput``: a real ``logshim`` around an app that writes 100-byte lines as fast as it
  can (or at ``--throughput-rate``) for ``--throughput-seconds`` (10), shipping to the router
  (``--shim-flag=--block`` makes the app wait instead of the shim dropping: the highest
  lossless rate),
  whose channel has one HTTPS drain to a counting receiver (``drains.sink``'s server,
  ``perf/receivers.py --https``, TLS with a trustme certificate). ``lines_per_s`` is app lines
  received over the time from the app's first write to the last receipt; ``drops`` adds the
  L10 and L12 counts the receiver saw and the shim's ``N lines not delivered``.
  Target >= 300,000 lines/s with 0 drops.
- ``latency``: the same at ``--latency-rate`` (10,000) lines/s, written in groups of one
  millisecond's worth, each flushed at once; every line carries ``lat=<time.time_ns()>``
  taken as it is written, the receiver keeps receipt minus that. Target p50 <= 60 ms, p99 <=
  150 ms (the default ``--spool-sync-ms``).
- ``write_cost``: router CPU per line (``/proc``, all threads) for ``--cost-lines`` syslog
  frames of 200 bytes over TCP into a channel with no drain (``--cost-drain``: one syslog
  drain to a counting receiver, with a drain buffer that holds every line so both cases
  deliver the same), spool on and ``--no-spool`` in alternating order, ``--cost-rounds``
  times each; from the first byte until ``/metrics`` counts every line ingested plus a
  0.5 s settle (the group commit's last write). ``added_us_per_line`` is the spool's median
  minus the other's. Target <= 0.3 µs.
- ``replay``: with the channel's only drain pointing at a closed port, syslog frames go in
  until the spool directory holds ``--fill-bytes`` (1 GiB; ``--spool-max-bytes`` is set to
  twice that), the router is SIGKILLed and started again on the same data dir:
  ``healthcheck_s`` is spawn to ``/healthcheck`` 200 (target <= 5 s). Then a counting
  receiver comes up on that port and ``catch_up_msgs_per_s`` is the app frames it got over
  its first to last receipt (``first_receipt_s``: from the receiver's start, the drain's
  reconnect backoff). ``lost`` = sent - received; a build without the spool stops filling
  after one chunk and says ``spool_not_written``.

Prints one JSON line and appends a row to perf/RESULTS.md (not with ``--no-row``).
Usage: ``.venv/bin/python perf/spool.py [--only throughput|latency|write_cost|replay]...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from perf.harness import (  # noqa: E402
    LOGSHIM,
    RouterProcess,
    child_env,
    directory_bytes,
    free_port,
    parse_bytes,
    run_syslog_sender,
)
from perf.receivers import Receiver  # noqa: E402
from perf.results import append_results  # noqa: E402

CASES = ("throughput", "latency", "write_cost", "replay")
UNDELIVERED = re.compile(rb"logshim: (\d+) lines not delivered")
LINE_PAD = b" " + b"x" * 91 + b"\n"  # after "%08d": 100 bytes with the LF


# -- the app (child) ----------------------------------------------------------------------


def run_app(seconds: float, rate: float, stamp: bool, report: str) -> None:
    """Write lines for ``seconds`` (at ``rate``/s when > 0); the count and start to ``report``.

    Unpaced it writes 1000 lines per clock check into buffered stdio; paced it writes one
    millisecond's worth at a time and flushes each group. With ``stamp`` every line starts
    with ``lat=<time.time_ns()>`` taken as it is written.
    """
    write = sys.stdout.buffer.write
    flush = sys.stdout.buffer.flush
    step = max(1, int(rate // 1000)) if rate else 1000
    first_ns = time.time_ns()
    started = time.perf_counter()
    end = started + seconds
    lines = 0
    while time.perf_counter() < end:
        if stamp:
            for n in range(lines, lines + step):
                write(b"lat=%d %08d%s" % (time.time_ns(), n, LINE_PAD[25:]))
        else:
            for n in range(lines, lines + step):
                write(b"%08d%s" % (n, LINE_PAD))
        lines += step
        if rate:
            flush()
            delay = started + lines / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    flush()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(report).write_text(
        json.dumps(
            {
                "lines": lines,
                "first_ns": first_ns,
                "wall_s": time.perf_counter() - started,
                "cpu_s": usage.ru_utime + usage.ru_stime,
            }
        )
    )


# -- TLS for the HTTPS receiver -------------------------------------------------------------


def tls_files(tmp: Path) -> tuple[str, str, str]:
    """(CA, certificate, key) PEM files for 127.0.0.1, made with trustme."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = [str(tmp / name) for name in ("ca.pem", "cert.pem", "key.pem")]
    ca.cert_pem.write_to_path(paths[0])
    cert.cert_chain_pems[0].write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    return paths[0], paths[1], paths[2]


# -- throughput and latency -------------------------------------------------------------------


def shim_to_https(
    tmp: Path,
    flags: list[str],
    shim_flags: list[str],
    seconds: float,
    rate: float,
    stamp: bool,
    idle_s: float,
) -> dict[str, Any]:
    """One shimmed app through the router to the HTTPS receiver; the figures of that run."""
    ca, cert, key = tls_files(tmp)
    receiver = Receiver.https(cert, key, latency=stamp)
    router = None
    try:
        router = RouterProcess(tmp / "data", ["--drain-ca-file", ca, *flags])
        router.wait_healthy()
        token = router.create_channel()
        router.add_drain(f"https://127.0.0.1:{receiver.port}/logs")
        report = tmp / "app.json"
        app = [sys.executable, __file__, "--app", str(seconds), str(rate), str(int(stamp))]
        argv = [LOGSHIM, "--url", f"tcp://{router.shim}", "--no-tee", "--ps", "web.1"]
        argv += ["--flush-timeout", "60", *shim_flags, "--", *app, str(report)]
        cpu_before = router.cpu_s()
        shim = subprocess.Popen(
            argv, env={**child_env(), "LOGPLEX_TOKEN": token}, stderr=subprocess.PIPE, cwd=ROOT
        )
        assert shim.stderr is not None
        stderr = shim.stderr.read()
        _, status, usage = os.wait4(shim.pid, 0)
        shim.returncode = os.waitstatus_to_exitcode(status)
        written = json.loads(report.read_text())
        got = receiver.wait_for(written["lines"], idle_s=idle_s)
        router_cpu_s = router.cpu_s() - cpu_before
        rss = router.peak_rss()
    finally:
        if router is not None:
            router.stop()
        receiver.stop()
    undelivered = UNDELIVERED.search(stderr)
    not_delivered = int(undelivered.group(1)) if undelivered else 0
    lines = written["lines"]
    received = got["app_frames"]
    seconds_e2e = (got["last_ns"] - written["first_ns"]) / 1e9 if received else 0
    span_s = (got["last_ns"] - got["first_ns"]) / 1e9
    result = {
        "lines_written": lines,
        "received": received,
        "lost": lines - received,
        "drops": got["l10"] + got["l12"] + not_delivered,
        "l10": got["l10"],
        "l12": got["l12"],
        "l13": got["l13"],
        "not_delivered": not_delivered,
        "shim_exit_code": shim.returncode,
        "app_wall_s": round(written["wall_s"], 3),
        "seconds": round(seconds_e2e, 3),
        "lines_per_s": round(received / seconds_e2e) if seconds_e2e else 0,
        "receiver_first_to_last_lines_per_s": round(received / span_s) if span_s > 0 else 0,
        "app_write_rate": round(lines / written["wall_s"]),
        "shim_cpu_s": round(usage.ru_utime + usage.ru_stime - written["cpu_s"], 3),
        "router_cpu_s": round(router_cpu_s, 3),
        "router_cpu_us_per_line": round(router_cpu_s / max(lines, 1) * 1e6, 3),
        "router_peak_rss_bytes": rss,
    }
    result.update({k: v for k, v in got.items() if k.startswith("latency_")})
    if shim.returncode != 0 or (stderr.strip() and not undelivered):
        result["shim_stderr"] = stderr.decode(errors="replace")[-500:]
    return result


# -- write cost -----------------------------------------------------------------------------


def ingest_cost(
    tmp: Path, flags: list[str], lines: int, with_drain: bool, settle_s: float = 0.5
) -> dict[str, Any]:
    """Router CPU per line for ``lines`` syslog frames, until all are ingested plus a settle."""
    receiver = Receiver.syslog() if with_drain else None
    router = None
    try:
        router = RouterProcess(tmp / "data", flags)
        router.wait_healthy()
        token = router.create_channel()
        if receiver is not None:
            router.add_drain(f"syslog://127.0.0.1:{receiver.port}")
        idle_before = router.cpu_s()
        time.sleep(1)
        idle_cpu_s = router.cpu_s() - idle_before
        cpu_before = router.cpu_s()
        started = time.monotonic()
        run_syslog_sender(router.syslog_port, lines, token)
        router.wait_ingested("syslog", lines)
        ingest_s = time.monotonic() - started
        if receiver is not None:
            delivered = receiver.wait_for(lines, idle_s=5)["app_frames"]
        time.sleep(settle_s)
        cpu_s = router.cpu_s() - cpu_before
        result = {
            "lines": lines,
            "ingest_s": round(ingest_s, 3),
            "cpu_s": round(cpu_s, 3),
            "cpu_us_per_line": round(cpu_s / lines * 1e6, 3),
            "idle_cpu_s_per_s": round(idle_cpu_s, 3),
            "peak_rss_bytes": router.peak_rss(),
        }
        if receiver is not None:
            result["delivered"] = delivered
        return result
    finally:
        if router is not None:
            router.stop()
        if receiver is not None:
            receiver.stop()


def bench_write_cost(
    tmp: Path, flags: list[str], lines: int, rounds: int, with_drain: bool
) -> dict[str, Any]:
    base = [f for f in flags if f != "--no-spool"]
    if with_drain:
        base += [f"--drain-buffer={lines + 10_000}"]  # lossless without the spool too
    cases = {"spool": base, "no_spool": [*base, "--no-spool"]}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    for round_number in range(rounds):
        order = list(cases) if round_number % 2 == 0 else list(cases)[::-1]
        for name in order:
            work = tmp / f"cost-{round_number}-{name}"
            work.mkdir()
            runs[name].append(ingest_cost(work, cases[name], lines, with_drain))
            print(json.dumps({f"write_cost_{name}": runs[name][-1]}), file=sys.stderr)
    medians = {n: statistics.median(r["cpu_us_per_line"] for r in runs[n]) for n in cases}
    return {
        **runs,
        "with_drain": with_drain,
        "spool_us_per_line": medians["spool"],
        "no_spool_us_per_line": medians["no_spool"],
        "added_us_per_line": round(medians["spool"] - medians["no_spool"], 3),
    }


# -- replay -----------------------------------------------------------------------------------


def bench_replay(
    tmp: Path, flags: list[str], fill_bytes: int, chunk_lines: int, idle_s: float
) -> dict[str, Any]:
    spool_dir = tmp / "spool"
    port = free_port()  # closed until the receiver comes up on it
    max_bytes = max(2 * fill_bytes, 1 << 30)
    flags = [f for f in flags if f != "--no-spool"]
    flags += ["--spool", str(spool_dir), "--spool-max-bytes", str(max_bytes)]
    result: dict[str, Any] = {"fill_bytes_target": fill_bytes, "spool_max_bytes": max_bytes}
    router = receiver = None
    try:
        router = RouterProcess(tmp / "data", flags)
        router.wait_healthy()
        token = router.create_channel()
        router.add_drain(f"syslog://127.0.0.1:{port}")
        sent = 0
        started = time.monotonic()
        while directory_bytes(spool_dir) < fill_bytes:
            run_syslog_sender(router.syslog_port, chunk_lines, token)
            sent += chunk_lines
            router.wait_ingested("syslog", sent)
            if directory_bytes(spool_dir) < 1024:
                result["spool_not_written"] = True  # a build without the spool
                break
        fill_s = time.monotonic() - started
        time.sleep(0.5)  # past the group commit of the last lines
        result.update(
            sent=sent,
            fill_s=round(fill_s, 3),
            fill_lines_per_s=round(sent / fill_s),
            spool_bytes=directory_bytes(spool_dir),
            fill_router_peak_rss_bytes=router.peak_rss(),
        )
        result["spool_bytes_per_line"] = round(result["spool_bytes"] / sent, 1)
        router.kill()
        router = RouterProcess(tmp / "data", flags)
        result["listening_s"] = round(router.listening_s, 3)
        result["healthcheck_s"] = round(router.wait_healthy(poll_s=0.005), 3)
        cpu_before = router.cpu_s()
        receiver = Receiver.syslog(port=port)
        # Without a spool nothing survives the SIGKILL: no reason to wait for a first frame.
        first_timeout_s = idle_s if result.get("spool_not_written") else 120
        got = receiver.wait_for(sent, idle_s=idle_s, first_timeout_s=first_timeout_s)
        catch_up_cpu_s = router.cpu_s() - cpu_before
        received = got["app_frames"]
        span_s = (got["last_ns"] - got["first_ns"]) / 1e9
        result.update(
            received=received,
            lost=sent - received,
            l10=got["l10"],
            first_receipt_s=round((got["first_ns"] - receiver.started_ns) / 1e9, 3)
            if received
            else None,
            catch_up_s=round(span_s, 3),
            catch_up_msgs_per_s=round(received / span_s) if span_s > 0 else None,
            catch_up_router_cpu_s=round(catch_up_cpu_s, 3),
            replay_router_peak_rss_bytes=router.peak_rss(),
        )
        return result
    finally:
        if router is not None:
            router.stop()
        if receiver is not None:
            receiver.stop()


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add = parser.add_argument
    add("--only", choices=CASES, action="append", help="run this case (repeatable; default all)")
    add("--router-flag", action="append", default=[], metavar="FLAG", help="for logplex serve")
    add("--shim-flag", action="append", default=[], metavar="FLAG", help="for logshim")
    add("--throughput-seconds", type=float, default=10, help="app run time (default 10)")
    add("--throughput-rate", type=float, default=0, help="lines/s, 0: as fast as it can")
    add("--latency-seconds", type=float, default=10, help="app run time (default 10)")
    add("--latency-rate", type=float, default=10_000, help="lines/s (default 10000)")
    add("--cost-lines", type=int, default=1_000_000, help="syslog lines per case (1000000)")
    add("--cost-rounds", type=int, default=3, help="runs of each case (default 3)")
    add("--cost-drain", action="store_true", help="give the channel a syslog drain")
    add("--fill-bytes", type=parse_bytes, default=1 << 30, help="spool to fill (default 1GiB)")
    add("--fill-chunk-lines", type=int, default=1_000_000, help="lines per sender (1000000)")
    add("--idle-s", type=float, default=10, help="end a wait after this long without news")
    add("--no-row", action="store_true", help="print only, no RESULTS.md row")
    add("--app", nargs=4, metavar=("SECONDS", "RATE", "STAMP", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:
        run_app(float(args.app[0]), float(args.app[1]), args.app[2] == "1", args.app[3])
        return
    only = args.only or list(CASES)
    flags = args.router_flag
    results: dict[str, Any] = {
        "router_flags": flags,
        "load_1m_before": round(os.getloadavg()[0], 2),
    }
    targets: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="perf-spool-") as tmp_dir:
        tmp = Path(tmp_dir)
        for case in CASES:
            if case not in only:
                continue
            work = tmp / case
            work.mkdir()
            if case == "throughput":
                run = shim_to_https(
                    *(work, flags, args.shim_flag, args.throughput_seconds),
                    *(args.throughput_rate, False, args.idle_s),
                )
                targets["throughput>=300k"] = run["lines_per_s"] >= 300_000
                targets["throughput_0_drops"] = run["drops"] == 0 and run["lost"] == 0
            elif case == "latency":
                run = shim_to_https(
                    *(work, flags, args.shim_flag, args.latency_seconds),
                    *(args.latency_rate, True, args.idle_s),
                )
                targets["latency_p50<=60ms"] = run.get("latency_p50_ms", 1e9) <= 60
                targets["latency_p99<=150ms"] = run.get("latency_p99_ms", 1e9) <= 150
            elif case == "write_cost":
                run = bench_write_cost(
                    work, flags, args.cost_lines, args.cost_rounds, args.cost_drain
                )
                targets["spool_adds<=0.3us_per_line"] = run["added_us_per_line"] <= 0.3
            else:
                run = bench_replay(work, flags, args.fill_bytes, args.fill_chunk_lines, args.idle_s)
                targets["replay_healthcheck<=5s"] = run["healthcheck_s"] <= 5
                targets["replay_0_lost"] = run["lost"] == 0 and run["l10"] == 0
            results[case] = run
            print(json.dumps({case: run}), file=sys.stderr)
    results["load_1m_after"] = round(os.getloadavg()[0], 2)
    results["targets_met"] = targets
    print(json.dumps(results))
    if not args.no_row:
        append_results(" ".join(["perf/spool.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
