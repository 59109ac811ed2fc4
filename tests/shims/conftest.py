"""Fixtures of the shim's black-box tests: a router double on a loopback port."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from shim_router_double import RouterDouble


@pytest.fixture
def start_router(nursery: trio.Nursery) -> Callable[..., Awaitable[RouterDouble]]:
    """``await start_router(**knobs)`` → a running ``RouterDouble`` (stopped at test end)."""

    async def start(**knobs: Any) -> RouterDouble:
        double = RouterDouble(**knobs)
        await nursery.start(double.serve)
        return double

    return start
