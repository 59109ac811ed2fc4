"""The cluster mode's speed targets, end to end (DESIGN 10; issue 12 "Speed"; perf/RESULTS.md).

Every process is real and fresh per run: ``nats-server`` (one JetStream node, R1, its own
store; ``tests/natsd.py``), ``logplex serve`` as users run it (``perf/harness.py``), senders
and receivers in their own processes. Two cases:

- ``ingest``: aggregate lossless ingest, side by side in one run, ``--rounds`` (3) rounds
  of two workloads in four modes. Workloads: ``shim``, ``--senders`` (4) clients of
  the shim stream protocol, each with its own stream id, sending pre-built BATCH frames of
  1000 lines of 100 bytes within the advertised window and reading the ACKs (as
  ``perf/router_ingest.py`` does); ``syslog``, as many TCP senders of octet-counted 200-byte
  frames (``perf/harness.py``). Modes: ``spool`` (single process, the default), ``no_spool``
  (single process, ``--no-spool``), ``nats_1`` (one router ``--nats``), ``nats_2`` (two
  routers ``--nats``, half the senders on each). Sender *i* writes to channel *i*; in
  ``nats_2`` the channels are chosen so that each router owns half of them and each router
  ingests one channel it owns and one it does not per pair of senders, so both
  ingest and consumption are spread. No drain: what is measured is ingest to the durable
  log plus, in the cluster mode, the owners reading it back into the channels' histories.

  The clock starts when every sender, connected and with its frames built, is told to go.
  Lossless means: the shims' every batch ACKed (an ACK means durable: fsynced by the spool,
  stored by JetStream), and for syslog every line counted in ``/metrics`` (stored in the
  partition streams: ``logplex_cluster_published_messages_total`` summed over the routers;
  ingested in the single-process modes); ``lines_per_s`` is lines over the time from the
  first byte sent to that moment. In the cluster modes the run then waits until the owners
  consumed every stored batch (``logplex_cluster_consumed_batches_total`` = stored batches)
  and checks the partition streams hold exactly the stored batches (``GET /v3/cluster``).
  Router CPU (all routers, all threads, ``/proc``) and ``nats-server`` CPU are taken from
  go to that end plus a 0.5 s settle; per line in µs. The idle CPU of the routers over 1 s
  before go is reported (lease renewals, heartbeats, 64 partitions' long polls).

  The modes run in the order above, then reversed in the next round, so ``nats_1`` and
  ``nats_2`` always run next to each other. The machine is shared: ``other_cpu_cores`` is
  what the rest of it (other work) kept busy during a run (``/proc/stat`` minus the routers,
  nats-server and the senders, whose CPU comes from ``os.wait4``), on 2 cores.

  Figures: per workload and mode the medians over the rounds; ``scaling_2_over_1`` is the
  median of each round's ``nats_2`` / ``nats_1`` lines/s (target >= 1.6); the engine
  overhead is the median router CPU per line of ``nats_1`` minus that of ``no_spool``
  (target <= 0.5 µs) and minus that of ``spool``.

  ``--profile DIR`` runs ``py-spy record`` (raw collapsed stacks, 250 Hz, non-blocking) on
  every router of every run, and adds to the results each profile's share of samples by
  ``PROFILE_GROUPS`` (where the CPU goes: scanner, encode, decode, history, nats-py...) and
  that share times the run's CPU per line; ``--profile-report DIR`` prints the shares of
  profiles taken earlier. Profiled runs are slower: take the figures from runs without it.
- ``failover``: ``--failover-routers`` (3) routers ``--nats-lease-ttl 3`` on one NATS, a
  channel with one HTTPS drain to a counting receiver (``perf/receivers.py --https``, TLS by
  trustme), a steady syslog sender (``--failover-rate`` lines/s, 5000) on a router that does
  not own the channel's partition. Once posts flow, the owner is SIGKILLed: ``gap_s`` is the
  time from the SIGKILL to the first post after the receiver's silence (a post of the new
  owner: the first post received at least ``SILENCE_S`` after the one before it, or after the
  kill); target <= TTL + 2 s. The sender then stops and every line sent must arrive (``lost``;
  the receiver drops repeats by Frame-Id and counts them as ``duplicates``). Fresh processes
  each round; ``--failover-rounds`` (3).

Prints one JSON line and appends a row to perf/RESULTS.md (not with ``--quick`` or ``--no-row``).
Usage: ``.venv/bin/python perf/cluster.py [--quick] [--only ingest|failover]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# perf/drains.py would shadow the drains package for scripts run from perf/: import the package.
if sys.path and Path(sys.path[0]).resolve() == ROOT / "perf":
    sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "tests"))  # tests/natsd.py: the nats-server the tests use

from natsd import NatsNode  # type: ignore[import-not-found]  # noqa: E402

from logplex.cluster.names import partition_of  # noqa: E402
from perf.harness import (  # noqa: E402
    FRAME_BYTES,
    RouterProcess,
    ShimSender,
    child_env,
    process_cpu_s,
    shim_batch_frames,
    syslog_frames,
    write_repeated,
)
from perf.receivers import Receiver  # noqa: E402
from perf.results import append_results  # noqa: E402
from perf.spool import tls_files  # noqa: E402

WORKLOADS = ("shim", "syslog")
MODES = ("spool", "no_spool", "nats_1", "nats_2")
LINES_PER_BATCH = 1000
SETTLE_S = 0.5
SILENCE_S = 0.5
POLL_S = 0.02
WAIT_S = 600.0


class JetStreamNode(NatsNode):  # type: ignore[misc]
    """The tests' nats-server with room for the default 64 partition streams.

    Each partition stream reserves ``STREAM_MAX_BYTES`` (256 MiB) of file store, 16 GiB for
    64, beyond the 4 GB the tests' config allows (they use 4 partitions).
    """

    def _config(self) -> str:
        config: str = super()._config()
        return config.replace("max_file_store: 4GB", "max_file_store: 64GB")


# -- senders (children) -------------------------------------------------------------------


_cpu_at_go_s = 0.0


def _wait_go() -> None:
    """Say ``ready`` on stdout and wait for the parent's ``go`` line on stdin."""
    global _cpu_at_go_s
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if not sys.stdin.readline():
        raise SystemExit("the parent went away before go")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _cpu_at_go_s = usage.ru_utime + usage.ru_stime


