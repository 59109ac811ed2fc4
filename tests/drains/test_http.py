"""HTTPS/HTTP drains over real loopback sockets (DESIGN 5.2 and 8).

Every fault test ends with the accounting check of DESIGN 8: messages delivered (unique)
plus the counts in the L10 notices received equal the messages published.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from drains_fake_http import RESET, FakeHttpReceiver, Recorded, Reply, always
from drains_support import T0_US, app_messages, batches, https_fields, octet_frames, tally

from drains import DrainContext, DrainSettings, open_drain
from drains.http import HttpDrain, encode_https_frames
from logplex.codecs.logplex1 import https_frame
from logplex.codecs.records import Batch

TOKEN = "d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"


def make_drain(url: str, **settings: object) -> HttpDrain:
    ctx = DrainContext(
        channel="app1",
        drain_id=1,
        token=TOKEN,
        url=url,
        settings=DrainSettings(**settings),  # type: ignore[arg-type]
    )
    drain = open_drain(ctx)
    assert isinstance(drain, HttpDrain)
    return drain


@asynccontextmanager
async def running(
    receiver: FakeHttpReceiver, url: str | None = None, **settings: object
) -> AsyncIterator[HttpDrain]:
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(url or receiver.url, **settings)
        await nursery.start(drain.run)
        yield drain
        nursery.cancel_scope.cancel()


def received(receiver: FakeHttpReceiver) -> list[tuple[int, bytes, bytes, bytes]]:
    out = []
    for request in receiver.delivered():
        for payload in octet_frames(request.body):
            pri, _, _, source, ps, msg = https_fields(payload)
            out.append((pri, source, ps, msg))
    return out


def assert_accounted(receiver: FakeHttpReceiver, published: int) -> tuple[int, int]:
    app, lost, _ = tally(received(receiver))
    assert len(set(app)) == len(app), "duplicates delivered"
    assert len(app) + lost == published
    return len(app), lost


async def test_request_is_byte_exact_per_design_5_2(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver()
    url_template = "http://us%40er:pa:ss@localhost:{port}/logs?x=1"
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(url_template.format(port=receiver.port))
        await nursery.start(drain.run)
        drain.push_batch(Batch([(T0_US + 123456, 190, b"app", b"web.1", b"hello")]))
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    [request] = receiver.requests
    assert request.method == "POST"
    assert request.target == "/logs?x=1"
    assert request.headers["content-type"] == "application/logplex-1"
    assert request.headers["logplex-msg-count"] == "1"
    assert re.fullmatch(r"[0-9A-F]{32}", request.headers["logplex-frame-id"])
    assert request.headers["logplex-drain-token"] == TOKEN
    assert re.fullmatch(r"Logplex/\S+", request.headers["user-agent"])
    auth = request.headers["authorization"]
    assert auth.startswith("Basic ")
    assert base64.b64decode(auth[6:]) == b"us@er:pa:ss"
    # DESIGN 5.2 example layout; T0_US is 2026-11-18T11:06:40Z.
    assert request.body == (b"63 <190>1 2026-11-18T11:06:40.123456+00:00 host app web.1 - hello\n")
    status = drain.status().to_json()
    assert status["state"] == "up"
    assert status["delivered"] == 1
    assert status["buffered"] == 0
    assert isinstance(status["last_success_at"], str)


async def test_500_three_times_then_200_resends_same_frame_id_and_body(
    io_clock: trio.abc.Clock,
) -> None:
    receiver = FakeHttpReceiver(lambda r, i: Reply(500 if i < 3 else 200))
    async with running(receiver) as drain:
        for batch in batches(50, 10):
            drain.push_batch(batch)
        await drain.wait_flushed()
    first, *rest = receiver.requests[:4]
    assert [r.headers["x-test-outcome"] for r in receiver.requests[:4]] == ["500"] * 3 + ["200"]
    for retry in rest:
        assert retry.headers["logplex-frame-id"] == first.headers["logplex-frame-id"]
        assert retry.body == first.body
    assert assert_accounted(receiver, 50) == (50, 0)
    assert drain.status().state == "up"


async def test_429_honours_retry_after(io_clock: trio.abc.Clock) -> None:
    arrivals: list[float] = []

    def respond(request: Recorded, index: int) -> Reply:
        arrivals.append(trio.current_time())
        return Reply(429, [("Retry-After", "1")]) if index == 0 else Reply(204)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(5)))
        await drain.wait_flushed()
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 1.0
    assert arrivals[1] - arrivals[0] < 1.5
    assert assert_accounted(receiver, 5) == (5, 0)


async def test_404_drops_batch_and_next_batch_starts_with_exact_l10(
    io_clock: trio.abc.Clock,
) -> None:
    receiver = FakeHttpReceiver(lambda r, i: Reply(404 if i == 0 else 204))
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(7)))
        await receiver.arrived.wait()
        await trio.sleep(0.1)
        drain.push_batch(Batch(app_messages(3, start=7)))
        await drain.wait_flushed()
    assert len(receiver.requests) == 2
    second = octet_frames(receiver.requests[1].body)
    pri, _, _, source, ps, msg = https_fields(second[0])
    assert (pri, source, ps) == (172, b"heroku", b"logplex")
    assert re.fullmatch(
        rb"Error L10 \(output buffer overflow\): 7 messages dropped since \S+\.", msg
    )
    assert receiver.requests[1].headers["logplex-msg-count"] == "4"
    assert assert_accounted(receiver, 10) == (3, 7)
    status = drain.status()
    assert status.dropped == 7
    assert status.state == "up"


async def test_lone_l10_is_sent_after_one_second(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver(lambda r, i: Reply(400 if i == 0 else 204))
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(4)))
        await receiver.arrived.wait()
        dropped_at = trio.current_time()
        await receiver.arrived.wait()
        waited = trio.current_time() - dropped_at
        await drain.wait_flushed()
    assert 1.0 <= waited < 1.5
    [(_, _, _, msg)] = received(receiver)
    assert msg.startswith(b"Error L10 (output buffer overflow): 4 messages dropped since ")


async def test_retry_window_expiry_drops_and_reports(io_clock: trio.abc.Clock) -> None:
    healthy = False

    def respond(request: Recorded, index: int) -> Reply:
        return Reply(204 if healthy else 503)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver, retry_window_s=20.0) as drain:
        drain.push_batch(Batch(app_messages(6)))
        started = trio.current_time()
        while drain.status().dropped == 0:
            await trio.sleep(1)
        # Dropped as soon as the next attempt would start past the window, never later.
        assert 0 < trio.current_time() - started <= 21
        assert drain.status().state == "down"
        healthy = True
        drain.push_batch(Batch(app_messages(2, start=6)))
        await drain.wait_flushed()
    assert assert_accounted(receiver, 8) == (2, 6)


async def test_stalled_receiver_while_5000_lines_are_published(io_clock: trio.abc.Clock) -> None:
    stall = trio.Event()

    async def respond(request: Recorded, index: int) -> Reply:
        await stall.wait()  # every request, on either connection, until released
        return Reply(204)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver) as drain:
        for batch in batches(5000, 50):
            drain.push_batch(batch)
            await trio.sleep(0.01)
        # The buffer's 1024 plus two posts in flight, each at most 1000 messages.
        assert drain.status().buffered <= 1024 + 2 * 1000
        assert receiver.connections == 2
        stall.set()
        await drain.wait_flushed()
    delivered, lost = assert_accounted(receiver, 5000)
    assert lost > 0
    assert delivered >= 1024


async def test_connection_resets_are_retried(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver(lambda r, i: Reply(RESET if i < 2 else 204))
    async with running(receiver) as drain:
        for batch in batches(300, 100):
            drain.push_batch(batch)
        await drain.wait_flushed()
    assert receiver.connections >= 3
    assert assert_accounted(receiver, 300) == (300, 0)


async def test_slow_receiver_reading_one_byte_per_10ms() -> None:
    receiver = FakeHttpReceiver(read_byte_delay_s=0.01)
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(3)))
        with trio.fail_after(30):
            await drain.wait_flushed()
    assert assert_accounted(receiver, 3) == (3, 0)


async def test_batches_respect_message_and_byte_caps(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver()
    long_lines = [(T0_US, 190, b"app", b"web.1", b"%05d " % i + b"x" * 500) for i in range(400)]
    async with running(receiver, buffer_messages=10_000) as drain:
        drain.push_batch(Batch(app_messages(2500)))
        drain.push_batch(Batch(long_lines))
        await drain.wait_flushed()
    for request in receiver.requests:
        assert int(request.headers["logplex-msg-count"]) <= 1000
        assert len(request.body) <= 100 * 1024
        assert int(request.headers["logplex-msg-count"]) == len(octet_frames(request.body))
    assert assert_accounted(receiver, 2900) == (2900, 0)


async def test_buffer_overflow_drops_oldest_and_reports_l10(io_clock: trio.abc.Clock) -> None:
    gate = trio.Event()

    async def respond(request: Recorded, index: int) -> Reply:
        await gate.wait()
        return Reply(204)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver, buffer_messages=100) as drain:
        drain.push_batch(Batch(app_messages(10)))  # goes in flight at once
        await receiver.arrived.wait()
        for batch in batches(500, 25):
            drain.push_batch(
                Batch([(m[0], m[1], m[2], m[3], b"late " + m[4]) for m in batch.messages])
            )
        assert drain.status().buffered == 110
        gate.set()
        await drain.wait_flushed()
    app, lost, notices = tally(received(receiver))
    assert notices == 1
    assert lost == 400
    # The newest 100 survive: the oldest were dropped.
    assert app[10:] == [b"late line %d" % i for i in range(400, 500)]


@pytest.mark.parametrize(("fragment", "delivered"), [("", False), ("#insecure", True)])
async def test_tls_certificate_for_another_host(
    io_clock: trio.abc.Clock,
    wrong_host_tls: ssl.SSLContext,
    ca_file: str,
    fragment: str,
    delivered: bool,
) -> None:
    receiver = FakeHttpReceiver(ssl_context=wrong_host_tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(f"https://localhost:{receiver.port}/{fragment}", ca_file=ca_file)
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        with trio.move_on_after(5):
            await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert bool(receiver.requests) == delivered
    if not delivered:
        error = drain.status().last_error or ""
        assert "certificate" in error.lower() or "ssl" in error.lower()


async def test_tls_verified_with_ca_file(
    io_clock: trio.abc.Clock, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    receiver = FakeHttpReceiver(ssl_context=server_tls)
    async with running(receiver, ca_file=ca_file) as drain:
        drain.push_batch(Batch(app_messages(20)))
        await drain.wait_flushed()
    assert assert_accounted(receiver, 20) == (20, 0)


async def test_error_text_never_shows_credentials(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver(always(503))
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(f"http://user:s3cret@127.0.0.1:{receiver.port}/p?token=t0ps3cret")
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(1)))
        await receiver.arrived.wait()
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    error = drain.status().last_error or ""
    assert "503" in error
    assert "s3cret" not in error
    assert "t0ps3cret" not in error


async def test_keep_alive_closed_while_idle_is_reopened_without_a_failure(
    io_clock: trio.abc.Clock,
) -> None:
    receiver = FakeHttpReceiver(hang_up_after_response=True)
    async with running(receiver) as drain:
        for n in range(3):
            drain.push_batch(Batch(app_messages(2, start=2 * n)))
            await drain.wait_flushed()
            await trio.sleep(0.1)  # the receiver's hang-up has arrived
    assert receiver.connections == 3
    assert drain.status().last_error is None
    assert assert_accounted(receiver, 6) == (6, 0)


async def test_keep_alive_reused_across_batches(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver()
    async with running(receiver) as drain:
        for n in range(5):
            drain.push_batch(Batch(app_messages(2, start=2 * n)))
            await drain.wait_flushed()
    assert receiver.connections == 1
    assert len(receiver.requests) == 5


async def test_huge_error_body_is_not_read_whole(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver(
        lambda r, i: Reply(500 if i == 0 else 204), response_body=b"e" * (1 << 20)
    )
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(3)))
        await drain.wait_flushed()
    assert receiver.connections == 2  # the connection with the unread body was dropped
    assert assert_accounted(receiver, 3) == (3, 0)


def test_batch_formatting_of_alternating_dynos_equals_the_per_message_frames() -> None:
    # Interleaved ps values (and a change of source and PRI in the middle) take the batch
    # encoder's per-batch header lookups; each frame must equal DESIGN 5.2's single frame.
    messages = [
        (T0_US + n * 997, 190 if n < 40 else 187, b"app" if n < 60 else b"heroku", ps, b"m %d" % n)
        for n, ps in enumerate([b"web.1", b"web.2", b"worker.1", b"web.1"] * 25)
    ]
    assert encode_https_frames(messages) == [https_frame(m) for m in messages]
    assert encode_https_frames(messages)[3] == (
        b"61 <190>1 2026-11-18T11:06:40.002991+00:00 host app web.1 - m 3\n"
    )
