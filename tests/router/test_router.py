"""Router fan-out: tokens, history, tails and drains, config changes and the shutdown flush."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from dataplane_helpers import RecordingDrainFactory, make_messages

from drains import open_drain
from logplex import metrics
from logplex.config.records import ChannelConfig, DrainConfig, TokenInfo
from logplex.fanout.router import Router, drain_restart_delay_s, pending_drain_status

TOKEN_APP = "t.11111111-1111-4111-8111-111111111111"
TOKEN_HEROKU = "t.22222222-2222-4222-8222-222222222222"
DRAIN_A = DrainConfig(1, "d.aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa", "syslog://127.0.0.1:1")
DRAIN_B = DrainConfig(2, "d.bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb", "https://example.test/logs")


def channel(name: str = "app1", drains: tuple[DrainConfig, ...] = ()) -> ChannelConfig:
    return ChannelConfig(name, {"app": TOKEN_APP, "heroku": TOKEN_HEROKU}, drains)


def test_lookup_token_follows_apply_and_remove() -> None:
    router = Router()
    assert router.lookup_token(TOKEN_APP) is None
    router.apply_channel(channel())
    assert router.lookup_token(TOKEN_APP) == TokenInfo("app1", b"app")
    assert router.lookup_token(TOKEN_HEROKU) == TokenInfo("app1", b"heroku")
    # A new token set replaces the old one: the dropped token stops working at once.
    router.apply_channel(ChannelConfig("app1", {"app": TOKEN_APP}))
    assert router.lookup_token(TOKEN_HEROKU) is None
    assert router.lookup_token(TOKEN_APP) == TokenInfo("app1", b"app")
    router.remove_channel("app1")
    assert router.lookup_token(TOKEN_APP) is None
    assert not router.has_channel("app1")


def test_publish_to_history_keeps_the_last_n() -> None:
    router = Router(history_lines=1500)
    router.apply_channel(channel())
    for start in range(0, 2000, 50):
        router.publish("app1", make_messages(50, start=start))
    assert router.history("app1") == make_messages(1500, start=500)
    assert router.history("nope") == []


def test_publish_to_unknown_channel_is_counted_and_dropped() -> None:
    router = Router()
    before = metrics.PUBLISH_UNKNOWN_CHANNEL_MESSAGES._value.get()
    router.publish("ghost", make_messages(3))
    assert metrics.PUBLISH_UNKNOWN_CHANNEL_MESSAGES._value.get() == before + 3


async def test_tails_see_live_lines_with_filters_and_close() -> None:
    router = Router()
    router.apply_channel(channel())
    web = router.open_tail("app1", ps=b"web")
    heroku = router.open_tail("app1", source=b"heroku")
    router.publish("app1", make_messages(2, ps=b"web.1") + make_messages(1, ps=b"worker.1"))
    router.publish("app1", make_messages(1, source=b"heroku", ps=b"router"))
    assert await web.receive() == make_messages(2, ps=b"web.1")
    assert await heroku.receive() == make_messages(1, source=b"heroku", ps=b"router")
    assert router.counts().sessions == 2
    web.close()
    heroku.close()
    assert router.counts().sessions == 0
    with pytest.raises(KeyError, match="ghost"):
        router.open_tail("ghost")


async def test_remove_channel_ends_its_tails() -> None:
    router = Router()
    router.apply_channel(channel())
    session = router.open_tail("app1")
    router.publish("app1", make_messages(1))
    router.remove_channel("app1")
    assert await session.receive() == make_messages(1)
    with pytest.raises(trio.EndOfChannel):
        await session.receive()


async def test_drains_get_every_batch_and_post_notice_skips_them() -> None:
    factory = RecordingDrainFactory()
    router = Router(drain_factory=factory)
    router.apply_channel(channel(drains=(DRAIN_A, DRAIN_B)))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        router.publish("app1", make_messages(3))
        router.post_notice("app1", make_messages(1, source=b"heroku", ps=b"logplex", start=9))
        router.publish("app1", make_messages(2, start=3))
        await router.flush_drains(5)
        for drain_config in (DRAIN_A, DRAIN_B):
            drain = factory.latest("app1", drain_config.id)
            assert drain.delivered == make_messages(5)
            assert drain.context.token == drain_config.token
            assert drain.context.url == drain_config.url
        # Both drains were handed the same Batch object: formatting is shared per batch.
        a, b = (factory.latest("app1", d.id) for d in (DRAIN_A, DRAIN_B))
        assert a.pushed[0] is b.pushed[0]
        # The notice is in the history, between the two batches.
        assert [m[4] for m in router.history("app1")] == [
            b"line 0",
            b"line 1",
            b"line 2",
            b"line 9",
            b"line 3",
            b"line 4",
        ]
        statuses = router.drain_statuses("app1")
        assert set(statuses) == {1, 2}
        assert statuses[1]["delivered"] == 5
        nursery.cancel_scope.cancel()


async def test_apply_channel_diffs_drains_by_id_and_url() -> None:
    factory = RecordingDrainFactory()
    router = Router(drain_factory=factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        router.apply_channel(channel(drains=(DRAIN_A, DRAIN_B)))  # after run: started at once
        await trio.testing.wait_all_tasks_blocked()
        first_a, first_b = factory.latest("app1", 1), factory.latest("app1", 2)
        assert first_a.running
        assert first_b.running
        moved_b = DrainConfig(2, DRAIN_B.token, "https://example.test/other")
        router.apply_channel(channel(drains=(DRAIN_A, moved_b)))
        await trio.testing.wait_all_tasks_blocked()
        assert factory.latest("app1", 1) is first_a  # unchanged: kept, not restarted
        assert first_b.cancelled  # URL changed: replaced
        assert factory.latest("app1", 2).context.url == moved_b.url
        router.apply_channel(channel(drains=(moved_b,)))
        await trio.testing.wait_all_tasks_blocked()
        assert first_a.cancelled
        router.publish("app1", make_messages(1))
        assert first_a.pushed == []  # a removed drain gets nothing more
        assert router.counts().drains == 1
        router.remove_channel("app1")
        await trio.testing.wait_all_tasks_blocked()
        assert factory.latest("app1", 2).cancelled
        nursery.cancel_scope.cancel()


def test_without_a_drain_factory_drains_are_pending() -> None:
    router = Router()
    router.apply_channel(channel(drains=(DRAIN_A,)))
    router.publish("app1", make_messages(1))
    assert router.drain_statuses("app1") == {1: pending_drain_status()}
    assert router.drain_statuses("ghost") == {}


async def test_flush_drains_waits_for_delivery_bounded_by_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = RecordingDrainFactory(delivery_delay_s=1.0)
    router = Router(drain_factory=factory)
    router.apply_channel(channel(drains=(DRAIN_A,)))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        for start in range(3):
            router.publish("app1", make_messages(1, start=start))
        began = trio.current_time()
        await router.flush_drains(10)
        assert trio.current_time() - began == pytest.approx(3.0)
        assert len(factory.latest("app1", 1).delivered) == 3
        for start in range(100):
            router.publish("app1", make_messages(1, start=start))
        began = trio.current_time()
        await router.flush_drains(5)
        assert trio.current_time() - began == pytest.approx(5.0)  # gave up at the grace
        nursery.cancel_scope.cancel()


async def test_a_crashing_drain_is_restarted_not_fatal(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[float] = []

    class Crashing(RecordingDrainFactory):
        def __call__(self, context):  # type: ignore[no-untyped-def]
            drain = super().__call__(context)

            async def run(*, task_status=trio.TASK_STATUS_IGNORED):  # type: ignore[no-untyped-def]
                runs.append(trio.current_time())
                raise RuntimeError("drain bug")

            drain.run = run  # type: ignore[method-assign]
            return drain

    router = Router(drain_factory=Crashing())
    router.apply_channel(channel(drains=(DRAIN_A,)))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert len(runs) >= 4
    assert runs[1] - runs[0] == pytest.approx(drain_restart_delay_s(1))
    assert "restarting it" in caplog.text


async def test_session_sees_history_then_live_lines_with_filters() -> None:
    router = Router()
    router.apply_channel(channel())
    router.publish("app1", make_messages(3, ps=b"web.1") + make_messages(2, ps=b"worker.1"))
    # What a session does: filtered history, then the tail opened in the same step.
    history = [m for m in router.history("app1") if m[3].startswith(b"web")]
    with router.open_tail("app1", ps=b"web") as session:
        router.publish("app1", make_messages(1, start=10, ps=b"worker.2"))
        router.publish("app1", make_messages(1, start=11, ps=b"web.2"))
        live = await session.receive()
    assert history == make_messages(3, ps=b"web.1")
    assert live == make_messages(1, start=11, ps=b"web.2")
    assert router.counts().sessions == 0


async def test_histories_are_compacted_about_once_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router = Router()
    router.apply_channel(channel())
    router.apply_channel(ChannelConfig("quiet", {}))
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        for start in range(0, 60, 3):
            router.publish("app1", make_messages(3, start=start))
        ring = router._channels["app1"].history
        assert ring.fresh_lines == 60  # small batches: publish only appended references
        await trio.sleep(1.5)
        assert ring.fresh_lines == 0
        assert router.history("app1") == make_messages(60)
        nursery.cancel_scope.cancel()


async def test_without_the_spool_what_a_replaced_drain_held_is_told_to_its_new_url() -> None:
    """DESIGN 8: a drain whose URL changes loses its buffer; the count reaches the metrics
    and the first L10 the new URL receives, and a removed drain's buffer is counted too."""
    router = Router(drain_factory=open_drain)
    router.apply_channel(channel(drains=(DRAIN_A,)))
    router.publish("app1", make_messages(7))
    old = router.drain_statuses("app1")[DRAIN_A.id]
    assert old["buffered"] == 7
    moved = DrainConfig(DRAIN_A.id, DRAIN_A.token, "syslog://127.0.0.1:2")
    router.apply_channel(channel(drains=(moved,)))
    new = router.drain_statuses("app1")[DRAIN_A.id]
    assert (new["buffered"], new["dropped"]) == (0, 7)
    router.publish("app1", make_messages(1, start=7))  # the next batch carries the L10
    handle = router._channels["app1"].drains[DRAIN_A.id]
    assert handle.drain is not None
    taken = handle.drain.queue.take(100, 1 << 20)  # type: ignore[attr-defined]
    assert taken is not None
    assert (taken.notice_count, taken.message_count) == (7, 1)
    assert b"Error L10" in taken.frames[0]
    assert b" 7 messages dropped" in taken.frames[0]
