"""Our syslog drains against receivers nobody here wrote (DESIGN 5.1, 8).

- rsyslog (Debian's ``rsyslogd``, imtcp, the ``ossl`` stream driver for TLS with a trustme
  certificate) receives our TCP and TLS drains; HOSTNAME, APP-NAME, PROCID and MSG are read
  back from the file rsyslog itself wrote with an ``omfile`` template.
- rsyslog stopped for 5 s mid-stream and started again: nothing is lost.
- ``syslog-rfc5424-parser`` parses frames captured from a TCP drain.
- ``heroku-syslog-parser`` parses frames captured from an HTTPS drain.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from drains import Drain, DrainContext, DrainSettings, open_drain

with warnings.catch_warnings():  # both use deprecated names (pyparsing 2, sre_parse)
    warnings.simplefilter("ignore", DeprecationWarning)
    from heroku_syslog_parser import HerokuLogParser
    from syslog_rfc5424_parser import SyslogMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "drains"))  # shared test helpers
from drains_fake_http import FakeHttpReceiver
from drains_support import app_messages, batches, octet_frames

from logplex.codecs.records import Batch

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
TOKEN = "d.2f0c2e4a-3b0a-4a83-9d0e-6b1a3c0f5e11"
TEMPLATE = (
    "%hostname% %app-name% %procid% %msgid% %structured-data% %pri% %timereported:::date-rfc3339%"
    " %msg%\\n"
)

T0 = 1_795_000_000_000_000  # 2026-11-18T11:06:40Z

pytestmark = pytest.mark.peer("rsyslog")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Rsyslog:
    """An rsyslogd of our own: TCP and TLS inputs, every message to one file."""

    def __init__(self, workdir: Path, ca: trustme.CA) -> None:
        if not os.access(RSYSLOGD, os.X_OK):
            pytest.fail("rsyslogd is missing: install it with `make peers` (Debian: rsyslog)")
        drivers = list(Path("/usr/lib").glob("*/rsyslog/lmnsd_ossl.so"))
        if not drivers:
            pytest.fail("rsyslog's TLS driver is missing: apt-get install rsyslog-openssl")
        self.workdir = workdir
        self.out = workdir / "out.log"
        self.pidfile = workdir / "rsyslogd.pid"
        self.tcp_port = free_port()
        self.tls_port = free_port()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(workdir / "ca.pem"))
        cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
        self.conf = workdir / "rsyslog.conf"
        self.conf.write_text(
            f'global(workDirectory="{workdir}"\n'
            f'  DefaultNetstreamDriverCAFile="{workdir}/ca.pem"\n'
            f'  DefaultNetstreamDriverCertFile="{workdir}/cert.pem"\n'
            f'  DefaultNetstreamDriverKeyFile="{workdir}/key.pem")\n'
            'module(load="imtcp")\n'
            f'template(name="fields" type="string" string="{TEMPLATE}")\n'
            f'input(type="imtcp" port="{self.tcp_port}" address="127.0.0.1" ruleset="out")\n'
            f'input(type="imtcp" port="{self.tls_port}" address="127.0.0.1" ruleset="out"\n'
            '  StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")\n'
            'ruleset(name="out") {\n'
            f'  action(type="omfile" file="{self.out}" template="fields")\n'
            "}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(self.pidfile)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in (self.tcp_port, self.tls_port):
            self._wait_listening(port)

    def _wait_listening(self, port: int) -> None:
        for _ in range(200):
            assert self.process is not None
            if self.process.poll() is not None:
                _, err = self.process.communicate()
                pytest.fail(f"rsyslogd exited: {err.decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"rsyslogd did not listen on {port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def lines(self) -> list[list[str]]:
        if not self.out.exists():
            return []
        text = self.out.read_text(errors="replace")
        return [line.split(" ", 7) for line in text.splitlines()]

    async def wait_for_lines(self, count: int, timeout_s: float = 30.0) -> list[list[str]]:
        with trio.fail_after(timeout_s):
            while len(lines := self.lines()) < count:
                await trio.sleep(0.05)
        return lines


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def rsyslog(tmp_path: Path, ca: trustme.CA) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path, ca)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def drain_for(url: str, ca_file: str | None = None, **settings: object) -> Drain:
    return open_drain(
        DrainContext(
            channel="app1",
            drain_id=1,
            token=TOKEN,
            url=url,
            settings=DrainSettings(ca_file=ca_file, **settings),  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize("scheme", ["syslog", "syslog+tls"])
async def test_rsyslog_parses_our_fields(rsyslog: Rsyslog, ca_file: str, scheme: str) -> None:
    port = rsyslog.tcp_port if scheme == "syslog" else rsyslog.tls_port
    drain = drain_for(f"{scheme}://localhost:{port}", ca_file=ca_file, buffer_messages=10_000)
    messages = [
        (
            1_795_000_000_000_000 + i,
            190 if i % 2 else 187,
            b"app",
            b"web.%d" % (i % 3),
            b"hi %d" % i,
        )
        for i in range(2000)
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.run)
        for start in range(0, 2000, 250):
            drain.push_batch(Batch(messages[start : start + 250]))
        await drain.wait_flushed()
        lines = await rsyslog.wait_for_lines(2000)
        nursery.cancel_scope.cancel()
    assert len(lines) == 2000
    for i, (hostname, app, procid, msgid, sd, pri, ts, msg) in enumerate(lines):
        assert hostname == TOKEN
        assert app == "app"
        assert procid == f"web.{i % 3}"
        assert (msgid, sd) == ("-", "-")
        assert pri == ("190" if i % 2 else "187")
        assert ts == f"2026-11-18T11:06:40.{i:06d}+00:00"
        assert msg == f"hi {i}"


async def test_rsyslog_stopped_for_5s_mid_stream_loses_nothing(rsyslog: Rsyslog) -> None:
    drain = drain_for(f"syslog://127.0.0.1:{rsyslog.tcp_port}", buffer_messages=100_000)
    published = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(drain.run)
        for batch in batches(3000, 300, prefix=b"before"):
            drain.push_batch(batch)
            published += len(batch)
            await trio.sleep(0.02)
        await rsyslog.wait_for_lines(published)
        await trio.to_thread.run_sync(rsyslog.stop)
        for batch in batches(3000, 300, prefix=b"during"):
            drain.push_batch(batch)
            published += len(batch)
            await trio.sleep(0.5)
        await trio.to_thread.run_sync(rsyslog.start)
        for batch in batches(3000, 300, prefix=b"after"):
            drain.push_batch(batch)
            published += len(batch)
            await trio.sleep(0.02)
        with trio.fail_after(120):
            await drain.wait_flushed()
        lines = await rsyslog.wait_for_lines(published, timeout_s=60)
        nursery.cancel_scope.cancel()
    received = [line[7] for line in lines]
    lost = sum(int(msg.split()[4]) for msg in received if msg.startswith("Error L10 "))
    unique = {msg for msg in received if not msg.startswith("Error L10 ")}
    assert lost == 0
    assert len(unique) + lost == published == 9000
    status = drain.status()
    assert status.state == "up"
    assert status.delivered >= 9000


async def test_syslog_rfc5424_parser_accepts_captured_tcp_frames() -> None:
    captured = bytearray()

    async def handler(stream: trio.SocketStream) -> None:
        while chunk := await stream.receive_some(65536):
            captured.extend(chunk)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, handler, 0)
        port = listeners[0].socket.getsockname()[1]
        drain = drain_for(f"syslog://127.0.0.1:{port}")
        await nursery.start(drain.run)
        odd = [
            (1_795_000_000_000_000, 172, b"heroku", b"logplex", b"notice"),
            (1_795_000_000_000_001, 190, b"app", b"web.1", "caf\u00e9 \u2603".encode()),
            (1_795_000_000_000_002, 187, b"app", b"worker.3", b""),
            (1_795_000_000_000_003, 190, b"app", b"run.1", b"  leading spaces and [brackets]"),
        ]
        drain.push_batch(Batch(odd + app_messages(5)))
        await drain.wait_flushed()
        with trio.fail_after(10):
            while captured.count(b"\n") < 9:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    frames = octet_frames(bytes(captured))
    parsed = [SyslogMessage.parse(frame.rstrip(b"\n").decode()).as_dict() for frame in frames]
    assert [p["hostname"] for p in parsed] == [TOKEN] * 9
    assert [(p["appname"], p["procid"]) for p in parsed[:4]] == [
        ("heroku", "logplex"),
        ("app", "web.1"),
        ("app", "worker.3"),
        ("app", "run.1"),
    ]
    assert parsed[0]["facility"] == "local5"
    assert parsed[0]["severity"] == "warning"
    assert parsed[1]["msg"] == "caf\u00e9 \u2603"
    assert parsed[3]["msg"] == "  leading spaces and [brackets]"
    assert parsed[4]["timestamp"] == "2026-11-18T11:06:40.000000+00:00"
    assert [p["msg"] for p in parsed[4:]] == [f"line {i}" for i in range(5)]


async def test_heroku_syslog_parser_accepts_captured_https_frames(
    server_tls: ssl.SSLContext, ca_file: str
) -> None:
    receiver = FakeHttpReceiver(ssl_context=server_tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = drain_for(f"https://localhost:{receiver.port}/drain", ca_file=ca_file)
        await nursery.start(drain.run)
        drain.push_batch(
            Batch([*app_messages(3), (1_795_000_000_000_000, 187, b"app", b"worker.2", b"boom")])
        )
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    frames = [f for r in receiver.requests for f in octet_frames(r.body)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        parsed = [HerokuLogParser.parse(frame.decode()) for frame in frames]
    assert [(p["appname"], p["procname"], p["msg"].rstrip("\n")) for p in parsed] == [
        ("app", "web.1", "line 0"),
        ("app", "web.1", "line 1"),
        ("app", "web.1", "line 2"),
        ("app", "worker.2", "boom"),
    ]
    assert {p["hostname"] for p in parsed} == {"host"}
    assert {p["pri"] for p in parsed} == {190, 187}
    assert parsed[0]["timestamp"] == "2026-11-18T11:06:40.000000+00:00"
