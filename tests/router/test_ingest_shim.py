"""The shim stream listener (DESIGN 4) over loopback sockets, with its timers in virtual time."""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import pytest
import trio
import trio.testing
import trustme
import zstandard
from dataplane_helpers import ShimTestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from logplex import metrics
from logplex.codecs import shimproto
from logplex.codecs.records import PRI_SHIM_NOTICE, PRI_STDERR, PRI_STDOUT
from logplex.config.records import ChannelConfig
from logplex.fanout.router import Router
from logplex.ingest.shim import ShimListener, ShimListenerSettings, StreamAcks

TOKEN = "t.11111111-1111-4111-8111-111111111111"
PLATFORM_TOKEN = "t.22222222-2222-4222-8222-222222222222"
OTHER_CHANNEL_TOKEN = "t.33333333-3333-4333-8333-333333333333"
STREAM = "0e9c5a52-6b6e-4a43-9c57-0a4d2b9d4c11"


def make_router() -> Router:
    router = Router(history_lines=100_000)
    router.apply_channel(ChannelConfig("app1", {"app": TOKEN, "heroku": PLATFORM_TOKEN}))
    router.apply_channel(ChannelConfig("other", {"app": OTHER_CHANNEL_TOKEN}))
    return router


@asynccontextmanager
async def serving(
    router: Router, settings: ShimListenerSettings | None = None
) -> AsyncIterator[tuple[int, ShimListener]]:
    listener = ShimListener(router, settings)
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(listener.serve, listeners)
        yield listeners[0].socket.getsockname()[1], listener
        nursery.cancel_scope.cancel()


def msgs(router: Router, channel: str = "app1") -> list[bytes]:
    return [m[4] for m in router.history(channel)]


async def test_hello_ready_batches_acked_and_published() -> None:
    router = make_router()
    ingested = metrics.INGEST_MESSAGES.labels(protocol="shim")
    ingested_bytes = metrics.INGEST_BYTES.labels(protocol="shim")
    before = (ingested._value.get(), ingested_bytes._value.get())
    async with serving(router) as (port, _):
        client = await ShimTestClient.connect(port)
        ready = await client.hello(TOKEN, platform_token=PLATFORM_TOKEN, ps="web.3")
        assert ready == shimproto.Ready(v=1, acked=0, window=32, max_batch_bytes=1024 * 1024)
        await client.send(
            client.batch(1, [b"out 1", b"out 2"])
            + client.batch(2, [b"err 1"], kind=2)
            + client.batch(3, [b"Starting process with command `x`"], kind=3)
            + client.batch(4, [b"two\nlines"])
        )
        await client.wait_acked(4)
        history = router.history("app1")
        assert [(m[1], m[2], m[3], m[4]) for m in history] == [
            (PRI_STDOUT, b"app", b"web.3", b"out 1"),
            (PRI_STDOUT, b"app", b"web.3", b"out 2"),
            (PRI_STDERR, b"app", b"web.3", b"err 1"),
            (PRI_SHIM_NOTICE, b"heroku", b"web.3", b"Starting process with command `x`"),
            (PRI_STDOUT, b"app", b"web.3", b"two"),
            (PRI_STDOUT, b"app", b"web.3", b"lines"),
        ]
        assert ingested._value.get() == before[0] + 6
        assert ingested_bytes._value.get() == before[1] + sum(len(m[4]) for m in history)
        await client.aclose()


async def test_notices_use_the_token_source_without_a_valid_platform_token() -> None:
    router = make_router()
    async with serving(router) as (port, _):
        for platform_token in (None, "t.not-a-token", OTHER_CHANNEL_TOKEN):
            client = await ShimTestClient.connect(port)
            stream = f"stream-{platform_token}"
            await client.hello(TOKEN, stream_id=stream, platform_token=platform_token)
            await client.send(client.batch(1, [b"notice"], kind=3))
            await client.wait_acked(1)
            assert router.history("app1")[-1][2] == b"app"
            await client.aclose()


