"""``drains._tls.TlsOverSocket`` against trio's ``SSLStream`` over real loopback TCP.

The server side is always ``trio.SSLStream`` (the implementation the drain used before):
whatever the client sends must arrive byte for byte, whatever the server sends must be
read back byte for byte, exactly as a client ``SSLStream`` reads it (the property test runs
both clients on the same input). Verification failures and the two ways a peer can close
(close_notify, or a bare TCP close) are table tests.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import hypothesis
import hypothesis.strategies as st
import pytest
import trio
import trustme

from drains._tls import TlsOverSocket

Client = TlsOverSocket | trio.SSLStream[trio.SocketStream]


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@asynccontextmanager
async def tls_pair(
    server_context: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    pump: bool,
    server_hostname: str = "localhost",
) -> AsyncIterator[tuple[Client, trio.SSLStream[trio.SocketStream]]]:
    """A connected (client, server) over 127.0.0.1, both handshakes done."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        server = trio.SSLStream(await listeners[0].accept(), server_context, server_side=True)
        client: Client
        if pump:
            client = TlsOverSocket(tcp, client_ctx, server_hostname=server_hostname)
        else:
            client = trio.SSLStream(tcp, client_ctx, server_hostname=server_hostname)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)
                await client.do_handshake()
            yield client, server
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)


async def read_exactly(receive: Callable[[int], Awaitable[bytes | bytearray]], total: int) -> bytes:
    out = bytearray()
    while len(out) < total:
        chunk = await receive(16384)
        assert chunk, "stream ended early"
        out += chunk
    return bytes(out)


async def exchange(
    server_tls: ssl.SSLContext, ca: trustme.CA, pump: bool, up: list[bytes], down: list[bytes]
) -> tuple[bytes, bytes]:
    """Client sends ``up`` chunk by chunk, server sends ``down``; what each side read."""
    async with tls_pair(server_tls, client_context(ca), pump=pump) as (client, server):
        for chunk in up:
            if chunk:
                await client.send_all(chunk)
        got_up = await read_exactly(server.receive_some, sum(map(len, up)))
        for chunk in down:
            if chunk:
                await server.send_all(chunk)
        got_down = await read_exactly(client.receive_some, sum(map(len, down)))
    return got_up, got_down


@pytest.mark.parametrize(
    ("up", "down"),
    [
        ([b"POST / HTTP/1.1\r\n\r\n"], [b"HTTP/1.1 204 No Content\r\n\r\n"]),
        ([b"x" * 100_000], [b"y"]),  # one large write: many TLS records
        ([b"a", b"b" * 20_000, b"c"], [b"d" * 40_000, b"e"]),
    ],
)
async def test_bytes_arrive_unchanged(
    server_tls: ssl.SSLContext, ca: trustme.CA, up: list[bytes], down: list[bytes]
) -> None:
    assert await exchange(server_tls, ca, True, up, down) == (b"".join(up), b"".join(down))


# Small chunks as drawn, large ones (several TLS records) as a drawn byte repeated.
chunks = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(2_000, 5_000)),
    ),
    max_size=4,
)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(up=chunks, down=chunks)
def test_reads_what_sslstream_reads(
    server_tls: ssl.SSLContext, ca: trustme.CA, up: list[bytes], down: list[bytes]
) -> None:
    pumped = trio.run(exchange, server_tls, ca, True, up, down)
    streamed = trio.run(exchange, server_tls, ca, False, up, down)
    assert pumped == streamed == (b"".join(up), b"".join(down))


async def test_close_notify_reads_as_end_of_stream(
    server_tls: ssl.SSLContext, ca: trustme.CA
) -> None:
    async with tls_pair(server_tls, client_context(ca), pump=True) as (client, server):
        await server.send_all(b"last")
        await server.aclose()  # sends close_notify
        assert await read_exactly(client.receive_some, 4) == b"last"
        assert await client.receive_some(100) == b""


async def test_a_bare_tcp_close_is_an_error(server_tls: ssl.SSLContext, ca: trustme.CA) -> None:
    async with tls_pair(server_tls, client_context(ca), pump=True) as (client, server):
        await trio.aclose_forcefully(server.transport_stream)  # no close_notify
        with pytest.raises(ssl.SSLEOFError):
            await client.receive_some(100)


async def handshake_error(
    server_context: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> ssl.SSLCertVerificationError | None:
    """The client's verification failure on connecting, or None if the handshake passed."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        server = trio.SSLStream(await listeners[0].accept(), server_context, server_side=True)
        client = TlsOverSocket(tcp, client_ctx, server_hostname=server_hostname)

        async def server_handshake() -> None:
            with contextlib.suppress(trio.BrokenResourceError):  # the client refused us
                await server.do_handshake()

        error = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_handshake)
            try:
                await client.do_handshake()
            except ssl.SSLCertVerificationError as exc:
                error = exc
            await client.aclose()
        await trio.aclose_forcefully(server)
    return error


@pytest.mark.parametrize(
    ("server_hostname", "trusted", "reason"),
    [
        ("other.example", True, "Hostname mismatch"),
        ("localhost", False, "unable to get local issuer certificate"),
        ("localhost", True, None),
    ],
)
async def test_verification_failures_raise_the_certificate_error(
    server_tls: ssl.SSLContext,
    ca: trustme.CA,
    server_hostname: str,
    trusted: bool,
    reason: str | None,
) -> None:
    context = client_context(ca) if trusted else ssl.create_default_context()
    error = await handshake_error(server_tls, context, server_hostname)
    if reason is None:
        assert error is None
    else:
        assert error is not None
        assert reason in str(error)
