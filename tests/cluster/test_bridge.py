"""The NATS bridge against real nats-server processes (tests/natsd.py): no fakes of NATS."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logplex.cluster.bridge import (
    BridgeError,
    BridgeSettings,
    BridgeTimeout,
    KeyExists,
    KvEntry,
    NatsBridge,
    NoResponders,
    NotConnected,
    PubAck,
    StreamNotFound,
    WrongRevision,
)
from tests.natsd import NatsNode, free_port, start_node

MARKER = ""  # the key of the "initial values done" entry of a watch


@asynccontextmanager
async def running_bridge(*servers: str, **settings: Any) -> AsyncIterator[NatsBridge]:
    """A connected bridge for the body of the block; stopped (thread joined) after it."""
    bridge = NatsBridge(BridgeSettings(servers=servers, **settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(bridge.run)
        try:
            yield bridge
        finally:
            nursery.cancel_scope.cancel()
    assert not bridge.connected
    assert not [t for t in threading.enumerate() if t.name.startswith("nats-")]


async def wait_until(predicate: Any, timeout_s: float = 20.0, what: str = "condition") -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


def acks(results: list[PubAck | BridgeError]) -> list[PubAck]:
    assert all(isinstance(r, PubAck) for r in results), results
    return [r for r in results if isinstance(r, PubAck)]


async def read_all(bridge: NatsBridge, stream: str, count: int, start_seq: int = 1) -> list[Any]:
    reader = await bridge.open_reader(stream, start_seq)
    out: list[Any] = []
    try:
        with trio.fail_after(20):
            while len(out) < count:
                out += await reader.fetch(100, 1.0)
        assert await reader.fetch(100, 0.2) == []
    finally:
        await reader.aclose()
    return out


# -- the harness --------------------------------------------------------------------------


def test_harness_node_restarts_on_the_same_port(nats_node: NatsNode) -> None:
    url = nats_node.url
    nats_node.restart()
    assert nats_node.running
    assert nats_node.url == url
    assert nats_node.healthy()


def test_harness_cluster_has_one_meta_leader(nats_cluster: list[NatsNode]) -> None:
    leaders = {node.meta_leader() for node in nats_cluster}
    assert len(leaders) == 1
    assert leaders.pop() in {node.name for node in nats_cluster}


# -- connecting -----------------------------------------------------------------------------


async def test_first_connect_failure_names_the_servers_without_credentials() -> None:
    url = f"nats://secretuser:secretpass@127.0.0.1:{free_port()}"
    bridge = NatsBridge(BridgeSettings(servers=(url,), connect_timeout_s=0.5))
    started = time.monotonic()
    with trio.fail_after(10), pytest.raises(BridgeError) as caught:
        await bridge.run()
    assert time.monotonic() - started < 5
    text = str(caught.value)
    assert "127.0.0.1" in text
    assert "secret" not in text
    assert not bridge.connected


async def test_calls_before_run_raise_not_connected() -> None:
    bridge = NatsBridge(BridgeSettings(servers=("nats://127.0.0.1:1",)))
    with pytest.raises(NotConnected):
        await bridge.kv_get("b", "k")


async def test_status_tells_the_server(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        status = bridge.status()
        assert status["connected"] is True
        assert status["server"] == f"127.0.0.1:{nats_node.port}"
        assert status["reconnects"] == 0
        assert status["dropped"] == 0


# -- streams --------------------------------------------------------------------------------


async def test_publish_many_and_read_back_in_order(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        info = await bridge.ensure_stream("S", ["s.>"])
        assert (info.name, info.messages, info.replicas) == ("S", 0, 1)
        items: list[tuple[str, bytes, str | None]] = [
            (f"s.{i % 3}", f"m{i}".encode(), f"id-{i}") for i in range(50)
        ]
        published = acks(await bridge.publish_many(items))
        assert [a.seq for a in published] == list(range(1, 51))
        assert not any(a.duplicate for a in published)
        got = await read_all(bridge, "S", 50)
        assert [m.data for m in got] == [data for _, data, _ in items]
        assert [m.subject for m in got] == [subject for subject, _, _ in items]
        assert [m.seq for m in got] == list(range(1, 51))
        assert all(m.time_ns > 1_600_000_000 * 10**9 for m in got)
        tail = await read_all(bridge, "S", 10, start_seq=41)
        assert [m.seq for m in tail] == list(range(41, 51))


async def test_publish_many_resend_is_a_duplicate(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("D", ["d"])
        first = acks(await bridge.publish_many([("d", b"a", "x1"), ("d", b"b", "x2")]))
        again = acks(await bridge.publish_many([("d", b"b", "x2"), ("d", b"c", "x3")]))
        assert [(a.seq, a.duplicate) for a in first] == [(1, False), (2, False)]
        assert [(a.seq, a.duplicate) for a in again] == [(2, True), (3, False)]
        assert (await bridge.stream_info("D")).messages == 3
        assert [m.data for m in await read_all(bridge, "D", 3)] == [b"a", b"b", b"c"]


async def test_publish_many_errors_per_item(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("E", ["e"], max_msg_bytes=100)
        results = await bridge.publish_many(
            [("e", b"ok", None), ("nostream", b"x", None), ("e", b"x" * 200, None)]
        )
        assert isinstance(results[0], PubAck)
        assert isinstance(results[1], NoResponders)
        assert isinstance(results[2], BridgeError)
        assert "nats" not in type(results[2]).__module__


async def test_get_message_and_stream_info(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("G", ["g"])
        acks(await bridge.publish_many([("g", b"one", None), ("g", b"two", None)]))
        message = await bridge.get_message("G", 2)
        assert message is not None
        assert (message.subject, message.seq, message.data) == ("g", 2, b"two")
        assert message.time_ns > 0
        assert await bridge.get_message("G", 99) is None
        with pytest.raises(StreamNotFound):
            await bridge.get_message("NOPE", 1)
        with pytest.raises(StreamNotFound):
            await bridge.stream_info("NOPE")
        with pytest.raises(StreamNotFound):
            await bridge.open_reader("NOPE", 1)
        info = await bridge.stream_info("G")
        assert (info.messages, info.first_seq, info.last_seq) == (2, 1, 2)


async def test_ensure_stream_updates_an_existing_stream(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("U", ["u.1"], max_age_s=60, duplicate_window_s=30)
        again = await bridge.ensure_stream("U", ["u.1"], max_age_s=60, duplicate_window_s=30)
        assert again.name == "U"
        await bridge.ensure_stream("U", ["u.1", "u.2"], max_bytes=1 << 20)
        assert isinstance((await bridge.publish_many([("u.2", b"x", None)]))[0], PubAck)
        with pytest.raises(BridgeError, match="duplicate") as refused:
            await bridge.ensure_stream("BAD", ["bad"], max_age_s=10, duplicate_window_s=60)
        assert not isinstance(refused.value, StreamNotFound)


async def test_reader_waits_for_new_messages(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("W", ["w"])
        reader = await bridge.open_reader("W", 1)
        assert await reader.fetch(10, 0.2) == []

        async def later() -> None:
            await trio.sleep(0.3)
            acks(await bridge.publish_many([("w", b"late", None)]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            with trio.fail_after(10):
                got = await reader.fetch(10, 8.0)
        assert [m.data for m in got] == [b"late"]
        assert reader.next_seq == 2
        await reader.aclose()
        with pytest.raises(BridgeError):
            await reader.fetch(1, 0.1)


# -- KV ---------------------------------------------------------------------------------------


async def test_kv_create_update_delete_keys(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        with pytest.raises(StreamNotFound):
            await bridge.kv_get("nobucket", "k")
        await bridge.ensure_kv("cfg", history=5)
        await bridge.ensure_kv("cfg", history=5)  # binds to the existing bucket
        assert await bridge.kv_keys("cfg") == []
        assert await bridge.kv_get("cfg", "a") is None
        rev1 = await bridge.kv_create("cfg", "a", b"1")
        with pytest.raises(KeyExists):
            await bridge.kv_create("cfg", "a", b"again")
        rev2 = await bridge.kv_update("cfg", "a", b"2", rev1)
        with pytest.raises(WrongRevision):
            await bridge.kv_update("cfg", "a", b"stale", rev1)
        entry = await bridge.kv_get("cfg", "a")
        assert entry == KvEntry("cfg", "a", b"2", rev2)
        rev3 = await bridge.kv_put("cfg", "b", b"")
        assert await bridge.kv_get("cfg", "b") == KvEntry("cfg", "b", b"", rev3)
        assert sorted(await bridge.kv_keys("cfg")) == ["a", "b"]
        with pytest.raises(WrongRevision):
            await bridge.kv_delete("cfg", "a", last_revision=rev1)
        await bridge.kv_delete("cfg", "a", last_revision=rev2)
        assert await bridge.kv_get("cfg", "a") is None
        assert await bridge.kv_keys("cfg") == ["b"]
        assert await bridge.kv_create("cfg", "a", b"new") > rev3  # a deleted key is missing
        await bridge.kv_delete("cfg", "b")
        assert await bridge.kv_keys("cfg") == ["a"]


async def test_kv_bucket_ttl_expires_values(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_kv("sessions", ttl_s=1.0)
        await bridge.kv_put("sessions", "s1", b"x")
        assert await bridge.kv_get("sessions", "s1") is not None
        with trio.fail_after(10):
            while await bridge.kv_get("sessions", "s1") is not None:
                await trio.sleep(0.1)
        assert await bridge.kv_keys("sessions") == []


async def test_kv_watch_initial_values_marker_and_updates(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_kv("w")
        await bridge.kv_put("w", "a", b"1")
        await bridge.kv_put("w", "b", b"2")
        await bridge.kv_put("w", "a", b"3")
        with trio.fail_after(20):
            async with bridge.kv_watch("w") as entries:
                initial = [await entries.receive(), await entries.receive()]
                assert [(e.key, e.value) for e in initial] == [("b", b"2"), ("a", b"3")]
                assert initial[-1].delta == 0
                marker = await entries.receive()
                assert (marker.key, marker.value, marker.revision) == (MARKER, None, 0)
                rev = await bridge.kv_put("w", "c", b"4")
                update = await entries.receive()
                assert (update.key, update.value, update.revision) == ("c", b"4", rev)
                await bridge.kv_delete("w", "a")
                deleted = await entries.receive()
                assert (deleted.key, deleted.value) == ("a", None)


async def test_kv_watch_of_an_empty_bucket_and_a_key_filter(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_kv("f")
        with trio.fail_after(20):
            async with bridge.kv_watch("f", "m.*") as entries:
                assert (await entries.receive()).key == MARKER
                await bridge.kv_put("f", "other", b"x")
                await bridge.kv_put("f", "m.1", b"y")
                got = await entries.receive()
                assert (got.key, got.value) == ("m.1", b"y")
        with pytest.raises(StreamNotFound):
            async with bridge.kv_watch("missing"):
                pass


async def test_a_watch_ends_when_its_bridge_stops(nats_node: NatsNode) -> None:
    bridge = NatsBridge(BridgeSettings(servers=(nats_node.url,)))
    bridge_scope = trio.CancelScope()
    ended = trio.Event()

    async def run_bridge(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with bridge_scope:
            await bridge.run(task_status=task_status)

    async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with bridge.kv_watch("end") as entries:
            assert (await entries.receive()).key == MARKER
            task_status.started()
            async for _ in entries:
                pass
        ended.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_bridge)
            await bridge.ensure_kv("end")
            await nursery.start(watch)
            bridge_scope.cancel()
            await ended.wait()
    assert not bridge.connected


# -- core NATS --------------------------------------------------------------------------------


async def test_request_and_serve(nats_node: NatsNode) -> None:
    async def echo(data: bytes) -> bytes:
        if data == b"fail":
            raise ValueError("no good")
        if data == b"slow":
            await trio.sleep(5)
        return data.upper()

    async with running_bridge(nats_node.url) as bridge, trio.open_nursery() as nursery:
        await nursery.start(bridge.serve, "svc.echo", echo)
        assert await bridge.request("svc.echo", b"hi") == b"HI"
        with pytest.raises(BridgeError, match="ValueError: no good") as failed:
            await bridge.request("svc.echo", b"fail")
        assert type(failed.value) is BridgeError
        with pytest.raises(NoResponders):
            await bridge.request("svc.nobody", b"x")
        with pytest.raises(BridgeTimeout):
            await bridge.request("svc.echo", b"slow", timeout_s=0.3)
        replies = []

        async def ask(i: int) -> None:
            replies.append(await bridge.request("svc.echo", b"r%d" % i))

        async with trio.open_nursery() as asks:
            for i in range(20):
                asks.start_soon(ask, i)
        assert sorted(replies) == sorted(b"R%d" % i for i in range(20))
        nursery.cancel_scope.cancel()


async def test_subscribe_delivers_and_counts_drops(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        async with bridge.subscribe("t.>", max_buffer=10) as messages:
            await bridge.publish_core([("t.1", b"a"), ("t.2", b"b")])
            with trio.fail_after(10):
                first = [await messages.receive(), await messages.receive()]
            assert [(m.subject, m.data) for m in first] == [("t.1", b"a"), ("t.2", b"b")]
            # Nobody receives now: 10 fit the channel, the rest are dropped and counted.
            await bridge.publish_core([("t.x", b"%d" % i) for i in range(100)])
            await wait_until(lambda: bridge.status()["dropped"] == 90)
            # The ten kept may still be crossing into trio when the count is reached.
            with trio.fail_after(10):
                kept = [await messages.receive() for _ in range(10)]
            assert [m.data for m in kept] == [b"%d" % i for i in range(10)]
            with pytest.raises(trio.WouldBlock):
                messages.receive_nowait()
        await bridge.publish_core([("t.after", b"gone")])  # unsubscribed: nobody gets it


async def test_kv_watch_back_pressure_loses_nothing(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_kv("bp", history=64)
        with trio.fail_after(30):
            async with bridge.kv_watch("bp", max_buffer=2) as entries:
                assert (await entries.receive()).key == MARKER
                revisions = [await bridge.kv_put("bp", f"k{i % 5}", b"%d" % i) for i in range(60)]
                await trio.sleep(0.3)  # the watch is stalled on its full channel meanwhile
                got = [await entries.receive() for _ in range(60)]
        assert [e.revision for e in got] == revisions
        assert [e.value for e in got] == [b"%d" % i for i in range(60)]


# -- cancellation -------------------------------------------------------------------------


async def test_cancelled_calls_return_at_once_and_leave_no_asyncio_task(
    nats_node: NatsNode,
) -> None:
    started = trio.Event()

    async def stuck(data: bytes) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def echo(data: bytes) -> bytes:
        return data

    async with running_bridge(nats_node.url) as bridge, trio.open_nursery() as nursery:
        await bridge.ensure_stream("C", ["c"])
        await bridge.ensure_kv("ck")
        await nursery.start(bridge.serve, "svc.stuck", stuck)
        await nursery.start(bridge.serve, "svc.echo", echo)
        acks(await bridge.publish_many([("c", b"warm", None)]))  # the ack inbox, once
        assert await bridge.request("svc.echo", b"warm") == b"warm"  # the reply inbox, once
        baseline = await bridge._debug_asyncio_tasks()

        async def cancelled_after(delay_s: float, call: Any) -> None:
            begun = time.monotonic()
            with trio.move_on_after(delay_s) as scope:
                await call()
            assert scope.cancelled_caught
            assert time.monotonic() - begun < delay_s + 2.0  # promptly, not at the call's timeout

        await cancelled_after(0.3, lambda: bridge.request("svc.stuck", b"x", timeout_s=60))
        assert started.is_set()
        reader = await bridge.open_reader("C", 1)
        assert [m.data for m in await reader.fetch(10, 1.0)] == [b"warm"]
        await cancelled_after(0.3, lambda: reader.fetch(10, 60.0))

        async def watch_forever() -> None:
            async with bridge.kv_watch("ck") as entries:
                async for _ in entries:
                    pass

        await cancelled_after(0.3, watch_forever)
        await cancelled_after(0, lambda: bridge.kv_keys("ck"))  # before it even starts

        # Still usable, and the cancelled fetch lost nothing.
        acks(await bridge.publish_many([("c", b"after", None)]))
        assert [m.data for m in await reader.fetch(10, 5.0)] == [b"after"]
        await reader.aclose()
        assert await bridge.request("svc.echo", b"again") == b"again"
        with trio.fail_after(10):
            while await bridge._debug_asyncio_tasks() != baseline:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()


async def test_reader_survives_its_consumer_being_deleted(nats_node: NatsNode) -> None:
    import asyncio

    import nats

    async def delete_consumers(stream: str) -> int:
        nc = await nats.connect(nats_node.url)
        try:
            js = nc.jetstream()
            consumers = await js.consumers_info(stream)
            for consumer in consumers:
                await js.delete_consumer(stream, consumer.name)
            return len(consumers)
        finally:
            await nc.close()

    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("X", ["x"])
        acks(await bridge.publish_many([("x", b"%d" % i, None) for i in range(10)]))
        reader = await bridge.open_reader("X", 1)
        got = await reader.fetch(4, 1.0)
        deleted = await trio.to_thread.run_sync(asyncio.run, delete_consumers("X"))
        assert deleted == 1
        acks(await bridge.publish_many([("x", b"%d" % i, None) for i in range(10, 20)]))
        with trio.fail_after(20):
            while len(got) < 20:
                got += await reader.fetch(100, 1.0)
        assert [m.seq for m in got] == list(range(1, 21))
        await reader.aclose()


# -- outages ------------------------------------------------------------------------------

TRANSIENT = (NotConnected, NoResponders, BridgeTimeout)


async def publish_all(
    bridge: NatsBridge, items: Sequence[tuple[str, bytes, str | None]], timeout_s: float = 30.0
) -> list[PubAck]:
    """Publish until every item is acknowledged, resending the failed ones with their ids."""
    results: list[PubAck | None] = [None] * len(items)
    with trio.fail_after(timeout_s):
        while True:
            todo = [i for i, r in enumerate(results) if r is None]
            if not todo:
                return [r for r in results if r is not None]
            try:
                answers = await bridge.publish_many([items[i] for i in todo], timeout_s=2.0)
            except TRANSIENT:
                await trio.sleep(0.1)
                continue
            for index, answer in zip(todo, answers, strict=True):
                if isinstance(answer, PubAck):
                    results[index] = answer
                elif not isinstance(answer, TRANSIENT):
                    raise answer
            if any(r is None for r in results):
                await trio.sleep(0.1)


async def retry(call: Any, timeout_s: float = 30.0) -> Any:
    with trio.fail_after(timeout_s):
        while True:
            try:
                return await call()
            except TRANSIENT:
                await trio.sleep(0.1)


async def test_node_restart_not_connected_then_everything_resumes(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("R", ["r"])
        await bridge.ensure_kv("rk")
        await publish_all(bridge, [("r", b"%d" % i, f"r{i}") for i in range(10)])
        reader = await bridge.open_reader("R", 1)
        got: list[Any] = []
        with trio.fail_after(20):
            while len(got) < 10:
                got += await reader.fetch(100, 1.0)
        async with bridge.kv_watch("rk") as entries:
            assert (await entries.receive()).key == MARKER
            await bridge.kv_put("rk", "before", b"1")
            assert (await entries.receive()).key == "before"

            aborted = trio.Event()

            async def fetch_in_flight() -> None:
                with pytest.raises(NotConnected):
                    await reader.fetch(10, 60.0)
                aborted.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch_in_flight)
                await trio.sleep(0.2)
                nats_node.stop()
                with trio.fail_after(5):  # an in-flight call ends with the connection
                    await aborted.wait()
            await wait_until(lambda: not bridge.connected)
            assert bridge.status()["connected"] is False
            assert bridge.status()["server"] is None
            begun = time.monotonic()
            with pytest.raises(NotConnected):
                await bridge.publish_many([("r", b"x", "never")])
            with pytest.raises(NotConnected):
                await bridge.kv_get("rk", "before")
            with pytest.raises(NotConnected):
                await reader.fetch(10, 10.0)
            with pytest.raises(NotConnected):
                await bridge.request("svc", b"x", timeout_s=10.0)
            assert time.monotonic() - begun < 5.0  # promptly, not at the calls' timeouts

            nats_node.start()
            await wait_until(lambda: bridge.connected)
            assert bridge.status()["reconnects"] == 1
            assert bridge.status()["disconnects"] == 1
            await publish_all(bridge, [("r", b"%d" % i, f"r{i}") for i in range(10, 20)])
            revision = await retry(lambda: bridge.kv_put("rk", "after", b"2"))
            with trio.fail_after(20):
                update = await entries.receive()
            assert (update.key, update.value, update.revision) == ("after", b"2", revision)

        async def fetch_some() -> Any:
            return await reader.fetch(100, 1.0)

        with trio.fail_after(30):
            while len(got) < 20:
                got += await retry(fetch_some)
        assert [m.seq for m in got] == list(range(1, 21))
        assert [m.data for m in got] == [b"%d" % i for i in range(20)]
        assert await reader.fetch(10, 0.3) == []
        await reader.aclose()


async def test_a_paused_server_times_calls_out(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url, request_timeout_s=0.5) as bridge:
        await bridge.ensure_kv("pk")
        nats_node.pause()
        try:
            with trio.fail_after(10), pytest.raises(BridgeTimeout):
                await bridge.kv_get("pk", "k")
            results = await bridge.publish_many([("nostream", b"x", None)], timeout_s=0.3)
            assert isinstance(results[0], BridgeTimeout)
        finally:
            nats_node.resume()
        assert await retry(lambda: bridge.kv_get("pk", "k")) is None


@pytest.mark.slow
async def test_r3_stream_survives_killing_its_leader(nats_cluster: list[NatsNode]) -> None:
    async with running_bridge(*(node.url for node in nats_cluster)) as bridge:
        await retry(lambda: bridge.ensure_stream("HA", ["ha"], replicas=3))
        first = [("ha", b"a%d" % i, f"ha-a{i}") for i in range(50)]
        acked = await publish_all(bridge, first)
        info = await bridge.stream_info("HA")
        assert info.replicas == 3
        assert info.leader in {node.name for node in nats_cluster}
        leader = next(node for node in nats_cluster if node.name == info.leader)
        leader.kill()
        second = [("ha", b"b%d" % i, f"ha-b{i}") for i in range(50)]
        acked += await publish_all(bridge, second, timeout_s=60.0)
        new_info = await retry(lambda: bridge.stream_info("HA"))
        assert new_info.leader != leader.name
        assert len({a.seq for a in acked}) == 100  # each acknowledged once, at its own seq

        reader = await retry(lambda: bridge.open_reader("HA", 1))
        got: list[Any] = []

        async def fetch_some() -> Any:
            return await reader.fetch(100, 1.0)

        with trio.fail_after(60):
            while len(got) < 100:
                got += await retry(fetch_some)
        assert [m.data for m in got] == [data for _, data, _ in first + second]
        assert [m.seq for m in got] == sorted(a.seq for a in acked)
        await reader.aclose()


# -- the property -------------------------------------------------------------------------

_examples = itertools.count()
PARTITIONS = 3


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(
        st.tuples(st.integers(0, PARTITIONS - 1), st.binary(max_size=64)), min_size=1, max_size=40
    ),
    data=st.data(),
)
async def test_every_batch_once_in_publish_order_per_stream(
    nats_node: NatsNode, batches: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    run = next(_examples)
    subjects = [f"prop.{run}.{p}" for p in range(PARTITIONS)]
    streams = [f"PROP-{run}-{p}" for p in range(PARTITIONS)]
    items: list[tuple[str, bytes, str | None]] = [
        (subjects[p], payload, f"{run}-{i}") for i, (p, payload) in enumerate(batches)
    ]
    async with running_bridge(nats_node.url) as bridge:
        for subject, stream in zip(subjects, streams, strict=True):
            await bridge.ensure_stream(stream, [subject])
        sent: set[int] = set()
        position = 0
        while position < len(items):
            size = data.draw(st.integers(1, len(items) - position), label="chunk")
            chunk = list(range(position, position + size))
            before = (
                data.draw(st.lists(st.sampled_from(sorted(sent)), max_size=4), label="resend")
                if sent
                else []
            )
            after = data.draw(st.lists(st.sampled_from(chunk), max_size=4), label="resend-new")
            order = before + chunk + after
            results = await bridge.publish_many([items[i] for i in order])
            seen = set(sent)
            for index, result in zip(order, results, strict=True):
                assert isinstance(result, PubAck), result
                assert result.duplicate == (index in seen)
                seen.add(index)
            sent |= set(chunk)
            position += size
        for partition, stream in enumerate(streams):
            expected = [payload for p, payload in batches if p == partition]
            assert (await bridge.stream_info(stream)).messages == len(expected)
            if expected:
                got = await read_all_quick(bridge, stream, len(expected))
                assert [m.data for m in got] == expected


async def read_all_quick(bridge: NatsBridge, stream: str, count: int) -> list[Any]:
    reader = await bridge.open_reader(stream, 1)
    out: list[Any] = []
    try:
        with trio.fail_after(20):
            while len(out) < count:
                out += await reader.fetch(100, 1.0)
    finally:
        await reader.aclose()
    assert len(out) == count
    return out


# -- TLS and credentials ----------------------------------------------------------------------


async def test_tls_verified_against_the_ca_file(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    other_ca_file = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    tls = f'tls {{\n  cert_file: "{cert_file}"\n  key_file: "{key_file}"\n}}'
    node = start_node(tmp_path, "tls", extra_config=tls)
    try:
        url = f"tls://127.0.0.1:{node.port}"
        async with running_bridge(url, ca_file=ca_file) as bridge:
            await bridge.ensure_kv("t")
            assert await bridge.kv_put("t", "k", b"v") == 1
        wrong = NatsBridge(
            BridgeSettings(servers=(url,), ca_file=other_ca_file, connect_timeout_s=1)
        )
        with trio.fail_after(10), pytest.raises(BridgeError, match=r"127\.0\.0\.1"):
            await wrong.run()
    finally:
        node.kill()


async def test_credentials_problems_are_told_without_the_secret(tmp_path: Path) -> None:
    creds = tmp_path / "user.creds"
    creds.write_text(
        "-----BEGIN USER NKEY SEED-----\nSUAVERYSECRETSEED\n------END USER NKEY SEED------\n"
    )
    for path, says in ((creds, "cannot connect"), (tmp_path / "missing.creds", "cannot read")):
        bridge = NatsBridge(BridgeSettings(servers=("nats://127.0.0.1:1",), creds_file=path))
        with pytest.raises(BridgeError) as caught:
            await bridge.run()
        assert "SECRET" not in str(caught.value)
        assert says in str(caught.value)


async def test_publish_in_flight_when_the_connection_drops(nats_node: NatsNode) -> None:
    async with running_bridge(nats_node.url) as bridge:
        await bridge.ensure_stream("F", ["f"])
        results: list[PubAck | BridgeError] = []

        items: list[tuple[str, bytes, str | None]] = [("f", b"1", "f1"), ("f", b"2", "f2")]

        async def publish() -> None:
            results.extend(await bridge.publish_many(items, timeout_s=60))

        nats_node.pause()  # the acks cannot come
        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.sleep(0.3)
            nats_node.kill()  # the socket closes: nats-py sees the connection go
        assert [type(r) for r in results] == [NotConnected, NotConnected]
        nats_node.start()
        await wait_until(lambda: bridge.connected)
        acked = await publish_all(bridge, items)
        assert [a.seq for a in acked] == sorted(a.seq for a in acked)
        assert (await retry(lambda: bridge.stream_info("F"))).messages == 2