async def test_reconnect_and_resend_delivers_every_line_exactly_once() -> None:
    router = make_router()
    async with serving(router) as (port, _):
        sent: list[bytes] = []
        first = await ShimTestClient.connect(port)
        assert (await first.hello(TOKEN, stream_id=STREAM)).acked == 0  # type: ignore[union-attr]
        for seq in range(1, 6):
            lines = [b"batch %d line %d" % (seq, n) for n in range(3)]
            sent.extend(lines)
            await first.send(first.batch(seq, lines))
        await first.wait_acked(3)
        await first.aclose()  # gone before reading the ACKs of 4 and 5 (if any came)
        with trio.fail_after(5):
            while len(router.history("app1")) < 15:
                await trio.sleep(0.01)

        second = await ShimTestClient.connect(port)
        ready = await second.hello(TOKEN, stream_id=STREAM)
        assert isinstance(ready, shimproto.Ready)
        assert ready.acked == 5
        # A shim that did not see ACK 4 and 5 resends from 4: dropped as already held.
        for seq in range(4, 9):
            lines = [b"batch %d line %d" % (seq, n) for n in range(3)]
            if seq > 5:
                sent.extend(lines)
            await second.send(second.batch(seq, lines))
        await second.wait_acked(8)
        assert msgs(router) == sent
        await second.aclose()

        # A different token never sees (or moves) this stream's position.
        third = await ShimTestClient.connect(port)
        ready = await third.hello(OTHER_CHANNEL_TOKEN, stream_id=STREAM)
        assert isinstance(ready, shimproto.Ready)
        assert ready.acked == 0
        await third.aclose()


def test_stream_acks_are_a_bounded_lru() -> None:
    acks = StreamAcks(capacity=2)
    acks.record("t", "a", 5)
    acks.record("t", "b", 7)
    assert acks.acked("t", "a") == 5  # touch a: b is now the oldest
    acks.record("t", "c", 1)
    assert len(acks) == 2
    assert acks.acked("t", "b") == 0
    assert acks.acked("t", "a") == 5
    assert acks.acked("u", "a") == 0


def zstd_bomb() -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(b"\0" * (64 * 1024 * 1024))


def zstd_without_size() -> bytes:
    compressor = zstandard.ZstdCompressor(write_content_size=False)
    return compressor.compress(msgpack.packb([[1, 1, b"x"]]))


def raw_batch(seq: int, payload: bytes) -> bytes:
    return struct.pack(">IBQ", len(payload) + 9, 3, seq) + payload


BAD_AFTER_HELLO = {
    "garbage bytes": (b"\x00\x00\x00\x09\x63garbage!", "bad_frame"),
    "2 GiB length prefix": (struct.pack(">IB", 2**31, 3) + b"\0" * 64, "too_large"),
    "zstd bomb": (raw_batch(1, zstd_bomb()), "too_large"),
    "zstd frame without content size": (raw_batch(1, zstd_without_size()), "bad_frame"),
    "msgpack of the wrong shape": (
        raw_batch(1, zstandard.ZstdCompressor().compress(msgpack.packb({"a": 1}))),
        "bad_frame",
    ),
    "records of the wrong shape": (
        raw_batch(1, zstandard.ZstdCompressor().compress(msgpack.packb([[1, 9, "str"]]))),
        "bad_frame",
    ),
    # Batch 1 starts the stream (a stream the router does not know starts at any seq, DESIGN
    # 8); batch 3 then leaves a gap.
    "seq gap": (
        raw_batch(1, zstandard.ZstdCompressor().compress(msgpack.packb([[1, 1, b"x"]])))
        + raw_batch(3, zstandard.ZstdCompressor().compress(msgpack.packb([[1, 1, b"y"]]))),
        "bad_frame",
    ),
    "second HELLO": (shimproto.encode_hello(TOKEN, "web.1", "s", "x"), "bad_frame"),
}


async def good_client(port: int, stream_id: str, batches: int, router: Router) -> None:
    """A well-behaved shim: every line it sends must land once, whatever happens beside it."""
    client = await ShimTestClient.connect(port)
    await client.hello(TOKEN, stream_id=stream_id, ps="good.1")
    for seq in range(1, batches + 1):
        await client.send(client.batch(seq, [b"%s %d" % (stream_id.encode(), seq)]))
        await client.wait_acked(seq)
        await trio.sleep(0.005)
    await client.aclose()
    mine = [m for m in msgs(router) if m.startswith(stream_id.encode() + b" ")]
    assert mine == [b"%s %d" % (stream_id.encode(), seq) for seq in range(1, batches + 1)]


