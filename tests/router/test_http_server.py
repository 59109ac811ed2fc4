"""The HTTP listener (``logplex.serve.http``) over loopback sockets with a small ASGI app.

HTTP/1.1 only (an ``Upgrade: h2c`` is served in HTTP/1.1, the HTTP/2 preface gets 505 and
a close, a burst of HTTP/2 frames reaches no app), the keep-alive deadline bounds idle
connections and trickled heads, a client that never reads its response is dropped, the
connection caps answer 503, and stop is graceful. Real clock with short timeouts: hypercorn's
timers run on trio's clock, but the peers here are real sockets.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h2.connection
import h2.events
import pytest
import trio
import trio.testing

from logplex import metrics
from logplex.serve.http import DeadlineStream, HttpServer, HttpServerSettings, listeners_of

BIG_BYTES = 32 << 20


class App:
    """``/`` answers ``ok``; ``/big`` answers BIG_BYTES; every request is counted."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.requests.append(f"{scope['method']} {scope['path']} {scope['http_version']}")
        body = b"x" * BIG_BYTES if scope["path"] == "/big" else b"ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))],
            }
        )
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def serving(
    settings: HttpServerSettings | None = None,
) -> AsyncIterator[tuple[HttpServer, App, int]]:
    app = App()
    server = HttpServer(app, settings or HttpServerSettings(idle_timeout_s=1.0))  # type: ignore[arg-type]
    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners_of(sock), stop)
            yield server, app, port
            stop.set()
    finally:
        close_client_sockets()


OPENED: list[trio.socket.SocketType] = []


def close_client_sockets() -> None:
    """Close what ``connect`` opened (in trio context: a trio socket's close needs it)."""
    while OPENED:
        OPENED.pop().close()


async def connect(
    port: int, source: str = "127.0.0.1", *, receive_buffer_bytes: int | None = None
) -> trio.SocketStream:
    sock = trio.socket.socket()
    OPENED.append(sock)
    if receive_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_response(stream: trio.SocketStream, timeout_s: float = 10) -> bytes:
    """Bytes up to the end of one response head and its Content-Length body."""
    data = b""
    with trio.fail_after(timeout_s):
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return data
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
        while length is not None and len(body) < int(length[1]):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            body += chunk
    return head + b"\r\n\r\n" + body


async def read_to_close(stream: trio.SocketStream, timeout_s: float = 10) -> bytes:
    data = b""
    with trio.fail_after(timeout_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:  # reset
                return data
            if not chunk:
                return data
            data += chunk


def counter(listener: str, deadline: str) -> float:
    return metrics.DEADLINE_CLOSES.labels(listener=listener, deadline=deadline)._value.get()


def refusals(limit: str) -> float:
    return metrics.LIMIT_REFUSALS.labels(limit=limit)._value.get()


# -- HTTP/1.1 only -----------------------------------------------------------------------


async def test_an_h2c_upgrade_is_answered_in_http_1_1_and_the_connection_kept() -> None:
    """Before: hypercorn answered 101 Switching Protocols and spoke HTTP/2."""
    async with serving() as (_server, app, port):
        stream = await connect(port)
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        first = await read_response(stream)
        assert first.startswith(b"HTTP/1.1 200 "), first
        assert first.endswith(b"\r\n\r\nok")
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        second = await read_response(stream)
        assert second.startswith(b"HTTP/1.1 200 "), second
        assert app.requests == ["GET / 1.1", "GET / 1.1"]
        await stream.aclose()


async def test_the_http2_preface_gets_505_and_a_close() -> None:
    async with serving() as (_server, app, port):
        stream = await connect(port)
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        answer = await read_to_close(stream)
        assert answer.startswith(b"HTTP/1.1 505 "), answer
        assert app.requests == []


async def test_the_http2_preface_after_a_request_gets_505_too() -> None:
    async with serving() as (_server, app, port):
        stream = await connect(port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200 ")
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        assert (await read_to_close(stream)).startswith(b"HTTP/1.1 505 ")
        assert app.requests == ["GET / 1.1"]


async def test_a_rapid_reset_burst_of_http2_frames_reaches_no_app() -> None:
    """Before: 106,700 streams opened and reset in 6.5 s kept the router's core busy."""
    client = h2.connection.H2Connection()
    client.initiate_connection()
    for stream_id in range(1, 2001, 2):
        client.send_headers(
            stream_id,
            [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
        )
        client.reset_stream(stream_id)
    burst = client.data_to_send()
    async with serving() as (_server, app, port):
        stream = await connect(port)
        with contextlib.suppress(trio.BrokenResourceError):  # closed while it sends: fine
            await stream.send_all(burst)
        assert (await read_to_close(stream)).startswith(b"HTTP/1.1 505 ")
        assert app.requests == []
        plain = await connect(port)
        await plain.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(plain)).startswith(b"HTTP/1.1 200 ")


# -- deadlines ---------------------------------------------------------------------------


async def test_an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() -> None:
    async with serving(HttpServerSettings(idle_timeout_s=1.0)) as (server, _app, port):
        before = counter("http", "idle")
        stream = await connect(port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(stream)).startswith(b"HTTP/1.1 200 ")
        began = trio.current_time()
        assert await read_to_close(stream) == b""
        assert 0.9 <= trio.current_time() - began <= 4
        assert counter("http", "idle") == before + 1
        with trio.fail_after(5):
            while server.open_connections:
                await trio.sleep(0.01)


async def test_a_head_trickled_byte_by_byte_is_closed_at_the_idle_timeout() -> None:
    """Bytes that do not complete a head do not restart hypercorn's keep-alive timer."""
    async with serving(HttpServerSettings(idle_timeout_s=1.5)) as (_server, app, port):
        before = counter("http", "head")
        stream = await connect(port)
        began = trio.current_time()
        head = b"GET / HTTP/1.1\r\n" + b"X-Slow: yes\r\n" * 100
        with pytest.raises(trio.BrokenResourceError):  # noqa: PT012
            for byte in head:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.1)
                if trio.current_time() - began > 10:
                    pytest.fail("a trickled head kept the connection for 10 s")
        assert 1.4 <= trio.current_time() - began <= 5
        assert counter("http", "head") == before + 1
        assert app.requests == []


async def test_a_client_that_never_reads_a_big_response_is_dropped() -> None:
    """Before: hypercorn's shielded write waited on such a client until the kernel's
    TCP_USER_TIMEOUT (60 s) failed it, with the response's memory held meanwhile."""
    settings = HttpServerSettings(idle_timeout_s=5.0, send_timeout_s=1.0)
    async with serving(settings) as (server, _app, port):
        before = counter("http", "send")
        stream = await connect(port, receive_buffer_bytes=4096)
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        began = trio.current_time()
        with trio.fail_after(10):
            while counter("http", "send") == before:
                await trio.sleep(0.05)
            while server.open_connections:
                await trio.sleep(0.05)
        assert trio.current_time() - began <= 6
        received = await read_to_close(stream)
        assert len(received) < BIG_BYTES
        await stream.aclose()


# -- connection caps ---------------------------------------------------------------------


async def test_past_the_per_address_cap_a_connection_gets_503_and_others_are_served() -> None:
    settings = HttpServerSettings(idle_timeout_s=5.0, max_connections_per_ip=2)
    async with serving(settings) as (server, _app, port):
        before = refusals("max_connections_per_ip")
        held = [await connect(port, "127.0.0.2") for _ in range(2)]
        for stream in held:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(stream)).startswith(b"HTTP/1.1 200 ")
        extra = await connect(port, "127.0.0.2")
        await extra.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_to_close(extra)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 "), answer
        assert re.search(rb"(?i)\r\nretry-after: \d+", head)
        assert re.search(rb"(?i)\r\nconnection: close", head)
        assert b"max_connections_per_ip" in body
        assert refusals("max_connections_per_ip") == before + 1
        # Another address is within its own budget.
        other = await connect(port, "127.0.0.1")
        await other.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(other)).startswith(b"HTTP/1.1 200 ")
        # A closed connection gives its place back.
        await held.pop().aclose()
        with trio.fail_after(5):
            while server._accept_loop.open_by_source.get("127.0.0.2") != 1:
                await trio.sleep(0.01)
        again = await connect(port, "127.0.0.2")
        await again.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(again)).startswith(b"HTTP/1.1 200 ")
        for stream in [*held, other, again, extra]:
            await stream.aclose()


