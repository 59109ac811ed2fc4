"""Outbound drains: HTTPS (application/logplex-1) and syslog over TCP, TLS and UDP.

The router sees drains only through what this module exports (docs/architecture.md):
``parse_drain_url``, ``open_drain`` and the records around them, and the queue protocol
(``DrainQueue``, ``Taken``) a durable spool implements. Each drain kind lives in
its own module (``http`` is a package: request, connection, response, drain loop;
``syslog``, ``udp``); the shared buffer with drop-oldest and loss accounting (``_buffer``),
the retry policy (``_retry``), TLS (``_tls``), the errors (``_errors``) and the metrics
(``_metrics``) are private; of the destination policy (``_policy``, decisions, and
``_connect``, checked connects) the router uses the records and the decisions it repeats
when a drain URL is created. ``receiver`` and ``sink`` are for drain subscribers (DESIGN 5.4).
"""

from __future__ import annotations

from drains._buffer import DrainQueue, EncodeMessages, MakeNotice, QueueFactory, Taken
from drains._connect import is_local_address
from drains._errors import DrainError, InvalidDrainURL
from drains._interface import (
    Drain,
    DrainContext,
    DrainSettings,
    DrainState,
    DrainStatus,
)
from drains._metrics import count_destination_refusal
from drains._policy import DestinationPolicy, IPAddress, Listener, listener_reached
from drains._policy import policy_refusal as destination_policy_refusal
from drains._url import DrainURL, parse_drain_url
from drains.http import HttpDrain
from drains.syslog import SyslogDrain
from drains.udp import UdpDrain

__all__ = [
    "DestinationPolicy",
    "Drain",
    "DrainContext",
    "DrainError",
    "DrainQueue",
    "DrainSettings",
    "DrainState",
    "DrainStatus",
    "DrainURL",
    "EncodeMessages",
    "IPAddress",
    "InvalidDrainURL",
    "Listener",
    "MakeNotice",
    "QueueFactory",
    "Taken",
    "count_destination_refusal",
    "destination_policy_refusal",
    "is_local_address",
    "listener_reached",
    "open_drain",
    "parse_drain_url",
]


def open_drain(ctx: DrainContext) -> Drain:
    """Create the drain for ``ctx.url`` (by scheme); the caller runs ``drain.run``.

    Raises ``InvalidDrainURL`` when the URL cannot be used.
    """
    url = parse_drain_url(ctx.url)
    if url.kind == "http":
        return HttpDrain(ctx, url)
    if url.kind == "syslog+udp":
        return UdpDrain(ctx, url)
    return SyslogDrain(ctx, url)
