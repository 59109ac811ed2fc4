"""Fixtures for the cluster tests: real ``nats-server`` processes (tests/natsd.py).

The fixtures are synchronous on purpose: their teardown must run even when a test fails or
is cancelled, which pytest-trio's async fixtures have not done reliably here. Bridges and
other trio resources belong in nurseries inside the tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.natsd import NatsNode, start_cluster, start_node


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsNode]:
    """One JetStream node, stopped (killed if it will not stop) at teardown."""
    node = start_node(tmp_path, "n1")
    try:
        yield node
    finally:
        node.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsNode]]:
    """Three routed JetStream nodes with an elected meta leader."""
    nodes = start_cluster(tmp_path, size=3)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.kill()
