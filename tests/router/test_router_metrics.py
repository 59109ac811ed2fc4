"""Router metrics: index gauges computed at scrape time, event-loop lag, publish batch sizes."""

from __future__ import annotations

import time
from functools import partial

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from logplex import metrics
from logplex.config.records import ChannelConfig, DrainConfig
from logplex.fanout.router import Router


def test_index_gauges_follow_the_router() -> None:
    registry = CollectorRegistry()
    router = Router()
    metrics.register_router_collector(router.counts, registry)
    router.apply_channel(
        ChannelConfig(
            "a", {"app": "t.1", "heroku": "t.2"}, (DrainConfig(1, "d.1", "syslog://h:1"),)
        )
    )
    router.apply_channel(ChannelConfig("b", {"app": "t.3"}))
    session = router.open_tail("a")
    text = generate_latest(registry).decode()
    assert "logplex_channels 2.0" in text
    assert "logplex_tokens 3.0" in text
    assert "logplex_drains_configured 1.0" in text
    assert "logplex_tail_sessions 1.0" in text
    session.close()
    router.remove_channel("a")
    text = generate_latest(registry).decode()
    assert "logplex_channels 1.0" in text
    assert "logplex_tail_sessions 0.0" in text


def test_publish_batch_sizes_are_observed() -> None:
    router = Router()
    router.apply_channel(ChannelConfig("a", {"app": "t.1"}))
    before = metrics.PUBLISH_BATCH_MESSAGES._sum.get()
    router.publish("a", [(0, 190, b"app", b"web.1", b"x")] * 7)
    assert metrics.PUBLISH_BATCH_MESSAGES._sum.get() == before + 7


async def test_event_loop_lag_measures_a_blocked_loop() -> None:
    lag_before = metrics.EVENT_LOOP_LAG._sum.get()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(metrics.measure_event_loop_lag, interval_s=0.01))
        await trio.sleep(0.02)
        # Block the loop (as a CPU-heavy batch would) for 0.2 s: the next wake-up is late.
        time.sleep(0.2)
        await trio.sleep(0.05)
        assert metrics.EVENT_LOOP_LAG._sum.get() - lag_before >= 0.15
        nursery.cancel_scope.cancel()
