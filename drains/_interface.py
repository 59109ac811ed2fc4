"""The interface the router sees: settings, context, the ``Drain`` protocol and its status.

Follows docs/architecture.md ("Drains") and DESIGN section 3 (drain status in
``GET /v3/channels/{ch}/drains``). The state rule is a pure function, ``drain_state``:

- ``pending``  — no delivery attempt has finished yet (never connected, nothing sent);
- ``up``       — the last attempt succeeded;
- ``degraded`` — the last attempt failed, but the drain delivered within the last 5 minutes
  (retrying through a short outage);
- ``down``     — the last attempt failed and there has been no success for 5 minutes
  (or ever).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import trio

from drains._buffer import QueueFactory
from drains._policy import NO_POLICY, DestinationPolicy
from logplex.codecs.records import Batch, Message
from logplex.codecs.version import package_version

DrainState = Literal["pending", "up", "degraded", "down"]
DRAIN_STATES: Final[tuple[DrainState, ...]] = ("pending", "up", "degraded", "down")
DEGRADED_TO_DOWN_S: Final = 300.0


DEFAULT_USER_AGENT: Final = f"Logplex/{package_version()}"


@dataclass(frozen=True, slots=True)
class DrainSettings:
    """Settings shared by every drain of a router (from the ``serve`` flags)."""

    buffer_messages: int = 1024
    buffer_bytes: int = 16 * 1024 * 1024
    retry_window_s: float = 60.0
    ca_file: str | None = None
    user_agent: str = DEFAULT_USER_AGENT
    # Where drains may connect (``--deny-private-drains``, the router's own listeners),
    # checked at every connect: ``drains._policy``.
    destination_policy: DestinationPolicy = NO_POLICY


def _ignore_notices(messages: list[Message]) -> None:
    del messages


@dataclass(frozen=True, slots=True)
class DrainContext:
    """What the router tells a drain about itself."""

    channel: str
    drain_id: int
    token: str  # "d.<uuid4>"
    url: str
    settings: DrainSettings = DrainSettings()
    # Router notices (L14) go into the channel's history and tails through this.
    post_notice: Callable[[list[Message]], None] = _ignore_notices
    # With the spool: builds the drain's queue over it (None: an in-memory DrainBuffer).
    make_queue: QueueFactory | None = None
    # Messages the drain's previous incarnation (before its URL changed) still held when it
    # was replaced: told in this drain's first L10.
    carried_loss: int = 0


def format_rfc3339(epoch_s: float) -> str:
    """``2026-11-27T20:39:33.123456+00:00`` (DESIGN section 5 timestamps)."""
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)
    return moment.isoformat(timespec="microseconds")


def drain_state(
    *,
    now_s: float,
    last_attempt_ok: bool | None,
    last_success_s: float | None,
    down_after_s: float = DEGRADED_TO_DOWN_S,
) -> DrainState:
    """The status state from the outcome of the last attempt and the last success time.

    ``last_attempt_ok`` is None before any attempt finished. Times are wall-clock seconds.
    """
    if last_attempt_ok is None:
        return "pending"
    if last_attempt_ok:
        return "up"
    if last_success_s is not None and now_s - last_success_s < down_after_s:
        return "degraded"
    return "down"


@dataclass(frozen=True, slots=True)
class DrainStatus:
    """A snapshot of one drain, as served by the API and ``logplex drains list``."""

    state: DrainState
    delivered: int
    dropped: int
    buffered: int
    last_error: str | None
    last_success_at: float | None  # wall-clock epoch seconds

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "buffered": self.buffered,
            "last_error": self.last_error,
            "last_success_at": (
                None if self.last_success_at is None else format_rfc3339(self.last_success_at)
            ),
        }


class Drain(Protocol):
    """One outbound drain: a bounded buffer plus the task that delivers from it."""

    def push_batch(self, batch: Batch) -> None:
        """Queue a batch; synchronous, never blocks; drops the oldest messages when full."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled."""

    async def wait_flushed(self) -> None:
        """Return once nothing is buffered or in flight."""

    def status(self) -> DrainStatus:
        """The current status snapshot."""

    def abandon(self) -> int:
        """The drain is being replaced or removed: count what it still holds as dropped
        (status and metrics) and return how many messages that is (to tell them on)."""
