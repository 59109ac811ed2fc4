"""``logplex serve --deny-private-drains`` as a process: refused at connect, nothing lost.

A drain to a loopback receiver, created while the guard was off, is refused at its next
connect once the router restarts with the guard on: the status says so, the receiver sees
no connection, the refusal is counted, and the lines published meanwhile stay in the spool
(published = delivered + buffered) until a router without the guard delivers them. A real
shim, tail and ``/healthcheck`` (the canary) run beside it unaffected.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.canary import Canary
from tests.spool.conftest import KEY, Serve, SyslogReceiver, free_port

pytestmark = pytest.mark.slow


def wait_for_status(
    serve: Serve, channel: str, text: str, timeout_s: float = 60
) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.drain_status(channel)
        if text in str(status.get("last_error") or "") or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_a_stored_loopback_drain_is_refused_at_connect_once_the_guard_is_on(
    tmp_path: Path,
) -> None:
    receiver = SyslogReceiver(free_port())
    serve = Serve(tmp_path / "data")
    try:
        serve.start()
        token = serve.create_channel("app")
        serve.add_drain("app", f"syslog://127.0.0.1:{receiver.port}")
        serve.post_lines(token, [f"before {n}" for n in range(10)])
        assert len(receiver.wait_for(10)) == 10
        assert serve.stop() == 0

        serve.args = ("--deny-private-drains", "--shutdown-grace", "1")
        serve.start()
        canary_token = serve.create_channel("canary")
        shim = f"127.0.0.1:{serve.ports['shim']}"
        with Canary(serve.api, shim, canary_token, "canary", auth_key=KEY) as canary:
            canary.wait_for_lines(20)
            serve.post_lines(token, [f"during {n}" for n in range(10)])
            status = wait_for_status(serve, "app", "destination refused by policy")
            assert status["last_error"] == (
                "destination refused by policy: 127.0.0.1 is a loopback address "
                f"(syslog://127.0.0.1:{receiver.port})"
            )
            assert serve.metric('logplex_drain_destination_refusals_total{at="connect"}') >= 1
            # Creating one more such drain is refused at once, naming the category.
            with serve.client() as client:
                response = client.post(
                    "/v3/channels/app/drains", json={"url": "syslog://0x7f.1:6514"}
                )
            assert response.status_code == 400
            assert "0x7f.1 is a loopback address" in response.json()["error"]
            canary.wait_for_lines(len(canary.tail_lines) + 20)
        status = serve.drain_status("app")
        assert (status["delivered"], status["buffered"], status["dropped"]) == (10, 10, 0)
        assert len(receiver.texts) == 10  # not one line went to the loopback receiver
        assert serve.stop() == 0

        serve.args = ()
        serve.start()  # without the guard the held lines go out: nothing was lost
        texts = receiver.wait_for(20)
        assert texts == [f"before {n}" for n in range(10)] + [f"during {n}" for n in range(10)]
        assert serve.stop() == 0
    finally:
        receiver.close()
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait(30)
