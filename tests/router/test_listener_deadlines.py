"""Deadlines and connection caps of the shim, syslog and HTTP listeners.

Unit tests drive the listeners in virtual time with a peer that trickles one byte per
second; the process tests run a real ``logplex serve`` with short timeouts and small caps,
attack it from 127.0.0.2 with raw sockets, and check with the Canary (a real shim, a tail
and a health probe on 127.0.0.1) that nobody else noticed.
"""

from __future__ import annotations

import math
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from canary import Canary
from dataplane_helpers import ShimTestClient
from spool.conftest import KEY, Serve

from logplex import metrics
from logplex.codecs import shimproto
from logplex.codecs.octet import encode_octet_frame
from logplex.config.records import ChannelConfig
from logplex.fanout.router import Router
from logplex.ingest.shim import ShimListener, ShimListenerSettings
from logplex.ingest.syslog import SyslogListener, SyslogListenerSettings, next_deadlines
from logplex.serve.limits import ConnectionCaps, OpenFilesLimit, connection_caps, describe_caps

TOKEN = "t.11111111-1111-4111-8111-111111111111"
SYSLOG_FRAME = b"<190>1 2026-11-27T20:39:33+00:00 host " + TOKEN.encode() + b" web.1 - - hi"


def make_router() -> Router:
    router = Router(history_lines=1000)
    router.apply_channel(ChannelConfig("app1", {"app": TOKEN}))
    return router


def deadline_closes(listener: str, deadline: str) -> float:
    return metrics.DEADLINE_CLOSES.labels(listener=listener, deadline=deadline)._value.get()


async def trickle_until_closed(stream: trio.abc.Stream, data: bytes, interval_s: float) -> float:
    """Send ``data`` one byte per ``interval_s`` (then wait) until the peer closes; the
    time it took."""
    began = trio.current_time()
    for byte in data:
        try:
            await stream.send_all(bytes([byte]))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return trio.current_time() - began
        await trio.sleep(interval_s)
    await stream.receive_some(100)
    return trio.current_time() - began


# -- syslog: idle counted from the last complete frame, and a frame deadline -------------


INF = math.inf


