"""Outbound drains: HTTPS (application/logplex-1) and syslog over TCP, TLS and UDP.

The router sees drains only through what this module exports (docs/architecture.md):
``parse_drain_url``, ``open_drain`` and the records around them, and the queue protocol
(``DrainQueue``, ``Taken``) a durable spool implements. Each drain kind lives in
its own module (``http`` is a package: request, connection, response, drain loop;
``syslog``, ``udp``); the shared buffer with drop-oldest and loss accounting (``_buffer``),
the retry policy (``_retry``), TLS (``_tls``), the errors (``_errors``) and the metrics
(``_metrics``) are private. ``receiver`` and ``sink`` are for drain subscribers (DESIGN 5.4).
"""

from __future__ import annotations

from drains._buffer import DrainQueue, EncodeMessages, MakeNotice, QueueFactory, Taken
from drains._errors import DrainError, InvalidDrainURL
from drains._interface import (
    Drain,
    DrainContext,
    DrainSettings,
    DrainState,
    DrainStatus,
)
from drains._url import DrainURL, parse_drain_url
from drains.http import HttpDrain
from drains.syslog import SyslogDrain
from drains.udp import UdpDrain

__all__ = [
    "Drain",
    "DrainContext",
    "DrainError",
    "DrainQueue",
    "DrainSettings",
    "DrainState",
    "DrainStatus",
    "DrainURL",
    "EncodeMessages",
    "InvalidDrainURL",
    "MakeNotice",
    "QueueFactory",
    "Taken",
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
