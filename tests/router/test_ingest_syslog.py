"""The syslog TCP listener: octet-counted RFC 5424 with the token in APP-NAME (DESIGN 2, 3)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

from logplex import metrics
from logplex.codecs.octet import encode_octet_frame
from logplex.config.records import ChannelConfig, TokenInfo
from logplex.fanout.router import Router
from logplex.ingest.syslog import SyslogListener, SyslogListenerSettings

TOKEN_A = "t.aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
TOKEN_B = "t.bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
TS = b"2026-11-27T20:39:33.123456+00:00"
TS_US = 1_795_811_973_123_456
NOW_US = 1_800_000_000_000_000
TOKENS = {TOKEN_A: TokenInfo("a", b"app"), TOKEN_B: TokenInfo("b", b"heroku")}


def frame(token: str, msg: bytes, *, ps: bytes = b"web.1", ts: bytes = TS, pri: int = 190) -> bytes:
    return b"<%d>1 %s host %s %s - - %s" % (pri, ts, token.encode(), ps, msg)


def make_router() -> Router:
    router = Router(history_lines=10_000)
    router.apply_channel(ChannelConfig("a", {"app": TOKEN_A}))
    router.apply_channel(ChannelConfig("b", {"heroku": TOKEN_B}))
    return router


@asynccontextmanager
async def serving(
    router: Router, settings: SyslogListenerSettings | None = None
) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(SyslogListener(router, settings).serve, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def wait_for_history(router: Router, channel: str, count: int) -> list[bytes]:
    with trio.fail_after(10):
        while len(router.history(channel)) < count:
            await trio.sleep(0.01)
    return [m[4] for m in router.history(channel)]


async def good_sender(port: int, router: Router, count: int) -> None:
    """A well-behaved sender beside the bad one: every line lands, in order."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for n in range(count):
            await stream.send_all(encode_octet_frame(frame(TOKEN_B, b"good %d" % n)))
            await trio.sleep(0.002)
    assert await wait_for_history(router, "b", count) == [b"good %d" % n for n in range(count)]


BAD_STREAMS = {
    "garbage bytes": b"\x00\xffgarbage\r\n" * 100,
    "2 GiB length prefix": b"2147483648 <190>1 " + b"x" * 5000,
    "frame over the limit": encode_octet_frame(frame(TOKEN_A, b"x" * 20000)),
    "unknown token": encode_octet_frame(frame("t.nobody", b"lost")),
    "not RFC 5424": encode_octet_frame(b"just some text"),
}


@pytest.mark.parametrize("bad", BAD_STREAMS.values(), ids=BAD_STREAMS)
async def test_bad_input_is_skipped_counted_and_the_stream_resyncs(bad: bytes) -> None:
    router = make_router()
    errors = metrics.INGEST_ERRORS
    before = sum(
        errors.labels(protocol="syslog", reason=r)._value.get()
        for r in ("malformed", "unknown_token")
    )
    async with serving(router) as port, trio.open_nursery() as nursery:
        nursery.start_soon(good_sender, port, router, 30)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(encode_octet_frame(frame(TOKEN_A, b"before")))
            await stream.send_all(bad)
            await stream.send_all(encode_octet_frame(frame(TOKEN_A, b"after")))
            assert await wait_for_history(router, "a", 2) == [b"before", b"after"]
    after = sum(
        errors.labels(protocol="syslog", reason=r)._value.get()
        for r in ("malformed", "unknown_token")
    )
    assert after > before


async def test_frames_split_anywhere_across_reads() -> None:
    router = make_router()
    data = b"".join(encode_octet_frame(frame(TOKEN_A, b"line %d" % n)) for n in range(50))
    async with serving(router) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for start in range(0, len(data), 7):
                await stream.send_all(data[start : start + 7])
            assert await wait_for_history(router, "a", 50) == [b"line %d" % n for n in range(50)]


async def test_idle_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    router = make_router()
    listener = SyslogListener(router, SyslogListenerSettings(idle_timeout_s=300))
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server)
        await client.send_all(encode_octet_frame(frame(TOKEN_A, b"hi")))
        began = trio.current_time()
        await trio.sleep(200)
        await client.send_all(encode_octet_frame(frame(TOKEN_A, b"still here")))
        assert await client.receive_some(10) == b""  # closed by the router
        assert trio.current_time() - began == pytest.approx(500)
    assert [m[4] for m in router.history("a")] == [b"hi", b"still here"]


async def test_silent_client_does_not_stall_others() -> None:
    router = make_router()
    async with serving(router) as port:
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        half = await trio.open_tcp_stream("127.0.0.1", port)
        await half.send_all(b"500 <190>1 partial")  # a frame that never completes
        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_sender, port, router, 30)
        await silent.aclose()
        await half.aclose()


async def test_tls_syslog_listener() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    router = make_router()
    async with trio.open_nursery() as nursery:
        tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(
            SyslogListener(router).serve, [trio.SSLListener(tcp[0], server_context)]
        )
        port = tcp[0].socket.getsockname()[1]
        stream = trio.SSLStream(
            await trio.open_tcp_stream("127.0.0.1", port),
            client_context,
            server_hostname="127.0.0.1",
        )
        async with stream:
            await stream.send_all(encode_octet_frame(frame(TOKEN_A, b"secret line")))
            assert await wait_for_history(router, "a", 1) == [b"secret line"]
        # Plain text on the TLS port is a failed handshake: nothing lands, nothing breaks.
        plain = await trio.open_tcp_stream("127.0.0.1", port)
        async with plain:
            await plain.send_all(encode_octet_frame(frame(TOKEN_A, b"plain")))
            with trio.fail_after(5), contextlib.suppress(trio.BrokenResourceError):
                while await plain.receive_some(1000):
                    pass
        assert [m[4] for m in router.history("a")] == [b"secret line"]
        nursery.cancel_scope.cancel()


async def test_connections_past_the_limit_are_closed_and_counted() -> None:
    router = make_router()
    refused = metrics.INGEST_ERRORS.labels(protocol="syslog", reason="overloaded")
    refused_before = refused._value.get()
    async with serving(router, SyslogListenerSettings(max_connections=1)) as port:
        first = await trio.open_tcp_stream("127.0.0.1", port)
        await first.send_all(encode_octet_frame(frame(TOKEN_A, b"admitted")))
        assert await wait_for_history(router, "a", 1) == [b"admitted"]
        second = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):  # closed by the router without reading anything
            while await second.receive_some(100):
                pass
        assert refused._value.get() == refused_before + 1
        await first.send_all(encode_octet_frame(frame(TOKEN_A, b"still served")))
        assert await wait_for_history(router, "a", 2) == [b"admitted", b"still served"]
        await first.aclose()
        await second.aclose()
