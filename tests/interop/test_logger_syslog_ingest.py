"""util-linux ``logger`` (a real RFC 5424 sender) into the router's syslog port (DESIGN 2, 3).

``logger --rfc5424 --tcp --octet-count -n 127.0.0.1 -P PORT -t t.TOKEN`` sends one octet-counted
frame with the token in APP-NAME and a ``[timeQuality …]`` SD element, which must be dropped.
"""

from __future__ import annotations

import shutil

import pytest
import trio

from logplex.config.records import ChannelConfig
from logplex.fanout.router import Router
from logplex.ingest.syslog import SyslogListener

pytestmark = pytest.mark.peer("logger")

TOKEN = "t.0b8d6d2e-52f3-4b8c-9a55-2f0e3f9a1c77"


def logger_path() -> str:
    path = shutil.which("logger")
    if path is None:
        pytest.fail("util-linux `logger` is missing: install it (apt-get install bsdutils)")
    return path


async def test_logger_lines_land_in_the_channel() -> None:
    logger = logger_path()
    router = Router()
    router.apply_channel(ChannelConfig("app1", {"app": TOKEN}))
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(SyslogListener(router).serve, listeners)
        port = listeners[0].socket.getsockname()[1]
        common = [
            logger,
            "--rfc5424",
            "--tcp",
            "--octet-count",
            "-n",
            "127.0.0.1",
            "-P",
            str(port),
            "-t",
            TOKEN,
        ]
        await trio.run_process([*common, "-p", "local0.info", "hello from logger"])
        await trio.run_process(
            [*common, "-p", "user.err", "--id=4242", "--msgid", "M1", "second line"]
        )
        await trio.run_process([*common, "-t", "t.not-a-token", "dropped"])
        with trio.fail_after(10):
            while len(router.history("app1")) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    first, second = router.history("app1")
    # local0.info = 16*8+6; logger sends PROCID "-" without --id: shown as ps "-".
    assert first[1:] == (134, b"app", b"-", b"hello from logger")
    assert second[1:] == (11, b"app", b"4242", b"second line")  # user.err = 1*8+3; ps = PROCID
    assert first[0] > 1_700_000_000_000_000  # logger's own timestamp, in microseconds