@pytest.mark.parametrize(("bad_input", "code"), BAD_AFTER_HELLO.values(), ids=BAD_AFTER_HELLO)
async def test_bad_input_gets_error_and_close_and_spares_others(
    bad_input: bytes, code: str
) -> None:
    router = make_router()
    async with serving(router) as (port, _), trio.open_nursery() as nursery:
        nursery.start_soon(good_client, port, "good", 40, router)
        bad = await ShimTestClient.connect(port)
        await bad.hello(TOKEN, stream_id="bad")
        await bad.send(bad_input)
        error = await bad.expect_error_then_close()
        assert error.code == code
        assert error.message  # says what was wrong
        await bad.aclose()


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (
            shimproto.encode_hello("t.00000000-0000-4000-8000-000000000000", "w", "s", "a"),
            "unauthorized",
        ),
        (struct.pack(">IB", 0, 1), "bad_frame"),
        (b"\x00\x00\x00\x03\x01\x81\xa1", "bad_frame"),  # truncated msgpack map
        (shimproto.encode_hello(TOKEN, "web 1", "s", "a"), "bad_frame"),  # not a PROCID
        (shimproto.encode_hello(TOKEN, "", "s", "a"), "bad_frame"),
        (shimproto.encode_hello(TOKEN, "w" * 129, "s", "a"), "bad_frame"),
        (shimproto.encode_hello(TOKEN, "web.1", "s" * 65, "a"), "bad_frame"),  # stream id
        (shimproto.encode_hello(TOKEN, "web.1", "", "a"), "bad_frame"),
        (shimproto.encode_hello("t." + "x" * 1000, "web.1", "s", "a"), "unauthorized"),
        # Before authentication a frame may be only HELLO-sized (a few KiB).
        (shimproto.encode_hello("t." + "x" * 100_000, "web.1", "s", "a"), "too_large"),
    ],
    ids=[
        "wrong token",
        "zero length",
        "bad msgpack",
        "ps with a space",
        "empty ps",
        "ps over 128",
        "stream id over 64",
        "empty stream id",
        "long token",
        "huge token",
    ],
)
async def test_bad_hello_is_refused(hello: bytes, code: str) -> None:
    router = make_router()
    reason = "unknown_token" if code == "unauthorized" else code
    errors = metrics.INGEST_ERRORS.labels(protocol="shim", reason=reason)
    before = errors._value.get()
    async with serving(router) as (port, _):
        client = await ShimTestClient.connect(port)
        await client.send(hello)
        error = await client.expect_error_then_close()
        assert error.code == code
    assert errors._value.get() == before + 1


async def test_wrong_version_is_refused() -> None:
    router = make_router()
    body = msgpack.packb({"v": 2, "token": TOKEN, "ps": "w", "stream": "s", "agent": "a"})
    async with serving(router) as (port, _):
        client = await ShimTestClient.connect(port)
        await client.send(struct.pack(">IB", len(body) + 1, 1) + body)
        error = await client.expect_error_then_close()
        assert error.code == "unsupported_version"
        assert "version 2" in error.message


async def test_silent_client_is_closed_after_the_hello_timeout_others_unaffected() -> None:
    router = make_router()
    settings = ShimListenerSettings(hello_timeout_s=0.3)
    async with serving(router, settings) as (port, _), trio.open_nursery() as nursery:
        nursery.start_soon(good_client, port, "good", 20, router)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        with trio.fail_after(5):
            assert await silent.receive_some(100) == b""
        await silent.aclose()


async def test_client_that_never_reads_acks_is_closed_others_unaffected() -> None:
    router = make_router()
    settings = ShimListenerSettings(send_timeout_s=0.5)
    async with serving(router, settings) as (port, _), trio.open_nursery() as nursery:
        nursery.start_soon(good_client, port, "good", 40, router)
        timeouts = metrics.INGEST_CONNECTIONS_CLOSED.labels(protocol="shim", reason="send_timeout")
        timeouts_before = timeouts._value.get()
        sock = trio.socket.socket()
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
        await sock.connect(("127.0.0.1", port))
        deaf = ShimTestClient(trio.SocketStream(sock))
        await deaf.hello(OTHER_CHANNEL_TOKEN, stream_id="deaf")  # its flood stays out of app1
        payload = zstandard.ZstdCompressor().compress(msgpack.packb([[1, 1, b"x"]]))
        # One batch per send: the router reads and ACKs each, and never sees them read.
        with trio.fail_after(30), pytest.raises(trio.BrokenResourceError):  # noqa: PT012
            for seq in range(1, 1_000_000):
                await deaf.send(raw_batch(seq, payload))
                await trio.sleep(0)
        with trio.fail_after(5):  # the router counts the close once its aclose() returns
            while timeouts._value.get() == timeouts_before:
                await trio.sleep(0.01)
        assert timeouts._value.get() == timeouts_before + 1
        await deaf.aclose()


