"""An HTTPS drain that refuses, fails and recovers: L10 pacing, backoff, status, log lines.

DESIGN 8: a 4xx other than 408/429 drops the batch into the next L10; a refused L10 must
not beget another, and a drain refusing everything is backed off from like any failing
drain. A success clears ``last_error``; state changes are logged once each, the URL
redacted. Over real loopback sockets with the scriptable receiver; time is virtual.
"""

from __future__ import annotations

import logging
import ssl

import pytest
import trio
from drains_fake_http import FakeHttpReceiver, Recorded, Reply
from drains_support import app_messages
from test_http import assert_accounted, make_drain, running

from drains.http import HttpDrain
from logplex.codecs.records import Batch


async def test_one_message_to_a_403_drain_costs_two_requests_a_minute_not_sixty(
    io_clock: trio.abc.Clock,
) -> None:
    refusing = True
    receiver = FakeHttpReceiver(lambda r, i: Reply(403 if refusing else 204))
    async with running(receiver) as drain:
        drain.push_batch(Batch(app_messages(1)))
        await trio.sleep(60)
        # The message (refused, dropped) and one lone L10 telling of it (refused too).
        assert len(receiver.requests) == 2
        status = drain.status()
        assert (status.state, status.dropped, status.buffered) == ("down", 1, 0)
        await drain.wait_flushed()  # a flush does not wait for a notice held for a batch
        refusing = False
        drain.push_batch(Batch(app_messages(1, start=1)))
        await drain.wait_flushed()
    assert len(receiver.requests) == 3
    assert receiver.requests[2].headers["logplex-msg-count"] == "2"  # L10 + the message
    assert assert_accounted(receiver, 2) == (1, 1)


async def test_a_drain_refusing_everything_is_backed_off_from(io_clock: trio.abc.Clock) -> None:
    receiver = FakeHttpReceiver(lambda r, i: Reply(403))
    published = 0
    async with running(receiver) as drain:
        for second in range(60):
            drain.push_batch(Batch(app_messages(1, start=second)))
            published += 1
            await trio.sleep(1)
        await trio.sleep(120)  # past every backoff: what was taken is settled
        status = drain.status()
    # One post a second without backoff; with capped exponential backoff (0.5 s doubling
    # to 30 s, full jitter) far fewer, each carrying what gathered meanwhile.
    assert len(receiver.requests) < 25
    assert status.dropped + status.buffered == published
    assert status.buffered == 0


async def test_a_success_clears_the_last_error(io_clock: trio.abc.Clock) -> None:
    # The error is read when the retry arrives, before it is answered: a fixed sleep raced
    # the jittered backoff, which may be shorter than any sleep.
    drains: list[HttpDrain] = []
    errors_at_retry: list[str | None] = []

    def respond(request: Recorded, index: int) -> Reply:
        if index == 1:
            errors_at_retry.append(drains[0].status().last_error)
        return Reply(500 if index == 0 else 204)

    receiver = FakeHttpReceiver(respond)
    async with running(receiver) as drain:
        drains.append(drain)
        drain.push_batch(Batch(app_messages(3)))
        await drain.wait_flushed()
    assert len(errors_at_retry) == 1
    assert "HTTP 500" in (errors_at_retry[0] or "")
    status = drain.status()
    assert (status.state, status.last_error) == ("up", None)


async def test_going_down_and_up_again_is_logged_once_each_without_credentials(
    io_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def respond(request: Recorded, index: int) -> Reply:
        return Reply(503 if index < 4 else 204)

    caplog.set_level(logging.INFO, logger="drains")
    receiver = FakeHttpReceiver(respond)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(f"http://user:s3cret@127.0.0.1:{receiver.port}/p")
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if r.name == "drains"]
    assert [(r.levelno, r.getMessage().split(": ")[0]) for r in lines] == [
        (logging.WARNING, f"drain 1 of app1 (http://127.0.0.1:{receiver.port}/p) is down"),
        (logging.INFO, f"drain 1 of app1 (http://127.0.0.1:{receiver.port}/p) is up again"),
    ]
    assert "HTTP 503" in lines[0].getMessage()
    assert not any("s3cret" in r.getMessage() for r in lines)


async def test_a_certificate_failure_is_logged_once(
    io_clock: trio.abc.Clock,
    wrong_host_tls: ssl.SSLContext,
    ca_file: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="drains")
    receiver = FakeHttpReceiver(ssl_context=wrong_host_tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = make_drain(f"https://localhost:{receiver.port}/", ca_file=ca_file)
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        await trio.sleep(30)  # many attempts, each failing the handshake
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "drains"]
    assert len(lines) == 1, lines
    assert f"(https://localhost:{receiver.port}/) is down" in lines[0]
    assert "certificate" in lines[0].lower()
