"""The chaos suite's moving parts: real processes, fault injectors of our own, accounting.

Processes (each restartable on the same ports and files):

- ``Router``: ``logplex serve`` with explicit ports and data dir, killed with SIGKILL or
  stopped with SIGTERM, started again on the same addresses.
- ``Sink``: one ``logplex sink`` over TLS (trustme), ``--jsonl``; both channels' HTTPS
  drains end there and are told apart by drain token.
- ``Rsyslog``: an ``rsyslogd`` of our own (imptcp, one ``omfile`` per run so each run's
  output is its own file).
- ``Shim``: ``logshim`` around ``chaos_emitter.py``.

Fault injectors (in the test process, on trio):

- ``HttpFront``: a TLS + h11 front of an HTTPS drain. ``proxy`` forwards each post to the
  sink and answers what the sink answered; ``5xx`` answers 503 itself; ``down`` closes the
  listener and every connection (the router gets connection refused). It logs every post's
  ``Logplex-Frame-Id`` and the answer, which proves retries with the same Frame-Id.
- ``SlowProxy``: a TCP proxy whose ``slow`` mode reads the drain's bytes a little at a time
  through a small receive buffer; it counts reads that found a full chunk waiting, which
  proves the sender was held back by us.
- ``CutProxy``: a TCP proxy between the shims and the router; ``cut_all`` closes every
  connection, ``hold`` stops forwarding the shims' bytes (used to let the drains go idle).

Accounting (DESIGN 8): every received message is classified as an app line (by its id), a
shim lifecycle notice (by ps and kind) or a loss notice (``LOSS``, N summed); ``Tally``
counts delivered (unique), duplicated and reported, and checks each line's bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h11
import httpx
import pytest
import trio
import trustme

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
EMITTER = HERE / "chaos_emitter.py"
RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
LOSS = re.compile(r"Error L1[0-3] \([^)]*\)(?: -> This tail session dropped|:) (\d+) messages")
APP_LINE = re.compile(r"s(\d+) n(\d{7}) ([0-9a-f]*)")
AUTH_KEY = "chaos-suite-key-0123456789abcdef"

sys.path.insert(0, str(HERE))
from chaos_emitter import line_for  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGPLEX_", "LOGSHIM_"))}
    env.pop("PYTHONUNBUFFERED", None)
    env["LOGPLEX_DATA_DIR"] = str(tmp_path / "data")
    return env


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    timeout_s: float,
    poll_s: float = 0.1,
) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = trio.current_time() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if trio.current_time() > deadline:
            pytest.fail(f"waited {timeout_s:.0f} s for {what}")
        await trio.sleep(poll_s)


async def wait_progress(
    done: Callable[[], bool], progress: Callable[[], object], stall_s: float, timeout_s: float
) -> bool:
    """Wait until ``done``; give up early when ``progress()`` has not changed for ``stall_s``.

    Returns whether ``done`` held. Used for convergence: a broken run ends quickly instead of
    at the overall deadline, and a slow but moving run gets all the time it needs.
    """
    deadline = trio.current_time() + timeout_s
    last, last_change = progress(), trio.current_time()
    while not done():
        now = trio.current_time()
        if now > deadline:
            return False
        current = progress()
        if current != last:
            last, last_change = current, now
        elif now - last_change > stall_s:
            return False
        await trio.sleep(0.25)
    return True


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


@dataclass
class TlsFiles:
    ca: str
    cert: str
    key: str
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


def make_tls(tmp_path: Path) -> TlsFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = [str(tmp_path / name) for name in ("ca.pem", "cert.pem", "key.pem")]
    ca.cert_pem.write_to_path(paths[0])
    cert.cert_chain_pems[0].write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(cafile=paths[0])
    return TlsFiles(paths[0], paths[1], paths[2], server, client)


class Process:
    """A child process with its output in files (pipes could fill and block it)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.process: trio.Process | None = None
        self.runs = 0
        self.exit_codes: list[int] = []
        self._files: list[IO[bytes]] = []

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"{self.name}.{self.runs}.stderr"

    async def start(self) -> None:
        self.runs += 1
        out = open(self.workdir / f"{self.name}.{self.runs}.stdout", "wb")  # noqa: SIM115
        err = open(self.stderr_path, "wb")  # noqa: SIM115
        self._files += [out, err]
        self.process = await trio.lowlevel.open_process(
            self.argv, stdout=out, stderr=err, env=self.env, stdin=subprocess.DEVNULL
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            err = self.stderr_path.read_text(errors="replace")[-3000:]
            pytest.fail(f"{self.name} exited with {self.process.returncode}: {err}")

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        with trio.move_on_after(timeout_s):
            await self.process.wait()
        if self.process.poll() is None:
            self.process.kill()
            await self.process.wait()
        code = self.process.returncode
        self.exit_codes.append(code)
        for handle in self._files:
            handle.close()
        self._files.clear()
        return code

    def stderr_text(self) -> str:
        return "".join(
            (self.workdir / f"{self.name}.{run}.stderr").read_text(errors="replace")
            for run in range(1, self.runs + 1)
        )


class Router(Process):
    def __init__(
        self, tmp_path: Path, env: dict[str, str], tls: TlsFiles, extra: list[str]
    ) -> None:
        self.http_port, self.shim_port, self.syslog_port = free_port(), free_port(), free_port()
        argv = [str(BIN / "logplex"), "serve", "--drain-ca-file", tls.ca]
        argv += ["--data-dir", str(tmp_path / "data"), "--auth-key", AUTH_KEY]
        argv += [f"--http=127.0.0.1:{self.http_port}", f"--shim=127.0.0.1:{self.shim_port}"]
        argv += [f"--syslog=127.0.0.1:{self.syslog_port}", *extra]
        super().__init__("router", argv, env, tmp_path)
        self.api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.http_port}",
            headers={"Authorization": f"Bearer {AUTH_KEY}"},
            timeout=10,
        )

    async def start(self) -> None:
        await super().start()

        async def healthy() -> bool:
            self.check_alive()
            try:
                return (await self.api.get("/healthcheck")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(healthy, "the router's /healthcheck", 60, poll_s=0.1)

    async def kill(self) -> int:
        """SIGKILL, as a crash: nothing gets to run."""
        return await self.stop(signal.SIGKILL)

    async def drain_statuses(self, channel: str) -> list[dict[str, Any]] | None:
        try:
            response = await self.api.get(f"/v3/channels/{channel}/drains")
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    async def metrics(self) -> str:
        return (await self.api.get("/metrics")).text


class Sink(Process):
    def __init__(self, tmp_path: Path, env: dict[str, str], tls: TlsFiles) -> None:
        self.port = free_port()
        self.jsonl = tmp_path / "sink.jsonl"
        argv = [str(BIN / "logplex"), "sink", "--listen", f"127.0.0.1:{self.port}"]
        argv += ["--tls-cert", tls.cert, "--tls-key", tls.key, "--jsonl", str(self.jsonl)]
        super().__init__("sink", argv, env, tmp_path)

    async def start(self) -> None:
        await super().start()
        await wait_until(lambda: self.check_alive() or port_open(self.port), "the sink", 30)

    def records(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        text = self.jsonl.read_text()
        return [json.loads(row) for row in text.splitlines()[: text.count("\n")]]


class Rsyslog(Process):
    """rsyslogd with imptcp; run k writes ``rsyslog-out.k.log`` (``SOURCE PS MSG``)."""

    def __init__(self, tmp_path: Path) -> None:
        if not os.access(RSYSLOGD, os.X_OK):
            pytest.fail("rsyslogd is missing: install it with `make peers` (Debian: rsyslog)")
        self.port = free_port()
        self.dir = tmp_path / "rsyslog"
        self.dir.mkdir()
        self.conf = self.dir / "rsyslog.conf"
        argv = [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.dir / "pid")]
        super().__init__("rsyslog", argv, dict(os.environ), tmp_path)

    def out_path(self, run: int) -> Path:
        return self.dir / f"out.{run}.log"

    async def start(self) -> None:
        self.conf.write_text(
            f'global(workDirectory="{self.dir}")\n'
            'module(load="imptcp")\n'
            'template(name="fields" type="string" string="%app-name% %procid% %msg%\\n")\n'
            f'input(type="imptcp" port="{self.port}" address="127.0.0.1" ruleset="out")\n'
            'ruleset(name="out") {\n'
            f'  action(type="omfile" file="{self.out_path(self.runs + 1)}" template="fields")\n'
            "}\n"
        )
        await super().start()
        await wait_until(lambda: self.check_alive() or port_open(self.port), "rsyslogd", 30)

    def lines(self) -> list[str]:
        rows: list[str] = []
        for run in range(1, self.runs + 1):
            path = self.out_path(run)
            if path.exists():
                text = path.read_text(errors="replace")
                rows += text.splitlines()[: text.count("\n")]
        return rows


class Shim(Process):
    def __init__(
        self,
        tmp_path: Path,
        env: dict[str, str],
        number: int,
        url: str,
        tokens: dict[str, str],
        rate: float,
        pad_chars: int,
    ) -> None:
        self.number = number
        self.ps = f"web.{number}"
        self.pad_chars = pad_chars
        self.stop_file = tmp_path / f"stop.{number}"
        self.count_file = tmp_path / f"count.{number}"
        argv = [str(BIN / "logshim"), "--url", url, "--no-tee", "--ps", self.ps]
        argv += ["--flush-timeout", "20", "--", sys.executable, str(EMITTER)]
        argv += [str(number), str(rate), str(pad_chars), str(self.stop_file)]
        argv += [str(self.count_file)]
        shim_env = {
            **env,
            "LOGPLEX_TOKEN": tokens["app"],
            "LOGPLEX_PLATFORM_TOKEN": tokens["heroku"],
        }
        super().__init__(f"shim{number}", argv, shim_env, tmp_path)

    async def finish(self, timeout_s: float = 60.0) -> int:
        """Tell the app to stop, wait for the shim to ship and exit; the app's line count."""
        self.stop_file.touch()
        assert self.process is not None
        with trio.fail_after(timeout_s):
            await self.process.wait()
        await self.stop()
        return int(self.count_file.read_text())


# ---------------------------------------------------------------------------------------
# Fault injectors


@dataclass(frozen=True, slots=True)
class PostRecord:
    frame_id: str
    msg_count: int
    status: int
    at_s: float


class HttpFront:
    """TLS + h11 in front of the sink: ``proxy``, ``5xx`` (answer 503) or ``down``."""

    def __init__(self, tls: TlsFiles, upstream_port: int) -> None:
        self.port = free_port()
        self.tls = tls
        self.mode = "proxy"
        self.posts: list[PostRecord] = []
        self.connections = 0
        self._up = trio.Event()
        self._up.set()
        self._scope: trio.CancelScope | None = None
        self._client = httpx.AsyncClient(
            base_url=f"https://127.0.0.1:{upstream_port}", verify=tls.client_context, timeout=30
        )

    def set_mode(self, mode: str) -> None:
        assert mode in ("proxy", "5xx", "down")
        self.mode = mode
        if mode == "down":
            self._up = trio.Event()
            if self._scope is not None:
                self._scope.cancel()
        else:
            self._up.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            while True:
                await self._up.wait()
                listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
                with trio.CancelScope() as scope:
                    self._scope = scope
                    async with trio.open_nursery() as nursery:
                        await nursery.start(trio.serve_listeners, self._serve, listeners)
                        if not started:
                            started = True
                            task_status.started()
                self._scope = None
        finally:
            await self._client.aclose()

    async def _serve(self, tcp: trio.SocketStream) -> None:
        self.connections += 1
        stream = trio.SSLStream(tcp, self.tls.server_context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(stream, conn)
                if request is None:
                    return
                status, payload, headers = await self._answer(request, body)
                data = conn.send(h11.Response(status_code=status, headers=headers))
                data += conn.send(h11.Data(data=payload)) if payload else b""
                data += conn.send(h11.EndOfMessage())
                await stream.send_all(data)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError, OSError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    @staticmethod
    async def _read_request(
        stream: trio.SSLStream[trio.SocketStream], conn: h11.Connection
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, bytes(body)
            else:  # ConnectionClosed or PAUSED
                return None, b""

    async def _answer(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        frame_id = headers.get("logplex-frame-id", "")
        count = int(headers.get("logplex-msg-count", "0"))
        if self.mode != "proxy":
            status, payload = 503, b'{"error": "chaos: unavailable"}'
            answer = [("Content-Length", str(len(payload))), ("Retry-After", "1")]
        else:
            forward = {
                k: v
                for k, v in headers.items()
                if k not in ("host", "content-length", "connection")
            }
            try:
                response = await self._client.post(
                    request.target.decode(), content=body, headers=forward
                )
                status, payload = response.status_code, response.content
            except httpx.HTTPError:
                status, payload = 502, b'{"error": "chaos: sink unreachable"}'
            answer = [("Content-Length", str(len(payload)))] if status != 204 else []
        self.posts.append(PostRecord(frame_id, count, status, time.monotonic()))
        return status, payload, answer

    def retried_after_5xx(self) -> set[str]:
        """Frame-Ids answered 503 and later delivered (2xx) with the same Frame-Id."""
        refused = {p.frame_id for p in self.posts if p.status == 503}
        return {p.frame_id for p in self.posts if 200 <= p.status < 300 and p.frame_id in refused}


class Pipe:
    """One proxied connection; ``cut`` closes both sides."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()


class CutProxy:
    """TCP proxy shims → router: cut every connection on demand, or hold the shims' bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.pipes: set[Pipe] = set()
        self.accepted = 0
        self.upstream_connected = 0
        self.cuts_with_connections = 0
        self._released = trio.Event()
        self._released.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    def cut_all(self) -> int:
        cut = len(self.pipes)
        for pipe in self.pipes:
            pipe.scope.cancel()
        if cut:
            self.cuts_with_connections += 1
        return cut

    def hold(self) -> None:
        self._released = trio.Event()

    def release(self) -> None:
        self._released.set()

    async def _serve(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        pipe = Pipe()
        try:
            with pipe.scope:
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
                except OSError:
                    return
                self.upstream_connected += 1
                self.pipes.add(pipe)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, True, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, client, False, nursery.cancel_scope)
        finally:
            self.pipes.discard(pipe)
            await trio.aclose_forcefully(client)

    async def _pump(
        self,
        source: trio.SocketStream,
        target: trio.SocketStream,
        from_shim: bool,
        both: trio.CancelScope,
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                if from_shim:
                    await self._released.wait()
                await target.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()


class SlowProxy:
    """TCP proxy router → sink; in ``slow`` mode it reads ``chunk_bytes`` per ``pause_s``."""

    def __init__(self, upstream_port: int, chunk_bytes: int = 2048, pause_s: float = 0.1) -> None:
        self.port = free_port()
        self.upstream_port = upstream_port
        self.chunk_bytes = chunk_bytes
        self.pause_s = pause_s
        self.slow = False
        self.slow_reads = 0
        self.saturated_slow_reads = 0  # a full chunk was already waiting: the sender waits on us

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Small windows (inherited by accepted sockets): backpressure reaches the sender soon.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        task_status.started()
        await trio.serve_listeners(self._serve, [trio.SocketListener(sock)])

    async def _serve(self, client: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError:
            await client.aclose()
            return
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._slow_pump, client, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _slow_pump(
        self, source: trio.SocketStream, target: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while True:
                if self.slow:
                    await trio.sleep(self.pause_s)
                    data = await source.receive_some(self.chunk_bytes)
                    self.slow_reads += 1
                    if len(data) == self.chunk_bytes:
                        self.saturated_slow_reads += 1
                else:
                    data = await source.receive_some(65536)
                if not data:
                    break
                await target.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()

    async def _pump(
        self, source: trio.SocketStream, target: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await target.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()


# ---------------------------------------------------------------------------------------
# Tails and status


@dataclass
class TailSession:
    """One live tail session: ``(source, ps, msg)`` in arrival order."""

    channel: str
    url: str
    received: list[tuple[str, str, str]] = field(default_factory=list)
    ended: str | None = None


async def open_tail(router: Router, channel: str, nursery: trio.Nursery) -> TailSession:
    created = await router.api.post(
        "/v3/sessions", json={"channel_id": channel, "tail": True, "num": 0}
    )
    assert created.status_code == 201, created.text
    session = TailSession(channel, created.json()["url"])
    await nursery.start(_read_tail, session)
    return session


async def _read_tail(session: TailSession, task_status: trio.TaskStatus[None]) -> None:
    try:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=None)) as client,
            client.stream("GET", session.url) as response,
        ):
            assert response.status_code == 200
            task_status.started()
            async for line in response.aiter_lines():
                # TS SOURCE[PS]: MSG
                _, rest = line.split(" ", 1)
                head, msg = rest.split(": ", 1)
                source, ps = head.rstrip("]").split("[", 1)
                session.received.append((source, ps, msg))
        session.ended = "closed"
    except httpx.HTTPError as exc:
        session.ended = type(exc).__name__


@dataclass(frozen=True, slots=True)
class StatusSample:
    at_s: float
    faults: frozenset[str]
    drain: str  # label given by the test
    state: str
    buffered: int
    dropped: int
    last_error: str | None


class StatusWatch:
    """Polls every drain's status; samples are tagged with the faults active at the time."""

    def __init__(self, router: Router, labels: dict[tuple[str, str], str]) -> None:
        self.router = router
        self.labels = labels  # (channel, drain id) -> label
        self.faults: set[str] = set()
        self.samples: list[StatusSample] = []

    async def run(self) -> None:
        channels = sorted({channel for channel, _ in self.labels})
        while True:
            for channel in channels:
                statuses = await self.router.drain_statuses(channel)
                for drain in statuses or []:
                    label = self.labels.get((channel, str(drain["id"])))
                    if label is None:
                        continue
                    status = drain["status"]
                    self.samples.append(
                        StatusSample(
                            time.monotonic(),
                            frozenset(self.faults),
                            label,
                            status["state"],
                            status["buffered"],
                            status["dropped"],
                            status["last_error"],
                        )
                    )
            await trio.sleep(0.25)

    def states_during(self, label: str, fault: str) -> Counter[str]:
        return Counter(s.state for s in self.samples if s.drain == label and fault in s.faults)

    def failing_seen(self, label: str, fault: str) -> bool:
        """Whether the drain was seen ``degraded`` or ``down`` while ``fault`` was active."""
        states = self.states_during(label, fault)
        return states["degraded"] + states["down"] > 0

    def latest(self, label: str) -> StatusSample:
        return [s for s in self.samples if s.drain == label][-1]


# ---------------------------------------------------------------------------------------
# Accounting


@dataclass
class Published:
    """What the shims published: app line counts by shim number, and each shim's ps."""

    counts: dict[int, int]
    pad_chars: int

    def total(self) -> int:
        return sum(self.counts.values()) + 2 * len(self.counts)  # + Starting / Process exited


@dataclass
class Tally:
    """What one drain or tail received, classified."""

    name: str
    published: Published
    occurrences: Counter[str] = field(default_factory=Counter)
    reported: int = 0
    bad_bytes: list[str] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    foreign_duplicates: list[str] = field(default_factory=list)  # HTTPS: not a replayed Frame-Id
    _frame_ids: dict[str, set[str]] = field(default_factory=dict)

    def add(self, source: str, ps: str, msg: str, frame_id: str | None = None) -> None:
        loss = LOSS.match(msg)
        if loss:
            self.reported += int(loss.group(1))
            return
        key = self._key(source, ps, msg)
        if key is None:
            self.strays.append(f"{source}[{ps}]: {msg}"[:200])
            return
        if frame_id is not None:
            seen = self._frame_ids.setdefault(key, set())
            if self.occurrences[key] and frame_id not in seen:
                self.foreign_duplicates.append(f"{key} under {frame_id} after {sorted(seen)}")
            seen.add(frame_id)
        self.occurrences[key] += 1

    def _key(self, source: str, ps: str, msg: str) -> str | None:
        app = APP_LINE.fullmatch(msg)
        if app:
            shim, counter = int(app.group(1)), int(app.group(2))
            if ps != f"web.{shim}" or source != "app":
                return None
            if msg != line_for(shim, counter, self.published.pad_chars):
                self.bad_bytes.append(msg[:200])
            return f"s{shim} n{counter}"
        if source == "heroku" and msg.startswith("Starting process with command "):
            return f"{ps} start"
        if source == "heroku" and msg.startswith("Process exited with status "):
            return f"{ps} exit"
        return None

    def expected_keys(self) -> set[str]:
        keys = set()
        for shim, count in self.published.counts.items():
            keys |= {f"s{shim} n{n}" for n in range(count)}
            keys |= {f"web.{shim} start", f"web.{shim} exit"}
        return keys

    @property
    def delivered(self) -> int:
        return len(self.occurrences.keys() & self.expected_keys())

    @property
    def duplicated(self) -> int:
        return sum(self.occurrences.values()) - len(self.occurrences)

    @property
    def lost(self) -> int:
        return self.published.total() - self.delivered

    def unexpected(self) -> set[str]:
        return self.occurrences.keys() - self.expected_keys()

    def summary(self) -> dict[str, int]:
        return {
            "published": self.published.total(),
            "delivered": self.delivered,
            "duplicated": self.duplicated,
            "reported": self.reported,
            "lost": self.lost,
        }

    def check_clean(self, *, duplicates_allowed: bool) -> None:
        """What must hold in every case: right bytes, nothing foreign, duplicates as allowed."""
        assert not self.bad_bytes, f"{self.name}: lines changed on the way: {self.bad_bytes[:3]}"
        assert not self.strays, f"{self.name}: messages nobody published: {self.strays[:3]}"
        assert not self.unexpected(), f"{self.name}: ids beyond the published: {self.unexpected()}"
        assert not self.foreign_duplicates, (
            f"{self.name}: a line came again under another Frame-Id: {self.foreign_duplicates[:3]}"
        )
        if not duplicates_allowed:
            assert self.duplicated == 0, (self.name, self.summary())


def https_tally(
    name: str, published: Published, records: list[dict[str, Any]], token: str
) -> Tally:
    tally = Tally(name, published)
    for record in records:
        if record["drain_token"] == token:
            tally.add(record["source"], record["ps"], record["msg"], record["frame_id"])
    return tally


def syslog_tally(name: str, published: Published, lines: list[str]) -> Tally:
    tally = Tally(name, published)
    for line in lines:
        source, ps, msg = line.split(" ", 2)
        tally.add(source, ps, msg)
    return tally


def tail_tally(name: str, published: Published, session: TailSession) -> Tally:
    tally = Tally(name, published)
    for source, ps, msg in session.received:
        tally.add(source, ps, msg)
    return tally


def per_shim_in_order(session: TailSession) -> bool:
    """Within one tail session every shim's app lines arrive in counter order."""
    last: dict[str, int] = {}
    for _, ps, msg in session.received:
        app = APP_LINE.fullmatch(msg)
        if app:
            counter = int(app.group(2))
            if counter <= last.get(ps, -1):
                return False
            last[ps] = counter
    return True


def rate_for(total_lines_per_s: float, shims: int) -> float:
    return math.floor(total_lines_per_s / shims)