async def test_idle_connection_is_pinged_then_closed_without_pong(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        await client.hello(TOKEN)
        started = trio.current_time()
        assert isinstance(await client.next_event(), shimproto.Ping)
        assert trio.current_time() - started == pytest.approx(30)
        await client.send(shimproto.encode_pong())
        assert isinstance(await client.next_event(), shimproto.Ping)  # idle again: 30 s more
        assert trio.current_time() - started == pytest.approx(60)
        with pytest.raises(EOFError):
            await client.next_event()  # no PONG: closed 10 s after the PING
        assert trio.current_time() - started == pytest.approx(70)


async def test_a_batch_counts_as_liveness(autojump_clock: trio.testing.MockClock) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        await client.hello(TOKEN)
        for seq in range(1, 5):
            await trio.sleep(25)
            await client.send(client.batch(seq, [b"tick"]))
            assert await client.next_event() == shimproto.Ack(seq)
        nursery.cancel_scope.cancel()


async def test_tls_listener_serves_shims_and_refuses_plain_tcp() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    router = make_router()
    listener = ShimListener(router, ShimListenerSettings(hello_timeout_s=2))
    async with trio.open_nursery() as nursery:
        tcp = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(listener.serve, [trio.SSLListener(tcp[0], server_context)])
        port = tcp[0].socket.getsockname()[1]
        plain = await ShimTestClient.connect(port)  # speaks the protocol without TLS
        await plain.send(shimproto.encode_hello(TOKEN, "web.1", "s", "a"))
        with trio.fail_after(5), pytest.raises((EOFError, trio.BrokenResourceError)):
            await plain.next_event()
        await plain.aclose()
        tcp_stream = await trio.open_tcp_stream("127.0.0.1", port)
        tls_stream = trio.SSLStream(tcp_stream, client_context, server_hostname="127.0.0.1")
        client = ShimTestClient(tls_stream)
        assert isinstance(await client.hello(TOKEN, stream_id="tls"), shimproto.Ready)
        await client.send(client.batch(1, [b"over tls"]))
        await client.wait_acked(1)
        assert msgs(router)[-1] == b"over tls"
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_batches_before_an_error_in_the_same_read_are_kept_and_acked_on_reconnect() -> None:
    router = make_router()
    async with serving(router) as (port, _):
        client = await ShimTestClient.connect(port)
        await client.hello(TOKEN, stream_id="mixed")
        await client.send(
            client.batch(1, [b"kept 1"]) + client.batch(2, [b"kept 2"]) + b"\0\0\0\x02\x63!"
        )
        error = await client.expect_error_then_close()
        assert error.code == "bad_frame"
        assert msgs(router) == [b"kept 1", b"kept 2"]
        again = await ShimTestClient.connect(port)
        ready = await again.hello(TOKEN, stream_id="mixed")
        assert isinstance(ready, shimproto.Ready)
        assert ready.acked == 2
        await again.aclose()


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(max_size=2000), split=st.integers(min_value=1, max_value=64))
def test_any_bytes_after_hello_end_the_connection_cleanly(garbage: bytes, split: int) -> None:
    """Whatever follows HELLO, the connection task ends without raising (ERROR or close)."""

    async def scenario() -> None:
        router = make_router()
        listener = ShimListener(router)
        client_end, server_end = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.handle_connection, server_end)
            client = ShimTestClient(client_end)
            await client.hello(TOKEN)
            with contextlib.suppress(trio.BrokenResourceError):  # the router may close first
                for start in range(0, len(garbage), split):
                    await client.send(garbage[start : start + split])
                await client_end.send_eof()
            with trio.fail_after(120):  # virtual: HELLO/PING timers at most
                while await client_end.receive_some(65536):
                    pass

    errors: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = errors.append  # type: ignore[method-assign]
    logger = logging.getLogger("logplex.ingest.shim")
    logger.addHandler(handler)
    try:
        trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logger.removeHandler(handler)
    assert not errors, errors[0].getMessage()  # no "failed unexpectedly": only protocol errors


async def test_a_frame_trickled_too_slowly_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    closed = metrics.INGEST_CONNECTIONS_CLOSED.labels(protocol="shim", reason="frame_timeout")
    closed_before = closed._value.get()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        await client.hello(TOKEN)
        frame = client.batch(1, [b"slow"])

        async def trickle() -> None:
            # One byte every 20 s: each byte is activity, but the frame never completes.
            with contextlib.suppress(trio.BrokenResourceError):
                for byte in frame[:-1]:
                    await client.send(bytes([byte]))
                    await trio.sleep(20)

        started = trio.current_time()
        nursery.start_soon(trickle)
        with pytest.raises(EOFError):
            await client.next_event()
        assert trio.current_time() - started == pytest.approx(30)  # the frame deadline
    assert closed._value.get() == closed_before + 1
    assert msgs(router) == []


