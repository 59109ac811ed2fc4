"""``logplex sink`` on the wire: how requests may arrive, and the limits on slow or big peers.

Over real loopback TCP, and over TLS with trio's ``SSLStream`` as the client (an independent
TLS implementation from the sink's ``TlsOverSocket``). Posts arrive as a drain or another
client may send them: the head in pieces, the body in many small TLS records, several
requests pipelined in one write, keep-alive requests one after another. Expected answers
are RFC 9112 bytes (``HTTP/1.1 204`` with an empty reason, as h11 writes it) and the
statuses of DESIGN 5.4; the slow-peer limits run on virtual time.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

from drains.receiver import MAX_BODY_BYTES
from drains.sink import (
    HANDSHAKE_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_HEAD_BYTES,
    REQUEST_TIMEOUT_S,
    Sink,
    serve_sink,
)

FRAME = b"63 <190>1 2026-11-27T20:39:33.123456+00:00 host app web.1 - hello\n"
NO_CONTENT = b"HTTP/1.1 204 \r\n\r\n"

ClientStream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


def post(frame_id: str, count: int, *, body: bytes | None = None, extra: str = "") -> bytes:
    """A DESIGN 5.2 post of ``count`` frames (or of ``body``), as raw request bytes."""
    payload = FRAME * count if body is None else body
    head = (
        f"POST /drain HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(payload)}\r\n"
        "Content-Type: application/logplex-1\r\n"
        f"Logplex-Msg-Count: {count}\r\nLogplex-Frame-Id: {frame_id}\r\n"
        f"Logplex-Drain-Token: d.t\r\n{extra}\r\n"
    )
    return head.encode() + payload


@asynccontextmanager
async def connected(
    sink: Sink, tls: ssl.SSLContext | None, ca: trustme.CA
) -> AsyncIterator[ClientStream]:
    """A client connection to ``sink`` served on 127.0.0.1 (TLS when ``tls`` is given)."""
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_sink, sink, "127.0.0.1", 0, tls)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream: ClientStream = tcp
        if tls is not None:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            stream = trio.SSLStream(tcp, context, server_hostname="localhost")
            await stream.do_handshake()
        try:
            yield stream
        finally:
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def read_exactly(stream: ClientStream, total: int) -> bytes:
    out = b""
    while len(out) < total:
        chunk = await stream.receive_some(65536)
        assert chunk, f"connection ended after {out!r}"
        out += chunk
    return out


async def read_to_end(stream: ClientStream) -> bytes:
    """Everything until the sink closes the connection."""
    out = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:  # TLS peer gone without close_notify
            return out
        if not chunk:
            return out
        out += chunk


@pytest.fixture(params=["http", "https"])
def tls(request: pytest.FixtureRequest, server_tls: ssl.SSLContext) -> ssl.SSLContext | None:
    return server_tls if request.param == "https" else None


async def test_a_head_in_pieces_and_a_body_in_many_records(
    tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    sink = Sink(None, blackhole=True)
    request = post("SPLIT", 1500)  # ~100 KiB
    head_end = request.index(b"\r\n\r\n") + 4
    async with connected(sink, tls, ca) as stream:
        for cut in (1, 7, 30, head_end - 3):  # inside the request line, a name, the end
            await stream.send_all(request[:cut])
            await trio.sleep(0.01)
            request = request[cut:]
            head_end -= cut
        for start in range(0, len(request), 1000):  # 1000-byte writes: one TLS record each
            await stream.send_all(request[start : start + 1000])
        assert await read_exactly(stream, len(NO_CONTENT)) == NO_CONTENT
    assert (sink.stats.requests, sink.stats.messages, sink.stats.rejected) == (1, 1500, 0)


async def test_pipelined_and_keep_alive_requests_are_answered_in_order(
    tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    sink = Sink(None, blackhole=True)
    bad = post("BAD", 3, body=FRAME)  # 1 line where the header says 3: 400, connection kept
    async with connected(sink, tls, ca) as stream:
        await stream.send_all(post("P1", 2) + bad + post("P2", 5) + post("P1", 2))
        first = await read_exactly(stream, len(NO_CONTENT))
        assert first == NO_CONTENT
        rest = b""
        while rest.count(b"HTTP/1.1 ") < 3 or not rest.endswith(NO_CONTENT * 2):
            chunk = await stream.receive_some(65536)
            assert chunk
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 400 ")
        assert b"body has 1 lines but Logplex-Msg-Count says 3" in rest
        for n in range(3):  # then one request at a time on the same connection
            await stream.send_all(post(f"K{n}", 1))
            assert await read_exactly(stream, len(NO_CONTENT)) == NO_CONTENT
    # ``requests`` counts the posts whose headers passed, so the refused one is left out.
    assert (sink.stats.requests, sink.stats.messages) == (6, 2 + 5 + 3)
    assert (sink.stats.duplicates, sink.stats.rejected) == (1, 1)


async def test_heads_with_bare_lf_line_ends_and_a_leading_empty_line(
    tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    # RFC 9112 section 2.2: a recipient may take LF as a line terminator and should ignore
    # an empty line before the request line.
    sink = Sink(None, blackhole=True)
    bare_lf = post("LF", 1).replace(b"\r\n", b"\n")
    async with connected(sink, tls, ca) as stream:
        await stream.send_all(bare_lf + b"\r\n" + post("CRLF", 2))
        assert await read_exactly(stream, 2 * len(NO_CONTENT)) == NO_CONTENT * 2
    assert (sink.stats.requests, sink.stats.messages, sink.stats.rejected) == (2, 3, 0)


async def test_a_chunked_post_and_the_request_after_it(
    tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    sink = Sink(None, blackhole=True)
    head = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Logplex-Msg-Count: 2\r\nLogplex-Frame-Id: C1\r\nLogplex-Drain-Token: d.t\r\n\r\n"
    )
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(FRAME), FRAME, len(FRAME), FRAME)
    async with connected(sink, tls, ca) as stream:
        await stream.send_all(head + chunks[:10])
        await trio.sleep(0.01)
        await stream.send_all(chunks[10:] + post("C2", 1))
        assert await read_exactly(stream, 2 * len(NO_CONTENT)) == NO_CONTENT * 2
    assert (sink.stats.requests, sink.stats.messages) == (2, 3)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1),
            b"413",
        ),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", b"431"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * MAX_HEAD_BYTES, b"431"),  # never ends
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n", b"400"),
        (b"NOT HTTP\r\n\r\n", b"400"),
    ],
)
async def test_refused_requests_are_answered_then_closed(
    tls: ssl.SSLContext | None, ca: trustme.CA, request_bytes: bytes, status: bytes
) -> None:
    sink = Sink(None, blackhole=True)
    async with connected(sink, tls, ca) as stream:
        await stream.send_all(request_bytes)
        with trio.fail_after(5):
            answer = await read_to_end(stream)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"connection: close" in answer.lower()
    assert b'{"error": "' in answer
    assert sink.stats.messages == 0


async def test_a_chunked_body_over_the_limit_is_413(ca: trustme.CA) -> None:
    sink = Sink(None, blackhole=True)
    chunk = b"x" * (1024 * 1024)
    async with connected(sink, None, ca) as stream:
        await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        answer = b""
        with trio.fail_after(10):
            try:
                for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
                    await stream.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except trio.BrokenResourceError:
                pass  # the sink answered and closed while we were still sending
            answer = await read_to_end(stream)
    assert answer.startswith(b"HTTP/1.1 413 ")


async def elapsed_until_closed(stream: ClientStream, trickle: bytes = b"") -> float:
    """Virtual seconds until the sink drops the connection, sending a byte every 10 s."""
    started = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def send_slowly() -> None:
            for byte in trickle:
                await trio.sleep(10)
                try:
                    await stream.send_all(bytes([byte]))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return

        nursery.start_soon(send_slowly)
        answer = await read_to_end(stream)
        nursery.cancel_scope.cancel()
    assert answer == b""  # a peer too slow to send a request gets no answer
    return trio.current_time() - started


async def test_an_idle_connection_is_closed(
    io_clock: trio.testing.MockClock, tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    async with connected(Sink(None, blackhole=True), tls, ca) as stream:
        await stream.send_all(post("I1", 1))
        assert await read_exactly(stream, len(NO_CONTENT)) == NO_CONTENT
        elapsed = await elapsed_until_closed(stream)
    assert IDLE_TIMEOUT_S <= elapsed < IDLE_TIMEOUT_S + 1


async def test_a_request_trickling_in_is_cut_at_the_request_deadline(
    io_clock: trio.testing.MockClock, tls: ssl.SSLContext | None, ca: trustme.CA
) -> None:
    # One byte every 10 s never leaves a read waiting IDLE_TIMEOUT_S: only a deadline for
    # the whole request ends it.
    sink = Sink(None, blackhole=True)
    async with connected(sink, tls, ca) as stream:
        request = post("SLOW", 1)
        await stream.send_all(request[:1])
        elapsed = await elapsed_until_closed(stream, trickle=request[1:])
    assert REQUEST_TIMEOUT_S <= elapsed < REQUEST_TIMEOUT_S + 10
    assert sink.stats.requests == 0


async def test_a_stalled_tls_handshake_is_dropped(
    io_clock: trio.testing.MockClock, server_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        _, port = await nursery.start(serve_sink, Sink(None), "127.0.0.1", 0, server_tls)
        tcp = await trio.open_tcp_stream("127.0.0.1", port)  # and never says hello
        started = trio.current_time()
        assert await tcp.receive_some(100) == b""
        elapsed = trio.current_time() - started
        await tcp.aclose()
        nursery.cancel_scope.cancel()
    assert HANDSHAKE_TIMEOUT_S <= elapsed < HANDSHAKE_TIMEOUT_S + 1