def send_shim(port: int, batches: int, token: str, stream: str) -> dict[str, Any]:
    """Child: HELLO, then ``batches`` pre-built BATCH frames within the window, ACKs read."""
    frames = shim_batch_frames(batches, LINES_PER_BATCH)
    sender = ShimSender(port, token, stream, "perf-cluster/1")
    _wait_go()
    first_ns = time.time_ns()
    sender.send(frames)
    last_ns = time.time_ns()
    sender.close()
    return {"lines": batches * LINES_PER_BATCH, "first_ns": first_ns, "last_ns": last_ns}


def send_syslog(port: int, lines: int, token: str) -> dict[str, Any]:
    """Child: ``lines`` octet-counted 200-byte frames as fast as the socket takes them."""
    block = syslog_frames(token.encode())
    sock = socket.create_connection(("127.0.0.1", port))
    _wait_go()
    first_ns, last_ns = write_repeated(sock, block, lines * FRAME_BYTES)
    sock.close()
    return {"lines": lines, "first_ns": first_ns, "last_ns": last_ns}


def send_paced(port: int, rate: int, token: str) -> dict[str, Any]:
    """Child: ``rate`` frames per second in 10 ms steps until stdin closes; the count sent."""
    block = syslog_frames(token.encode())
    frames_in_block = len(block) // FRAME_BYTES
    step = max(1, rate // 100)
    sock = socket.create_connection(("127.0.0.1", port))
    _wait_go()
    sent = 0
    started = time.monotonic()
    while True:
        due = started + (sent + step) / rate
        readable, _, _ = select.select([sys.stdin], [], [], max(0.0, due - time.monotonic()))
        if readable and not sys.stdin.readline():
            break
        if time.monotonic() < due:
            continue
        start = sent % frames_in_block
        count = min(step, frames_in_block - start)
        sock.sendall(block[start * FRAME_BYTES : (start + count) * FRAME_BYTES])
        sent += count
    sock.close()
    return {"lines": sent}


class Sender:
    """One sender child (``--send KIND ...``): built and connected once ``ready`` is read."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--send", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        if first != b"ready\n":
            self.process.kill()
            self.process.wait()
            raise SystemExit(f"sender {argv} did not get ready: {first!r}")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """Close its stdin (the paced sender's signal to stop)."""
        assert self.process.stdin is not None
        self.process.stdin.close()

    def result(self) -> dict[str, Any]:
        """Its JSON result, with ``cpu_s``: the sender's own CPU time after go (``os.wait4``
        minus what it had used building its frames)."""
        assert self.process.stdout is not None
        out = self.process.stdout.read()
        _, status, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = os.waitstatus_to_exitcode(status)
        if self.process.returncode != 0 or not out:
            raise SystemExit(f"a sender failed (exit {self.process.returncode})")
        result: dict[str, Any] = json.loads(out)
        result["cpu_s"] = usage.ru_utime + usage.ru_stime - result.pop("cpu_at_go_s")
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


# -- routers ----------------------------------------------------------------------------------

_METRIC = re.compile(rb"^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$", re.MULTILINE)


def metrics_of(router: RouterProcess) -> dict[str, float]:
    """``/metrics`` of one router: ``name{labels}`` -> value (no ``_created`` series)."""
    status, text = router.request("GET", "/metrics")
    if status != 200:
        raise SystemExit(f"/metrics answered {status}:\n{router.log_tail()}")
    return {
        (name + labels).decode(): float(value)
        for name, labels, value in ((m[1], m[2] or b"", m[3]) for m in _METRIC.finditer(text))
        if not name.endswith(b"_created")
    }


def metric_sum(routers: list[RouterProcess], name: str) -> float:
    return sum(metrics_of(router).get(name, 0.0) for router in routers)


STORED_MESSAGES = "logplex_cluster_published_messages_total"
STORED_BATCHES = 'logplex_cluster_published_batches_total{outcome="stored"}'
CONSUMED_BATCHES = "logplex_cluster_consumed_batches_total"


def consumed(routers: list[RouterProcess]) -> bool:
    """Have the owners read back every batch the routers stored?"""
    return metric_sum(routers, CONSUMED_BATCHES) >= metric_sum(routers, STORED_BATCHES)


def start_routers(tmp: Path, count: int, flags: list[str]) -> list[RouterProcess]:
    routers: list[RouterProcess] = []
    try:
        for index in range(count):
            home = tmp / f"router{index}"
            home.mkdir()
            routers.append(RouterProcess(home / "data", flags))
        for router in routers:
            router.wait_healthy()
    except BaseException:
        for router in routers:
            router.kill()
        raise
    return routers


def wait_owners(routers: list[RouterProcess], timeout_s: float = 60) -> list[set[int]]:
    """Wait until the routers agree on the members and split every partition between
    them, each partition held by exactly one; the partitions each one owns."""
    deadline = time.monotonic() + timeout_s
    while True:
        views = [router.api("GET", "/v3/cluster") for router in routers]
        owned = [set(view["owned"]) for view in views]
        partitions = views[0]["partitions"]
        live = [sum(1 for m in view["members"].values() if m.get("live")) for view in views]
        union = set().union(*owned)
        if (
            all(n == len(routers) for n in live)
            and sum(len(o) for o in owned) == partitions
            and union == set(range(partitions))
        ):
            return owned
        if time.monotonic() > deadline:
            raise SystemExit(f"the routers did not split the partitions: {owned}, live {live}")
        time.sleep(0.2)


def pick_channels(count: int, owned: list[set[int]], partitions: int) -> list[str]:
    """``count`` channel names on distinct partitions; with two owners, channel *i* is owned
    by router ``(i // 2) % 2`` (sender *i* writes to router ``i % 2``: each router ingests,
    per pair of senders, one channel it owns and one it does not)."""
    names: list[str] = []
    used: set[int] = set()
    n = 0
    while len(names) < count:
        name = f"bench-{n}"
        n += 1
        partition = partition_of(name, partitions)
        if partition in used:
            continue
        want = (len(names) // 2) % len(owned)
        if partition in owned[want]:
            names.append(name)
            used.add(partition)
        if n > 100_000:
            raise SystemExit("no channel names found that spread over the owners")
    return names


def wait_channels(routers: list[RouterProcess], names: list[str], timeout_s: float = 30) -> None:
    """Wait until every router serves every channel (the config bucket's watch)."""
    deadline = time.monotonic() + timeout_s
    for router in routers:
        for name in names:
            while router.request("GET", f"/v3/channels/{name}")[0] != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"channel {name} never reached router {router.http}")
                time.sleep(0.05)


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot, all cores (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Profiler:
    """``py-spy record`` on each router while a run is measured (``--profile DIR``): raw
    collapsed stacks, on-CPU samples only, one file per router."""

    def __init__(self, out_dir: Path | None, *, native: bool = False) -> None:
        self.out_dir = out_dir
        self.native = native
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, routers: list[RouterProcess], label: str) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for index, router in enumerate(routers):
            argv = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid"]
            argv += [str(router.pid), "--format", "raw", "--rate", "250", "--threads"]
            argv += ["--native"] if self.native else ["--nonblocking"]
            argv += ["-o", str(self.out_dir / f"{label}-router{index}.txt")]
            self.processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        time.sleep(0.5)  # py-spy attaches

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait_until(what: str, probe: Any, timeout_s: float = WAIT_S) -> int:
    """Poll ``probe()`` every ``POLL_S`` until it is true; ``time.time_ns()`` of that poll."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    return time.time_ns()


# -- ingest -----------------------------------------------------------------------------------


def ingest_run(
    tmp: Path, workload: str, mode: str, senders: int, per_sender: int, profiler: Profiler
) -> dict[str, Any]:
    """One run of ``workload`` in ``mode``; its figures (see the module docstring)."""
    cluster = mode.startswith("nats")
    nats: JetStreamNode | None = None
    routers: list[RouterProcess] = []
    clients: list[Sender] = []
    try:
        if cluster:
            nats = JetStreamNode(tmp, "nats")
            nats.start()
            routers = start_routers(tmp, 2 if mode == "nats_2" else 1, ["--nats", nats.url])
            owned = wait_owners(routers)
            partitions = int(routers[0].api("GET", "/v3/cluster")["partitions"])
        else:
            routers = start_routers(tmp, 1, ["--no-spool"] if mode == "no_spool" else [])
            owned, partitions = [set(range(64))], 64
        channels = pick_channels(senders, owned, partitions)
        tokens = [routers[0].create_channel(name) for name in channels]
        wait_channels(routers, channels)
        run_id = uuid.uuid4().hex[:8]
        for index, token in enumerate(tokens):
            router = routers[index % len(routers)]
            if workload == "shim":
                port = router.shim.rsplit(":", 1)[1]
                batches = per_sender // LINES_PER_BATCH
                argv = ["shim", port, str(batches), token, f"perf-{run_id}-{index}"]
            else:
                argv = ["syslog", str(router.syslog_port), str(per_sender), token]
            clients.append(Sender(argv))
        lines = (
            per_sender * senders
            if workload == "syslog"
            else (per_sender // LINES_PER_BATCH * LINES_PER_BATCH * senders)
        )
        profiler.start(routers, tmp.name)
        idle_before = sum(r.cpu_s() for r in routers)
        time.sleep(1)
        idle_cpu_s = sum(r.cpu_s() for r in routers) - idle_before
        cpu_before = [r.cpu_s() for r in routers]
        nats_before = process_cpu_s(nats.process.pid) if nats and nats.process else 0.0

        def our_cpu_s() -> float:  # routers and nats-server (the senders: from os.wait4)
            nats_s = process_cpu_s(nats.process.pid) if nats is not None else 0.0
            return sum(r.cpu_s() for r in routers) + nats_s

        machine_before, our_before = machine_busy_cpu_s(), our_cpu_s()
        go_ns = time.time_ns()
        for client in clients:
            client.go()
        results = [client.result() for client in clients]
        if workload == "shim":
            durable_ns = max(r["last_ns"] for r in results)
        elif cluster:
            durable_ns = wait_until(
                "every line stored", lambda: metric_sum(routers, STORED_MESSAGES) >= lines
            )
        else:
            durable_ns = wait_until(
                "every line ingested", lambda: routers[0].ingested("syslog") >= lines
            )
        first_ns = min(r["first_ns"] for r in results)
        result: dict[str, Any] = {"lines": lines}
        if cluster:
            consumed_ns = wait_until("the owners consumed every batch", lambda: consumed(routers))
        end = (time.time_ns(), machine_busy_cpu_s(), our_cpu_s())
        time.sleep(SETTLE_S)
        if cluster:
            result["stored"] = int(metric_sum(routers, STORED_MESSAGES))
            result["stored_batches"] = int(metric_sum(routers, STORED_BATCHES))
            view = routers[0].api("GET", "/v3/cluster")
            result["stream_batches"] = sum(
                p["stream_messages"] for p in view["partition_status"].values()
            )
            result["consumed_s"] = round((consumed_ns - first_ns) / 1e9, 3)
        else:
            result["stored"] = int(routers[0].ingested(workload))
        cpu_s = sum(r.cpu_s() - before for r, before in zip(routers, cpu_before, strict=True))
        nats_cpu_s = process_cpu_s(nats.process.pid) - nats_before if nats else 0.0
        profiler.stop()
        senders_cpu_s = sum(r["cpu_s"] for r in results)
        # Cores busy from go to the end (before the settle): ours, and the rest of the machine.
        window_s = (end[0] - go_ns) / 1e9
        ours_s = end[2] - our_before + senders_cpu_s
        others_s = max(0.0, end[1] - machine_before - ours_s)
        seconds = (durable_ns - first_ns) / 1e9
        result.update(
            lossless=result["stored"] == lines
            and result.get("stream_batches", 0) == result.get("stored_batches", 0),
            seconds=round(seconds, 3),
            go_to_first_s=round((first_ns - go_ns) / 1e9, 3),
            lines_per_s=round(lines / seconds),
            router_cpu_s=round(cpu_s, 3),
            router_cpu_us_per_line=round(cpu_s / lines * 1e6, 3),
            router_cpu_s_each=[
                round(r.cpu_s() - before, 3) for r, before in zip(routers, cpu_before, strict=True)
            ],
            router_idle_cpu_s_per_s=round(idle_cpu_s, 3),
            router_peak_rss_bytes=[r.peak_rss() for r in routers],
            senders_cpu_s=round(senders_cpu_s, 3),
            cpu_cores=round(ours_s / window_s, 2),
            other_cpu_cores=round(others_s / window_s, 2),
        )
        if nats is not None:
            result["nats_cpu_s"] = round(nats_cpu_s, 3)
            result["nats_cpu_us_per_line"] = round(nats_cpu_s / lines * 1e6, 3)
        return result
    finally:
        profiler.stop()
        for client in clients:
            client.kill()
        for router in routers:
            router.stop()
        if nats is not None:
            nats.stop()


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get("lossless") and key in run]
    return round(statistics.median(values), 3) if values else None


def bench_ingest(
    tmp: Path,
    workloads: list[str],
    rounds: int,
    senders: int,
    per_sender: dict[str, int],
    profiler: Profiler,
) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        w: {m: [] for m in MODES} for w in workloads
    }
    for round_number in range(rounds):
        # nats_1 and nats_2 always next to each other, in alternating order
        order = list(MODES) if round_number % 2 == 0 else list(MODES)[::-1]
        for workload in workloads:
            for mode in order:
                work = tmp / f"{workload}-{mode}-round{round_number + 1}"
                work.mkdir()
                run = ingest_run(work, workload, mode, senders, per_sender[workload], profiler)
                run["round"] = round_number + 1
                runs[workload][mode].append(run)
                print(json.dumps({f"{workload}_{mode}": run}), file=sys.stderr)
    summary: dict[str, Any] = {}
    for workload in workloads:
        by_mode = runs[workload]
        figures: dict[str, Any] = {}
        for mode in MODES:
            figures[mode] = {
                "lines_per_s": median_of(by_mode[mode], "lines_per_s"),
                "router_cpu_us_per_line": median_of(by_mode[mode], "router_cpu_us_per_line"),
                "nats_cpu_us_per_line": median_of(by_mode[mode], "nats_cpu_us_per_line"),
                "other_cpu_cores": median_of(by_mode[mode], "other_cpu_cores"),
                "lossless_runs": sum(1 for run in by_mode[mode] if run["lossless"]),
            }
        ratios = [
            two["lines_per_s"] / one["lines_per_s"]
            for one, two in zip(by_mode["nats_1"], by_mode["nats_2"], strict=True)
            if one["lossless"] and two["lossless"]
        ]
        figures["scaling_2_over_1_each_round"] = [round(r, 3) for r in ratios]
        figures["scaling_2_over_1"] = round(statistics.median(ratios), 3) if ratios else None
        cost = {mode: figures[mode]["router_cpu_us_per_line"] for mode in MODES}
        for cluster_mode in ("nats_1", "nats_2"):
            for base in ("no_spool", "spool"):
                if cost[cluster_mode] is not None and cost[base] is not None:
                    figures[f"{cluster_mode}_minus_{base}_us_per_line"] = round(
                        cost[cluster_mode] - cost[base], 3
                    )
        summary[workload] = figures
    return {"runs": runs, "summary": summary}


# -- failover -------------------------------------------------------------------------------


def first_after_silence(times_ns: list[int], kill_ns: int) -> tuple[int | None, int]:
    """The first post after the kill that follows ``SILENCE_S`` without posts (the new
    owner's: the old one's last posts may still land just after its SIGKILL), and the
    receipt of the post before it (or the kill); (None, ...) while there is none."""
    previous = kill_ns
    for t in sorted(times_ns):
        if t < kill_ns:
            continue
        if t - previous >= SILENCE_S * 1e9:
            before = max((b for b in times_ns if b < t), default=kill_ns)
            return t, before
        previous = t
    return None, previous


def failover_round(tmp: Path, routers_count: int, rate: int, ttl_s: float) -> dict[str, Any]:
    """One SIGKILL of the owner of a drained channel's partition; the gap the receiver saw."""
    ca, cert, key = tls_files(tmp)
    receiver = Receiver.https(cert, key)
    nats = JetStreamNode(tmp, "nats")
    routers: list[RouterProcess] = []
    sender: Sender | None = None
    try:
        nats.start()
        flags = ["--nats", nats.url, "--nats-lease-ttl", str(ttl_s), "--drain-ca-file", ca]
        routers = start_routers(tmp, routers_count, flags)
        owned = wait_owners(routers)
        partitions = int(routers[0].api("GET", "/v3/cluster")["partitions"])
        channel = "failover"
        token = routers[0].create_channel(channel)
        routers[0].add_drain(f"https://127.0.0.1:{receiver.port}/logs", channel)
        wait_channels(routers, [channel])
        partition = partition_of(channel, partitions)
        owner = next(i for i, parts in enumerate(owned) if partition in parts)
        via = (owner + 1) % routers_count
        sender = Sender(["paced", str(routers[via].syslog_port), str(rate), token])
        sender.go()
        wait_until("posts flowing", lambda: receiver.report()["app_frames"] >= rate, 60)
        time.sleep(1)
        kill_ns = time.time_ns()
        routers[owner].process.send_signal(signal.SIGKILL)
        routers[owner].process.wait()
        deadline = time.monotonic() + 60
        new_first_ns: int | None = None
        while new_first_ns is None:
            if time.monotonic() > deadline:
                raise SystemExit("no post from a new owner within 60 s of the SIGKILL")
            time.sleep(0.05)
            new_first_ns, last_before_ns = first_after_silence(
                receiver.posts_since(kill_ns - 10**9), kill_ns
            )
        time.sleep(2)  # the new owner delivers for a while
        sender.stop()
        sent = sender.result()["lines"]
        sender = None
        got = receiver.wait_for(sent, idle_s=10)
        new_owner = next(
            i
            for i, router in enumerate(routers)
            if i != owner and partition in router.api("GET", "/v3/cluster")["owned"]
        )
        return {
            "routers": routers_count,
            "lease_ttl_s": ttl_s,
            "rate": rate,
            "partition": partition,
            "killed_router": owner,
            "new_owner": new_owner,
            "gap_s": round((new_first_ns - kill_ns) / 1e9, 3),
            "silence_s": round((new_first_ns - last_before_ns) / 1e9, 3),
            "sent": sent,
            "received": got["app_frames"],
            "lost": sent - got["app_frames"],
            "duplicates_posts": got["duplicates"],
            "l10": got["l10"],
        }
    finally:
        if sender is not None:
            sender.kill()
        for router in routers:
            router.stop()
        nats.stop()
        receiver.stop()


def bench_failover(
    tmp: Path, rounds: int, routers_count: int, rate: int, ttl_s: float
) -> dict[str, Any]:
    runs = []
    for round_number in range(rounds):
        work = tmp / f"failover-{round_number}"
        work.mkdir()
        run = failover_round(work, routers_count, rate, ttl_s)
        run["round"] = round_number + 1
        runs.append(run)
        print(json.dumps({"failover": run}), file=sys.stderr)
    gaps = [run["gap_s"] for run in runs]
    return {
        "runs": runs,
        "gap_s_each": gaps,
        "gap_s_max": max(gaps),
        "lost_total": sum(run["lost"] for run in runs),
    }


# -- profiles -----------------------------------------------------------------------------------

# Where a router's CPU goes, by the innermost frame of each sample that matches one of these
# (function name, file) pairs; the first group that matches a frame wins. Samples of the
# bridge's asyncio thread that match nothing are "nats-py ...", by the task they run in.
PROFILE_GROUPS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("ingest: syslog framing + C scanner", (("read_decoder", "syslog_reader.py"),)),
    ("ingest: shim batch decode", (("decode_batch_messages_and_bytes", "shimbatch.py"),)),
    ("ingest: cluster batch encode (msgpack + zstd)", (("encode_batch", "clusterbatch.py"),)),
    ("ingest: spool append + commit", (("Spool.", "spool/"), ("SpoolWriter", "spool/"))),
    ("ingest: publish rounds (trio side)", (("ClusterLog.run", "cluster/ingest.py"),)),
    ("owner: batch decode (zstd + msgpack + checks)", (("decode_batch", "clusterbatch.py"),)),
    ("history ring", (("HistoryRing", "fanout/history.py"), ("Router.deliver", "router.py"))),
    (
        "owner: tail re-publish (envelope + crossing)",
        (("encode_envelope", "clusterbatch.py"), ("NatsBridge.publish_core", "bridge.py")),
    ),
    ("owner: fetch (trio side)", (("PartitionOwner._deliver_live", "cluster/partition.py"),)),
    ("ownership, leases, checkpoints", (("Coordinator", "ownership.py"),)),
    ("nats-py: socket writes (flusher)", (("Client._flusher", "nats/aio/client.py"),)),
    ("nats-py: reads (parser, acks, pulled messages)", (("Client._read_loop", "nats/aio/"),)),
    ("bridge: pull consumers (asyncio side)", (("OrderedPull", "_bridge_pull.py"),)),
    ("bridge: publish + acks (asyncio side)", (("_a_publish_many", "bridge.py"),)),
)


def _frame_key(frame: str) -> tuple[str, str]:
    """``func (file:line)`` -> (func, file)."""
    name, _, where = frame.rpartition(" (")
    return name, where.rstrip(")").rsplit(":", 1)[0]


def profile_groups(path: Path) -> tuple[int, dict[str, int]]:
    """Samples of one ``py-spy record --format raw --threads`` file, by ``PROFILE_GROUPS``."""
    groups: dict[str, int] = {}
    total = 0
    for row in path.read_text().splitlines():
        stack, _, count_text = row.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = frames[0]
        found = None
        for frame in reversed(frames[1:]):
            name, where = _frame_key(frame)
            for group, patterns in PROFILE_GROUPS:
                if any(n in name and w in where for n, w in patterns):
                    found = group
                    break
            if found:
                break
        if found is None:
            found = (
                "bridge thread: asyncio loop, other"
                if "nats-logplex" in thread
                else "event loop: trio, sockets, other"
            )
        groups[found] = groups.get(found, 0) + count
    return total, groups


def profile_report(out_dir: Path, runs: dict[str, Any] | None) -> dict[str, Any]:
    """Per profiled run: each group's share of the samples and, with the run's measured
    router CPU per line, its µs per line."""
    report: dict[str, Any] = {}
    for path in sorted(out_dir.glob("*-router*.txt")):
        label = path.stem
        total, groups = profile_groups(path)
        if not total:
            continue
        report[label] = {"samples": total}
        report[label]["share"] = {
            g: round(n / total, 3) for g, n in sorted(groups.items(), key=lambda i: -i[1])
        }
    if runs is None:
        return report
    for label, entry in report.items():
        workload, mode = label.split("-")[:2]
        matching = runs.get(workload, {}).get(mode, [])
        if matching:
            us = matching[0]["router_cpu_us_per_line"]
            entry["us_per_line"] = {g: round(f * us, 3) for g, f in entry["share"].items()}
    return report


# -- main -------------------------------------------------------------------------------------


def child(argv: list[str]) -> None:
    kind, port, *rest = argv
    if kind == "shim":
        batches, token, stream = rest
        result = send_shim(int(port), int(batches), token, stream)
    elif kind == "syslog":
        lines, token = rest
        result = send_syslog(int(port), int(lines), token)
    elif kind == "paced":
        rate, token = rest
        result = send_paced(int(port), int(rate), token)
    else:
        raise SystemExit(f"unknown sender kind {kind!r}")
    sys.stdout.write(json.dumps({**result, "cpu_at_go_s": _cpu_at_go_s}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.epilog = __doc__.split("\n\n", 1)[1]
    add = parser.add_argument
    add("--quick", action="store_true", help="small runs, one round each, no RESULTS.md row")
    add("--only", choices=["ingest", "failover"], action="append", help="run this case")
    add("--workload", choices=WORKLOADS, action="append", help="ingest workload (default both)")
    add("--rounds", type=int, help="ingest rounds (default 3; --quick 1)")
    add("--senders", type=int, default=4, help="senders per ingest run (default 4)")
    add("--lines", type=int, help="lines per sender (default 1000000; --quick 100000)")
    add("--failover-rounds", type=int, help="failover rounds (default 3; --quick 1)")
    add("--failover-routers", type=int, default=3, help="routers in the failover (default 3)")
    add("--failover-rate", type=int, default=5000, help="lines/s of the steady sender (5000)")
    add("--lease-ttl", type=float, default=3.0, help="--nats-lease-ttl (default 3)")
    add("--profile", type=Path, metavar="DIR", help="py-spy every ingest router into DIR")
    add("--profile-native", action="store_true", help="py-spy --native (C frames, pauses)")
    add("--profile-report", type=Path, metavar="DIR", help="only summarise the profiles in DIR")
    add("--no-row", action="store_true", help="print only, no RESULTS.md row")
    add("--send", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        child(args.send)
        return
    if args.profile_report:
        print(json.dumps(profile_report(args.profile_report, None), indent=1))
        return
    only = args.only or ["ingest", "failover"]
    rounds = args.rounds or (1 if args.quick else 3)
    per_sender = args.lines or (100_000 if args.quick else 1_000_000)
    results: dict[str, Any] = {
        "senders": args.senders,
        "lines_per_sender": per_sender,
        "load_1m_before": round(os.getloadavg()[0], 2),
    }
    targets: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="perf-cluster-") as tmp_dir:
        tmp = Path(tmp_dir)
        if "ingest" in only:
            workloads = args.workload or list(WORKLOADS)
            ingest = bench_ingest(
                *(tmp, workloads, rounds, args.senders, dict.fromkeys(workloads, per_sender)),
                Profiler(args.profile, native=args.profile_native),
            )
            results["ingest"] = ingest
            if args.profile:
                results["profile"] = profile_report(args.profile, ingest["runs"])
            for workload, figures in ingest["summary"].items():
                scaling = figures["scaling_2_over_1"]
                overhead = figures.get("nats_1_minus_no_spool_us_per_line")
                targets[f"{workload}_2_routers>=1.6x"] = scaling is not None and scaling >= 1.6
                targets[f"{workload}_overhead<=0.5us"] = overhead is not None and overhead <= 0.5
                targets[f"{workload}_lossless"] = all(
                    run["lossless"] for mode in MODES for run in ingest["runs"][workload][mode]
                )
        if "failover" in only:
            failover = bench_failover(
                tmp,
                args.failover_rounds or (1 if args.quick else 3),
                args.failover_routers,
                args.failover_rate,
                args.lease_ttl,
            )
            results["failover"] = failover
            targets["failover_gap<=ttl+2s"] = failover["gap_s_max"] <= args.lease_ttl + 2
            targets["failover_0_lost"] = failover["lost_total"] == 0
    results["load_1m_after"] = round(os.getloadavg()[0], 2)
    results["targets_met"] = targets
    print(json.dumps(results))
    if not args.quick and not args.no_row:
        append_results(" ".join(["perf/cluster.py", *sys.argv[1:]]), results)


if __name__ == "__main__":
    main()
