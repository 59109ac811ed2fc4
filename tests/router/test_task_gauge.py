"""``logplex_tasks``: the scrape-time count of trio tasks (logplex.metrics)."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import CollectorRegistry, generate_latest

from logplex.metrics import register_task_collector


def scraped_tasks(registry: CollectorRegistry) -> float | None:
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("logplex_tasks "):
            return float(line.split()[1])
    return None


async def test_the_gauge_counts_tasks_as_they_start_and_end() -> None:
    registry = CollectorRegistry()
    register_task_collector(registry)
    before = scraped_tasks(registry)
    assert before is not None
    assert before >= 1
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(trio.sleep_forever)
        inner = trio.Event()

        async def with_children() -> None:
            async with trio.open_nursery() as children:
                for _ in range(3):
                    children.start_soon(trio.sleep_forever)
                inner.set()

        nursery.start_soon(with_children)
        await inner.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert scraped_tasks(registry) == before + 5 + 1 + 3
        nursery.cancel_scope.cancel()
    assert scraped_tasks(registry) == before


def test_registering_twice_keeps_one_collector_and_no_run_reports_nothing() -> None:
    registry = CollectorRegistry()
    assert register_task_collector(registry) is register_task_collector(registry)
    assert scraped_tasks(registry) is None
