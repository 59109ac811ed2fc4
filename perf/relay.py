"""Lossless syslog relay, the router beside rsyslogd (DESIGN 8, 9; targets in perf/RESULTS.md).

Each round relays ``--lines`` (default 1,000,000) octet-counted frames of exactly 200 bytes,
sent over one TCP connection by a separate process as fast as the socket takes them, once
through each system, every process fresh:

- ``router``: ``logplex serve`` (spool on by default; ``--no-spool`` passes through, as does
  any ``--router-flag``), a channel whose only drain is ``syslog://`` to a counting receiver;
- ``rsyslog``: rsyslogd, imptcp in, a FixedArray queue, omfwd TCP octet-counted out to the
  same kind of counting receiver (``perf/harness.py``, ``RsyslogRelay``).

The counting receiver (``perf/receivers.py --syslog``) counts frames by their LFs and notes
the first and last receipt. Per round and system: ``lines_per_s`` from the sender's first
byte to the receiver's last frame; ``lost`` = sent - received (app frames), with the N of
the L10 notices the router sent (``l10``) and its drain's ``dropped``; CPU seconds of the
router or rsyslogd process (all threads, ``/proc``) from just before the first byte to the
last frame, and CPU µs per line; peak RSS (VmHWM). The systems go in alternating order.
``ratio_lines_per_s`` is ours over rsyslog's median lines/s over the lossless rounds only
(None when either system lost lines in every round); the target is >= 1.0.

Prints one JSON line and appends a row to perf/RESULTS.md (not with ``--no-row``).
Usage: ``.venv/bin/python perf/relay.py [--rounds 3] [--lines 1000000] [--no-spool]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from perf.harness import RouterProcess, RsyslogRelay, run_syslog_sender  # noqa: E402
from perf.receivers import Receiver  # noqa: E402
from perf.results import append_results  # noqa: E402


def measured(
    lines: int, sent: dict[str, Any], got: dict[str, Any], cpu_s: float, rss: int
) -> dict[str, Any]:
    """The figures of one relay run from the sender's and the receiver's reports."""
    received = got["app_frames"]
    seconds = (got["last_ns"] - sent["first_byte_ns"]) / 1e9 if received else None
    return {
        "sent": lines,
        "received": received,
        "lost": lines - received,
        "l10": got["l10"],
        "seconds": round(seconds, 3) if seconds else None,
        "lines_per_s": round(received / seconds) if seconds else 0,
        "send_seconds": round((sent["last_byte_ns"] - sent["first_byte_ns"]) / 1e9, 3),
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_line": round(cpu_s / lines * 1e6, 3),
        "peak_rss_bytes": rss,
    }


def received_or_lines(got: dict[str, Any], lines: int) -> int:
    """What the drain's counters should reach: every line, delivered or dropped."""
    return max(lines, got["app_frames"])


def relay_router(lines: int, work: Path, flags: list[str], idle_s: float) -> dict[str, Any]:
    receiver = Receiver.syslog()
    router = None
    try:
        router = RouterProcess(work / "router-data", flags)
        router.wait_healthy()
        token = router.create_channel()
        router.add_drain(f"syslog://127.0.0.1:{receiver.port}")
        cpu_before = router.cpu_s()
        sent = run_syslog_sender(router.syslog_port, lines, token)
        got = receiver.wait_for(lines, idle_s=idle_s)
        cpu_s = router.cpu_s() - cpu_before
        result = measured(lines, sent, got, cpu_s, router.peak_rss())
        deadline = time.monotonic() + 5  # the drain's counters follow its sends shortly
        while (status := router.drain_statuses()[0])["delivered"] + status[
            "dropped"
        ] < received_or_lines(got, lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        result["drain_delivered"] = status["delivered"]
        result["drain_dropped"] = status["dropped"]
        return result
    finally:
        if router is not None:
            router.stop()
        receiver.stop()


def relay_rsyslog(lines: int, work: Path, idle_s: float) -> dict[str, Any]:
    receiver = Receiver.syslog()
    rsyslog = None
    try:
        rsyslog = RsyslogRelay(work / "rsyslog", receiver.port)
        cpu_before = rsyslog.cpu_s()
        sent = run_syslog_sender(rsyslog.port, lines, "t.perf-relay")
        got = receiver.wait_for(lines, idle_s=idle_s)
        cpu_s = rsyslog.cpu_s() - cpu_before
        return measured(lines, sent, got, cpu_s, rsyslog.peak_rss())
    finally:
        if rsyslog is not None:
            rsyslog.stop()
        receiver.stop()


def lossless_median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run["lost"] == 0 and run["l10"] == 0]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--lines", type=int, default=1_000_000, help="frames per run (1000000)")
    parser.add_argument("--no-spool", action="store_true", help="run the router with --no-spool")
    parser.add_argument(
        "--router-flag",
        action="append",
        default=[],
        metavar="FLAG",
        help="another flag for logplex serve, e.g. --router-flag=--drain-buffer=2000000",
    )
    parser.add_argument("--only", choices=["router", "rsyslog"], help="run one system only")
    parser.add_argument(
        "--idle-s",
        type=float,
        default=10,
        help="end a run when nothing more arrived for this long (default 10)",
    )
    parser.add_argument("--no-row", action="store_true", help="print only, no RESULTS.md row")
    args = parser.parse_args()
    flags = [*(["--no-spool"] if args.no_spool else []), *args.router_flag]
    systems = [args.only] if args.only else ["router", "rsyslog"]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    results: dict[str, Any] = {
        "lines": args.lines,
        "frame_bytes": 200,
        "router_flags": flags,
        "load_1m_before": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(prefix="perf-relay-") as tmp:
        for round_number in range(args.rounds):
            order = systems if round_number % 2 == 0 else systems[::-1]
            for name in order:
                work = Path(tmp) / f"round{round_number}-{name}"
                work.mkdir()
                if name == "router":
                    run = relay_router(args.lines, work, flags, args.idle_s)
                else:
                    run = relay_rsyslog(args.lines, work, args.idle_s)
                run["round"] = round_number + 1
                runs[name].append(run)
                print(json.dumps({name: run}), file=sys.stderr)
                time.sleep(1)  # let the last run's processes go before the next starts
    results.update(runs)
    results["load_1m_after"] = round(os.getloadavg()[0], 2)
    for name in systems:
        results[f"{name}_lossless_rounds"] = sum(
            1 for run in runs[name] if run["lost"] == 0 and run["l10"] == 0
        )
        results[f"{name}_median_lines_per_s"] = lossless_median(runs[name], "lines_per_s")
    if len(systems) == 2:
        ours, theirs = (lossless_median(runs[n], "lines_per_s") for n in systems)
        results["ratio_lines_per_s"] = round(ours / theirs, 3) if ours and theirs else None
        ours_cpu, theirs_cpu = (lossless_median(runs[n], "cpu_us_per_line") for n in systems)
        results["ratio_cpu_per_line"] = (
            round(ours_cpu / theirs_cpu, 3) if ours_cpu and theirs_cpu else None
        )
        results["targets_met"] = {
            "router_0_lost_every_round": results["router_lossless_rounds"] == args.rounds,
            "ratio_lines_per_s>=1.0": (results["ratio_lines_per_s"] or 0) >= 1.0,
        }
    print(json.dumps(results))
    if not args.no_row:
        append_results(" ".join(["perf/relay.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