async def test_past_the_listener_cap_a_connection_gets_503_naming_it() -> None:
    settings = HttpServerSettings(idle_timeout_s=5.0, max_connections=1)
    async with serving(settings) as (_server, _app, port):
        before = refusals("max_connections")
        first = await connect(port)
        await first.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(first)).startswith(b"HTTP/1.1 200 ")
        second = await connect(port, "127.0.0.2")
        answer = await read_to_close(second)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"(max_connections)" in answer
        assert refusals("max_connections") == before + 1
        await first.aclose()
        await second.aclose()


# -- stop ----------------------------------------------------------------------------------


async def test_stop_closes_idle_connections_and_cancels_the_rest_after_the_grace() -> None:
    settings = HttpServerSettings(idle_timeout_s=30.0, graceful_timeout_s=0.5)
    app = App()
    server = HttpServer(app, settings)  # type: ignore[arg-type]
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, listeners_of(sock), stop)
        idle = await connect(port)
        await idle.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(idle)).startswith(b"HTTP/1.1 200 ")
        began = trio.current_time()
        stop.set()
    assert trio.current_time() - began <= 3
    assert await read_to_close(idle) == b""
    with pytest.raises(ConnectionRefusedError):  # no longer accepting
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    close_client_sockets()


async def _stream_pair() -> tuple[DeadlineStream, trio.SocketStream]:
    ours, theirs = trio.socket.socketpair()
    return DeadlineStream(trio.SocketStream(ours), 30.0), trio.SocketStream(theirs)


async def test_a_half_close_during_a_blocked_write_is_skipped_not_a_busy_error() -> None:
    # hypercorn half-closes when the peer's side ends, outside its send lock; a 408 still
    # being written to that client raised BusyResourceError out of the app.
    stream, peer = await _stream_pair()
    outcomes: list[str] = []

    async def write() -> None:
        try:
            await stream.send_all(b"x" * (8 << 20))  # blocks: the peer reads nothing
        except trio.BrokenResourceError:
            outcomes.append("peer gone")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        await stream.send_eof()  # skipped: no BusyResourceError
        await peer.aclose()  # the write now fails as a peer gone away
    assert outcomes == ["peer gone"]
    await stream.aclose()


@pytest.mark.parametrize("eof_first", [True, False])
async def test_writes_and_half_closes_take_turns(eof_first: bool) -> None:
    stream, peer = await _stream_pair()
    outcomes: list[str] = []

    async def write() -> None:
        try:
            await stream.send_all(b"answer")
            outcomes.append("sent")
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # hypercorn takes both
            outcomes.append("peer gone")

    async def half_close() -> None:
        await stream.send_eof()
        outcomes.append("eof")

    first, second = (half_close, write) if eof_first else (write, half_close)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.lowlevel.checkpoint()  # the first is inside trio's send, at its checkpoint
        nursery.start_soon(second)
    # No BusyResourceError either way; a write after the half-close fails cleanly.
    assert sorted(outcomes) in (["eof", "peer gone"], ["eof", "sent"])
    await stream.aclose()
    await peer.aclose()
