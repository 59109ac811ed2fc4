"""Syslog drains over TCP, TLS and UDP on real loopback sockets (DESIGN 5.1, 5.5, 8)."""

from __future__ import annotations

import datetime
import fcntl
import socket
import ssl
import struct
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from drains_support import app_messages, batches, octet_frames, syslog_fields, tally

from drains import DrainContext, DrainSettings, open_drain
from drains.syslog import SyslogDrain
from drains.udp import UdpDrain
from logplex.codecs.records import Batch, Message

TOKEN = "d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"
EXAMPLE_TS_US = (
    int(datetime.datetime(2026, 11, 27, 20, 39, 33, tzinfo=datetime.UTC).timestamp()) * 1_000_000
    + 123456
)


class SyslogReceiver:
    """A TCP (or TLS) listener keeping the bytes of every connection."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.connections: list[bytearray] = []
        self.port = 0
        self.close_after_bytes: int | None = None
        self.data_arrived = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        data = bytearray()
        self.connections.append(data)
        conn: trio.abc.Stream = stream
        if self.ssl_context is not None:
            conn = trio.SSLStream(stream, self.ssl_context, server_side=True)
        try:
            while chunk := await conn.receive_some(65536):
                data += chunk
                self.data_arrived.set()
                self.data_arrived = trio.Event()
                if self.close_after_bytes is not None and len(data) >= self.close_after_bytes:
                    self.close_after_bytes = None
                    return
        except trio.BrokenResourceError:
            return
        finally:
            await trio.aclose_forcefully(conn)

    async def wait_for_frames(self, count: int) -> None:
        """Acknowledged is not yet read: wait until the handler has read ``count`` frames."""
        with trio.fail_after(30):
            while len(self.frames()) < count:
                await self.data_arrived.wait()

    def frames(self) -> list[bytes]:
        out: list[bytes] = []
        for data in self.connections:
            # A connection closed by the receiver may end inside a frame: keep whole ones.
            usable = bytes(data)
            while usable:
                try:
                    out.extend(octet_frames(usable))
                    break
                except (AssertionError, ValueError):
                    usable = usable[: usable.rfind(b"\n", 0, len(usable) - 1) + 1]
        return out


def make_drain(url: str, notices: list[Message] | None = None, **settings: object) -> SyslogDrain:
    sink = notices if notices is not None else []
    ctx = DrainContext(
        channel="app1",
        drain_id=7,
        token=TOKEN,
        url=url,
        settings=DrainSettings(**settings),  # type: ignore[arg-type]
        post_notice=sink.extend,
    )
    drain = open_drain(ctx)
    assert isinstance(drain, SyslogDrain)
    return drain


@asynccontextmanager
async def running(receiver: SyslogReceiver, **settings: object) -> AsyncIterator[SyslogDrain]:
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(f"syslog://127.0.0.1:{receiver.port}", None, **settings)
        await nursery.start(drain.run)
        yield drain
        nursery.cancel_scope.cancel()


def accounted(frames: list[bytes], published: int) -> tuple[int, int]:
    """Unique delivered + L10 counts = published; duplicates are allowed over TCP."""
    fields = [syslog_fields(frame) for frame in frames]
    app, lost, _ = tally([(pri, source, ps, msg) for pri, _, _, source, ps, msg in fields])
    unique = set(app)
    assert len(unique) + lost == published
    return len(unique), lost


async def test_frame_is_byte_exact_per_design_5_1(io_clock: trio.abc.Clock) -> None:
    receiver = SyslogReceiver()
    async with running(receiver) as drain:
        drain.push_batch(Batch([(EXAMPLE_TS_US, 190, b"app", b"web.1", b"hello")]))
        await drain.wait_flushed()
        await receiver.wait_for_frames(1)
    assert bytes(receiver.connections[0]) == (
        b"99 <190>1 2026-11-27T20:39:33.123456+00:00 "
        b"d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc app web.1 - - hello\n"
    )
    assert drain.status().state == "up"
    assert drain.status().delivered == 1


async def test_many_batches_arrive_in_order_on_one_connection(io_clock: trio.abc.Clock) -> None:
    receiver = SyslogReceiver()
    async with running(receiver, buffer_messages=100_000) as drain:
        for batch in batches(20_000, 500):
            drain.push_batch(batch)
        await drain.wait_flushed()
        await receiver.wait_for_frames(20_000)
    assert len(receiver.connections) == 1
    msgs = [syslog_fields(frame)[5] for frame in receiver.frames()]
    assert msgs == [b"line %d" % i for i in range(20_000)]
    assert drain.status().delivered == 20_000


async def test_peer_closing_between_batches_reconnects_without_loss(
    io_clock: trio.abc.Clock,
) -> None:
    receiver = SyslogReceiver()
    async with running(receiver, buffer_messages=10_000) as drain:
        drain.push_batch(Batch(app_messages(10)))
        await drain.wait_flushed()
        receiver.close_after_bytes = 0  # the next data makes the receiver hang up
        for batch in batches(600, 50, prefix=b"more"):
            drain.push_batch(batch)
            await trio.sleep(0.05)
        await drain.wait_flushed()
        await receiver.wait_for_frames(610)
    assert len(receiver.connections) >= 2
    assert accounted(receiver.frames(), 610) == (610, 0)


async def test_reset_with_unacknowledged_data_resends_it(io_clock: trio.abc.Clock) -> None:
    """The receiver stalls (window closes), keeps only what its kernel acknowledged, resets.

    MSG_PEEK reads the acknowledged bytes without opening the window, so nothing new is
    acknowledged between reading and the reset: every frame the receiver did not keep was
    never acknowledged, and the drain must send it again on the next connection.
    """
    listener = trio.socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    await listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    kept = bytearray()
    second = bytearray()
    published = 30_000
    async with trio.open_nursery() as nursery:
        drain = make_drain(f"syslog://127.0.0.1:{port}", buffer_messages=published)
        await nursery.start(drain.run)
        for batch in batches(published, 1000):
            drain.push_batch(batch)
        first, _ = await listener.accept()
        # Do not read: wait until the receive queue stops growing (window closed).
        queued = -1
        while True:
            await trio.sleep(0.2)
            now_queued = struct.unpack("i", _ioctl_inq(first.fileno()))[0]
            if now_queued == queued:
                break
            queued = now_queued
        assert queued > 0
        kept += await first.recv(queued, socket.MSG_PEEK)
        assert len(kept) == queued
        first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        again, _ = await listener.accept()
        with again:
            while drain.status().delivered < published - _complete_frames(kept):
                with trio.move_on_after(2):
                    chunk = await again.recv(1 << 20)
                    if not chunk:
                        break
                    second += chunk
            await drain.wait_flushed()
            with trio.move_on_after(0.5):
                while chunk := await again.recv(1 << 20):
                    second += chunk
        nursery.cancel_scope.cancel()
    listener.close()
    frames = _whole_frames(bytes(kept)) + octet_frames(bytes(second))
    delivered, lost = accounted(frames, published)
    assert (delivered, lost) == (published, 0)
    # Only the unacknowledged tail came again: duplicates at most one frame.
    assert len(frames) - published <= 1


def _ioctl_inq(fd: int) -> bytes:
    return fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")


def _whole_frames(data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    pos = 0
    while True:
        space = data.find(b" ", pos)
        if space < 0:
            return frames
        length = int(data[pos:space])
        end = space + 1 + length
        if end > len(data):
            return frames
        frames.append(data[space + 1 : end])
        pos = end


def _complete_frames(data: bytes | bytearray) -> int:
    return len(_whole_frames(bytes(data)))


async def test_unreachable_peer_backs_off_then_delivers(io_clock: trio.abc.Clock) -> None:
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on port now
    async with trio.open_nursery() as nursery:
        drain = make_drain(f"syslog://127.0.0.1:{port}")
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(5)))
        await trio.sleep(30)
        status = drain.status()
        assert status.state == "down"
        assert "refused" in (status.last_error or "").lower()
        assert status.buffered == 5
        receiver = SyslogReceiver()
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        receiver.port = port
        nursery.start_soon(trio.serve_listeners, receiver._handle, listeners)
        with trio.fail_after(120):
            await drain.wait_flushed()
        await receiver.wait_for_frames(5)
        nursery.cancel_scope.cancel()
    assert accounted(receiver.frames(), 5) == (5, 0)


async def test_tls_delivery_verified_with_ca_file(
    io_clock: trio.abc.Clock, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    receiver = SyslogReceiver(server_tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"syslog+tls://localhost:{receiver.port}"
        drain = make_drain(url, ca_file=ca_file, buffer_messages=10_000)
        await nursery.start(drain.run)
        for batch in batches(3000, 300):
            drain.push_batch(batch)
        await drain.wait_flushed()
        await receiver.wait_for_frames(3000)
        nursery.cancel_scope.cancel()
    assert accounted(receiver.frames(), 3000) == (3000, 0)


@pytest.mark.parametrize(("fragment", "delivered"), [("", False), ("#insecure", True)])
async def test_tls_certificate_for_another_host_posts_one_l14(
    io_clock: trio.abc.Clock,
    wrong_host_tls: ssl.SSLContext,
    ca_file: str,
    fragment: str,
    delivered: bool,
) -> None:
    receiver = SyslogReceiver(wrong_host_tls)
    notices: list[Message] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"syslog+tls://localhost:{receiver.port}{fragment}"
        drain = make_drain(url, notices, ca_file=ca_file)
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(4)))
        with trio.move_on_after(20):  # several reconnect attempts
            await drain.wait_flushed()
        if delivered:
            await receiver.wait_for_frames(4)
        nursery.cancel_scope.cancel()
    if delivered:
        assert accounted(receiver.frames(), 4) == (4, 0)
        assert notices == []
        return
    assert receiver.frames() == []
    assert len(notices) == 1
    _, pri, source, ps, text = notices[0]
    assert (pri, source, ps) == (172, b"heroku", b"logplex")
    assert text.startswith(b'Error L14 (certificate validation): error="')
    assert text.endswith(b'" uri="syslog+tls://localhost:%d"' % receiver.port)
    assert drain.status().state == "down"


async def test_udp_one_datagram_per_message_cut_to_2048(io_clock: trio.abc.Clock) -> None:
    sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    long_line = b"x" * 5000
    messages = [*app_messages(3), (EXAMPLE_TS_US, 190, b"app", b"web.1", long_line)]
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        ctx = DrainContext(
            channel="c", drain_id=2, token=TOKEN, url=f"syslog+udp://127.0.0.1:{port}"
        )
        drain = open_drain(ctx)
        assert isinstance(drain, UdpDrain)
        await nursery.start(drain.run)
        drain.push_batch(Batch(messages))
        await drain.wait_flushed()
        for _ in messages:
            got.append(await sock.recv(65536))
        nursery.cancel_scope.cancel()
    sock.close()
    assert [syslog_fields(d)[5] for d in got[:3]] == [b"line 0", b"line 1", b"line 2"]
    assert not got[0].endswith(b"\n")
    assert got[0].startswith(b"<190>1 ")
    assert len(got[3]) == 2048
    assert got[3].startswith(
        b"<190>1 2026-11-27T20:39:33.123456+00:00 " + TOKEN.encode() + b" app web.1 - - xxx"
    )
    assert drain.status().delivered == 4


async def test_udp_refusal_of_an_earlier_datagram_does_not_lose_the_next(
    io_clock: trio.abc.Clock,
) -> None:
    probe = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens: the kernel answers with ICMP port unreachable
    async with trio.open_nursery() as nursery:
        ctx = DrainContext(
            channel="c", drain_id=3, token=TOKEN, url=f"syslog+udp://127.0.0.1:{port}"
        )
        drain = open_drain(ctx)
        await nursery.start(drain.run)
        for n in range(20):
            drain.push_batch(Batch(app_messages(5, start=5 * n)))
            await trio.sleep(0.01)
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    status = drain.status()
    # ECONNREFUSED reports an ICMP for an earlier datagram; the datagram being sent is sent
    # again and the kernel takes it: fire-and-forget, nothing counted as lost by us.
    assert "refused" in (status.last_error or "").lower()
    assert (status.delivered, status.dropped) == (100, 0)


async def test_receiver_closing_an_idle_connection_is_not_a_failure(
    io_clock: trio.abc.Clock,
) -> None:
    receiver = SyslogReceiver()
    first = Batch(app_messages(10))
    async with running(receiver) as drain:
        frames: list[bytes] = drain.queue.frames_of(first)[0]  # type: ignore[attr-defined]
        receiver.close_after_bytes = sum(len(f) for f in frames)
        drain.push_batch(first)
        await drain.wait_flushed()
        await receiver.wait_for_frames(10)
        await trio.sleep(0.5)  # the receiver's FIN has arrived and been handled
        assert drain.status().last_error is None
        assert drain.status().state == "up"
        drain.push_batch(Batch(app_messages(5, start=10)))
        await drain.wait_flushed()
        await receiver.wait_for_frames(15)
    assert len(receiver.connections) == 2
    assert accounted(receiver.frames(), 15) == (15, 0)