@pytest.mark.parametrize(
    ("completed", "partial", "idle_before", "frame_before", "expected"),
    [
        # a frame completed, nothing held: idle moves on, no frame deadline
        (True, False, 300.0, INF, (1300.0, INF)),
        # bytes of a frame begun now: its deadline starts now, idle stays
        (False, True, 300.0, INF, (300.0, 1030.0)),
        # more bytes of the same frame: neither deadline moves
        (False, True, 300.0, 1010.0, (300.0, 1010.0)),
        # frames completed and the next one begun: both from now
        (True, True, 300.0, 1010.0, (1300.0, 1030.0)),
        # the held frame completed exactly: no frame deadline
        (True, False, 300.0, 1010.0, (1300.0, INF)),
    ],
)
def test_next_syslog_deadlines(
    completed: bool,
    partial: bool,
    idle_before: float,
    frame_before: float,
    expected: tuple[float, float],
) -> None:
    assert (
        next_deadlines(
            1000.0,
            frames_completed=completed,
            partial_frame=partial,
            idle_deadline_s=idle_before,
            frame_deadline_s=frame_before,
            idle_timeout_s=300.0,
            frame_timeout_s=30.0,
        )
        == expected
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encode_octet_frame(SYSLOG_FRAME), id="a frame"),
        pytest.param(b"x" * 200, id="garbage"),
    ],
)
async def test_syslog_trickler_is_closed_at_the_frame_deadline_whatever_the_idle_one(
    data: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    """Before: the 300 s idle timer restarted on every byte, so 1 byte/s kept it forever."""
    listener = SyslogListener(
        make_router(), SyslogListenerSettings(idle_timeout_s=300, frame_timeout_s=30)
    )
    before = deadline_closes("syslog", "frame")
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        # The frame is cut one byte short: it never completes.
        took_s = await trickle_until_closed(client, data[:-1], interval_s=1.0)
    assert took_s == pytest.approx(30, abs=1.5)
    assert deadline_closes("syslog", "frame") == before + 1


async def test_syslog_idle_counts_from_the_last_complete_frame(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = make_router()
    listener = SyslogListener(router, SyslogListenerSettings(idle_timeout_s=60, frame_timeout_s=30))
    before = deadline_closes("syslog", "idle")
    client, server = trio.testing.memory_stream_pair()
    frame = encode_octet_frame(SYSLOG_FRAME)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        began = trio.current_time()
        # Whole frames, each sent over 20 s (under the frame deadline): the connection lives
        # as long as frames keep completing.
        for _ in range(5):
            for start in range(0, len(frame), 20):
                await client.send_all(frame[start : start + 20])
                await trio.sleep(20 / math.ceil(len(frame) / 20))
        completed_at_s = trio.current_time()
        assert completed_at_s - began >= 100
        # Then a frame begun and never completed: closed at its own deadline, 30 s.
        await client.send_all(b"5")
        assert await client.receive_some(10) == b""
        assert trio.current_time() - completed_at_s == pytest.approx(30, abs=0.5)
    assert len(router.history("app1")) == 5
    assert deadline_closes("syslog", "idle") == before  # the frame deadline came first

    listener = SyslogListener(router, SyslogListenerSettings(idle_timeout_s=60, frame_timeout_s=30))
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        await client.send_all(frame)
        began = trio.current_time()
        assert await client.receive_some(10) == b""
        assert trio.current_time() - began == pytest.approx(60)
    assert deadline_closes("syslog", "idle") == before + 1


# -- shim: HELLO and frame deadlines against a trickler ----------------------------------


async def test_shim_trickler_before_hello_is_closed_at_the_hello_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = ShimListener(make_router(), ShimListenerSettings(hello_timeout_s=10))
    before = deadline_closes("shim", "hello")
    client, server = trio.testing.memory_stream_pair()
    hello = shimproto.encode_hello(TOKEN, "web.1", "5b0c1c32", "logshim/test")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        took_s = await trickle_until_closed(client, hello[:-1], interval_s=1.0)
    assert took_s == pytest.approx(10, abs=1.5)
    assert deadline_closes("shim", "hello") == before + 1


async def test_shim_trickler_inside_a_batch_is_closed_at_the_frame_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    listener = ShimListener(
        make_router(), ShimListenerSettings(frame_timeout_s=20, idle_ping_s=300)
    )
    before = deadline_closes("shim", "frame")
    client_end, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        client = ShimTestClient(client_end)
        assert isinstance(await client.hello(TOKEN), shimproto.Ready)
        batch = client.batch(1, [b"line %d" % n for n in range(50)])
        took_s = await trickle_until_closed(client_end, batch[:-1], interval_s=1.0)
    assert took_s == pytest.approx(20, abs=1.5)
    assert deadline_closes("shim", "frame") == before + 1


# -- the real router: every listener against tricklers, and the caps ---------------------


ATTACKER = "127.0.0.2"
SLACK_S = 4.0  # a loaded 2-core machine


def attacker_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((ATTACKER, 0))
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    return sock


def trickle(port: int, data: bytes, results: dict[str, float], name: str) -> None:
    """Send one byte per second until the router closes the connection; record when."""
    began = time.monotonic()
    with attacker_socket(port) as sock:
        sock.settimeout(1.0)
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        results[name] = time.monotonic() - began


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def canary_for(serve: Serve, token: str) -> Canary:
    return Canary(serve.api, f"127.0.0.1:{serve.ports['shim']}", token, "canary", auth_key=KEY)


def started_router(tmp_path: Path, *args: str) -> tuple[Serve, str]:
    serve = Serve(tmp_path / "data", *args)
    serve.start()
    return serve, serve.create_channel("canary")


def test_every_listener_closes_a_one_byte_per_second_trickler(tmp_path: Path) -> None:
    serve, token = started_router(
        tmp_path,
        *("--http-idle-timeout", "2", "--syslog-frame-timeout", "2"),
        *("--shim-hello-timeout", "2", "--shim-frame-timeout", "2"),
    )
    try:
        hello = shimproto.encode_hello(token, "web.1", "5b0c1c32", "logshim/test")
        attacks = {
            "http head": (serve.ports["http"], b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n" * 3),
            "syslog frame": (serve.ports["syslog"], b"300 <190>1 " + b"x" * 60),
            "shim hello": (serve.ports["shim"], hello[:-1]),
        }
        results: dict[str, float] = {}
        with canary_for(serve, token) as canary:
            canary.wait_for_lines(20)
            threads = [
                threading.Thread(target=trickle, args=(port, data, results, name))
                for name, (port, data) in attacks.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            # The API is HTTP/1.1 only: the HTTP/2 preface is refused, not served.
            with attacker_socket(serve.ports["http"]) as h2:
                h2.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00" * 4)
                assert read_all(h2).startswith(b"HTTP/1.1 505 ")
        for name in attacks:
            assert 1.5 <= results[name] <= 2 + SLACK_S, (name, results)
        assert serve.metric('logplex_deadline_closes_total{deadline="head",listener="http"}') >= 1
        assert (
            serve.metric('logplex_deadline_closes_total{deadline="frame",listener="syslog"}') >= 1
        )
        assert serve.metric('logplex_deadline_closes_total{deadline="hello",listener="shim"}') >= 1
    finally:
        assert serve.stop() == 0


def test_connections_past_the_per_address_cap_are_refused_on_every_listener(
    tmp_path: Path,
) -> None:
    """Before: one address could open as many connections as the listener's whole cap."""
    cap = 5  # the canary's tail and probe, and the test's own API calls, come from 127.0.0.1
    serve, token = started_router(tmp_path, "--max-connections-per-ip", str(cap))
    held: list[socket.socket] = []
    try:
        with canary_for(serve, token) as canary:
            canary.wait_for_lines(20)
            for name in ("http", "shim", "syslog"):
                held.extend(attacker_socket(serve.ports[name]) for _ in range(cap))
            # The listener accepts in its own time: a request on each held HTTP connection
            # shows all of them were admitted before the next one comes.
            for sock in held[:cap]:
                sock.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")

            with attacker_socket(serve.ports["http"]) as extra:
                extra.sendall(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = read_all(extra)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert re.search(rb"(?i)\r\nretry-after: \d+\r\n", answer), answer
            assert re.search(rb"(?i)\r\nconnection: close\r\n", answer), answer
            assert b"max_connections_per_ip" in answer

            with attacker_socket(serve.ports["shim"]) as extra:
                decoder = shimproto.ShimFrameDecoder(1 << 20)
                decoder.feed(read_all(extra))
                error = decoder.next_event()
            assert isinstance(error, shimproto.ErrorFrame), error
            assert error.code == "overloaded"
            assert "max_connections_per_ip" in error.message

            with attacker_socket(serve.ports["syslog"]) as extra:
                assert read_all(extra) == b""  # closed at once

            # Released on close: the address may connect again.
            held.pop(0).close()
            deadline = time.monotonic() + 30
            while True:
                with attacker_socket(serve.ports["http"]) as again:
                    again.sendall(
                        b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    if read_all(again).startswith(b"HTTP/1.1 200"):
                        break
                assert time.monotonic() < deadline, "the closed connection was never released"
                time.sleep(0.1)
        refused = serve.metric('logplex_limit_refusals_total{limit="max_connections_per_ip"}')
        assert refused >= 3
    finally:
        for sock in held:
            sock.close()
        assert serve.stop() == 0
    assert "connection(s) refused" in serve.stderr()


# -- the caps of each listener -------------------------------------------------------------


@pytest.mark.parametrize(
    ("open_files", "max_connections", "expected"),
    [
        (1024, None, ConnectionCaps(shim=352, syslog=352, http=128)),
        (1024, 100, ConnectionCaps(shim=100, syslog=100, http=100)),
        (1024, 200, ConnectionCaps(shim=200, syslog=200, http=128)),  # never raised
        (1 << 20, None, ConnectionCaps(shim=10_000, syslog=10_000, http=10_000)),
        (100, None, ConnectionCaps(shim=1, syslog=1, http=64)),
    ],
)
def test_connection_caps(
    open_files: int, max_connections: int | None, expected: ConnectionCaps
) -> None:
    assert connection_caps(open_files, max_connections) == expected


def test_a_max_connections_above_the_fitted_caps_is_said_at_start() -> None:
    limit = OpenFilesLimit(1024, 1024, 1024)
    line = describe_caps(limit, connection_caps(1024, 200), 200, 1000)
    assert "at most 200 shim, 200 syslog and 128 HTTP connections, 1000 per source" in line
    assert "--max-connections 200 is more than the open-files limit fits" in line
    quiet = describe_caps(limit, connection_caps(1024, 50), 50, 1000)
    assert "more than the open-files limit fits" not in quiet
    assert "raise the hard limit" not in quiet  # the operator chose the cap
