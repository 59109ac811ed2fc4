"""Drain status states (DESIGN 3) and the drain metrics with bounded labels (DESIGN 7)."""

from __future__ import annotations

import pytest
import trio
from drains_fake_http import FakeHttpReceiver, Reply
from drains_support import app_messages
from prometheus_client import REGISTRY

from drains import DrainContext, DrainStatus, open_drain
from drains._interface import drain_state
from logplex.codecs.records import Batch

NOW = 1_795_000_000.0


@pytest.mark.parametrize(
    ("last_attempt_ok", "last_success_s", "state"),
    [
        (None, None, "pending"),
        (True, NOW, "up"),
        (True, NOW - 3600, "up"),  # idle long after a success: still up
        (False, NOW - 10, "degraded"),
        (False, NOW - 299, "degraded"),
        (False, NOW - 300, "down"),
        (False, None, "down"),  # never delivered
    ],
)
def test_state_table(
    last_attempt_ok: bool | None, last_success_s: float | None, state: str
) -> None:
    got = drain_state(now_s=NOW, last_attempt_ok=last_attempt_ok, last_success_s=last_success_s)
    assert got == state


def test_status_json_shape() -> None:
    status = DrainStatus("up", 3, 1, 2, None, NOW + 0.5)
    assert status.to_json() == {
        "state": "up",
        "delivered": 3,
        "dropped": 1,
        "buffered": 2,
        "last_error": None,
        "last_success_at": "2026-11-18T11:06:40.500000+00:00",
    }
    assert DrainStatus("pending", 0, 0, 0, None, None).to_json()["last_success_at"] is None


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_delivered_retried_dropped(io_clock: trio.abc.Clock) -> None:
    before = {
        outcome: sample("logplex_drain_messages_total", drain_kind="http", outcome=outcome)
        for outcome in ("delivered", "retried", "dropped")
    }
    requests_before = sample("logplex_drain_request_seconds_count", drain_kind="http")
    receiver = FakeHttpReceiver(lambda r, i: Reply((503, 404, 204, 204)[min(i, 3)]))
    async with trio.open_nursery() as nursery:
        await nursery.start(receiver.serve)
        drain = open_drain(DrainContext(channel="c", drain_id=1, token="d.x", url=receiver.url))
        assert sample("logplex_drains", state="pending") >= 1
        await nursery.start(drain.run)
        drain.push_batch(Batch(app_messages(5)))  # 503, then 404: dropped
        await receiver.arrived.wait()
        await receiver.arrived.wait()
        drain.push_batch(Batch(app_messages(2, start=5)))  # L10 + 2 delivered
        await drain.wait_flushed()
        assert sample("logplex_drain_buffered_messages") == 0
        nursery.cancel_scope.cancel()
    delta = {
        outcome: sample("logplex_drain_messages_total", drain_kind="http", outcome=outcome)
        - before[outcome]
        for outcome in before
    }
    assert delta == {"delivered": 2, "retried": 5, "dropped": 5}
    assert sample("logplex_drain_request_seconds_count", drain_kind="http") - requests_before == 3
    # Bounded labels only: no URL, token or channel ever becomes a label value.
    for metric in REGISTRY.collect():
        if metric.name.startswith("logplex_drain"):
            for series in metric.samples:
                assert set(series.labels) <= {"drain_kind", "outcome", "state", "le", "at"}
                assert series.labels.get("at", "create") in ("create", "connect")
