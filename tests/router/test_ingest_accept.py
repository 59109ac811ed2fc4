"""The accept loop the ingest listeners share: capacity errors, other errors, refusals."""

from __future__ import annotations

import errno
import logging
from functools import partial

import pytest
import trio
import trio.testing

from logplex.ingest.accept import ACCEPT_RETRY_S, REFUSAL_LOG_INTERVAL_S, AcceptLoop


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
