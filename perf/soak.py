"""A soak of the whole pipeline: shims and syslog in, an HTTPS drain that flaps and a syslog
drain out, tails coming and going, for ``--duration`` seconds at half the measured capacity.

Everything runs as users run it (``perf/harness.py``): ``logplex serve`` in its own process
(spool on), ``--shims`` real ``logshim`` processes around paced apps (``perf/spool.py
--app``), a paced syslog TCP sender (this file, ``--syslog-sender``), one channel with an
HTTPS drain to ``perf/receivers.py --https`` (``drains.sink``, trustme TLS) and a
``syslog://`` drain to ``perf/receivers.py --syslog``. Meanwhile:

- the HTTPS receiver goes away for 10-20 s about once a minute (``--flap-every-s``): a TCP
  proxy in front of it closes its listener and every connection, then listens again on the
  same port: the drain goes down, the spool holds its backlog, the drain catches up (the
  receiver process stays up, so it counts every post that reached it);
- a tail session (``POST /v3/sessions`` with ``tail``) is opened, read for 2-8 s and closed,
  again and again;
- every ``--sample-s`` (10) s the router's RSS (VmRSS), open fds (``/proc/PID/fd``) and
  ``logplex_tasks`` (trio tasks, from ``/metrics``) are sampled.

Capacity (without ``--rate``): a fresh router, the same channel and drains, the shims' apps
writing flat out for ``--measure-s`` (20) s with ``logshim --block`` (the app waits instead
of the shim dropping: lossless); capacity = app lines over the time from the first write to
the last receipt at the slower receiver. The soak runs at half of it, a quarter of it as
syslog and the rest split over the shims.

Pass rule (stated in the report as ``rule``): samples taken after ``--warmup-s`` (120) s;
for each series, every sample lies within 10 % of that series' median over those samples, or
within an absolute slack for the counts that move with what is connected at the moment of
the sample (fds 6, tasks 8; RSS none). And the accounting: per drain, lines written (the
apps' and the sender's own counts) = lines received + counted losses (the drain's
``dropped``, the L10/L12/L13 notices its receiver saw, the shims' ``N lines not delivered``),
with nothing unaccounted for (``unaccounted`` = written - received - counted, must be <= 0;
below 0 means duplicates across a receiver restart, which at-least-once delivery allows).

Usage: ``.venv/bin/python perf/soak.py [--duration 600] [--rate N] [--report FILE.json]``
(``--row`` appends a row to perf/RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)

from perf.harness import (  # noqa: E402
    FRAME_BYTES,
    LOGSHIM,
    RouterProcess,
    child_env,
    free_port,
    syslog_frames,
)
from perf.receivers import Receiver  # noqa: E402
from perf.results import append_results  # noqa: E402
from perf.spool import tls_files  # noqa: E402

UNDELIVERED = re.compile(rb"logshim: (\d+) lines not delivered")
SLACK = {"rss_bytes": 0, "fds": 6, "tasks": 8}
RULE = (
    "after the warm-up, every sample of each series within 10 % of its median over the "
    "post-warm-up samples, or within an absolute slack (fds 6, tasks 8, RSS 0); per drain "
    "written - received - counted losses <= 0"
)


# -- the paced syslog sender (child) ----------------------------------------------------------


def syslog_sender(port: int, rate: float, seconds: float, token: str, report: str) -> None:
    """Write 200-byte octet-counted frames at ``rate``/s for ``seconds``, in 10 ms groups."""
    block = syslog_frames(token.encode())
    per_group = max(1, round(rate / 100))
    sock = socket.create_connection(("127.0.0.1", port))
    sent = 0
    started = time.perf_counter()
    frames_in_block = len(block) // FRAME_BYTES
    while time.perf_counter() - started < seconds:
        first = sent % frames_in_block
        upto = min(first + per_group, frames_in_block)
        sock.sendall(block[first * FRAME_BYTES : upto * FRAME_BYTES])
        sent += upto - first
        delay = started + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    sock.close()
    Path(report).write_text(json.dumps({"lines": sent, "wall_s": time.perf_counter() - started}))


# -- pieces of the parent -----------------------------------------------------------------


def start_shim(
    router: RouterProcess, token: str, n: int, seconds: float, rate: float, report: Path
) -> subprocess.Popen[bytes]:
    app = [sys.executable, str(ROOT / "perf" / "spool.py"), "--app", str(seconds), str(rate), "0"]
    argv = [LOGSHIM, "--url", f"tcp://{router.shim}", "--no-tee", "--ps", f"web.{n}"]
    argv += ["--flush-timeout", "120", *(["--block"] if rate == 0 else []), "--", *app]
    return subprocess.Popen(
        [*argv, str(report)],
        env={**child_env(), "LOGPLEX_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )


def start_sender(
    port: int, rate: float, seconds: float, token: str, report: Path
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--syslog-sender", str(port), str(rate), str(seconds)]
    return subprocess.Popen([*argv, token, str(report)], env=child_env(), cwd=ROOT)


def metric(router: RouterProcess, name: str) -> float:
    _, text = router.request("GET", "/metrics")
    total = 0.0
    for row in text.decode().splitlines():
        if row.startswith((name + " ", name + "{")):
            total += float(row.rsplit(" ", 1)[1])
    return total


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmRSS:"):
                return int(row.split()[1]) * 1024
    return 0


class FlappingReceiver:
    """The HTTPS receiver behind a TCP proxy on a fixed port; ``down`` closes the proxy's
    listener and every proxied connection (the drain sees its receiver go away), ``up``
    listens again. The receiver itself stays up, so it counts every post that reached it
    (and drops resent Frame-Ids), with no window between a last report and a stop."""

    def __init__(self, cert: str, key: str) -> None:
        self.receiver = Receiver.https(cert, key)
        self.port = free_port()
        self.flaps = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self.up()

    def report(self) -> dict[str, int]:
        return self.receiver.report()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            assert self._listener is not None
            self._listener.close()
            self._listener = None
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()
        self.flaps += 1

    def stop(self) -> None:
        if self._listener is not None:
            self.down()
        self.receiver.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.receiver.port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._connections += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def tails(api: str, key: str, stop: threading.Event, seed: int, stats: dict[str, int]) -> None:
    """Open a tail, read it 2-8 s, close it, wait 1-4 s; until ``stop``."""
    rng = random.Random(f"{seed}/tails")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(timeout=httpx.Timeout(30, read=2)) as client:
        while not stop.is_set():
            try:
                created = client.post(
                    f"{api}/v3/sessions",
                    json={"channel_id": "soak", "tail": True, "num": "10"},
                    headers=headers,
                )
                created.raise_for_status()
                until = time.monotonic() + rng.uniform(2, 8)
                with client.stream("GET", created.json()["url"]) as response:
                    stats["opened"] += 1
                    for _ in response.iter_lines():
                        stats["lines"] += 1
                        if time.monotonic() > until or stop.is_set():
                            break
            except httpx.HTTPError as error:
                stats["errors"] += 1
                stats["last_error"] = repr(error)[:200]  # type: ignore[assignment]
            stop.wait(rng.uniform(1, 4))


def setup(tmp: Path, name: str) -> tuple[RouterProcess, str, FlappingReceiver, Receiver]:
    ca, cert, key = tls_files(tmp)
    https = FlappingReceiver(cert, key)
    syslog = Receiver.syslog()
    router = RouterProcess(tmp / name, ["--drain-ca-file", ca])
    router.wait_healthy()
    token = router.create_channel("soak")
    router.add_drain(f"https://127.0.0.1:{https.port}/logs", "soak")
    router.add_drain(f"syslog://127.0.0.1:{syslog.port}", "soak")
    return router, token, https, syslog


def wait_delivered(
    https: FlappingReceiver, syslog: Receiver, lines: int, timeout_s: float
) -> tuple[dict[str, int], dict[str, Any]]:
    """Poll both receivers until each has ``lines`` app frames, or nothing moved for 20 s."""
    deadline = time.monotonic() + timeout_s
    last, moved = (-1, -1), time.monotonic()
    while True:
        a, b = https.report(), syslog.report()
        now = (a["app_frames"], b["app_frames"])
        if min(now) >= lines or time.monotonic() > deadline:
            return a, b
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > 20:
            return a, b
        time.sleep(0.2)


def not_delivered(shims: list[subprocess.Popen[bytes]]) -> int:
    total = 0
    for shim in shims:
        assert shim.stderr is not None
        match = UNDELIVERED.search(shim.stderr.read())
        total += int(match.group(1)) if match else 0
        shim.wait()
    return total


# -- capacity -----------------------------------------------------------------------------


def measure_capacity(tmp: Path, shims_n: int, seconds: float) -> dict[str, Any]:
    router, token, https, syslog = setup(tmp, "capacity-data")
    try:
        reports = [tmp / f"capacity-app{n}.json" for n in range(shims_n)]
        started_ns = time.time_ns()
        shims = [start_shim(router, token, n, seconds, 0, reports[n]) for n in range(shims_n)]
        undelivered = not_delivered(shims)
        written = sum(json.loads(r.read_text())["lines"] for r in reports)
        a, b = wait_delivered(https, syslog, written, 300)
        final = syslog.report(final=True)
        last_ns = max(final["last_ns"], time.time_ns() if a["app_frames"] < written else 0)
        span_s = (last_ns - started_ns) / 1e9
        return {
            "seconds": seconds,
            "lines_written": written,
            "https_received": a["app_frames"],
            "syslog_received": b["app_frames"],
            "not_delivered": undelivered,
            "span_s": round(span_s, 2),
            "lines_per_s": round(min(a["app_frames"], b["app_frames"]) / span_s),
        }
    finally:
        router.stop()
        https.stop()
        syslog.stop()


# -- the soak -----------------------------------------------------------------------------


def within(series: list[float], slack: float) -> dict[str, Any]:
    median = statistics.median(series)
    bound = max(0.10 * median, slack)
    worst = max(abs(v - median) for v in series)
    return {
        "median": median,
        "min": min(series),
        "max": max(series),
        "allowed_deviation": round(bound, 1),
        "worst_deviation": round(worst, 1),
        "ok": worst <= bound,
    }


def soak(args: argparse.Namespace, tmp: Path, rate: float) -> dict[str, Any]:
    router, token, https, syslog = setup(tmp, "soak-data")
    rng = random.Random(f"{args.seed}/flaps")
    stop = threading.Event()
    tail_stats: dict[str, int] = {"opened": 0, "lines": 0, "errors": 0}
    samples: list[dict[str, Any]] = []
    flaps: list[dict[str, float]] = []
    try:
        syslog_rate = rate * args.syslog_share
        shim_rate = (rate - syslog_rate) / args.shims
        reports = [tmp / f"soak-app{n}.json" for n in range(args.shims)]
        sender_report = tmp / "soak-sender.json"
        started = time.monotonic()
        shims = [
            start_shim(router, token, n, args.duration, shim_rate, reports[n])
            for n in range(args.shims)
        ]
        sender = start_sender(router.syslog_port, syslog_rate, args.duration, token, sender_report)
        tail_thread = threading.Thread(
            target=tails,
            args=(f"http://{router.http}", router.auth_key, stop, args.seed, tail_stats),
            daemon=True,
        )
        tail_thread.start()
        next_sample = started
        next_flap = started + rng.uniform(0.7, 1.3) * args.flap_every_s
        back_up_at = None
        print(f"{'t_s':>6} {'rss_MiB':>8} {'fds':>5} {'tasks':>6} {'ingested':>10} {'https':>10}")
        while time.monotonic() - started < args.duration:
            now = time.monotonic()
            if back_up_at is None and now >= next_flap:
                https.down()
                back_up_at = now + rng.uniform(10, 20)
                flaps.append({"down_at_s": round(now - started, 1)})
            elif back_up_at is not None and now >= back_up_at:
                https.up()
                flaps[-1]["up_at_s"] = round(now - started, 1)
                back_up_at = None
                next_flap = now + rng.uniform(0.7, 1.3) * args.flap_every_s
            if now >= next_sample:
                sample = {
                    "t_s": round(now - started, 1),
                    "rss_bytes": rss_bytes(router.pid),
                    "fds": fd_count(router.pid),
                    "tasks": metric(router, "logplex_tasks"),
                    "ingested": metric(router, "logplex_ingest_messages_total"),
                    "https_received": https.report()["app_frames"] if back_up_at is None else None,
                }
                samples.append(sample)
                print(
                    f"{sample['t_s']:>6} {sample['rss_bytes'] / 2**20:>8.1f} {sample['fds']:>5}"
                    f" {sample['tasks']:>6.0f} {sample['ingested']:>10.0f}"
                    f" {'-' if sample['https_received'] is None else sample['https_received']:>10}",
                    flush=True,
                )
                next_sample += args.sample_s
            time.sleep(0.2)
        if back_up_at is not None:
            https.up()
            flaps[-1]["up_at_s"] = round(time.monotonic() - started, 1)
        stop.set()
        undelivered = not_delivered(shims)
        sender.wait(60)
        tail_thread.join(15)
        written = sum(json.loads(r.read_text())["lines"] for r in reports)
        written += json.loads(sender_report.read_text())["lines"]
        a, b = wait_delivered(https, syslog, written, 300)
        time.sleep(2)  # the drains' counters follow their sends
        statuses = router.drain_statuses("soak")
        peak_rss = router.peak_rss()
    finally:
        stop.set()
        router.stop()
        https.stop()
        syslog.stop()
    by_url = {s["url"].split(":", 1)[0]: s for s in statuses}
    accounting = {}
    for name, got in (("https", a), ("syslog", b)):
        status = by_url[name]
        counted = status["dropped"] + got["l10"] + got["l12"] + got["l13"] + undelivered
        accounting[name] = {
            "written": written,
            "received": got["app_frames"],
            "drain_delivered": status["delivered"],
            "drain_dropped": status["dropped"],
            "l10": got["l10"],
            "l12": got["l12"],
            "l13": got["l13"],
            "shim_not_delivered": undelivered,
            "unaccounted": written - got["app_frames"] - counted,
            "last_error": status["last_error"],
        }
    after = [s for s in samples if s["t_s"] >= args.warmup_s]
    series = {
        name: within([float(s[name]) for s in after], SLACK[name]) if after else None
        for name in ("rss_bytes", "fds", "tasks")
    }
    passed = {f"{name}_flat": bool(result and result["ok"]) for name, result in series.items()}
    passed.update(
        {f"{n}_nothing_unaccounted": v["unaccounted"] <= 0 for n, v in accounting.items()}
    )
    return {
        "rate_lines_per_s": round(rate),
        "shims": args.shims,
        "shim_rate_each": round(shim_rate),
        "syslog_rate": round(syslog_rate),
        "duration_s": args.duration,
        "warmup_s": args.warmup_s,
        "rule": RULE,
        "series": series,
        "accounting": accounting,
        "flaps": flaps,
        "tails": tail_stats,
        "router_peak_rss_bytes": peak_rss,
        "samples": samples,
        "passed": passed,
        "pass": all(passed.values()),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        f"soak {result['duration_s']} s at {result['rate_lines_per_s']} lines/s "
        f"({result['shims']} shims x {result['shim_rate_each']}, syslog {result['syslog_rate']})",
        f"rule: {result['rule']}",
        f"{'series':<10} {'median':>12} {'min':>12} {'max':>12} {'allowed':>10} {'worst':>10} ok",
    ]
    for name, s in result["series"].items():
        if s:
            rows.append(
                f"{name:<10} {s['median']:>12.0f} {s['min']:>12.0f} {s['max']:>12.0f}"
                f" {s['allowed_deviation']:>10.0f} {s['worst_deviation']:>10.0f} {s['ok']}"
            )
    for name, acc in result["accounting"].items():
        rows.append(
            f"{name} drain: written {acc['written']}, received {acc['received']}, dropped "
            f"{acc['drain_dropped']}, L10 {acc['l10']} L12 {acc['l12']}, not delivered "
            f"{acc['shim_not_delivered']}, unaccounted {acc['unaccounted']}"
        )
    rows.append(f"flaps: {len(result['flaps'])}; tails: {result['tails']}")
    rows.append(
        "PASS" if result["pass"] else f"FAIL: {[k for k, v in result['passed'].items() if not v]}"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--duration", type=float, default=600, help="seconds of soak (600)")
    parser.add_argument("--rate", type=float, help="lines/s in total (default: half capacity)")
    parser.add_argument("--shims", type=int, default=3, help="logshim processes (3)")
    parser.add_argument("--syslog-share", type=float, default=0.25, help="of the rate (0.25)")
    parser.add_argument("--measure-s", type=float, default=20, help="capacity run (20 s)")
    parser.add_argument("--warmup-s", type=float, default=120, help="not judged (120 s)")
    parser.add_argument("--sample-s", type=float, default=10, help="sampling interval (10 s)")
    parser.add_argument("--flap-every-s", type=float, default=60, help="HTTPS receiver (60 s)")
    parser.add_argument("--seed", type=int, default=1, help="flap and tail timings (1)")
    parser.add_argument("--report", type=Path, help="write the result as JSON here")
    parser.add_argument("--row", action="store_true", help="append a row to perf/RESULTS.md")
    parser.add_argument("--syslog-sender", nargs=5, metavar=("PORT", "RATE", "S", "TOKEN", "OUT"))
    args = parser.parse_args()
    if args.syslog_sender:
        port, rate, seconds, token, out = args.syslog_sender
        syslog_sender(int(port), float(rate), float(seconds), token, out)
        return
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="perf-soak-") as tmp_name:
        tmp = Path(tmp_name)
        capacity = None
        rate = args.rate
        if rate is None:
            capacity = measure_capacity(tmp, args.shims, args.measure_s)
            print(f"capacity: {json.dumps(capacity)}", flush=True)
            rate = capacity["lines_per_s"] / 2
        result = soak(args, tmp, rate)
    result["capacity"] = capacity
    result["load_1m_before"] = load_before
    result["load_1m_after"] = round(os.getloadavg()[0], 2)
    if args.report:
        args.report.write_text(json.dumps(result, indent=1))
    print(table(result))
    if args.row:
        short = {k: v for k, v in result.items() if k != "samples"}
        append_results(" ".join(["perf/soak.py", *sys.argv[1:]]), short)
    sys.exit(0 if result["pass"] else 1)


if __name__ == "__main__":
    main()
