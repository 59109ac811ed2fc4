"""The memory budget for ``POST /logs`` bodies being read and inflated (DESIGN section 3).

Owns ``BodyBudget``: before reading a body, a request reserves its worst case (its declared or
largest possible size, with the copies joining pieces makes: see ``worst_case_bytes``); gzip
bodies also take one of
``max_inflating`` inflation slots. While the reservation does not fit, the request waits up
to ``wait_s`` for others to finish, then gets ``BudgetExhausted`` naming the limit (the API
answers 503 with ``Retry-After``). A single request whose worst case exceeds the whole budget
is admitted only when nothing else holds any of it. What the allocator keeps of freed
buffers is not counted (docs/operations.md).

The decisions (``worst_case_bytes``, ``blocking_limit``) are plain functions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

BUDGET_WAIT_S = 1.0  # how long a request waits for room before 503
RETRY_AFTER_S = 1


class BudgetExhausted(Exception):
    """No room within the wait; ``limit`` names the setting that was in the way."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


def worst_case_bytes(declared_bytes: int | None, *, gzip: bool, max_body_bytes: int) -> int:
    """What a body may take at its peak while read (and inflated), copies included.

    The received size is the declared one, or the limit when none is declared (chunked).
    Reading holds the received pieces and, for a moment, their joined copy: twice the received
    size. Inflating holds the received body, the inflated pieces and, for a moment, their
    joined copy: the received size plus twice the inflate limit."""
    received = max_body_bytes if declared_bytes is None else min(declared_bytes, max_body_bytes)
    if gzip:
        return received + 2 * max_body_bytes
    return 2 * received


def blocking_limit(
    *,
    held_bytes: int,
    inflating: int,
    want_bytes: int,
    inflate: bool,
    max_bytes: int,
    max_inflating: int,
) -> str | None:
    """The setting a new reservation would break (``max_inflating_bodies`` or
    ``max_inflate_bytes``), or None when it fits. Alone, any reservation fits."""
    if inflate and inflating >= max_inflating:
        return "max_inflating_bodies"
    if held_bytes and held_bytes + want_bytes > max_bytes:
        return "max_inflate_bytes"
    return None


@dataclass(slots=True)
class BodyBudget:
    """Bytes and inflation slots held by bodies in flight (see the module docstring)."""

    max_bytes: int = 64 << 20
    max_inflating: int = 8
    held_bytes: int = 0
    inflating: int = 0
    _released: trio.Event = field(default_factory=trio.Event)

    @asynccontextmanager
    async def reserve(
        self, want_bytes: int, *, inflate: bool, wait_s: float = BUDGET_WAIT_S
    ) -> AsyncIterator[None]:
        """Hold ``want_bytes`` (and an inflation slot) for the block; raises
        ``BudgetExhausted`` after ``wait_s`` without room. No wait when it fits at once."""
        deadline_s = trio.current_time() + wait_s
        while True:
            limit = blocking_limit(
                held_bytes=self.held_bytes,
                inflating=self.inflating,
                want_bytes=want_bytes,
                inflate=inflate,
                max_bytes=self.max_bytes,
                max_inflating=self.max_inflating,
            )
            if limit is None:
                break
            released = self._released
            with trio.move_on_at(deadline_s) as waiting:
                await released.wait()
            if waiting.cancelled_caught:
                raise BudgetExhausted(limit)
        self.held_bytes += want_bytes
        self.inflating += inflate
        try:
            yield
        finally:
            self.held_bytes -= want_bytes
            self.inflating -= inflate
            self._released.set()
            self._released = trio.Event()