async def test_connections_past_the_limit_are_refused_as_overloaded() -> None:
    router = make_router()
    async with serving(router, ShimListenerSettings(max_connections=2)) as (port, listener):
        clients = [await ShimTestClient.connect(port) for _ in range(2)]
        try:
            for n, client in enumerate(clients):
                assert isinstance(await client.hello(TOKEN, stream_id=f"s{n}"), shimproto.Ready)
            clients.append(await ShimTestClient.connect(port))
            refusal = await clients[2].expect_error_then_close()
            assert refusal.code == "overloaded"
            # The admitted clients are unaffected.
            await clients[0].send(clients[0].batch(1, [b"still here"]))
            await clients[0].wait_acked(1)
            await clients[1].stream.aclose()
            with trio.fail_after(5):
                while listener.open_connections > 1:
                    await trio.sleep(0.01)
            clients.append(await ShimTestClient.connect(port))  # the freed place is usable
            assert isinstance(await clients[3].hello(TOKEN, stream_id="s3"), shimproto.Ready)
        finally:
            for client in clients:
                await client.stream.aclose()
    assert msgs(router) == [b"still here"]


async def test_a_router_that_does_not_know_a_stream_starts_it_at_the_first_seq() -> None:
    """DESIGN 8: after a router restart READY says acked 0 and the shim resends what it holds
    unacknowledged (here 50 and 51): the first seq starts the stream, nothing is refused."""
    router = make_router()
    async with serving(router) as (port, _):
        client = await ShimTestClient.connect(port)
        ready = await client.hello(TOKEN, stream_id="restarted")
        assert isinstance(ready, shimproto.Ready)
        assert ready.acked == 0
        await client.send(client.batch(50, [b"line 50"]) + client.batch(51, [b"line 51"]))
        await client.wait_acked(51)
        await client.send(client.batch(51, [b"line 51"]) + client.batch(52, [b"line 52"]))
        await client.wait_acked(52)
        assert msgs(router) == [b"line 50", b"line 51", b"line 52"]
        await client.aclose()
        again = await ShimTestClient.connect(port)
        ready = await again.hello(TOKEN, stream_id="restarted")
        assert isinstance(ready, shimproto.Ready)
        assert ready.acked == 52  # now known: a gap is refused again
        await again.send(again.batch(54, [b"gap"]))
        assert (await again.expect_error_then_close()).code == "bad_frame"


async def test_hello_and_batches_in_one_write_are_answered_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        started = trio.current_time()
        await client.send(
            shimproto.encode_hello(TOKEN, "web.1", STREAM, "logshim/test")
            + client.batch(1, [b"with hello 1"])
            + client.batch(2, [b"with hello 2"])
        )
        assert isinstance(await client.next_event(), shimproto.Ready)
        assert await client.next_event() == shimproto.Ack(2)  # not a PING 30 s later
        assert trio.current_time() == started
        assert msgs(router) == [b"with hello 1", b"with hello 2"]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "header",
    [
        struct.pack(">IB", 4097, 1),  # a HELLO longer than a HELLO may be
        struct.pack(">IB", 1024 * 1024 + 9, 3),  # a 1 MiB BATCH before HELLO
    ],
    ids=["long hello", "batch before hello"],
)
async def test_before_hello_only_a_hello_sized_frame_is_read(
    header: bytes, autojump_clock: trio.testing.MockClock
) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        started = trio.current_time()
        await client.send(header + b"\0" * 1000)
        error = await client.next_event()
        assert isinstance(error, shimproto.ErrorFrame)
        assert error.code == "too_large"
        assert trio.current_time() == started  # at once, not at the HELLO deadline
        with pytest.raises(EOFError):
            await client.next_event()


async def test_a_partial_hello_is_closed_at_the_hello_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = make_router()
    listener = ShimListener(router)
    client_end, server_end = trio.testing.memory_stream_pair()
    closed = metrics.INGEST_CONNECTIONS_CLOSED.labels(protocol="shim", reason="hello_timeout")
    closed_before = closed._value.get()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(listener.handle_connection, server_end)
        client = ShimTestClient(client_end)
        started = trio.current_time()
        hello = shimproto.encode_hello(TOKEN, "web.1", STREAM, "logshim/test")

        async def trickle() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for byte in hello[:-1]:
                    await client.send(bytes([byte]))
                    await trio.sleep(1)

        nursery.start_soon(trickle)
        with pytest.raises(EOFError):
            await client.next_event()
        assert trio.current_time() - started == pytest.approx(10)
    assert closed._value.get() == closed_before + 1
