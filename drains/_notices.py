"""The router notices drains emit (DESIGN section 5.5), built with ``logplex.codecs.notices``.

Router notices use PRI 172 (local5.warning), source ``heroku`` and ps ``logplex``.
"""

from __future__ import annotations

from logplex.codecs.notices import l10_overflow, l14_certificate, router_notice
from logplex.codecs.records import Message


def l10_message(count: int, since_us: int, now_us: int) -> Message:
    """``Error L10 (output buffer overflow): N messages dropped since TS.``"""
    return router_notice(now_us, l10_overflow(count, since_us))


def l14_message(error: str, uri: str, now_us: int) -> Message:
    """``Error L14 (certificate validation): error="…" uri="syslog+tls://host:port"``."""
    return router_notice(now_us, l14_certificate(error, uri))
