"""The accept loop the ingest listeners share: capacity errors, other errors, refusals."""

from __future__ import annotations

import errno
import logging
from functools import partial

import pytest
import trio
import trio.testing

from logplex.ingest.accept import (
    ACCEPT_RETRY_S,
    REFUSAL_LOG_INTERVAL_S,
    AcceptLoop,
    Refusal,
    normalise_source,
    refused_limit,
)


class ScriptedListener(trio.abc.Listener[trio.abc.Stream]):
    """Accepts by script: each item is an OSError to raise or a stream to hand out; while
    the script is empty, accept waits (as a quiet listening socket does)."""

    def __init__(self, script: list[OSError | trio.abc.Stream]) -> None:
        self.script = script
        self.accepts = 0
        self.closed = False
        self._fed = trio.Event()

    def feed(self, items: list[OSError | trio.abc.Stream]) -> None:
        self.script.extend(items)
        self._fed.set()

    async def wait_script_used(self) -> None:
        while self.script:
            await trio.sleep(0.01)
        await trio.sleep(0.01)  # the last accepted stream reaches its task

    async def accept(self) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        while not self.script:
            self._fed = trio.Event()
            await self._fed.wait()
        self.accepts += 1
        item = self.script.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    async def aclose(self) -> None:
        self.closed = True


def stream() -> trio.abc.Stream:
    return trio.testing.memory_stream_pair()[0]


async def hold(_stream: trio.abc.Stream) -> None:
    await trio.sleep_forever()


async def close(stream: trio.abc.Stream, *_refusal: object) -> None:
    await stream.aclose()


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS])
async def test_capacity_errors_back_off_and_keep_accepting(
    code: int, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    listener = ScriptedListener([OSError(code, "no capacity"), stream()])
    loop = AcceptLoop("syslog", max_connections=5)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(loop.serve, [listener], hold, refuse=close))  # type: ignore[arg-type]
        began = trio.current_time()
        while loop.open_connections < 1:
            await trio.sleep(0.01)
        assert trio.current_time() - began >= ACCEPT_RETRY_S
        nursery.cancel_scope.cancel()
    assert "syslog listener accept failed" in caplog.text
    assert listener.closed


@pytest.mark.parametrize("code", [errno.EBADF, errno.ENOTSOCK, errno.EINVAL])
async def test_other_accept_errors_end_the_listener(
    code: int, autojump_clock: trio.testing.MockClock
) -> None:
    listener = ScriptedListener([OSError(code, "broken"), stream()])
    loop = AcceptLoop("shim", max_connections=5)
    with pytest.RaisesGroup(pytest.RaisesExc(OSError, check=lambda exc: exc.errno == code)):
        await loop.serve([listener], hold, refuse=close)  # type: ignore[arg-type]
    assert listener.accepts == 1  # not retried
    assert listener.closed


async def test_refusals_past_the_cap_are_counted_and_logged_once_per_interval(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "logplex.ingest.accept")
    listener = ScriptedListener([stream() for _ in range(50)])
    loop = AcceptLoop("syslog", max_connections=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(loop.serve, [listener], hold, refuse=close))  # type: ignore[arg-type]
        await listener.wait_script_used()
        assert (loop.open_connections, loop.refused_connections) == (2, 48)
        assert len(caplog.records) == 1  # one line, not 48
        assert "1 new connection(s) refused" in caplog.records[0].getMessage()

        await trio.sleep(REFUSAL_LOG_INTERVAL_S)
        listener.feed([stream() for _ in range(3)])
        await listener.wait_script_used()
        assert loop.refused_connections == 51
        assert len(caplog.records) == 2
        assert "48 new connection(s) refused" in caplog.records[1].getMessage()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("open_total", "open_from_source", "expected"),
    [
        (0, 0, None),
        (9, 2, None),
        (10, 0, "max_connections"),
        (9, 3, "max_connections_per_ip"),
        (10, 3, "max_connections"),  # both reached: the listener-wide one is named
    ],
)
def test_refused_limit(open_total: int, open_from_source: int, expected: str | None) -> None:
    assert refused_limit(open_total, 10, open_from_source, 3) == expected


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("not-an-address", "not-an-address"),
    ],
)
def test_normalise_source(host: str, key: str) -> None:
    assert normalise_source(host) == key


def test_refusals_name_the_limit() -> None:
    per_ip = Refusal("max_connections_per_ip", 3).describe("shim")
    assert "3 shim connections per source address (max_connections_per_ip)" in per_ip
    assert "(max_connections)" in Refusal("max_connections", 10).describe("HTTP")


async def test_per_source_counts_are_released_on_close() -> None:
    loop = AcceptLoop("syslog", max_connections=10, max_connections_per_ip=2)
    release = trio.Event()

    async def hold_until_released(stream: trio.abc.Stream) -> None:
        await release.wait()
        await stream.aclose()

    refused: list[Refusal] = []

    async def record(stream: trio.abc.Stream, refusal: Refusal) -> None:
        refused.append(refusal)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(partial(loop.serve, listeners, hold_until_released, refuse=record))
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(3)]
        with trio.fail_after(5):
            while len(refused) < 1:
                await trio.sleep(0.01)
        assert refused == [Refusal("max_connections_per_ip", 2)]
        assert loop.open_by_source == {"127.0.0.1": 2}
        release.set()
        with trio.fail_after(5):
            while loop.open_by_source:
                await trio.sleep(0.01)
        assert loop.open_connections == 0
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()
