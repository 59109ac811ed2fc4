"""The destination policy at every connect of a real drain, over loopback sockets.

A resolver seam (``DestinationPolicy.resolve``) stands in for DNS, so a name can point at a
local receiver and then change (rebinding). Checked: the drain connects only to the address
it checked (and still sends the URL's host as ``Host``), a refused connect is a drain status
that keeps the batch queued and retried, the router's own listeners are refused at connect
with the guard off, and under the guard no connect failure tells what a port did.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import pytest
import trio
import trio.testing
import trustme
from drains_fake_http import FakeHttpReceiver
from drains_support import app_messages

from drains import DrainContext, DrainSettings, open_drain
from drains._base import DrainCore
from drains._errors import HttpTransportError, describe_exception
from drains._policy import NETWORK_ERROR, DestinationPolicy, Listener
from drains.http.connection import Http11Client, network_stream_opener
from drains.http.request import PostEncoder, PreparedPost
from drains.syslog import SyslogDrain
from logplex.codecs.records import Batch

Answer = list[tuple[int, int, int, str, tuple[object, ...]]]


class FakeDns:
    """A resolver whose records a test sets (and changes) by name."""

    def __init__(self, **records: str) -> None:
        self.records = {name.replace("_", "."): address for name, address in records.items()}
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int, socket_type: int) -> Answer:
        await trio.lowlevel.checkpoint()
        self.lookups.append(host)
        answer: Answer = []
        for address in self.records[host].split(","):  # "a,b": two records, in order
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr: tuple[object, ...] = (
                (address, port, 0, 0) if ":" in address else (address, port)
            )
            answer.append((family, socket_type, 0, "", sockaddr))
        return answer


def context(url: str, policy: DestinationPolicy) -> DrainContext:
    return DrainContext(
        channel="c",
        drain_id=1,
        token="d.00000000-0000-0000-0000-000000000001",
        url=url,
        settings=DrainSettings(destination_policy=policy),
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


def last_error(drain: object) -> str:
    assert isinstance(drain, DrainCore)
    return drain.status().last_error or ""


async def test_the_connect_goes_to_the_checked_address_with_the_urls_host(
    io_clock: trio.testing.MockClock,
) -> None:
    receiver = FakeHttpReceiver()
    dns = FakeDns(drain_test="127.0.0.1")  # "drain.test" exists only in this resolver
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"http://drain.test:{receiver.port}/logs"
        drain = open_drain(context(url, DestinationPolicy(resolve=dns)))
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(3)))
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert dns.lookups == ["drain.test"]
    assert receiver.requests[0].headers["host"] == f"drain.test:{receiver.port}"
    assert len(receiver.delivered_lines()) == 3


@pytest.mark.parametrize(("certified", "delivered"), [("drain.test", True), ("other.test", False)])
async def test_tls_to_the_pinned_address_verifies_and_sends_the_urls_host_name(
    io_clock: trio.testing.MockClock,
    ca: trustme.CA,
    ca_file: str,
    certified: str,
    delivered: bool,
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(certified).configure_cert(server_tls)
    server_names: list[str | None] = []
    server_tls.sni_callback = lambda _tls, name, _context: server_names.append(name)
    receiver = FakeHttpReceiver(ssl_context=server_tls)
    dns = FakeDns(drain_test="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"https://drain.test:{receiver.port}/logs"
        settings = DrainSettings(ca_file=ca_file, destination_policy=DestinationPolicy(resolve=dns))
        drain = open_drain(
            DrainContext(channel="c", drain_id=1, token="d.x", url=url, settings=settings)
        )
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        if delivered:
            await drain.wait_flushed()
        else:
            await wait_until(lambda: "certificate" in last_error(drain))
            assert "Hostname mismatch" in last_error(drain)
        nursery.cancel_scope.cancel()
    assert server_names[:1] == ["drain.test"]  # SNI is the URL's host, not the address
    assert len(receiver.delivered_lines()) == (2 if delivered else 0)


async def test_an_address_that_fails_is_followed_by_the_next_checked_one(
    io_clock: trio.testing.MockClock,
) -> None:
    receiver = FakeHttpReceiver()  # on 127.0.0.1 only: ::1 refuses the connection
    dns = FakeDns(drain_test="::1,127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"http://drain.test:{receiver.port}/logs"
        drain = open_drain(context(url, DestinationPolicy(resolve=dns)))
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert last_error(drain) == ""
    assert len(receiver.delivered_lines()) == 2


async def test_a_private_destination_is_a_drain_status_and_the_batch_stays_queued(
    io_clock: trio.testing.MockClock,
) -> None:
    receiver = FakeHttpReceiver()
    dns = FakeDns(drain_test="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        url = f"http://user:s3cret@drain.test:{receiver.port}/logs"
        drain = open_drain(context(url, DestinationPolicy(deny_private=True, resolve=dns)))
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(5)))
        await wait_until(lambda: "refused" in last_error(drain))
        assert last_error(drain) == (
            "destination refused by policy: drain.test resolves to a loopback address "
            f"(http://drain.test:{receiver.port}/logs)"
        )
        await trio.sleep(30)  # retried like a network error, never connected
        status = drain.status()
        assert (status.state, status.buffered, status.dropped) == ("down", 5, 0)
        assert len(dns.lookups) > 1  # resolved again at every attempt
        await trio.sleep(40)  # past the retry window (no spool): counted, not lost silently
        assert drain.status().dropped == 5
        nursery.cancel_scope.cancel()
    assert receiver.connections == 0


async def test_a_name_rebound_to_the_routers_own_listener_is_refused_at_the_next_connect(
    io_clock: trio.testing.MockClock,
) -> None:
    receiver = FakeHttpReceiver(hang_up_after_response=True)  # every post connects anew
    dns = FakeDns(drain_test="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        own = Listener("http", "127.0.0.2", receiver.port)  # this "router" listens there
        policy = DestinationPolicy(own_listeners=(own,), resolve=dns)
        drain = open_drain(context(f"http://drain.test:{receiver.port}/logs", policy))
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(2)))
        await drain.wait_flushed()
        assert receiver.connections == 1
        dns.records["drain.test"] = "127.0.0.2"  # the record changes after the first check
        drain.push_batch(Batch(app_messages(2, start=2)))
        await wait_until(lambda: "own listener" in last_error(drain))
        assert last_error(drain).startswith(
            f"destination is this router's own listener (http 127.0.0.2:{receiver.port})"
        )
        dns.records["drain.test"] = "127.0.0.1"  # and back: the queued batch goes out
        await drain.wait_flushed()
        nursery.cancel_scope.cancel()
    assert receiver.connections == 2
    assert len(receiver.delivered_lines()) == 4


async def count_connections(
    listener: trio.SocketListener, accepted: list[int], *, task_status: trio.TaskStatus[None]
) -> None:
    task_status.started()
    while True:
        stream = await listener.accept()
        accepted.append(1)
        await stream.aclose()


@pytest.mark.parametrize("deny_private", [False, True])
async def test_a_syslog_drain_into_the_routers_own_listener_is_refused_at_connect(
    io_clock: trio.testing.MockClock, deny_private: bool
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[int] = []
    policy = DestinationPolicy(
        deny_private=deny_private, own_listeners=(Listener("syslog", "127.0.0.1", port),)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(count_connections, listener, accepted)
        drain = open_drain(context(f"syslog://localhost:{port}", policy))
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(4)))
        await wait_until(lambda: "own listener" in last_error(drain))
        assert last_error(drain) == (
            f"destination is this router's own listener (syslog 127.0.0.1:{port}) "
            f"(syslog://localhost:{port})"
        )
        await trio.sleep(20)
        assert (drain.status().buffered, drain.status().dropped) == (4, 0)
        nursery.cancel_scope.cancel()
    await listener.aclose()
    assert accepted == []


async def test_a_udp_drain_to_a_private_address_sends_nothing(
    io_clock: trio.testing.MockClock,
) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    port = receiver.getsockname()[1]
    with receiver:
        async with trio.open_nursery() as nursery:
            drain = open_drain(
                context(f"syslog+udp://127.0.0.1:{port}", DestinationPolicy(deny_private=True))
            )
            await nursery.start(drain.run)
            drain.push_batch(Batch(app_messages(3)))
            await wait_until(lambda: "refused" in last_error(drain))
            assert last_error(drain) == (
                "destination refused by policy: 127.0.0.1 is a loopback address "
                f"(syslog+udp://127.0.0.1:{port})"
            )
            nursery.cancel_scope.cancel()
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)  # nothing arrived (non-blocking read of an empty socket)


# -- no port-scan oracle -------------------------------------------------------------------


def a_post() -> PreparedPost:
    encoder = PostEncoder(
        "/logs", host_header="sink", fixed_headers=[], per_post_names=("Logplex-Msg-Count",)
    )
    return encoder.encode(("1",), [b"5 hello"], 7)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize("generic", [False, True])
async def test_a_refused_connect_says_only_network_error_under_the_policy(generic: bool) -> None:
    opener = network_stream_opener("127.0.0.1", closed_port(), None)
    client = Http11Client(opener, connect_timeout_s=3.0, generic_connect_errors=generic)
    with pytest.raises(HttpTransportError) as caught:
        await client.post(a_post())
    reason = describe_exception(caught.value)
    if generic:
        assert reason == NETWORK_ERROR
    else:
        assert "ConnectionRefusedError" in reason


@pytest.mark.parametrize("generic", [False, True])
async def test_a_connect_timeout_says_only_network_error_under_the_policy(
    autojump_clock: trio.abc.Clock, generic: bool
) -> None:
    async def hanging_opener() -> trio.SocketStream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    client = Http11Client(hanging_opener, connect_timeout_s=3.0, generic_connect_errors=generic)
    with pytest.raises(HttpTransportError) as caught:
        await client.post(a_post())
    reason = describe_exception(caught.value)
    assert (reason == NETWORK_ERROR) is generic
    assert ("timed out" in str(caught.value)) is not generic


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connection refused"),
        trio.TooSlowError(),
        OSError(113, "No route to host"),
        trio.BrokenResourceError("reset by peer"),
    ],
)
def test_syslog_connect_failures_read_the_same_under_the_policy(failure: BaseException) -> None:
    on = SyslogDrain(context("syslog://logs.example:601", DestinationPolicy(deny_private=True)))
    on._connect_failed(failure)
    assert last_error(on) == f"{NETWORK_ERROR} (syslog://logs.example:601)"
    off = SyslogDrain(context("syslog://logs.example:601", DestinationPolicy()))
    off._connect_failed(failure)
    assert NETWORK_ERROR not in last_error(off)
