"""The NATS bridge against real nats-server processes (tests/natsd.py)."""

from __future__ import annotations

from tests.natsd import NatsNode


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
