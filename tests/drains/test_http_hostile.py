"""An HTTPS drain against a hostile receiver on a real loopback socket (DESIGN 8).

The receiver reads each request whole and answers from a script of raw bytes, so it can
send what no HTTP library would write: a ``Content-Length`` of thousands of digits, an
unknown transfer coding, both framings at once. Whatever it sends, the drain must keep
working, retry or drop by the rules, and keep DESIGN 8's balance: delivered + the counts
of the L10 notices received = published.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import trio
import trio.testing
from drains_support import T0_US, app_messages, https_fields, octet_frames, tally

from drains import DrainContext, DrainSettings, open_drain
from logplex.codecs.records import Batch

TOKEN = "d.9173ea1f-6f14-4976-9cf0-7cd0dafdcdbc"
NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"
_LENGTH = re.compile(rb"content-length: *([0-9]+)", re.IGNORECASE)


class HostileReceiver:
    """Answers request N with ``answer(N)``; records the bodies of requests it answered 204.

    (A hostile answer may carry a 2xx status too; the drain cannot read it, so what it
    answered is not counted as delivered.)
    """

    def __init__(self, answer: Callable[[int], bytes]) -> None:
        self.answer = answer
        self.requests = 0
        self.delivered_bodies: list[bytes] = []
        self.port = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        pending = b""
        try:
            while True:
                while b"\r\n\r\n" not in pending:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length_match = _LENGTH.search(head)
                assert length_match is not None
                length = int(length_match[1])
                while len(pending) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    pending += data
                body, pending = pending[:length], pending[length:]
                answer = self.answer(self.requests)
                self.requests += 1
                if answer == NO_CONTENT:
                    self.delivered_bodies.append(body)
                await stream.send_all(answer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await trio.aclose_forcefully(stream)

    def accounted(self) -> tuple[int, int]:
        """(app messages delivered, sum of the L10 counts delivered)."""
        fields = []
        for body in self.delivered_bodies:
            for payload in octet_frames(body):
                pri, _, _, source, ps, msg = https_fields(payload)
                fields.append((pri, source, ps, msg))
        app, lost, _ = tally(fields)
        assert len(set(app)) == len(app), "duplicates delivered"
        return len(app), lost


HUGE_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 4301 + b"\r\n\r\n"
HOSTILE_ANSWERS = [
    HUGE_LENGTH,
    b"HTTP/1.1 200 OK\r\nContent-Length: 1" + b"0" * 20 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
]


@pytest.mark.parametrize("hostile", HOSTILE_ANSWERS)
async def test_a_hostile_answer_is_a_failed_attempt_and_the_drain_goes_on(
    hostile: bytes, io_clock: trio.abc.Clock
) -> None:
    receiver = HostileReceiver(lambda index: hostile if index < 3 else NO_CONTENT)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = open_drain(
            DrainContext(
                channel="app1",
                drain_id=1,
                token=TOKEN,
                url=f"http://localhost:{receiver.port}/logs",
            )
        )
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(5)))
        with trio.fail_after(120):
            await drain.wait_flushed()
        drain.push_batch(Batch(app_messages(5, start=5)))
        with trio.fail_after(120):
            await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert receiver.requests == 5  # three hostile answers retried, then one post each
    assert receiver.accounted() == (10, 0)
    status = drain.status()
    assert (status.state, status.buffered, status.delivered) == ("up", 0, 10)


async def test_a_receiver_that_is_always_hostile_costs_batches_never_the_drain(
    io_clock: trio.abc.Clock,
) -> None:
    healthy = False
    receiver = HostileReceiver(lambda index: NO_CONTENT if healthy else HUGE_LENGTH)
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = open_drain(
            DrainContext(
                channel="app1",
                drain_id=1,
                token=TOKEN,
                url=f"http://localhost:{receiver.port}/logs",
                settings=DrainSettings(retry_window_s=5.0),
            )
        )
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(4)))
        await trio.sleep(30)  # the batch runs out of its retry window and is dropped
        status = drain.status()
        assert (status.buffered, status.dropped) == (0, 4)
        assert status.state == "down"
        assert "Content-Length" in (status.last_error or "")
        healthy = True
        drain.push_batch(Batch([(T0_US + 10, 190, b"app", b"web.1", b"after")]))
        with trio.fail_after(120):
            await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert receiver.accounted() == (1, 4)  # the new message, and an L10 for the four lost
    assert drain.status().state == "up"
