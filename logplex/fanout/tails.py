"""Tail sessions (DESIGN sections 3 and 8): live lines of a channel for one reader.

A ``TailSession`` is fed synchronously by ``Router.publish`` and read by one task (the
session's HTTP response). Its buffer is bounded (1024 messages by default): when the reader
falls behind, the oldest messages are dropped and counted, and the next ``receive()`` starts
with ONE L11 notice (DESIGN 5.5) telling how many were lost since when — never a silent gap.

Filters (``message_filter``) are applied when messages are pushed, so a filtered session's
buffer holds only what its reader will see and the L11 count is in the reader's terms.
The drop accounting is a plain function (``overflow_after_push``), table-tested.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

import trio

from logplex.codecs.notices import l11_tail_overflow, router_notice
from logplex.codecs.records import Message

DEFAULT_TAIL_BUFFER_MESSAGES = 1024


def message_filter(*, ps: bytes | None, source: bytes | None) -> Callable[[Message], bool]:
    """DESIGN 3 session filters: ``ps`` exact or as a prefix before a dot, ``source`` exact.

    ``b"web"`` matches ``b"web"`` and ``b"web.1"`` but not ``b"webx"`` or ``b"worker.1"``.
    With neither filter every message matches.
    """
    ps_prefix = ps + b"." if ps is not None else None

    def matches(message: Message) -> bool:
        if source is not None and message[2] != source:
            return False
        if ps is not None and ps_prefix is not None:
            message_ps = message[3]
            return message_ps == ps or message_ps.startswith(ps_prefix)
        return True

    return matches


def overflow_after_push(buffered: int, incoming: int, capacity: int) -> int:
    """How many of the oldest messages a drop-oldest buffer of ``capacity`` loses on a push."""
    return max(0, buffered + incoming - capacity)


class TailSession:
    """A bounded, drop-oldest queue of one channel's live messages for one reader."""

    def __init__(
        self,
        *,
        capacity: int = DEFAULT_TAIL_BUFFER_MESSAGES,
        accepts: Callable[[Message], bool] | None = None,
        on_close: Callable[[TailSession], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"a tail buffer must hold at least 1 message, not {capacity}")
        self.capacity = capacity
        self._accepts = accepts
        self._on_close = on_close
        self._buffer: deque[Message] = deque(maxlen=capacity)
        self._dropped = 0
        self._dropped_since_us = 0
        self._closed = False
        self._wakeup = trio.Event()

    # -- producer side (synchronous, called from Router.publish) --------------------------

    def push(self, messages: list[Message]) -> None:
        """Queue messages for the reader; drops the oldest beyond ``capacity``, counting them."""
        if self._closed:
            return
        accepts = self._accepts
        if accepts is not None:
            messages = [m for m in messages if accepts(m)]
            if not messages:
                return
        lost = overflow_after_push(len(self._buffer), len(messages), self.capacity)
        if lost:
            if not self._dropped:
                self._dropped_since_us = time.time_ns() // 1000
            self._dropped += lost
            if len(messages) > self.capacity:
                messages = messages[-self.capacity :]
        self._buffer.extend(messages)
        self._wakeup.set()

    def count_dropped(self, count: int) -> None:
        """Messages for this reader that were let go before reaching its buffer (a cluster
        tail's backlog past its bound): told in the next L11 like the buffer's own drops."""
        if count <= 0 or self._closed:
            return
        if not self._dropped:
            self._dropped_since_us = time.time_ns() // 1000
        self._dropped += count
        self._wakeup.set()

    def finish(self) -> None:
        """The channel is gone: the reader gets what is buffered, then ``EndOfChannel``."""
        self._closed = True
        self._wakeup.set()

    # -- consumer side ---------------------------------------------------------------------

    @property
    def dropped_pending(self) -> int:
        """Messages dropped since the reader last received (what the next L11 will report)."""
        return self._dropped

    def __len__(self) -> int:
        return len(self._buffer)

    async def receive(self) -> list[Message]:
        """Wait for messages; after drops the list starts with one L11 notice."""
        while not self._buffer and not self._dropped:
            if self._closed:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()
        out: list[Message] = []
        if self._dropped:
            text = l11_tail_overflow(self._dropped, self._dropped_since_us)
            out.append(router_notice(time.time_ns() // 1000, text))
            self._dropped = 0
        out.extend(self._buffer)
        self._buffer.clear()
        return out

    def close(self) -> None:
        """Stop receiving: the router forgets the session and frees its buffer."""
        if self._closed and self._on_close is None:
            return
        self._closed = True
        self._buffer.clear()
        self._wakeup.set()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)

    def __enter__(self) -> TailSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
