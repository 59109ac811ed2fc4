"""What the end-to-end benchmarks share: a real ``logplex serve``, rsyslogd, a syslog sender.

``perf/relay.py`` and ``perf/spool.py`` measure the router as users run it (DESIGN 2, 8, 9):
the console script in its own process with its own data dir, configured through the REST
API, its CPU time and peak RSS read from ``/proc``. This module owns those pieces:

- ``RouterProcess``: ``logplex serve`` on ports chosen by the kernel (read back from the
  ``listening NAME=HOST:PORT`` lines), a fresh API key, its output in a log file; the API
  calls the benchmarks need (channel, drain, drain status, ``/metrics``, ``/healthcheck``).
- ``RsyslogRelay``: Debian's rsyslogd as a relay, imptcp in and omfwd TCP octet-counted out.
- ``syslog_frames`` / ``run_syslog_sender``: octet-counted RFC 5424 frames of exactly
  ``FRAME_BYTES`` bytes, written by a separate process as fast as the socket takes them.
- ``process_cpu_s`` / ``peak_rss_bytes``: another process's CPU (all threads) and VmHWM.

Every child runs this venv's interpreter (``sys.executable``) with ``PYTHONUNBUFFERED``
removed and no ``LOGPLEX_*``/``LOGSHIM_*`` variable inherited.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (the sender child): find the perf package
    sys.path.insert(0, str(ROOT))

from perf.workload import line  # noqa: E402

BIN = Path(sys.executable).parent
LOGPLEX = str(BIN / "logplex")
LOGSHIM = str(BIN / "logshim")
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"

FRAME_BYTES = 200  # every frame a sender writes, octet count included
_FRAMES_PER_BLOCK = 10_000
_CHUNK_BYTES = 256 * 1024
_SYSLOG_LAYOUT = b"<190>1 2026-11-27T20:39:33.%06d+00:00 host %s web.%d - - "


def child_env() -> dict[str, str]:
    """The environment of every child: no PYTHONUNBUFFERED, no inherited LOGPLEX_/LOGSHIM_."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    return env


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` and all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of process ``pid`` so far (VmHWM of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) * 1024
    return 0


def free_port() -> int:
    """A loopback port nothing listens on right now (for peers that cannot report port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    """Wait until something accepts on loopback ``port``; fail when ``process`` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{process.args!r} exited with {process.returncode}") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing listens on port {port} after {timeout_s} s") from None
            time.sleep(0.02)


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; always reaped."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 when it does not exist)."""
    total = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def parse_bytes(text: str) -> int:
    """``1GiB``, ``500MB``, ``20MiB``, ``4096``: a size in bytes (for the flags)."""
    match = re.fullmatch(r"\s*([\d_]+)\s*([KMG]i?B?)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 1GiB, 500MB or 4096")
    unit = (match.group(2) or "").upper().rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "KI": 2**10, "MI": 2**20, "GI": 2**30}
    return int(match.group(1)) * scale[unit]


def percentile(sorted_values: list[int], fraction: float) -> int:
    """The nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- logplex serve ----------------------------------------------------------------------------


class RouterProcess:
    """``logplex serve`` in its own process, data dir ``data_dir``, extra ``flags``.

    Its stdout and stderr go to ``data_dir/../router-N.log`` (a pipe nobody reads would fill
    and stall it). ``started_s`` is when the process was spawned (``time.monotonic``).
    """

    _count = 0

    def __init__(self, data_dir: Path, flags: list[str]) -> None:
        RouterProcess._count += 1
        self.data_dir = data_dir
        self.auth_key = secrets.token_hex(16)
        self.log_path = data_dir.parent / f"router-{RouterProcess._count}.log"
        argv = [LOGPLEX, "serve", "--data-dir", str(data_dir), "--auth-key", self.auth_key]
        argv += [f"--{name}=127.0.0.1:0" for name in ("http", "shim", "syslog")]
        argv += flags
        self.started_s = time.monotonic()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
            )
        self.pid = self.process.pid
        self.addresses = self._read_listening(3)
        self.listening_s = time.monotonic() - self.started_s  # spawn to all ports printed
        self.http = self.addresses["http"]
        self.shim = self.addresses["shim"]
        self.syslog_port = int(self.addresses["syslog"].rsplit(":", 1)[1])

    def _read_listening(self, count: int, timeout_s: float = 60) -> dict[str, str]:
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_path.read_text(errors="replace")
            found = dict(
                row.removeprefix("listening ").split("=", 1)
                for row in text.splitlines()
                if row.startswith("listening ")
            )
            if len(found) >= count:
                return found
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SystemExit(f"logplex serve did not start; its output:\n{text[-4000:]}")
            time.sleep(0.005)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    # -- HTTP ------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://{self.http}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.auth_key}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, payload = self.request(method, path, body)
        if status >= 300:
            raise SystemExit(f"{method} {path}: {status} {payload.decode(errors='replace')}")
        return json.loads(payload) if payload else None

    def wait_healthy(self, timeout_s: float = 120, poll_s: float = 0.01) -> float:
        """Poll ``/healthcheck`` until it answers 200; seconds since the process started."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.request("GET", "/healthcheck")[0] == 200:
                    return time.monotonic() - self.started_s
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"/healthcheck never answered 200:\n{self.log_tail()}")
            time.sleep(poll_s)

    def create_channel(self, name: str = "bench") -> str:
        """Create channel ``name`` with one token ``app``; the token."""
        created = self.api("PUT", f"/v3/channels/{name}", {"tokens": ["app"]})
        return str(created["tokens"]["app"])

    def add_drain(self, url: str, channel: str = "bench") -> int:
        return int(self.api("POST", f"/v3/channels/{channel}/drains", {"url": url})["id"])

    def drain_statuses(self, channel: str = "bench") -> list[dict[str, Any]]:
        drains: list[dict[str, Any]] = self.api("GET", f"/v3/channels/{channel}/drains")
        return [{"url": d["url"], **d["status"]} for d in drains]

    def ingested(self, protocol: str) -> int:
        """``logplex_ingest_messages_total{protocol=…}`` from ``/metrics``."""
        _, text = self.request("GET", "/metrics")
        pattern = rb'^logplex_ingest_messages_total\{protocol="%s"\} ([0-9.e+]+)$'
        match = re.search(pattern % protocol.encode(), text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0

    def wait_ingested(self, protocol: str, count: int, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while self.ingested(protocol) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the router did not ingest {count} lines:\n{self.log_tail()}")
            time.sleep(0.1)

    # -- measurements and end ----------------------------------------------------------------

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def stop(self, timeout_s: float = 30) -> None:
        stop_process(self.process, timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()


# -- rsyslogd ---------------------------------------------------------------------------------

RSYSLOG_RELAY_CONF = """
global(workDirectory="{work}")
module(load="imptcp")
ruleset(name="relay" queue.type="FixedArray" queue.size="100000" queue.dequeueBatchSize="4096") {{
  action(type="omfwd" target="127.0.0.1" port="{sink_port}" protocol="tcp"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
input(type="imptcp" address="127.0.0.1" port="{port}" ruleset="relay"
      SupportOctetCountedFraming="on")
"""


class RsyslogRelay:
    """rsyslogd relaying imptcp on ``port`` to ``sink_port`` (omfwd, TCP, octet-counted).

    The queue is the one ``perf/router_ingest.py`` and the peers' notes use (FixedArray of
    100,000, dequeue batches of 4096); rsyslog blocks its input when it is full, so it loses
    nothing. ``RSYSLOG_SyslogProtocol23Format`` ends every message with LF, as our drain does.
    """

    def __init__(self, work: Path, sink_port: int) -> None:
        if not os.access(RSYSLOGD, os.X_OK):
            raise SystemExit("rsyslogd is not installed (Debian: apt-get install rsyslog)")
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = work / "rsyslog.conf"
        conf.write_text(RSYSLOG_RELAY_CONF.format(work=work, port=self.port, sink_port=sink_port))
        self.log_path = work / "rsyslogd.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(conf), "-i", str(work / "rsyslogd.pid")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
            )
        self.pid = self.process.pid
        wait_listening(self.port, self.process)

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    def peak_rss(self) -> int:
        return peak_rss_bytes(self.pid)

    def stop(self) -> None:
        stop_process(self.process)


# -- the syslog sender ------------------------------------------------------------------------


def syslog_frames(token: bytes, count: int = _FRAMES_PER_BLOCK) -> bytes:
    """``count`` distinct octet-counted frames of exactly ``FRAME_BYTES`` bytes each."""
    frames = []
    for n in range(count):
        head = _SYSLOG_LAYOUT % (n % 1_000_000, token, n % 8)
        msg_bytes = FRAME_BYTES - 4  # "196 " + message
        text = (line(n) + b" " + b"x" * FRAME_BYTES)[: msg_bytes - len(head)]
        frame = b"%d %s%s" % (msg_bytes, head, text)
        assert len(frame) == FRAME_BYTES, len(frame)
        frames.append(frame)
    return b"".join(frames)


def write_repeated(sock: socket.socket, block: bytes, total: int) -> tuple[int, int]:
    """Write ``total`` bytes of ``block`` repeated, in big chunks; the first and last send
    times (ns, realtime)."""
    view = memoryview(block)
    sent = 0
    first_ns = time.time_ns()
    while sent < total:
        offset = sent % len(view)
        size = min(_CHUNK_BYTES, total - sent, len(view) - offset)
        sock.sendall(view[offset : offset + size])
        sent += size
    return first_ns, time.time_ns()


def send_syslog(port: int, lines: int, token: bytes) -> dict[str, Any]:
    """Child mode: write ``lines`` frames to loopback ``port``; the send times (ns, realtime)."""
    sock = socket.create_connection(("127.0.0.1", port))
    first_ns, last_ns = write_repeated(sock, syslog_frames(token), lines * FRAME_BYTES)
    sock.close()
    return {"lines": lines, "first_byte_ns": first_ns, "last_byte_ns": last_ns}


SHIM_LINES_PER_BATCH = 1000


def shim_batch_frames(batches: int, lines_per_batch: int = SHIM_LINES_PER_BATCH) -> list[bytes]:
    """``batches`` BATCH frames (seq 1 on) of ``lines_per_batch`` workload lines, built ahead
    from 64 distinct payloads so that sending costs the sender next to nothing."""
    import zstandard

    from logplex.codecs import shimbatch, shimproto

    compressor = zstandard.ZstdCompressor(level=1)
    distinct = 64
    payloads = []
    for b in range(distinct):
        records = [
            [1_795_000_000_000_000 + n, 1, line(b * lines_per_batch + n)]
            for n in range(lines_per_batch)
        ]
        payloads.append(shimbatch.compress_records(records, compressor))
    return [
        shimproto.encode_batch_payload(seq, payloads[seq % distinct])
        for seq in range(1, batches + 1)
    ]


class ShimSender:
    """A client of the shim stream protocol: HELLO, READY, then frames within the window."""

    def __init__(self, port: int, token: str, stream: str, agent: str) -> None:
        from logplex.codecs import shimproto

        self._proto = shimproto
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(shimproto.encode_hello(token, "web.1", stream, agent))
        self._decoder = shimproto.ShimFrameDecoder(max_frame_bytes=1 << 20)
        ready = self._next_event()
        if not isinstance(ready, shimproto.Ready):
            raise SystemExit(f"the router answered HELLO with {ready!r}")
        self.window = ready.window

    def _next_event(self) -> Any:
        while True:
            event = self._decoder.next_event()
            if event is not None:
                return event
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("the router closed the shim connection")
            self._decoder.feed(data)

    def send(self, frames: list[bytes]) -> None:
        """Send every frame, never more than the window ahead of the ACKs; return once the
        last is ACKed (an ERROR frame ends the sender)."""
        acked = sent = 0
        while acked < len(frames):
            if sent < len(frames) and sent - acked < self.window:
                upto = min(len(frames), acked + self.window)
                self.sock.sendall(b"".join(frames[sent:upto]))
                sent = upto
                continue
            event = self._next_event()
            if isinstance(event, self._proto.Ack):
                acked = event.seq
            elif isinstance(event, self._proto.ErrorFrame):
                raise SystemExit(f"the router refused a batch: {event!r}")

    def close(self) -> None:
        self.sock.close()


def run_syslog_sender(port: int, lines: int, token: str) -> dict[str, Any]:
    """Run the sender in its own process (``perf/harness.py --send-syslog``); its result."""
    done = subprocess.run(
        [sys.executable, __file__, "--send-syslog", str(port), str(lines), token],
        capture_output=True,
        check=True,
        env=child_env(),
        cwd=ROOT,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--send-syslog":
        port_text, lines_text, token_text = sys.argv[2:]
        print(json.dumps(send_syslog(int(port_text), int(lines_text), token_text.encode())))
    else:
        sys.exit("usage: perf/harness.py --send-syslog PORT LINES TOKEN (used by the benchmarks)")
