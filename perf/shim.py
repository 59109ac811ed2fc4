"""logshim overhead: capture throughput, paced CPU cost, start-up (DESIGN section 9).

Three measurements, printed as one JSON line and appended as a row to perf/RESULTS.md:

- ``fast``: an app writes 1,000,000 lines of 100 bytes as fast as it can (buffered stdio,
  8 KiB writes). Once to /dev/null with no shim (and, for reference, into a pipe emptied by
  ``cat``: what any pipe-based capture costs the app), once under ``logshim`` (default options:
  tee on, to /dev/null) shipping to a receiver process. Reported: the app's own wall time
  under the shim divided by its wall time alone (target <= 1.5), lines shipped, lines
  reported dropped (L12 counts received + the shim's ``N lines not delivered``) and whether
  shipped + dropped adds up exactly, and the shim's CPU seconds (its rusage minus the app's).
- ``paced``: the same app paced at 200,000 lines/s for 10 s under the shim: drops (target 0
  with the default buffer) and shim CPU as a fraction of one core (target <= 0.5).
- ``startup``: median time from starting ``logshim`` to the app's first instruction (the app
  is ``date +%s%N``, exec'd directly), against ``tini -s`` and ``python -c pass``; the same
  ``date`` run directly is the floor. Target <= 120 ms.

Every Python process is the project venv's interpreter (``sys.executable``), never a wrapper,
and ``PYTHONUNBUFFERED`` is removed from the children's environment.
The receiver is a minimal router side of the shim protocol (HELLO → READY, ACK per batch,
decoded with ``logplex.codecs.shimproto``) in its own process.

Usage: ``.venv/bin/python perf/shim.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from perf.results import append_results  # noqa: E402

LOGSHIM = str(Path(sys.executable).with_name("logshim"))
LINE_BYTES = 100
L12 = re.compile(rb"Error L12 \(Local buffer overflow\): (\d+) messages dropped")
L13 = re.compile(rb"Error L13 \(Local delivery error\): (\d+) messages lost")
UNDELIVERED = re.compile(rb"logshim: (\d+) lines not delivered")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


# -- the app ------------------------------------------------------------------------------


def run_app(lines: int, rate: float, report: str) -> None:
    """Write ``lines`` lines of 100 bytes (paced at ``rate``/s if > 0); report wall and CPU."""
    started = time.perf_counter()
    write = sys.stdout.buffer.write
    pad = b" " + b"x" * (LINE_BYTES - 10) + b"\n"
    step = 1000
    for first in range(0, lines, step):
        for n in range(first, min(first + step, lines)):
            write(b"%08d" % n + pad)
        if rate:
            delay = started + (first + step) / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    sys.stdout.buffer.flush()
    wall_s = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime
    Path(report).write_text(json.dumps({"wall_s": wall_s, "cpu_s": cpu_s}))


# -- the receiver ---------------------------------------------------------------------------


def run_receiver() -> None:
    """Serve one shim stream on a loopback port; print counts as JSON when stdin closes."""
    import trio

    from logplex.codecs import shimbatch, shimproto

    counts: dict[str, int] = {"stdout": 0, "stderr": 0, "notices": 0, "l12": 0, "l13": 0}
    counts.update(batches=0, connections=0)

    payloads: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        # Acknowledge on receipt and decode at the end: the receiver must not be what limits
        # the shim (a router keeps up on its own core; this process shares two with the app).
        counts["connections"] += 1
        decoder = shimproto.ShimFrameDecoder(1 << 20)
        acked = 0
        while data := await stream.receive_some(1 << 20):
            decoder.feed(bytes(data))
            replies = []
            while (event := decoder.next_event()) is not None:
                if isinstance(event, shimproto.Hello):
                    # The window and batch size logplex serve advertises by default.
                    replies.append(shimproto.encode_ready(acked, 32, 1024 * 1024))
                elif isinstance(event, shimproto.BatchFrame) and event.seq == acked + 1:
                    payloads.append(event.payload)
                    acked = event.seq
                    replies.append(shimproto.encode_ack(acked))
            if replies:
                await stream.send_all(b"".join(replies))

    def count_records() -> None:
        for payload in payloads:
            records = shimbatch.decode_batch_records(
                payload, max_bytes=1024 * 1024, max_records=100_000
            )
            counts["batches"] += 1
            for _ts, kind, text in records:
                if kind == 1:
                    counts["stdout"] += 1
                elif kind == 2:
                    counts["stderr"] += 1
                elif match := L12.match(text):
                    counts["l12"] += int(match.group(1))
                elif match := L13.match(text):
                    counts["l13"] += int(match.group(1))
                else:
                    counts["notices"] += 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
            print(listeners[0].socket.getsockname()[1], flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)
            count_records()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            counts["receiver_cpu_ms"] = round((usage.ru_utime + usage.ru_stime) * 1000)
            print(json.dumps(counts), flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- the measurements -----------------------------------------------------------------------


def app_command(lines: int, rate: float, report: Path) -> list[str]:
    return [sys.executable, __file__, "--app", str(lines), str(rate), str(report)]


def run_waited(argv: list[str], **kwargs: Any) -> tuple[int, float, bytes]:
    """Run argv; return (exit code, CPU seconds of it and its reaped children, stderr)."""
    process = subprocess.Popen(argv, env=child_env(), stderr=subprocess.PIPE, **kwargs)
    assert process.stderr is not None
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime, stderr


def under_shim(lines: int, rate: float, tmp: Path) -> dict[str, Any]:
    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver"],
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert receiver.stdout is not None
    assert receiver.stdin is not None
    port = int(receiver.stdout.readline())
    report = tmp / "app-shim.json"
    shim_args = ["--url", f"tcp://127.0.0.1:{port}", "--token", "t.perf", "--ps", "perf.1"]
    code, cpu_s, stderr = run_waited(
        [LOGSHIM, *shim_args, "--", *app_command(lines, rate, report)],
        stdout=subprocess.DEVNULL,
    )
    receiver.stdin.close()
    counts = json.loads(receiver.stdout.readline())
    receiver.wait()
    app = json.loads(report.read_text())
    undelivered = UNDELIVERED.search(stderr)
    not_delivered = int(undelivered.group(1)) if undelivered else 0
    published = lines + 2  # the app's lines + "Starting process" + "Process exited"
    accounted = counts["stdout"] + counts["notices"] + counts["l12"] + counts["l13"]
    return {
        "exit_code": code,
        "app_wall_s": round(app["wall_s"], 3),
        "lines_shipped": counts["stdout"],
        "lines_dropped_l12": counts["l12"],
        "lines_not_delivered": not_delivered,
        "adds_up": accounted + not_delivered == published,
        "shim_cpu_s": round(cpu_s - app["cpu_s"], 3),
        "batches": counts["batches"],
        "receiver_cpu_s": counts["receiver_cpu_ms"] / 1000,
    }


def alone(lines: int, tmp: Path) -> float:
    report = tmp / "app-alone.json"
    with open(os.devnull, "wb") as devnull:
        subprocess.run(app_command(lines, 0, report), env=child_env(), stdout=devnull, check=True)
    wall_s: float = json.loads(report.read_text())["wall_s"]
    return wall_s


def into_cat(lines: int, tmp: Path) -> float:
    """The same app writing into a pipe that ``cat`` empties to /dev/null: the kernel's floor
    for any pipe-based capture, for reference."""
    report = tmp / "app-cat.json"
    with open(os.devnull, "wb") as devnull:
        cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=devnull)
        subprocess.run(app_command(lines, 0, report), env=child_env(), stdout=cat.stdin, check=True)
        assert cat.stdin is not None
        cat.stdin.close()
        cat.wait()
    wall_s: float = json.loads(report.read_text())["wall_s"]
    return wall_s


def bench_fast(lines: int, tmp: Path) -> dict[str, Any]:
    baseline_s = min(alone(lines, tmp) for _ in range(3))
    cat_s = min(into_cat(lines, tmp) for _ in range(3))
    shim = under_shim(lines, 0, tmp)
    return {
        "lines": lines,
        "app_alone_s": round(baseline_s, 3),
        "app_into_cat_s": round(cat_s, 3),
        **shim,
        "wall_ratio": round(shim["app_wall_s"] / baseline_s, 3),
    }


def bench_paced(rate: float, seconds: float, tmp: Path) -> dict[str, Any]:
    lines = int(rate * seconds)
    shim = under_shim(lines, rate, tmp)
    return {
        "lines": lines,
        "rate_per_s": rate,
        **shim,
        "shim_cores": round(shim["shim_cpu_s"] / shim["app_wall_s"], 3),
        "shim_us_per_line": round(shim["shim_cpu_s"] / lines * 1e6, 3),
    }


def first_instruction_ms(argv: list[str]) -> float:
    started_ns = time.time_ns()
    done = subprocess.run(argv, env=child_env(), capture_output=True, check=True)
    return (int(done.stdout.split()[0]) - started_ns) / 1e6


def total_ms(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=child_env(), check=True)
    return (time.perf_counter() - started) * 1000


def bench_startup(runs: int) -> dict[str, Any]:
    date = [shutil.which("date") or "/bin/date", "+%s%N"]
    tini = shutil.which("tini") or "/usr/bin/tini"
    cases: dict[str, Callable[[], float]] = {
        "date_direct_ms": lambda: first_instruction_ms(date),
        "logshim_ms": lambda: first_instruction_ms([LOGSHIM, "--", *date]),
        "tini_ms": lambda: first_instruction_ms([tini, "-s", "--", *date]),
        "python_c_pass_ms": lambda: total_ms([sys.executable, "-c", "pass"]),
    }
    results = {}
    for name, measure in cases.items():
        measure()  # warm the page cache
        results[name] = round(statistics.median(measure() for _ in range(runs)), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, no RESULTS.md row")
    parser.add_argument("--only", choices=["fast", "paced", "startup"], action="append")
    parser.add_argument("--app", nargs=3, metavar=("LINES", "RATE", "REPORT"))
    parser.add_argument("--receiver", action="store_true")
    args = parser.parse_args()
    if args.app:
        run_app(int(args.app[0]), float(args.app[1]), args.app[2])
        return
    if args.receiver:
        run_receiver()
        return
    import tempfile

    only = set(args.only or ["fast", "paced", "startup"])
    # The machine is shared: the load around the run says how much the numbers can be trusted.
    results: dict[str, Any] = {"load_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if "fast" in only:
            results["fast"] = bench_fast(100_000 if args.quick else 1_000_000, tmp)
        if "paced" in only:
            results["paced"] = bench_paced(200_000, 2 if args.quick else 10, tmp)
        if "startup" in only:
            results["startup"] = bench_startup(5 if args.quick else 20)
    results["load_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))
    if not args.quick:
        append_results("perf/shim.py" + "".join(f" --only {o}" for o in args.only or []), results)


if __name__ == "__main__":
    main()
