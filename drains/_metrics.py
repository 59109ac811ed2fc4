"""Prometheus metrics of the drains (DESIGN section 7, "Metrics").

Every drain kind reports the same series, with bounded labels only: ``drain_kind`` is one of
``http``, ``syslog``, ``syslog+tls``, ``syslog+udp``; ``outcome`` one of ``delivered``,
``dropped``, ``retried``; ``state`` one of the four status states. Never a URL, token or
channel as a label value. ``at`` of the destination refusals is ``create`` or ``connect``.

The buffered-messages gauge and the drains-by-state gauge are computed at scrape time from
the live drains (a weak set), so the hot path never touches them.
"""

from __future__ import annotations

import functools
import time
import weakref
from typing import Final, Literal, Protocol

from prometheus_client import Counter, Gauge, Histogram

from drains._interface import DRAIN_STATES, DrainState


class _Observed(Protocol):
    def buffered_messages(self) -> int: ...

    def current_state(self, now_s: float) -> DrainState: ...


LIVE_DRAINS: Final[weakref.WeakSet[_Observed]] = weakref.WeakSet()

MESSAGES: Final = Counter(
    "logplex_drain_messages_total",
    "Messages handled by drains, by drain kind and outcome (delivered, dropped, retried).",
    ["drain_kind", "outcome"],
)
BYTES: Final = Counter(
    "logplex_drain_bytes_total",
    "Frame bytes handled by drains, by drain kind and outcome (delivered, dropped, retried).",
    ["drain_kind", "outcome"],
)
REQUEST_SECONDS: Final = Histogram(
    "logplex_drain_request_seconds",
    "Time to deliver one batch (an HTTP request, or one write to a syslog connection).",
    ["drain_kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONNECT_SECONDS: Final = Histogram(
    "logplex_drain_connect_seconds",
    "Time to open a drain connection (TCP connect plus TLS handshake).",
    ["drain_kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0),
)
DESTINATION_REFUSALS: Final = Counter(
    "logplex_drain_destination_refusals_total",
    "Drain destinations refused by the destination policy or the own-listener rule, at drain "
    "creation or update (at=create) or at a connect (at=connect).",
    ["at"],
)
for _at in ("create", "connect"):
    DESTINATION_REFUSALS.labels(_at)


def count_destination_refusal(at: Literal["create", "connect"]) -> None:
    """One drain destination refused (``at`` creation/update or a connect)."""
    DESTINATION_REFUSALS.labels(at).inc()


BUFFERED: Final = Gauge(
    "logplex_drain_buffered_messages",
    "Messages held by all drains, queued or in flight.",
)
BUFFERED.set_function(lambda: float(sum(d.buffered_messages() for d in list(LIVE_DRAINS))))
BY_STATE: Final = Gauge("logplex_drains", "Drains by status state.", ["state"])


def _count_in_state(state: DrainState) -> float:
    now_s = time.time()
    return float(sum(1 for d in list(LIVE_DRAINS) if d.current_state(now_s) == state))


for _state in DRAIN_STATES:
    BY_STATE.labels(_state).set_function(functools.partial(_count_in_state, _state))


class KindMetrics:
    """The label children of one drain kind, resolved once (labels() is not free)."""

    __slots__ = (
        "bytes_delivered",
        "bytes_dropped",
        "bytes_retried",
        "connect_seconds",
        "delivered",
        "dropped",
        "request_seconds",
        "retried",
    )

    def __init__(self, kind: str) -> None:
        self.delivered = MESSAGES.labels(kind, "delivered")
        self.dropped = MESSAGES.labels(kind, "dropped")
        self.retried = MESSAGES.labels(kind, "retried")
        self.bytes_delivered = BYTES.labels(kind, "delivered")
        self.bytes_dropped = BYTES.labels(kind, "dropped")
        self.bytes_retried = BYTES.labels(kind, "retried")
        self.request_seconds = REQUEST_SECONDS.labels(kind)
        self.connect_seconds = CONNECT_SECONDS.labels(kind)
